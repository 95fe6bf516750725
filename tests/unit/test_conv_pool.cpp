#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/nn/conv2d.hpp"
#include "ghnq/nn/pool.hpp"
#include "support/gradcheck.hpp"

using namespace ghnq;

namespace {

// ---- naive references ---------------------------------------------------------------------

struct conv_case {
  std::string name;
  std::int64_t n, cin, h, w, cout, kh, kw;
  nn::conv2d_params p;
  bool bias;
};

nn::conv2d_params params(int sh, int sw, int ph, int pw, int dh = 1, int dw = 1, int groups = 1) {
  nn::conv2d_params p;
  p.stride_h = sh;
  p.stride_w = sw;
  p.pad_h = ph;
  p.pad_w = pw;
  p.dilation_h = dh;
  p.dilation_w = dw;
  p.groups = groups;
  return p;
}

std::int64_t out_size(std::int64_t in, std::int64_t k, int s, int p, int d) {
  return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

/// Calls f(n, o, i, j, c, u, v, ih, iw) for every valid term of the convolution sum.
template <class F>
void for_each_term(const conv_case& cc, F&& f) {
  const auto& p = cc.p;
  const std::int64_t ho = out_size(cc.h, cc.kh, p.stride_h, p.pad_h, p.dilation_h);
  const std::int64_t wo = out_size(cc.w, cc.kw, p.stride_w, p.pad_w, p.dilation_w);
  const std::int64_t cg = cc.cin / p.groups, og = cc.cout / p.groups;
  for (std::int64_t n = 0; n < cc.n; ++n)
    for (std::int64_t o = 0; o < cc.cout; ++o)
      for (std::int64_t i = 0; i < ho; ++i)
        for (std::int64_t j = 0; j < wo; ++j)
          for (std::int64_t c = 0; c < cg; ++c)
            for (std::int64_t u = 0; u < cc.kh; ++u)
              for (std::int64_t v = 0; v < cc.kw; ++v) {
                const std::int64_t ih = i * p.stride_h + u * p.dilation_h - p.pad_h;
                const std::int64_t iw = j * p.stride_w + v * p.dilation_w - p.pad_w;
                if (ih < 0 || ih >= cc.h || iw < 0 || iw >= cc.w) continue;
                f(n, o, i, j, (o / og) * cg + c, c, u, v, ih, iw);
              }
}

template <class T>
tensor<T> ref_conv(const conv_case& cc, const tensor<T>& x, const tensor<T>& w, const tensor<T>* b) {
  const auto& p = cc.p;
  const std::int64_t ho = out_size(cc.h, cc.kh, p.stride_h, p.pad_h, p.dilation_h);
  const std::int64_t wo = out_size(cc.w, cc.kw, p.stride_w, p.pad_w, p.dilation_w);
  std::vector<double> acc(static_cast<std::size_t>(cc.n * cc.cout * ho * wo), 0.0);
  auto at = [&](std::int64_t n, std::int64_t o, std::int64_t i, std::int64_t j) {
    return static_cast<std::size_t>(((n * cc.cout + o) * ho + i) * wo + j);
  };
  for_each_term(cc, [&](auto n, auto o, auto i, auto j, auto ci, auto c, auto u, auto v, auto ih, auto iw) {
    acc[at(n, o, i, j)] += static_cast<double>(w(o, c, u, v)) * static_cast<double>(x(n, ci, ih, iw));
  });
  tensor<T> y({cc.n, cc.cout, ho, wo});
  for (std::int64_t n = 0; n < cc.n; ++n)
    for (std::int64_t o = 0; o < cc.cout; ++o)
      for (std::int64_t i = 0; i < ho; ++i)
        for (std::int64_t j = 0; j < wo; ++j)
          y(n, o, i, j) = static_cast<T>(acc[at(n, o, i, j)] + (b ? static_cast<double>((*b)(o)) : 0.0));
  return y;
}

/// Reference gradients of sum(dy * conv(x, w) + b).
template <class T>
void ref_conv_backward(const conv_case& cc, const tensor<T>& x, const tensor<T>& w, const tensor<T>& dy,
                       tensor<T>& dx, tensor<T>& dw, tensor<T>& db) {
  std::vector<double> gx(static_cast<std::size_t>(x.numel())), gw(static_cast<std::size_t>(w.numel())),
      gb(static_cast<std::size_t>(cc.cout));
  auto xi = [&](auto n, auto c, auto i, auto j) { return static_cast<std::size_t>(((n * cc.cin + c) * cc.h + i) * cc.w + j); };
  auto wi = [&](auto o, auto c, auto u, auto v) {
    return static_cast<std::size_t>(((o * (cc.cin / cc.p.groups) + c) * cc.kh + u) * cc.kw + v);
  };
  for_each_term(cc, [&](auto n, auto o, auto i, auto j, auto ci, auto c, auto u, auto v, auto ih, auto iw) {
    const double g = static_cast<double>(dy(n, o, i, j));
    gx[xi(n, ci, ih, iw)] += g * static_cast<double>(w(o, c, u, v));
    gw[wi(o, c, u, v)] += g * static_cast<double>(x(n, ci, ih, iw));
  });
  for (std::int64_t n = 0; n < dy.dim(0); ++n)
    for (std::int64_t o = 0; o < dy.dim(1); ++o)
      for (std::int64_t i = 0; i < dy.dim(2); ++i)
        for (std::int64_t j = 0; j < dy.dim(3); ++j) gb[static_cast<std::size_t>(o)] += static_cast<double>(dy(n, o, i, j));
  dx = tensor<T>(x.shape());
  dw = tensor<T>(w.shape());
  db = tensor<T>({cc.cout});
  for (std::int64_t k = 0; k < dx.numel(); ++k) dx.flat(k) = static_cast<T>(gx[static_cast<std::size_t>(k)]);
  for (std::int64_t k = 0; k < dw.numel(); ++k) dw.flat(k) = static_cast<T>(gw[static_cast<std::size_t>(k)]);
  for (std::int64_t k = 0; k < db.numel(); ++k) db.flat(k) = static_cast<T>(gb[static_cast<std::size_t>(k)]);
}

/// Shapes covering every kernel path: 3x3, 5x5, 1x7, 7x1, 1x1 (direct and batched), stride 2,
/// dilation 2, groups 2, depthwise (multiplier 1 and 2), one input channel, valid and asymmetric
/// padding, small images batched into one GEMM, large images with one image per GEMM.
std::vector<conv_case> forward_cases() {
  return {
      {"3x3 pad 1", 2, 3, 7, 9, 4, 3, 3, params(1, 1, 1, 1), true},
      {"5x5 pad 2 no bias", 2, 2, 8, 6, 3, 5, 5, params(1, 1, 2, 2), false},
      {"1x7 pad 0x3", 2, 3, 6, 10, 4, 1, 7, params(1, 1, 0, 3), true},
      {"7x1 pad 3x0", 3, 2, 9, 5, 3, 7, 1, params(1, 1, 3, 0), true},
      {"1x1 batched", 3, 5, 4, 5, 6, 1, 1, params(1, 1, 0, 0), true},
      {"1x1 stride 2", 2, 4, 7, 6, 3, 1, 1, params(2, 2, 0, 0), false},
      {"3x3 stride 2", 3, 3, 9, 7, 5, 3, 3, params(2, 2, 1, 1), true},
      {"3x3 dilation 2", 2, 3, 9, 8, 4, 3, 3, params(1, 1, 2, 2, 2, 2), true},
      {"5x5 dilation 2 stride 2 no bias", 2, 2, 11, 12, 3, 5, 5, params(2, 2, 4, 4, 2, 2), false},
      {"groups 2", 2, 4, 6, 7, 6, 3, 3, params(1, 1, 1, 1, 1, 1, 2), true},
      {"groups 2 stride 2 no bias", 2, 6, 8, 8, 4, 3, 3, params(2, 2, 1, 1, 1, 1, 2), false},
      {"depthwise 3x3", 2, 4, 7, 6, 4, 3, 3, params(1, 1, 1, 1, 1, 1, 4), true},
      {"depthwise x2 stride 2", 2, 3, 9, 8, 6, 3, 3, params(2, 2, 1, 1, 1, 1, 3), false},
      {"depthwise 5x5 dilation 2", 2, 3, 10, 9, 3, 5, 5, params(1, 1, 4, 4, 2, 2, 3), true},
      {"depthwise 1x7 stride 2x1", 2, 2, 6, 11, 2, 1, 7, params(2, 1, 0, 3, 1, 1, 2), true},
      {"one input channel", 2, 1, 8, 7, 5, 3, 3, params(1, 1, 1, 1), true},
      {"valid 3x3", 2, 3, 7, 8, 4, 3, 3, params(1, 1, 0, 0), true},
      {"asymmetric pad 2x3 kernel", 2, 3, 6, 7, 2, 2, 3, params(1, 2, 1, 0), true},
      {"many blocks 3x3", 9, 5, 12, 12, 7, 3, 3, params(1, 1, 1, 1), true},
      {"many blocks 1x1 (last block of one image)", 5, 6, 12, 12, 5, 1, 1, params(1, 1, 0, 0), true},
      {"large image 3x3", 3, 2, 24, 25, 3, 3, 3, params(1, 1, 1, 1), true},
      {"large image 1x1", 3, 3, 24, 24, 4, 1, 1, params(1, 1, 0, 0), false},
      {"large image 3x3 stride 2 (row tiles)", 2, 3, 50, 47, 4, 3, 3, params(2, 2, 1, 1), true},
      {"large image 5x5 dilation 2 (uneven row tiles)", 1, 2, 23, 30, 3, 5, 5, params(1, 1, 4, 4, 2, 2), false},
      {"large batch small image", 40, 4, 5, 5, 6, 3, 3, params(1, 1, 1, 1), true},
  };
}

template <class T>
struct conv_inputs {
  tensor<T> x, w, b;
};

template <class T>
conv_inputs<T> make_inputs(const conv_case& cc, rng& g) {
  conv_inputs<T> in;
  in.x = test::random_tensor<T>({cc.n, cc.cin, cc.h, cc.w}, g);
  in.w = test::random_tensor<T>({cc.cout, cc.cin / cc.p.groups, cc.kh, cc.kw}, g);
  in.b = test::random_tensor<T>({cc.cout}, g);
  return in;
}

double tol_for(float) { return 2e-5; }
double tol_for(double) { return 1e-12; }

/// conv2d forward and backward of one case against the naive loops.
template <class T>
void check_against_naive(const conv_case& cc, rng& g) {
  auto in = make_inputs<T>(cc, g);
  autograd::tape<T> tp;
  auto x = autograd::parameter(in.x), w = autograd::parameter(in.w);
  autograd::var<T> b;
  if (cc.bias) b = autograd::parameter(in.b);
  auto y = nn::conv2d(tp, x, w, b, cc.p);
  const auto ref = ref_conv(cc, in.x, in.w, cc.bias ? &in.b : nullptr);
  REQUIRE(y.shape() == ref.shape());
  const double fan = static_cast<double>(cc.cin / cc.p.groups * cc.kh * cc.kw);
  test::require_close(y.value(), ref, tol_for(T()) * fan, tol_for(T()));
  const auto dy = test::random_tensor<T>(y.shape(), g);
  tp.backward(y, dy);
  tensor<T> rdx, rdw, rdb;
  ref_conv_backward(cc, in.x, in.w, dy, rdx, rdw, rdb);
  const double n_terms = static_cast<double>(y.value().numel()) / static_cast<double>(cc.cout);
  test::require_close(x.grad(), rdx, tol_for(T()) * static_cast<double>(cc.cout * cc.kh * cc.kw), tol_for(T()));
  test::require_close(w.grad(), rdw, tol_for(T()) * n_terms, tol_for(T()));
  if (cc.bias) test::require_close(b.grad(), rdb, tol_for(T()) * n_terms, tol_for(T()));
}

}  // namespace

TEMPLATE_TEST_CASE("conv2d forward matches a naive loop", "[nn][conv2d]", float, double) {
  using T = TestType;
  rng g(11);
  for (const auto& cc : forward_cases()) {
    INFO(cc.name);
    auto in = make_inputs<T>(cc, g);
    autograd::tape<T> tp;
    autograd::var<T> x(in.x), w(in.w), b;
    if (cc.bias) b = autograd::var<T>(in.b);
    auto y = nn::conv2d(tp, x, w, b, cc.p);
    const auto ref = ref_conv(cc, in.x, in.w, cc.bias ? &in.b : nullptr);
    REQUIRE(y.shape() == ref.shape());
    const double fan = static_cast<double>(cc.cin / cc.p.groups * cc.kh * cc.kw);
    test::require_close(y.value(), ref, tol_for(T()) * fan, tol_for(T()));
  }
}

TEMPLATE_TEST_CASE("conv2d backward matches naive loops on larger shapes", "[nn][conv2d]", float, double) {
  rng g(12);
  for (const auto& cc : forward_cases()) {
    INFO(cc.name);
    check_against_naive<TestType>(cc, g);
  }
}

TEMPLATE_TEST_CASE("conv2d direct kernels and the GEMM path both match naive loops", "[nn][conv2d]", float, double) {
  // direct_conv_mode 2 forces the direct kernels wherever they apply, 0 forbids them: both paths
  // must give the naive results, forward and backward, on every case (incl. 3x3 / 1x1 / stride 2).
  namespace cd = ghnq::backend::conv_detail;
  struct restore {
    int old = cd::direct_conv_mode;
    ~restore() { cd::direct_conv_mode = old; }
  } guard;
  for (int mode : {0, 2}) {
    cd::direct_conv_mode = mode;
    rng g(13);
    for (const auto& cc : forward_cases()) {
      INFO("mode " << mode << ": " << cc.name);
      check_against_naive<TestType>(cc, g);
    }
  }
}

TEST_CASE("conv2d gradients accumulate and skip inputs without requires_grad", "[nn][conv2d]") {
  rng g(13);
  const conv_case cc{"3x3", 2, 3, 5, 6, 4, 3, 3, params(1, 1, 1, 1), true};
  auto in = make_inputs<double>(cc, g);
  autograd::tape<double> tp;
  auto x = autograd::var<double>(in.x);  // constant input
  auto w = autograd::parameter(in.w), b = autograd::parameter(in.b);
  auto y = nn::conv2d(tp, x, w, b, cc.p);
  const auto dy = test::random_tensor<double>(y.shape(), g);
  tp.backward(y, dy);
  CHECK_FALSE(x.has_grad());
  const auto once = w.grad().clone();
  auto y2 = nn::conv2d(tp, x, w, b, cc.p);
  tp.backward(y2, dy);
  for (std::int64_t i = 0; i < once.numel(); ++i) REQUIRE(w.grad().flat(i) == Approx(2 * once.flat(i)));

  autograd::tape<double> off;
  autograd::no_grad<autograd::tape<double>> guard(off);
  auto y3 = nn::conv2d(off, x, w, b, cc.p);
  CHECK_FALSE(y3.requires_grad());
  CHECK(off.size() == 0);
}

TEST_CASE("conv2d results do not depend on the thread count", "[nn][conv2d]") {
  rng g(14);
  for (const auto& cc : {conv_case{"dense", 24, 6, 10, 10, 8, 3, 3, params(1, 1, 1, 1), true},
                         conv_case{"depthwise", 6, 8, 9, 9, 8, 3, 3, params(1, 1, 1, 1, 1, 1, 8), true}}) {
    INFO(cc.name);
    auto in = make_inputs<float>(cc, g);
    auto run = [&](int threads, tensor<float>& y, tensor<float>& dx, tensor<float>& dw, tensor<float>& db) {
      thread_limit lim(threads);
      autograd::tape<float> tp;
      auto x = autograd::parameter(in.x), w = autograd::parameter(in.w), b = autograd::parameter(in.b);
      auto out = nn::conv2d(tp, x, w, b, cc.p);
      tp.backward(out, tensor<float>::full(out.shape(), 0.5f));
      y = out.value();
      dx = x.grad();
      dw = w.grad();
      db = b.grad();
    };
    tensor<float> y1, dx1, dw1, db1, y2, dx2, dw2, db2;
    run(1, y1, dx1, dw1, db1);
    run(4, y2, dx2, dw2, db2);
    CHECK(y1.to_vector() == y2.to_vector());
    CHECK(dx1.to_vector() == dx2.to_vector());
    CHECK(dw1.to_vector() == dw2.to_vector());
    CHECK(db1.to_vector() == db2.to_vector());
  }
}

TEST_CASE("conv2d central-difference gradients for x, w and b", "[nn][conv2d][gradcheck]") {
  const std::vector<conv_case> cases = {
      {"3x3 pad 1", 2, 2, 4, 5, 3, 3, 3, params(1, 1, 1, 1), true},
      {"5x5 pad 2", 1, 2, 5, 5, 2, 5, 5, params(1, 1, 2, 2), true},
      {"1x7 pad 0x3", 2, 2, 3, 6, 2, 1, 7, params(1, 1, 0, 3), true},
      {"7x1 pad 3x0", 1, 2, 6, 3, 2, 7, 1, params(1, 1, 3, 0), false},
      {"1x1", 2, 3, 3, 4, 2, 1, 1, params(1, 1, 0, 0), true},
      {"1x1 one image per GEMM", 1, 2, 23, 23, 2, 1, 1, params(1, 1, 0, 0), false},
      {"3x3 stride 2", 2, 2, 7, 6, 3, 3, 3, params(2, 2, 1, 1), true},
      {"3x3 dilation 2", 1, 2, 6, 7, 2, 3, 3, params(1, 1, 2, 2, 2, 2), true},
      {"groups 2", 2, 4, 4, 5, 4, 3, 3, params(1, 1, 1, 1, 1, 1, 2), true},
      {"depthwise", 2, 3, 5, 4, 3, 3, 3, params(1, 1, 1, 1, 1, 1, 3), true},
      {"depthwise x2 stride 2 dilation 2", 1, 2, 7, 7, 4, 3, 3, params(2, 2, 2, 2, 2, 2, 2), false},
      {"valid 2x3", 2, 2, 4, 5, 2, 2, 3, params(1, 1, 0, 0), true},
      {"3x3 row tiles", 1, 2, 23, 23, 2, 3, 3, params(1, 1, 1, 1), true},
  };
  rng g(15);
  for (const auto& cc : cases) {
    INFO(cc.name);
    auto in = make_inputs<double>(cc, g);
    std::vector<test::dvar> inputs{autograd::parameter(in.x, "x"), autograd::parameter(in.w, "w")};
    if (cc.bias) inputs.push_back(autograd::parameter(in.b, "b"));
    const auto p = cc.p;
    test::check_gradients(
        [p](test::dtape& tp, std::vector<test::dvar>& v) {
          return nn::conv2d(tp, v[0], v[1], v.size() > 2 ? v[2] : test::dvar(), p);
        },
        inputs);
  }
}

TEST_CASE("conv2d rejects bad shapes and parameters", "[nn][conv2d][errors]") {
  autograd::tape<float> tp;
  auto x = autograd::var<float>(tensor<float>::zeros({2, 4, 8, 8}));
  auto w = autograd::var<float>(tensor<float>::zeros({6, 4, 3, 3}));
  auto b = autograd::var<float>(tensor<float>::zeros({6}));
  CHECK_NOTHROW(nn::conv2d(tp, x, w, b, nn::conv2d_params::square(1, 1)));
  // wrong ranks
  CHECK_THROWS_AS(nn::conv2d(tp, autograd::var<float>(tensor<float>::zeros({4, 8, 8})), w, b, {}), shape_error);
  CHECK_THROWS_AS(nn::conv2d(tp, x, autograd::var<float>(tensor<float>::zeros({6, 4, 9})), b, {}), shape_error);
  // Cin not divisible by groups; Cout not divisible by groups
  CHECK_THROWS_AS(nn::conv2d(tp, x, autograd::var<float>(tensor<float>::zeros({6, 1, 3, 3})), b,
                             nn::conv2d_params::square(1, 1, 1, 3)),
                  shape_error);
  CHECK_THROWS_AS(nn::conv2d(tp, x, autograd::var<float>(tensor<float>::zeros({6, 1, 3, 3})), b,
                             nn::conv2d_params::square(1, 1, 1, 4)),
                  shape_error);
  // weight channels do not match Cin / groups
  CHECK_THROWS_AS(nn::conv2d(tp, x, autograd::var<float>(tensor<float>::zeros({6, 3, 3, 3})), b, {}), shape_error);
  CHECK_THROWS_AS(nn::conv2d(tp, x, w, b, nn::conv2d_params::square(1, 1, 1, 2)), shape_error);
  // bias shape
  CHECK_THROWS_AS(nn::conv2d(tp, x, w, autograd::var<float>(tensor<float>::zeros({5})), {}), shape_error);
  CHECK_THROWS_AS(nn::conv2d(tp, x, w, autograd::var<float>(tensor<float>::zeros({6, 1})), {}), shape_error);
  // output smaller than one pixel
  CHECK_THROWS_AS(nn::conv2d(tp, x, autograd::var<float>(tensor<float>::zeros({6, 4, 9, 9})), b, {}), shape_error);
  CHECK_THROWS_AS(nn::conv2d(tp, x, w, b, nn::conv2d_params::square(1, 0, 4)), shape_error);
  // bad parameter values
  CHECK_THROWS_AS(nn::conv2d(tp, x, w, b, nn::conv2d_params::square(0, 1)), value_error);
  CHECK_THROWS_AS(nn::conv2d(tp, x, w, b, nn::conv2d_params::square(1, -1)), value_error);
  CHECK_THROWS_AS(nn::conv2d(tp, x, w, b, nn::conv2d_params::square(1, 1, 0)), value_error);
  // the message names the op and the shapes
  try {
    nn::conv2d(tp, x, autograd::var<float>(tensor<float>::zeros({6, 3, 3, 3})), b, {});
    FAIL("no exception");
  } catch (const shape_error& e) {
    const std::string m = e.what();
    CHECK(m.find("conv2d") != std::string::npos);
    CHECK(m.find("[6, 3, 3, 3]") != std::string::npos);
    CHECK(m.find("[2, 4, 8, 8]") != std::string::npos);
  }
}

TEST_CASE("conv2d_output_size", "[nn][conv2d]") {
  CHECK(nn::conv2d_output_size(32, 3, 1, 1) == 32);
  CHECK(nn::conv2d_output_size(32, 3, 2, 1) == 16);
  CHECK(nn::conv2d_output_size(7, 3, 2, 1) == 4);
  CHECK(nn::conv2d_output_size(8, 3, 1, 2, 2) == 8);
  CHECK(nn::conv2d_output_size(5, 7, 1, 0) == 0);
  CHECK(nn::conv2d_output_size(1, 5, 2, 0) == 0);
  const auto sq = nn::conv2d_params::square(2, 3, 4, 5);
  CHECK(sq.stride_h == 2);
  CHECK(sq.stride_w == 2);
  CHECK(sq.pad_h == 3);
  CHECK(sq.pad_w == 3);
  CHECK(sq.dilation_h == 4);
  CHECK(sq.dilation_w == 4);
  CHECK(sq.groups == 5);
}

// ---- pooling ------------------------------------------------------------------------------

namespace {

struct pool_case {
  std::int64_t n, c, h, w;
  nn::pool2d_params p;
};

std::vector<pool_case> pool_cases() {
  return {{2, 3, 7, 6, {3, 1, 1}}, {2, 2, 8, 9, {3, 2, 1}}, {1, 3, 7, 7, {3, 2, 1}},
          {2, 2, 6, 8, {2, 2, 0}}, {1, 2, 9, 7, {5, 2, 2}}, {3, 1, 5, 4, {3, 3, 0}}};
}

/// kind 0: max (padding ignored), kind 1: average over the in-image part of each window.
template <class T>
tensor<T> ref_pool(const tensor<T>& x, const nn::pool2d_params& p, int kind) {
  const std::int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  const std::int64_t ho = (H + 2 * p.padding - p.kernel) / p.stride + 1;
  const std::int64_t wo = (W + 2 * p.padding - p.kernel) / p.stride + 1;
  tensor<T> y({N, C, ho, wo});
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t i = 0; i < ho; ++i)
        for (std::int64_t j = 0; j < wo; ++j) {
          double best = -INFINITY, sum = 0;
          int count = 0;
          for (int u = 0; u < p.kernel; ++u)
            for (int v = 0; v < p.kernel; ++v) {
              const std::int64_t ih = i * p.stride - p.padding + u, iw = j * p.stride - p.padding + v;
              if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
              const double val = static_cast<double>(x(n, c, ih, iw));
              best = std::max(best, val);
              sum += val;
              ++count;
            }
          y(n, c, i, j) = static_cast<T>(kind == 0 ? best : sum / count);
        }
  return y;
}

/// Distinct values 0.01 apart in a random order (no ties for max pooling).
tensor<double> distinct_tensor(const shape& s, rng& g) {
  tensor<double> t(s);
  std::vector<std::int64_t> perm(static_cast<std::size_t>(t.numel()));
  for (std::size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<std::int64_t>(i);
  g.shuffle(perm.begin(), perm.end());
  for (std::int64_t i = 0; i < t.numel(); ++i)
    t.flat(i) = 0.01 * static_cast<double>(perm[static_cast<std::size_t>(i)] - t.numel() / 2);
  return t;
}

}  // namespace

TEMPLATE_TEST_CASE("pooling forward matches naive loops", "[nn][pool]", float, double) {
  using T = TestType;
  rng g(21);
  for (const auto& pc : pool_cases()) {
    INFO("pool " << pc.p.kernel << "/" << pc.p.stride << "/" << pc.p.padding << " on " << pc.h << "x" << pc.w);
    autograd::tape<T> tp;
    // negative values everywhere: a max that let padding (0) win would be caught
    auto x = autograd::var<T>(test::random_tensor<T>({pc.n, pc.c, pc.h, pc.w}, g, -2.0, -0.5));
    test::require_close(nn::max_pool2d(tp, x, pc.p).value(), ref_pool(x.value(), pc.p, 0), 0.0);
    test::require_close(nn::avg_pool2d(tp, x, pc.p).value(), ref_pool(x.value(), pc.p, 1), 1e-6);
  }
  autograd::tape<T> tp;
  auto x = autograd::var<T>(test::random_tensor<T>({2, 3, 5, 4}, g));
  auto y = nn::global_avg_pool(tp, x);
  REQUIRE(y.shape() == shape({2, 3}));
  for (std::int64_t n = 0; n < 2; ++n)
    for (std::int64_t c = 0; c < 3; ++c) {
      double s = 0;
      for (std::int64_t i = 0; i < 5; ++i)
        for (std::int64_t j = 0; j < 4; ++j) s += static_cast<double>(x.value()(n, c, i, j));
      CHECK(static_cast<double>(y.value()(n, c)) == Approx(s / 20).epsilon(1e-6));
    }
}

TEST_CASE("pooling default parameters keep the size (3x3, stride 1, padding 1)", "[nn][pool]") {
  autograd::tape<float> tp;
  auto x = autograd::var<float>(tensor<float>::zeros({2, 3, 7, 5}));
  CHECK(nn::max_pool2d(tp, x).shape() == shape({2, 3, 7, 5}));
  CHECK(nn::avg_pool2d(tp, x).shape() == shape({2, 3, 7, 5}));
  CHECK(nn::max_pool2d(tp, x, {3, 2, 1}).shape() == shape({2, 3, 4, 3}));
}

TEST_CASE("pooling central-difference gradients", "[nn][pool][gradcheck]") {
  rng g(22);
  for (const auto& pc : pool_cases()) {
    INFO("pool " << pc.p.kernel << "/" << pc.p.stride << "/" << pc.p.padding << " on " << pc.h << "x" << pc.w);
    const auto p = pc.p;
    auto x = autograd::parameter(distinct_tensor({pc.n, pc.c, pc.h, pc.w}, g), "x");
    test::check_gradients([p](test::dtape& tp, std::vector<test::dvar>& v) { return nn::max_pool2d(tp, v[0], p); },
                          {x});
    test::check_gradients([p](test::dtape& tp, std::vector<test::dvar>& v) { return nn::avg_pool2d(tp, v[0], p); },
                          {x});
  }
  auto x = autograd::parameter(test::random_tensor<double>({2, 3, 4, 5}, g), "x");
  test::check_gradients([](test::dtape& tp, std::vector<test::dvar>& v) { return nn::global_avg_pool(tp, v[0]); },
                        {x});
}

TEST_CASE("pooling rejects bad shapes and parameters", "[nn][pool][errors]") {
  autograd::tape<float> tp;
  auto x3 = autograd::var<float>(tensor<float>::zeros({2, 4, 8}));
  auto x = autograd::var<float>(tensor<float>::zeros({2, 4, 2, 2}));
  CHECK_THROWS_AS(nn::max_pool2d(tp, x3), shape_error);
  CHECK_THROWS_AS(nn::avg_pool2d(tp, x3), shape_error);
  CHECK_THROWS_AS(nn::global_avg_pool(tp, x3), shape_error);
  CHECK_THROWS_AS(nn::max_pool2d(tp, x, {5, 1, 1}), shape_error);  // output would be empty
  CHECK_THROWS_AS(nn::avg_pool2d(tp, x, {5, 1, 0}), shape_error);
  CHECK_THROWS_AS(nn::max_pool2d(tp, x, {3, 1, 2}), value_error);  // padding > kernel / 2
  CHECK_THROWS_AS(nn::avg_pool2d(tp, x, {3, 0, 1}), value_error);
  CHECK_THROWS_AS(nn::max_pool2d(tp, x, {0, 1, 0}), value_error);
}
