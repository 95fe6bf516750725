// Tests of batch_norm2d, layer_norm, embedding, gru_cell, dropout, concat, cross_entropy and
// count_correct: forward against naive loops, gradients by central differences, running
// statistics against hand-computed numbers, error cases.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "ghnq/nn/batch_norm.hpp"
#include "ghnq/nn/concat.hpp"
#include "ghnq/nn/dropout.hpp"
#include "ghnq/nn/embedding.hpp"
#include "ghnq/nn/gru_cell.hpp"
#include "ghnq/nn/layer_norm.hpp"
#include "ghnq/nn/loss.hpp"
#include "support/gradcheck.hpp"

using namespace ghnq;
using Catch::Matchers::Contains;

namespace {

template <class T>
using tvar = autograd::var<T>;
template <class T>
using ttape = autograd::tape<T>;

/// Absolute / relative tolerance of a forward comparison in T.
template <class T>
constexpr double tol() {
  return sizeof(T) == 4 ? 2e-5 : 1e-12;
}

template <class T, class U>
tensor<T> cast(const tensor<U>& t) {
  tensor<T> r(t.shape());
  for (std::int64_t i = 0; i < t.numel(); ++i) r.flat(i) = static_cast<T>(t.flat(i));
  return r;
}

double sigm(double v) { return 1.0 / (1.0 + std::exp(-v)); }

/// Naive batch norm in double: y and per-channel batch mean / biased variance.
template <class T>
tensor<double> bn_reference(const tensor<T>& x, const tensor<T>* gamma, const tensor<T>* beta, double eps,
                            std::vector<double>& mean, std::vector<double>& var) {
  const auto n = x.dim(0), c = x.dim(1);
  const auto s = x.numel() / (n * c);
  tensor<double> y(x.shape());
  mean.assign(static_cast<std::size_t>(c), 0.0);
  var.assign(static_cast<std::size_t>(c), 0.0);
  for (std::int64_t ch = 0; ch < c; ++ch) {
    double sum = 0;
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t k = 0; k < s; ++k) sum += x.flat((i * c + ch) * s + k);
    const double mu = sum / static_cast<double>(n * s);
    double sq = 0;
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t k = 0; k < s; ++k) sq += std::pow(x.flat((i * c + ch) * s + k) - mu, 2);
    const double v = sq / static_cast<double>(n * s);
    mean[static_cast<std::size_t>(ch)] = mu;
    var[static_cast<std::size_t>(ch)] = v;
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t k = 0; k < s; ++k) {
        const auto j = (i * c + ch) * s + k;
        y.flat(j) = (x.flat(j) - mu) / std::sqrt(v + eps) * (gamma ? gamma->flat(ch) : 1.0) +
                    (beta ? beta->flat(ch) : 0.0);
      }
  }
  return y;
}

template <class T>
void require_close_to(const tensor<T>& a, const tensor<double>& ref, double atol, double rtol) {
  test::require_close(cast<double>(a), ref, atol, rtol);
}

}  // namespace

// ---- batch norm --------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("batch_norm2d training matches a naive loop and updates running statistics", "[nn][bn]", float,
                   double) {
  using T = TestType;
  rng g(1);
  const std::vector<shape> shapes = {{3, 4, 5, 2}, {6, 3}, {1, 2, 3, 3}, {2, 5, 1, 1}};
  for (const auto& xs : shapes) {
    for (int affine = 0; affine < 2; ++affine) {
      INFO("shape " << xs << " affine " << affine);
      const auto c = xs[1];
      ttape<T> tp;
      tvar<T> x(test::random_tensor<T>(xs, g, -2.0, 3.0));
      tvar<T> gamma, beta;
      if (affine) {
        gamma = tvar<T>(test::random_tensor<T>({c}, g, 0.5, 1.5));
        beta = tvar<T>(test::random_tensor<T>({c}, g));
      }
      auto st = nn::batch_norm_state<T>::init(c);
      st.running_mean = test::random_tensor<T>({c}, g);
      st.running_var = test::random_tensor<T>({c}, g, 0.5, 2.0);
      const auto rm0 = st.running_mean.clone(), rv0 = st.running_var.clone();
      nn::batch_norm_options opt;
      opt.momentum = 0.25;
      auto y = nn::batch_norm2d(tp, x, gamma, beta, &st, opt);

      std::vector<double> mean, var;
      const tensor<T>* gp = affine ? &gamma.value() : nullptr;
      const tensor<T>* bp = affine ? &beta.value() : nullptr;
      const auto ref = bn_reference(x.value(), gp, bp, opt.eps, mean, var);
      require_close_to(y.value(), ref, tol<T>(), tol<T>());
      REQUIRE(st.num_batches_tracked == 1);
      const double m = static_cast<double>(x.value().numel() / c);
      tensor<double> rm({c}), rv({c});
      for (std::int64_t ch = 0; ch < c; ++ch) {
        const auto k = static_cast<std::size_t>(ch);
        rm.flat(ch) = 0.75 * rm0.flat(ch) + 0.25 * mean[k];
        rv.flat(ch) = 0.75 * rv0.flat(ch) + 0.25 * var[k] * m / (m - 1);
      }
      require_close_to(st.running_mean, rm, tol<T>(), tol<T>());
      require_close_to(st.running_var, rv, tol<T>(), tol<T>());
      // the normalized output has zero mean and (biased) unit variance per channel without affine
      if (!affine) {
        std::vector<double> m2, v2;
        bn_reference<T>(y.value(), nullptr, nullptr, 0.0, m2, v2);
        for (std::int64_t ch = 0; ch < c; ++ch) {
          CHECK(std::abs(m2[static_cast<std::size_t>(ch)]) < 1e-5);
          CHECK(v2[static_cast<std::size_t>(ch)] == Approx(var[static_cast<std::size_t>(ch)] /
                                                           (var[static_cast<std::size_t>(ch)] + opt.eps))
                                                        .epsilon(1e-4));
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("batch_norm2d running statistics follow PyTorch", "[nn][bn]", float, double) {
  using T = TestType;
  ttape<T> tp;
  // channel 0 holds 1, 2, 3, 4 (mean 2.5, biased var 1.25, unbiased var 5/3); channel 1 is constant 7
  tvar<T> x(tensor<T>::from({2, 2, 1, 2}, {1, 2, 7, 7, 3, 4, 7, 7}));
  auto st = nn::batch_norm_state<T>::init(2);
  CHECK(st.running_mean.to_vector() == std::vector<T>{0, 0});
  CHECK(st.running_var.to_vector() == std::vector<T>{1, 1});
  auto y = nn::batch_norm2d(tp, x, {}, {}, &st);
  CHECK(st.num_batches_tracked == 1);
  CHECK(st.running_mean(0) == Approx(0.25));
  CHECK(st.running_var(0) == Approx(0.9 + 0.1 * 5.0 / 3.0));  // 1.0666...
  CHECK(st.running_mean(1) == Approx(0.7));
  CHECK(st.running_var(1) == Approx(0.9));
  const double sd = std::sqrt(1.25 + 1e-5);
  CHECK(y.value()(0, 0, 0, 0) == Approx(-1.5 / sd));
  CHECK(y.value()(1, 0, 0, 1) == Approx(1.5 / sd));
  CHECK(y.value()(1, 1, 0, 1) == 0);

  nn::batch_norm_options opt;
  opt.momentum = 0.5;
  nn::batch_norm2d(tp, x, {}, {}, &st, opt);
  CHECK(st.num_batches_tracked == 2);
  CHECK(st.running_mean(0) == Approx(0.5 * 0.25 + 0.5 * 2.5));
  CHECK(st.running_var(0) == Approx(0.5 * (0.9 + 0.1 * 5.0 / 3.0) + 0.5 * 5.0 / 3.0));

  opt.update_running = false;
  const auto before = st.running_var.to_vector();
  nn::batch_norm2d(tp, x, {}, {}, &st, opt);
  CHECK(st.num_batches_tracked == 2);
  CHECK(st.running_var.to_vector() == before);
  CHECK_NOTHROW(nn::batch_norm2d(tp, x, {}, {}, nullptr));  // training without tracking
}

TEMPLATE_TEST_CASE("batch_norm2d eval mode uses the running statistics", "[nn][bn]", float, double) {
  using T = TestType;
  rng g(2);
  for (const auto& xs : std::vector<shape>{{2, 3, 2, 2}, {4, 3}}) {
    ttape<T> tp;
    tvar<T> x(test::random_tensor<T>(xs, g, -2, 2));
    tvar<T> gamma(test::random_tensor<T>({3}, g)), beta(test::random_tensor<T>({3}, g));
    auto st = nn::batch_norm_state<T>::init(3);
    st.running_mean = tensor<T>::from({3}, {T(0.5), T(-1), T(0)});
    st.running_var = tensor<T>::from({3}, {T(2), T(0.25), T(1)});
    nn::batch_norm_options opt;
    opt.training = false;
    opt.eps = 1e-3;
    auto y = nn::batch_norm2d(tp, x, gamma, beta, &st, opt);
    CHECK(st.num_batches_tracked == 0);
    CHECK(st.running_mean.to_vector() == std::vector<T>{T(0.5), T(-1), T(0)});
    tensor<double> ref(xs);
    const auto s = x.value().numel() / (xs[0] * 3);
    for (std::int64_t j = 0; j < ref.numel(); ++j) {
      const auto ch = (j / s) % 3;
      ref.flat(j) = (x.value().flat(j) - st.running_mean.flat(ch)) / std::sqrt(st.running_var.flat(ch) + 1e-3) *
                        gamma.value().flat(ch) +
                    beta.value().flat(ch);
    }
    require_close_to(y.value(), ref, tol<T>(), tol<T>());
    CHECK_THROWS_AS(nn::batch_norm2d(tp, x, gamma, beta, nullptr, opt), value_error);
  }
}

TEST_CASE("batch_norm2d: gradient check in training and eval mode", "[nn][bn][gradcheck]") {
  rng g(3);
  auto st = nn::batch_norm_state<double>::init(3);
  st.running_mean = test::random_tensor<double>({3}, g);
  st.running_var = test::random_tensor<double>({3}, g, 0.5, 2.0);
  auto* stp = &st;
  for (int training = 0; training < 2; ++training)
    for (int affine = 0; affine < 2; ++affine)
      for (const auto& xs : std::vector<shape>{{3, 3, 2, 3}, {5, 3}}) {
        INFO("training " << training << " affine " << affine << " shape " << xs);
        std::vector<test::dvar> in;
        in.push_back(autograd::parameter(test::random_tensor<double>(xs, g, -1, 2), "x"));
        if (affine) {
          in.push_back(autograd::parameter(test::random_tensor<double>({3}, g, 0.5, 1.5), "gamma"));
          in.push_back(autograd::parameter(test::random_tensor<double>({3}, g), "beta"));
        }
        nn::batch_norm_options opt;
        opt.training = training != 0;
        test::check_gradients(
            [=](test::dtape& tp, std::vector<test::dvar>& v) {
              const test::dvar none;
              return nn::batch_norm2d(tp, v[0], v.size() > 1 ? v[1] : none, v.size() > 2 ? v[2] : none,
                                      opt.training ? nullptr : stp, opt);
            },
            in);
      }
  // through a state that updates its running statistics (the gradient does not depend on them)
  std::vector<test::dvar> in = {autograd::parameter(test::random_tensor<double>({4, 3, 2, 2}, g), "x"),
                                autograd::parameter(test::random_tensor<double>({3}, g), "gamma"),
                                autograd::parameter(test::random_tensor<double>({3}, g), "beta")};
  test::check_gradients(
      [=](test::dtape& tp, std::vector<test::dvar>& v) { return nn::batch_norm2d(tp, v[0], v[1], v[2], stp); },
      in);
  CHECK(st.num_batches_tracked > 0);
}

TEST_CASE("batch_norm2d: errors", "[nn][bn]") {
  ttape<float> tp;
  tvar<float> x(tensor<float>::zeros({2, 3, 4, 4}));
  tvar<float> g3(tensor<float>::zeros({3})), g4(tensor<float>::zeros({4}));
  auto st = nn::batch_norm_state<float>::init(3);
  auto st4 = nn::batch_norm_state<float>::init(4);
  CHECK_THROWS_AS(nn::batch_norm2d(tp, x, g4, g3, &st), shape_error);
  CHECK_THROWS_WITH(nn::batch_norm2d(tp, x, g3, g4, &st), Contains("beta") && Contains("[4]"));
  CHECK_THROWS_AS(nn::batch_norm2d(tp, x, g3, g3, &st4), shape_error);
  CHECK_THROWS_AS(nn::batch_norm2d(tp, tvar<float>(tensor<float>::zeros({2, 3, 4})), g3, g3, &st), shape_error);
  nn::batch_norm_options bad;
  bad.momentum = 1.5;
  CHECK_THROWS_AS(nn::batch_norm2d(tp, x, g3, g3, &st, bad), value_error);
  bad.momentum = 0.1;
  bad.eps = 0.0;
  CHECK_THROWS_AS(nn::batch_norm2d(tp, x, g3, g3, &st, bad), value_error);
  // one value per channel cannot be normalized with batch statistics
  CHECK_THROWS_AS(nn::batch_norm2d(tp, tvar<float>(tensor<float>::zeros({1, 3})), g3, g3, &st), value_error);
  nn::batch_norm_options eval;
  eval.training = false;
  CHECK_THROWS_WITH(nn::batch_norm2d(tp, x, g3, g3, nullptr, eval), Contains("state"));
}

// ---- layer norm -----------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("layer_norm matches a naive loop", "[nn][ln]", float, double) {
  using T = TestType;
  rng g(4);
  for (int affine = 0; affine < 2; ++affine) {
    ttape<T> tp;
    const std::int64_t d = 7;
    tvar<T> x(test::random_tensor<T>({2, 3, d}, g, -3, 2));
    tvar<T> gamma, beta;
    if (affine) {
      gamma = tvar<T>(test::random_tensor<T>({d}, g));
      beta = tvar<T>(test::random_tensor<T>({d}, g));
    }
    auto y = nn::layer_norm(tp, x, gamma, beta, 1e-4);
    REQUIRE(y.shape() == x.shape());
    tensor<double> ref(x.shape());
    for (std::int64_t r = 0; r < 6; ++r) {
      double mu = 0, v = 0;
      for (std::int64_t j = 0; j < d; ++j) mu += x.value().flat(r * d + j);
      mu /= d;
      for (std::int64_t j = 0; j < d; ++j) v += std::pow(x.value().flat(r * d + j) - mu, 2);
      v /= d;
      for (std::int64_t j = 0; j < d; ++j)
        ref.flat(r * d + j) = (x.value().flat(r * d + j) - mu) / std::sqrt(v + 1e-4) *
                                  (affine ? gamma.value().flat(j) : 1.0) +
                              (affine ? beta.value().flat(j) : 0.0);
    }
    require_close_to(y.value(), ref, tol<T>(), tol<T>());
  }
  ttape<T> tp;
  tvar<T> x(tensor<T>::zeros({3, 4})), g5(tensor<T>::zeros({5}));
  CHECK_THROWS_AS(nn::layer_norm(tp, x, g5, tvar<T>()), shape_error);
  CHECK_THROWS_AS(nn::layer_norm(tp, x, tvar<T>(), g5), shape_error);
}

TEST_CASE("layer_norm: gradient check", "[nn][ln][gradcheck]") {
  rng g(5);
  for (int affine = 0; affine < 2; ++affine) {
    INFO("affine " << affine);
    std::vector<test::dvar> in;
    in.push_back(autograd::parameter(test::random_tensor<double>({2, 3, 6}, g, -1, 2), "x"));
    if (affine) {
      in.push_back(autograd::parameter(test::random_tensor<double>({6}, g), "gamma"));
      in.push_back(autograd::parameter(test::random_tensor<double>({6}, g), "beta"));
    }
    test::check_gradients(
        [](test::dtape& tp, std::vector<test::dvar>& v) {
          const test::dvar none;
          return nn::layer_norm(tp, v[0], v.size() > 1 ? v[1] : none, v.size() > 2 ? v[2] : none);
        },
        in);
  }
}

// ---- embedding ----------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("embedding gathers rows and scatter-adds gradients", "[nn][embedding]", float, double) {
  using T = TestType;
  rng g(6);
  auto w = autograd::parameter(test::random_tensor<T>({5, 3}, g), "w");
  const std::vector<std::int64_t> idx = {2, 0, 2, 4, 2};
  ttape<T> tp;
  auto y = nn::embedding(tp, w, idx);
  REQUIRE(y.shape() == shape({5, 3}));
  for (std::int64_t i = 0; i < 5; ++i)
    for (std::int64_t j = 0; j < 3; ++j) REQUIRE(y.value()(i, j) == w.value()(idx[static_cast<std::size_t>(i)], j));
  auto seed = tensor<T>::zeros({5, 3});
  for (std::int64_t i = 0; i < 15; ++i) seed.flat(i) = static_cast<T>(i);
  tp.backward(y, seed);
  // row 2 is picked at positions 0, 2, 4
  for (std::int64_t j = 0; j < 3; ++j) {
    CHECK(w.grad()(2, j) == seed(0, j) + seed(2, j) + seed(4, j));
    CHECK(w.grad()(0, j) == seed(1, j));
    CHECK(w.grad()(4, j) == seed(3, j));
    CHECK(w.grad()(1, j) == 0);
    CHECK(w.grad()(3, j) == 0);
  }
  CHECK(nn::embedding(tp, w, {}).shape() == shape({0, 3}));
  CHECK_THROWS_AS(nn::embedding(tp, w, {0, 5}), value_error);
  CHECK_THROWS_WITH(nn::embedding(tp, w, {1, 2, -1}), Contains("index -1") && Contains("position 2"));
  CHECK_THROWS_AS(nn::embedding(tp, tvar<T>(tensor<T>::zeros({5})), {0}), shape_error);
}

TEST_CASE("embedding: gradient check with repeated indices", "[nn][embedding][gradcheck]") {
  rng g(7);
  std::vector<test::dvar> in = {autograd::parameter(test::random_tensor<double>({6, 4}, g), "w")};
  test::check_gradients(
      [](test::dtape& tp, std::vector<test::dvar>& v) { return nn::embedding(tp, v[0], {3, 1, 3, 3, 5, 0, 1}); },
      in);
}

// ---- GRU cell -----------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("gru_cell matches PyTorch's GRUCell formula", "[nn][gru]", float, double) {
  using T = TestType;
  rng g(8);
  const std::int64_t n = 3, in = 4, hs = 5;
  tvar<T> x(test::random_tensor<T>({n, in}, g)), h(test::random_tensor<T>({n, hs}, g));
  tvar<T> wi(test::random_tensor<T>({3 * hs, in}, g)), wh(test::random_tensor<T>({3 * hs, hs}, g));
  tvar<T> bi(test::random_tensor<T>({3 * hs}, g)), bh(test::random_tensor<T>({3 * hs}, g));
  ttape<T> tp;
  auto y = nn::gru_cell(tp, x, h, wi, wh, bi, bh);
  REQUIRE(y.shape() == shape({n, hs}));
  // gate k of unit j: row k*hs + j of the weights
  auto lin = [&](const tvar<T>& w, const tvar<T>& b, const tvar<T>& v, std::int64_t i, std::int64_t row) {
    double acc = b.defined() ? b.value().flat(row) : 0.0;
    for (std::int64_t p = 0; p < v.shape()[1]; ++p) acc += double(w.value()(row, p)) * v.value()(i, p);
    return acc;
  };
  tensor<double> ref({n, hs}), ref_nb({n, hs});
  for (int with_bias = 0; with_bias < 2; ++with_bias) {
    const tvar<T> b1 = with_bias ? bi : tvar<T>(), b2 = with_bias ? bh : tvar<T>();
    auto& out = with_bias ? ref : ref_nb;
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < hs; ++j) {
        const double r = sigm(lin(wi, b1, x, i, j) + lin(wh, b2, h, i, j));
        const double z = sigm(lin(wi, b1, x, i, hs + j) + lin(wh, b2, h, i, hs + j));
        const double nn_ = std::tanh(lin(wi, b1, x, i, 2 * hs + j) + r * lin(wh, b2, h, i, 2 * hs + j));
        out(i, j) = (1 - z) * nn_ + z * h.value()(i, j);
      }
  }
  require_close_to(y.value(), ref, 10 * tol<T>(), tol<T>());
  auto y_nb = nn::gru_cell(tp, x, h, wi, wh, tvar<T>(), tvar<T>());
  require_close_to(y_nb.value(), ref_nb, 10 * tol<T>(), tol<T>());

  CHECK_THROWS_AS(nn::gru_cell(tp, x, h, wh, wh, bi, bh), shape_error);
  CHECK_THROWS_AS(nn::gru_cell(tp, x, h, wi, wi, bi, bh), shape_error);
  CHECK_THROWS_AS(nn::gru_cell(tp, x, tvar<T>(tensor<T>::zeros({n + 1, hs})), wi, wh, bi, bh), shape_error);
  CHECK_THROWS_AS(nn::gru_cell(tp, x, h, wi, wh, tvar<T>(tensor<T>::zeros({hs})), bh), shape_error);
}

TEST_CASE("gru_cell: gradient check of all six inputs", "[nn][gru][gradcheck]") {
  rng g(9);
  const std::int64_t n = 3, in = 4, hs = 3;
  std::vector<test::dvar> v = {autograd::parameter(test::random_tensor<double>({n, in}, g), "x"),
                               autograd::parameter(test::random_tensor<double>({n, hs}, g), "h"),
                               autograd::parameter(test::random_tensor<double>({3 * hs, in}, g), "w_ih"),
                               autograd::parameter(test::random_tensor<double>({3 * hs, hs}, g), "w_hh"),
                               autograd::parameter(test::random_tensor<double>({3 * hs}, g), "b_ih"),
                               autograd::parameter(test::random_tensor<double>({3 * hs}, g), "b_hh")};
  test::check_gradients(
      [](test::dtape& tp, std::vector<test::dvar>& a) { return nn::gru_cell(tp, a[0], a[1], a[2], a[3], a[4], a[5]); },
      v);
  // two chained steps sharing the weights (gradients accumulate across uses)
  test::check_gradients(
      [](test::dtape& tp, std::vector<test::dvar>& a) {
        auto h1 = nn::gru_cell(tp, a[0], a[1], a[2], a[3], a[4], a[5]);
        return nn::gru_cell(tp, a[0], h1, a[2], a[3], a[4], a[5]);
      },
      v);
}

// ---- dropout ------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("dropout keeps, scales and drops by seed", "[nn][dropout]", float, double) {
  using T = TestType;
  rng g0(10);
  tvar<T> x(test::random_tensor<T>({40, 100}, g0, 0.5, 1.5));
  ttape<T> tp;
  const double p = 0.3;
  rng g(5);
  auto y = nn::dropout(tp, x, p, g, true);
  const T keep = static_cast<T>(1.0 / (1.0 - p));
  std::int64_t dropped = 0;
  for (std::int64_t i = 0; i < x.value().numel(); ++i) {
    const T v = y.value().flat(i);
    if (v == T(0)) {
      ++dropped;
    } else {
      REQUIRE(v == x.value().flat(i) * keep);
    }
  }
  const double frac = static_cast<double>(dropped) / static_cast<double>(x.value().numel());
  CHECK(frac > 0.27);
  CHECK(frac < 0.33);
  rng g2(5), g3(6);
  CHECK(nn::dropout(tp, x, p, g2, true).value().to_vector() == y.value().to_vector());
  CHECK(nn::dropout(tp, x, p, g3, true).value().to_vector() != y.value().to_vector());

  // identity without drawing when not training or p == 0
  rng ga(1), gb(1);
  CHECK(nn::dropout(tp, x, p, ga, false).id() == x.id());
  CHECK(nn::dropout(tp, x, 0.0, ga, true).id() == x.id());
  CHECK(ga.next() == gb.next());

  CHECK_THROWS_AS(nn::dropout(tp, x, 1.0, g, true), value_error);
  CHECK_THROWS_AS(nn::dropout(tp, x, -0.1, g, true), value_error);
  CHECK_THROWS_AS(nn::dropout(tp, x, 1.5, g, false), value_error);
}

TEST_CASE("dropout: gradient check with a re-seeded generator", "[nn][dropout][gradcheck]") {
  rng g(11);
  std::vector<test::dvar> in = {autograd::parameter(test::random_tensor<double>({4, 6}, g), "x")};
  test::check_gradients(
      [](test::dtape& tp, std::vector<test::dvar>& v) {
        rng gd(123);  // same mask on every call
        return nn::dropout(tp, v[0], 0.4, gd, true);
      },
      in);
  // the gradient is exactly the mask
  test::dtape tp;
  in[0].reset_grad();
  rng gd(123);
  auto y = nn::dropout(tp, in[0], 0.4, gd, true);
  tp.backward(y, tensor<double>::full(y.shape(), 1.0));
  for (std::int64_t i = 0; i < y.value().numel(); ++i)
    CHECK(in[0].grad().flat(i) == (y.value().flat(i) == 0.0 ? 0.0 : 1.0 / 0.6));
}

// ---- concat -------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("concat matches a naive loop along channels and batch", "[nn][concat]", float, double) {
  using T = TestType;
  rng g(12);
  ttape<T> tp;
  tvar<T> a(test::random_tensor<T>({2, 1, 3, 2}, g)), b(test::random_tensor<T>({2, 3, 3, 2}, g)),
      c(test::random_tensor<T>({2, 2, 3, 2}, g));
  auto y = nn::concat(tp, {a, b, c});
  REQUIRE(y.shape() == shape({2, 6, 3, 2}));
  for (std::int64_t n = 0; n < 2; ++n)
    for (std::int64_t ch = 0; ch < 6; ++ch)
      for (std::int64_t i = 0; i < 3; ++i)
        for (std::int64_t j = 0; j < 2; ++j) {
          const T want = ch < 1 ? a.value()(n, ch, i, j) : ch < 4 ? b.value()(n, ch - 1, i, j) : c.value()(n, ch - 4, i, j);
          REQUIRE(y.value()(n, ch, i, j) == want);
        }
  tvar<T> u(test::random_tensor<T>({1, 3}, g)), v(test::random_tensor<T>({2, 3}, g));
  auto z = nn::concat(tp, {u, v}, 0);
  REQUIRE(z.shape() == shape({3, 3}));
  for (std::int64_t j = 0; j < 3; ++j) {
    CHECK(z.value()(0, j) == u.value()(0, j));
    CHECK(z.value()(2, j) == v.value()(1, j));
  }
  auto w = nn::concat(tp, {a, a}, -1);
  REQUIRE(w.shape() == shape({2, 1, 3, 4}));
  CHECK(w.value()(1, 0, 2, 3) == a.value()(1, 0, 2, 1));

  CHECK_THROWS_WITH(nn::concat(tp, {a, tvar<T>(tensor<T>::zeros({2, 1, 4, 2}))}),
                    Contains("[2, 1, 4, 2]") && Contains("[2, 1, 3, 2]"));
  CHECK_THROWS_AS(nn::concat(tp, {a, u}), shape_error);
  CHECK_THROWS_AS(nn::concat(tp, {a, b}, 0), shape_error);
  CHECK_THROWS_AS(nn::concat(tp, {a}, 4), shape_error);
  CHECK_THROWS_AS(nn::concat(tp, std::vector<tvar<T>>{}), value_error);
}

TEST_CASE("concat: gradient check", "[nn][concat][gradcheck]") {
  rng g(13);
  std::vector<test::dvar> in = {autograd::parameter(test::random_tensor<double>({2, 1, 2, 3}, g), "a"),
                                autograd::parameter(test::random_tensor<double>({2, 3, 2, 3}, g), "b"),
                                autograd::parameter(test::random_tensor<double>({2, 2, 2, 3}, g), "c")};
  test::check_gradients(
      [](test::dtape& tp, std::vector<test::dvar>& v) { return nn::concat(tp, {v[0], v[1], v[2]}); }, in);
  std::vector<test::dvar> rows = {autograd::parameter(test::random_tensor<double>({1, 4}, g), "u"),
                                  test::dvar(test::random_tensor<double>({3, 4}, g)),  // constant
                                  autograd::parameter(test::random_tensor<double>({2, 4}, g), "w")};
  test::check_gradients(
      [](test::dtape& tp, std::vector<test::dvar>& v) { return nn::concat(tp, {v[0], v[1], v[2]}, 0); }, rows);
  // the same input twice gets both slices
  test::check_gradients(
      [](test::dtape& tp, std::vector<test::dvar>& v) { return nn::concat(tp, {v[0], v[0]}, 1); }, {in[1]});
}

// ---- cross-entropy ------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("cross_entropy matches a naive loop, with and without label smoothing", "[nn][loss]", float,
                   double) {
  using T = TestType;
  rng g(14);
  const std::int64_t n = 6, c = 5;
  tvar<T> logits(test::random_tensor<T>({n, c}, g, -3, 3));
  const std::vector<std::int32_t> labels = {0, 4, 2, 2, 1, 3};
  for (double eps : {0.0, 0.1, 0.5}) {
    ttape<T> tp;
    auto loss = nn::cross_entropy(tp, logits, labels, eps);
    REQUIRE(loss.shape() == shape({1}));
    double ref = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      double se = 0;
      for (std::int64_t j = 0; j < c; ++j) se += std::exp(double(logits.value()(i, j)));
      for (std::int64_t j = 0; j < c; ++j) {
        const double t = (j == labels[static_cast<std::size_t>(i)] ? 1 - eps : 0.0) + eps / c;
        ref -= t * std::log(std::exp(double(logits.value()(i, j))) / se);
      }
    }
    ref /= n;
    CHECK(loss.value().flat(0) == Approx(ref).epsilon(10 * tol<T>()));
  }
  // log-sum-exp keeps huge logits finite
  ttape<T> tp;
  tvar<T> big(tensor<T>::from({2, 3}, {T(1000), T(0), T(-1000), T(1000), T(0), T(-1000)}));
  auto l = nn::cross_entropy(tp, big, {0, 1});
  CHECK(std::isfinite(double(l.value().flat(0))));
  CHECK(double(l.value().flat(0)) == Approx(500.0));
  auto ls = nn::cross_entropy(tp, big, {0, 0}, 0.3);  // smoothing puts 0.1 on each class
  CHECK(double(ls.value().flat(0)) == Approx(0.1 * 1000 + 0.1 * 2000).epsilon(1e-6));

  CHECK_THROWS_AS(nn::cross_entropy(tp, logits, {0, 4, 2, 2, 1, 5}), value_error);
  CHECK_THROWS_WITH(nn::cross_entropy(tp, logits, {0, 4, -1, 2, 1, 3}), Contains("label -1"));
  CHECK_THROWS_AS(nn::cross_entropy(tp, logits, {0, 1}), shape_error);
  CHECK_THROWS_AS(nn::cross_entropy(tp, logits, labels, 1.0), value_error);
  CHECK_THROWS_AS(nn::cross_entropy(tp, logits, labels, -0.1), value_error);
}

TEST_CASE("cross_entropy: gradient check", "[nn][loss][gradcheck]") {
  rng g(15);
  for (double eps : {0.0, 0.2}) {
    INFO("label smoothing " << eps);
    std::vector<test::dvar> in = {autograd::parameter(test::random_tensor<double>({4, 5}, g, -2, 2), "logits")};
    test::check_gradients(
        [eps](test::dtape& tp, std::vector<test::dvar>& v) { return nn::cross_entropy(tp, v[0], {1, 0, 4, 1}, eps); },
        in);
  }
}

TEST_CASE("count_correct counts argmax hits", "[nn][loss]") {
  auto logits = tensor<float>::from({4, 3}, {0.1f, 0.5f, 0.2f,    // 1
                                             2.0f, -1.f, 0.0f,    // 0
                                             0.3f, 0.3f, 0.1f,    // tie -> 0
                                             -1.f, -2.f, -0.5f});  // 2
  CHECK(nn::count_correct(logits, {1, 0, 0, 2}) == 4);
  CHECK(nn::count_correct(logits, {1, 1, 1, 0}) == 1);
  CHECK(nn::count_correct(logits, {0, 2, 2, 1}) == 0);
  CHECK_THROWS_AS(nn::count_correct(logits, {1, 0}), shape_error);
}

// ---- float backward, thread count -----------------------------------------------------------------

namespace {
/// Gradients of every input of f for scalar type T (seeded with a fixed cotangent).
template <class T, class F>
std::vector<tensor<double>> grads_of(F f, const std::vector<tensor<double>>& inputs, std::uint64_t seed) {
  std::vector<tvar<T>> v;
  for (const auto& t : inputs) v.push_back(autograd::parameter(cast<T>(t)));
  ttape<T> tp;
  auto y = f(tp, v);
  rng g(seed);
  tp.backward(y, test::random_tensor<T>(y.shape(), g));
  std::vector<tensor<double>> out;
  for (auto& x : v) out.push_back(cast<double>(x.grad()));
  return out;
}

template <class F>
void check_float_backward(F f, const std::vector<tensor<double>>& inputs) {
  const auto gd = grads_of<double>(f, inputs, 1);
  const auto gf = grads_of<float>(f, inputs, 1);
  for (std::size_t k = 0; k < gd.size(); ++k) {
    INFO("input " << k);
    test::require_close(gf[k], gd[k], 1e-4, 1e-3);
  }
}
}  // namespace

TEST_CASE("float backward passes agree with double", "[nn][float]") {
  rng g(16);
  auto rt = [&](shape s) { return test::random_tensor<double>(s, g); };
  check_float_backward(
      [](auto& tp, auto& v) { return nn::batch_norm2d(tp, v[0], v[1], v[2], nullptr); },
      {rt({4, 3, 2, 2}), rt({3}), rt({3})});
  check_float_backward([](auto& tp, auto& v) { return nn::layer_norm(tp, v[0], v[1], v[2]); },
                       {rt({5, 8}), rt({8}), rt({8})});
  check_float_backward([](auto& tp, auto& v) { return nn::gru_cell(tp, v[0], v[1], v[2], v[3], v[4], v[5]); },
                       {rt({3, 4}), rt({3, 5}), rt({15, 4}), rt({15, 5}), rt({15}), rt({15})});
  check_float_backward([](auto& tp, auto& v) { return nn::cross_entropy(tp, v[0], {2, 0, 1}, 0.1); },
                       {rt({3, 4})});
  check_float_backward([](auto& tp, auto& v) { return nn::embedding(tp, v[0], {1, 1, 0}); }, {rt({2, 3})});
  check_float_backward([](auto& tp, auto& v) { return nn::concat(tp, {v[0], v[1]}); }, {rt({2, 3}), rt({2, 2})});
  check_float_backward(
      [](auto& tp, auto& v) {
        rng gd(4);
        return nn::dropout(tp, v[0], 0.5, gd, true);
      },
      {rt({3, 7})});
}

TEST_CASE("results do not depend on the thread count", "[nn][threads]") {
  rng g(17);
  // large enough that every kernel splits into several tasks
  const std::vector<tensor<double>> bn_in = {test::random_tensor<double>({16, 8, 16, 16}, g),
                                             test::random_tensor<double>({8}, g),
                                             test::random_tensor<double>({8}, g)};
  const std::vector<tensor<double>> ln_in = {test::random_tensor<double>({1024, 64}, g),
                                             test::random_tensor<double>({64}, g),
                                             test::random_tensor<double>({64}, g)};
  std::vector<std::int64_t> idx(4096);
  for (auto& i : idx) i = g.randint(0, 9);
  const std::vector<tensor<double>> emb_in = {test::random_tensor<double>({10, 64}, g)};
  auto bn = [](auto& tp, auto& v) { return nn::batch_norm2d(tp, v[0], v[1], v[2], nullptr); };
  auto ln = [](auto& tp, auto& v) { return nn::layer_norm(tp, v[0], v[1], v[2]); };
  auto emb = [&idx](auto& tp, auto& v) { return nn::embedding(tp, v[0], idx); };
  const auto bn_many = grads_of<float>(bn, bn_in, 3), ln_many = grads_of<float>(ln, ln_in, 3),
             emb_many = grads_of<float>(emb, emb_in, 3);
  thread_limit one(1);
  const auto bn_one = grads_of<float>(bn, bn_in, 3), ln_one = grads_of<float>(ln, ln_in, 3),
             emb_one = grads_of<float>(emb, emb_in, 3);
  for (std::size_t k = 0; k < bn_one.size(); ++k) CHECK(bn_one[k].to_vector() == bn_many[k].to_vector());
  for (std::size_t k = 0; k < ln_one.size(); ++k) CHECK(ln_one[k].to_vector() == ln_many[k].to_vector());
  CHECK(emb_one[0].to_vector() == emb_many[0].to_vector());
}
