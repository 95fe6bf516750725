// Tests of the GHN-2 decoders (ghn/decoder.hpp), tiling / normalization (ghn/tiling.hpp) and the
// nn::gather / nn::affine primitives they are built from.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "ghnq/ghn/decoder.hpp"
#include "ghnq/ghn/tiling.hpp"
#include "ghnq/nn/add.hpp"
#include "ghnq/nn/affine.hpp"
#include "ghnq/nn/gather.hpp"
#include "support/gradcheck.hpp"

using namespace ghnq;
using test::dtape;
using test::dvar;

namespace {
template <class T>
autograd::var<T> iota_var(const shape& s, bool grad = false) {
  tensor<T> t(s);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.flat(i) = static_cast<T>(i);
  return autograd::var<T>(t, grad);
}
std::vector<double> values(const dvar& v) { return v.value().contiguous().to_vector(); }
double relu(double x) { return x > 0 ? x : 0; }
}  // namespace

TEST_CASE("min_sz follows the GHN-2 key rule", "[ghn][tiling]") {
  // n = min(d, M); multiples of 3 -> n/3*4; n >= M/2 -> M
  const std::int64_t M = 64;
  CHECK(ghn::min_sz(1, M) == 1);
  CHECK(ghn::min_sz(3, M) == 4);
  CHECK(ghn::min_sz(10, M) == 10);
  CHECK(ghn::min_sz(12, M) == 16);
  CHECK(ghn::min_sz(16, M) == 16);
  CHECK(ghn::min_sz(21, M) == 28);
  CHECK(ghn::min_sz(24, M) == 64);  // 24 -> 32 >= 32 -> 64
  CHECK(ghn::min_sz(31, M) == 31);
  CHECK(ghn::min_sz(32, M) == 64);
  CHECK(ghn::min_sz(48, M) == 64);
  CHECK(ghn::min_sz(100, M) == 64);
  CHECK(ghn::min_sz(5, 11) == 5);   // 5 >= 11/2 = 5.5 is false (real division)
  CHECK(ghn::min_sz(6, 11) == 11);  // 6 -> 8 >= 5.5
  CHECK(ghn::min_sz(4, 11) == 4);
  CHECK_THROWS_AS(ghn::min_sz(0, 64), value_error);

  const ghn::max_shape ms{};
  CHECK(ghn::param_key({10}, true, ms) == std::vector<std::int64_t>{10, -1});
  CHECK(ghn::param_key({24}, false, ms) == std::vector<std::int64_t>{64, 0});
  CHECK(ghn::param_key({10, 512}, true, ms) == std::vector<std::int64_t>{10, 64});
  CHECK(ghn::param_key({12, 3}, false, ms) == std::vector<std::int64_t>{16, 4, 1, 1});
  CHECK(ghn::param_key({16, 3, 3, 3}, false, ms) == std::vector<std::int64_t>{16, 4, 3, 3});
  CHECK(ghn::param_key({128, 1, 5, 5}, false, ms) == std::vector<std::int64_t>{64, 1, 5, 5});
  CHECK(ghn::param_key({1, 196, 48}, false, ms) == std::vector<std::int64_t>{1, 48, 14, 14});
  CHECK(ghn::param_key({96, 1, 1}, false, ms) == std::vector<std::int64_t>{64, 1, 1});
  CHECK_THROWS_AS(ghn::param_key({2, 2, 2, 2, 2}, false, ms), shape_error);
}

TEST_CASE("tile_to slices and tiles periodically (hand-computed)", "[ghn][tiling]") {
  dtape tp;
  auto P = iota_var<double>({2, 3, 2, 2});  // P[a,b,c,d] = ((a*3+b)*2+c)*2+d
  SECTION("slice out/in channels, top-left spatial window") {
    auto W = ghn::tile_to(tp, P, {1, 2, 1, 1});
    CHECK(W.shape() == shape({1, 2, 1, 1}));
    CHECK(values(W) == std::vector<double>{0, 4});
  }
  SECTION("tiling with non-divisible sizes") {
    auto W = ghn::tile_to(tp, P, {5, 4, 3, 3});
    CHECK(W.value()(2, 3, 1, 2) == 2.0);   // P[0,0,1,0]
    CHECK(W.value()(3, 2, 2, 1) == 21.0);  // P[1,2,0,1]
    CHECK(W.value()(4, 1, 0, 0) == 4.0);   // P[0,1,0,0]
    CHECK(W.value()(1, 3, 2, 2) == 12.0);  // P[1,0,0,0]
  }
  SECTION("2-D target takes spatial (0,0)") {
    auto W = ghn::tile_to(tp, P, {3, 4});
    CHECK(values(W) == std::vector<double>{0, 4, 8, 0, 12, 16, 20, 12, 0, 4, 8, 0});
  }
  SECTION("1-D target takes [:, 0, 0, 0]") {
    auto W = ghn::tile_to(tp, P, {3});
    CHECK(values(W) == std::vector<double>{0, 12, 0});
  }
  SECTION("top-left spatial window") {
    auto Q = iota_var<double>({1, 1, 3, 3});
    CHECK(values(ghn::tile_to(tp, Q, {1, 1, 2, 2})) == std::vector<double>{0, 1, 3, 4});
    CHECK(values(ghn::tile_to(tp, Q, {1, 1, 1, 3})) == std::vector<double>{0, 1, 2});
  }
  SECTION("kernel larger than the predicted spatial size tiles spatially") {
    auto Q = iota_var<double>({1, 1, 2, 2});
    CHECK(values(ghn::tile_to(tp, Q, {1, 1, 3, 3})) == std::vector<double>{0, 1, 0, 2, 3, 2, 0, 1, 0});
    CHECK(values(ghn::tile_to(tp, Q, {1, 1, 1, 5})) == std::vector<double>{0, 1, 0, 1, 0});
  }
  SECTION("leading indices select a node's block") {
    auto Y = iota_var<double>({2, 2, 3});  // decoder_1d-like [N, 2, Mc]
    CHECK(values(ghn::tile_to(tp, Y, {5}, {1, 1})) == std::vector<double>{9, 10, 11, 9, 10});
    CHECK(values(ghn::tile_to(tp, Y, {2}, {0, 0})) == std::vector<double>{0, 1});
    auto D = iota_var<double>({3, 2, 2, 1, 1});  // [N, M0, M1, 1, 1]
    CHECK(values(ghn::tile_to(tp, D, {3, 2}, {2})) == std::vector<double>{8, 9, 10, 11, 8, 9});
    CHECK_THROWS_AS(ghn::tile_to(tp, D, {3, 2}, {3}), shape_error);
  }
  SECTION("3-D targets tile along dim 2") {
    auto Q = iota_var<double>({1, 2, 3});
    CHECK(values(ghn::tile_to(tp, Q, {1, 1, 4})) == std::vector<double>{0, 1, 2, 0});
  }
  CHECK_THROWS_AS(ghn::tile_to(tp, P, shape{}), shape_error);
}

TEST_CASE("tile_to matches slice-then-repeat on random shapes", "[ghn][tiling]") {
  rng g(5);
  for (int rep = 0; rep < 20; ++rep) {
    const shape ps{g.randint(1, 5), g.randint(1, 5), g.randint(1, 3), g.randint(1, 3)};
    const shape ts{g.randint(1, 9), g.randint(1, 9), g.randint(1, 4), g.randint(1, 4)};
    auto P = dvar(test::random_tensor<double>(ps, g));
    dtape tp;
    auto W = ghn::tile_to(tp, P, ts);
    // naive: slice, then for each dim build the repeated index list explicitly (cat ceil(T/P') copies, truncate)
    std::vector<std::vector<std::int64_t>> src(4);
    for (int d = 0; d < 4; ++d) {
      const auto pd = std::min(ps[d], ts[d]);
      std::vector<std::int64_t> cat;
      while (static_cast<std::int64_t>(cat.size()) < ts[d])
        for (std::int64_t k = 0; k < pd; ++k) cat.push_back(k);
      cat.resize(static_cast<std::size_t>(ts[d]));
      src[static_cast<std::size_t>(d)] = cat;
    }
    for (std::int64_t a = 0; a < ts[0]; ++a)
      for (std::int64_t b = 0; b < ts[1]; ++b)
        for (std::int64_t c = 0; c < ts[2]; ++c)
          for (std::int64_t e = 0; e < ts[3]; ++e)
            REQUIRE(W.value()(a, b, c, e) == P.value()(src[0][a], src[1][b], src[2][c], src[3][e]));
  }
}

TEST_CASE("gather and tile_to: gradients scatter-add over repeats", "[ghn][tiling][gradcheck]") {
  {
    dtape tp;
    auto p = autograd::parameter(tensor<double>::from({2}, {1.0, 2.0}));
    auto w = ghn::tile_to(tp, p, {5});
    tp.backward(w, tensor<double>::from({5}, {1, 1, 1, 1, 1}));
    CHECK(p.grad().flat(0) == 3.0);
    CHECK(p.grad().flat(1) == 2.0);
  }
  rng g(9);
  auto P = autograd::parameter(test::random_tensor<double>({2, 3, 2, 2}, g), "P");
  test::check_gradients([](dtape& tp, std::vector<dvar>& in) { return ghn::tile_to(tp, in[0], {5, 4, 3, 1}); },
                        {P});
  test::check_gradients([](dtape& tp, std::vector<dvar>& in) { return ghn::tile_to(tp, in[0], {1, 2}); }, {P});
  auto Y = autograd::parameter(test::random_tensor<double>({3, 2, 4}, g), "Y");
  test::check_gradients([](dtape& tp, std::vector<dvar>& in) { return ghn::tile_to(tp, in[0], {6}, {2, 1}); }, {Y});
  // injective permutation (parallel scatter path) and a constant input that must get no gradient
  auto X = autograd::parameter(test::random_tensor<double>({3, 4}, g), "X");
  auto C = dvar(test::random_tensor<double>({3, 4}, g));
  test::check_gradients(
      [](dtape& tp, std::vector<dvar>& in) {
        std::vector<std::int64_t> idx;
        for (std::int64_t j = 0; j < 4; ++j)
          for (std::int64_t i = 0; i < 3; ++i) idx.push_back(i * 4 + j);  // transpose
        auto a = nn::gather(tp, in[0], idx, {4, 3});
        auto b = nn::gather(tp, in[1], idx, {4, 3});
        return nn::add(tp, a, b);
      },
      {X, C});
  auto m = nn::make_index_map({0, 2, 2}, 3);
  CHECK_FALSE(m.injective);
  CHECK(nn::make_index_map({2, 0, 1}, 3).injective);
  CHECK_THROWS_AS(nn::make_index_map({0, 3}, 3), value_error);
  dtape tp;
  CHECK_THROWS_AS(nn::gather(tp, X, m, {3}), shape_error);          // map built for 3 elements, X has 12
  CHECK_THROWS_AS(nn::gather(tp, X, std::vector<std::int64_t>{0, 1}, {3}), shape_error);
}

TEMPLATE_TEST_CASE("affine: forward values", "[nn][affine]", float, double) {
  autograd::tape<TestType> tp;
  auto x = autograd::var<TestType>(tensor<TestType>::from({3}, {1, -2, 4}));
  auto y = nn::affine(tp, x, 0.5, 1.0);
  CHECK(y.value().flat(0) == Approx(1.5));
  CHECK(y.value().flat(1) == Approx(0.0));
  CHECK(y.value().flat(2) == Approx(3.0));
  CHECK_FALSE(y.requires_grad());
}

TEST_CASE("normalize_fan_in: beta rules, exemption and squashing", "[ghn][tiling]") {
  rng g(3);
  dtape tp;
  auto scale_of = [&](const shape& s) {
    auto w = dvar(test::random_tensor<double>(s, g, 0.5, 1.0));
    auto y = ghn::normalize_fan_in(tp, w, ghn::param_role::weight);
    const double r = y.value().flat(0) / w.value().flat(0);
    for (std::int64_t i = 0; i < w.value().numel(); ++i)
      REQUIRE(y.value().flat(i) == Approx(r * w.value().flat(i)).epsilon(1e-12));
    return r;
  };
  CHECK(scale_of({8, 1, 3, 3}) == Approx(std::sqrt(1.0 / 9)));    // depthwise: beta 1
  CHECK(scale_of({4, 3, 1, 5}) == Approx(std::sqrt(1.0 / 15)));   // 1 x k: beta 1
  CHECK(scale_of({4, 3, 5, 1}) == Approx(std::sqrt(2.0 / 15)));   // k x 1: beta 2
  CHECK(scale_of({16, 8, 3, 3}) == Approx(std::sqrt(2.0 / 72)));  // regular conv
  CHECK(scale_of({10, 20}) == Approx(std::sqrt(2.0 / 20)));       // linear / classifier: beta 2
  CHECK(scale_of({1, 5}) == Approx(std::sqrt(2.0 / 5)));          // 2-D never exempt, never beta 1
  CHECK(scale_of({2, 4, 14, 14}) == Approx(std::sqrt(2.0 / 784)));  // sz[0] != 1: not exempt
  CHECK(scale_of({1, 4, 10, 10}) == Approx(std::sqrt(2.0 / 400)));  // sz[2] < 11: not exempt
  CHECK(scale_of({1, 4, 14, 14}) == 1.0);                           // positional-encoding exemption
  CHECK(ghn::fan_in_beta({96, 1, 1}) == 1.0);                       // layer_scale (3-D, sz[1] == 1)
  CHECK(ghn::fan_in_beta({4, 3, 2}) == 2.0);

  auto p = dvar(tensor<double>::from({3}, {0.0, 2.0, -4.0}));
  auto nw = ghn::normalize_fan_in(tp, p, ghn::param_role::norm_weight);
  CHECK(nw.value().flat(0) == Approx(1.0));
  CHECK(nw.value().flat(1) == Approx(2.0 / (1.0 + std::exp(-1.0))));
  CHECK(nw.value().flat(2) == Approx(2.0 / (1.0 + std::exp(2.0))));
  auto nb = ghn::normalize_fan_in(tp, p, ghn::param_role::bias);
  CHECK(nb.value().flat(0) == Approx(0.0).margin(1e-15));
  CHECK(nb.value().flat(1) == Approx(std::tanh(0.4)));
  CHECK(nb.value().flat(2) == Approx(std::tanh(-0.8)));
  CHECK_THROWS_AS(ghn::normalize_fan_in(tp, p, ghn::param_role::weight), value_error);
}

TEST_CASE("normalize_fan_in and affine: gradient check", "[ghn][tiling][gradcheck]") {
  rng g(4);
  auto W = autograd::parameter(test::random_tensor<double>({4, 3, 1, 5}, g), "W");
  auto p = autograd::parameter(test::random_tensor<double>({6}, g, -3, 3), "p");
  test::check_gradients(
      [](dtape& tp, std::vector<dvar>& in) { return ghn::normalize_fan_in(tp, in[0], ghn::param_role::weight); },
      {W});
  test::check_gradients(
      [](dtape& tp, std::vector<dvar>& in) { return ghn::normalize_fan_in(tp, in[0], ghn::param_role::norm_weight); },
      {p});
  test::check_gradients(
      [](dtape& tp, std::vector<dvar>& in) { return ghn::normalize_fan_in(tp, in[0], ghn::param_role::bias); }, {p});
  test::check_gradients([](dtape& tp, std::vector<dvar>& in) { return nn::affine(tp, in[0], -1.5, 0.25); }, {p});
}

namespace {
// naive y = W x + b for a row x
std::vector<double> lin(const tensor<double>& w, const tensor<double>& b, const std::vector<double>& x) {
  const auto o = w.dim(0), n = w.dim(1);
  std::vector<double> y(static_cast<std::size_t>(o));
  for (std::int64_t i = 0; i < o; ++i) {
    double s = b.flat(i);
    for (std::int64_t k = 0; k < n; ++k) s += w.flat(i * n + k) * x[static_cast<std::size_t>(k)];
    y[static_cast<std::size_t>(i)] = s;
  }
  return y;
}
std::vector<double> relu_v(std::vector<double> v) {
  for (auto& e : v) e = relu(e);
  return v;
}
std::vector<double> row(const tensor<double>& x, std::int64_t i) {
  const auto d = x.dim(1);
  return std::vector<double>(x.data() + i * d, x.data() + (i + 1) * d);
}
}  // namespace

TEST_CASE("decoder_1d and bias_class match naive loops", "[ghn][decoder]") {
  rng g(21);
  const ghn::max_shape ms{3, 5, 4};  // Mc = 5
  ghn::decoder_1d<double> d1(3, ms, g);
  ghn::bias_class<double> bc(ms, 4, g);
  CHECK(d1.num_params() == (3 * 6 + 6) + (6 * 10 + 10));
  CHECK(bc.num_params() == 5 * 4 + 4);
  auto x = dvar(test::random_tensor<double>({4, 3}, g));
  dtape tp;
  auto y = d1.forward(tp, x);
  REQUIRE(y.shape() == shape({4, 2, 5}));
  auto z = bc.forward(tp, y);
  REQUIRE(z.shape() == shape({4, 4}));
  for (std::int64_t n = 0; n < 4; ++n) {
    auto h = lin(d1.w2.value(), d1.b2.value(), relu_v(lin(d1.w1.value(), d1.b1.value(), row(x.value(), n))));
    for (std::int64_t r = 0; r < 2; ++r)
      for (std::int64_t j = 0; j < 5; ++j) REQUIRE(y.value()(n, r, j) == Approx(h[static_cast<std::size_t>(r * 5 + j)]));
    std::vector<double> b1(h.begin() + 5, h.end());
    auto c = lin(bc.w.value(), bc.b.value(), relu_v(b1));
    for (std::int64_t k = 0; k < 4; ++k) REQUIRE(z.value()(n, k) == Approx(c[static_cast<std::size_t>(k)]));
  }
  CHECK_THROWS_AS(d1.forward(tp, dvar(tensor<double>::zeros({2, 4}))), shape_error);
  CHECK_THROWS_AS(bc.forward(tp, x), shape_error);
}

TEST_CASE("conv_decoder forward and classifier match naive loops", "[ghn][decoder]") {
  rng g(33);
  const std::int64_t H = 2, S = 3, M0 = 3, M1 = 2, NC = 4, h0 = 8, h1 = 16;
  ghn::conv_decoder<double> dec(H, {M0, M1, S}, NC, g);
  CHECK(dec.num_params() == (H * h0 * S * S + h0 * S * S) + (h0 * h1 + h1) + (h1 * M0 * M1 + M0 * M1) + (M0 * NC + NC));
  auto x = dvar(test::random_tensor<double>({3, H}, g));
  const std::pair<std::int64_t, std::int64_t> kernels[] = {{3, 2}, {5, 1}, {1, 1}, {2, 7}};
  for (auto [kh, kw] : kernels) {
    dtape tp;
    auto D = dec.forward(tp, x, kh, kw);
    const auto hh = std::min(S, kh), ww = std::min(S, kw);
    REQUIRE(D.shape() == shape({3, M0, M1, hh, ww}));
    auto C = dec.classify(tp, D);
    REQUIRE(C.shape() == shape({3, NC, M1, hh, ww}));
    for (std::int64_t n = 0; n < 3; ++n) {
      auto f = relu_v(lin(dec.fc_w.value(), dec.fc_b.value(), row(x.value(), n)));
      for (std::int64_t y = 0; y < hh; ++y)
        for (std::int64_t xx = 0; xx < ww; ++xx) {
          std::vector<double> v(static_cast<std::size_t>(h0));
          for (std::int64_t c = 0; c < h0; ++c) v[static_cast<std::size_t>(c)] = f[static_cast<std::size_t>(c * S * S + y * S + xx)];
          auto w1 = dec.conv1_w.value().reshape({h1, h0});
          auto w2 = dec.conv2_w.value().reshape({M0 * M1, h1});
          auto out = lin(w2, dec.conv2_b.value(), relu_v(lin(w1, dec.conv1_b.value(), v)));
          for (std::int64_t o = 0; o < M0; ++o)
            for (std::int64_t i = 0; i < M1; ++i)
              REQUIRE(D.value()(n, o, i, y, xx) == Approx(out[static_cast<std::size_t>(o * M1 + i)]));
          for (std::int64_t i = 0; i < M1; ++i) {
            std::vector<double> col(static_cast<std::size_t>(M0));
            for (std::int64_t o = 0; o < M0; ++o) col[static_cast<std::size_t>(o)] = relu(out[static_cast<std::size_t>(o * M1 + i)]);
            auto cls = lin(dec.cls_w.value().reshape({NC, M0}), dec.cls_b.value(), col);
            for (std::int64_t k = 0; k < NC; ++k)
              REQUIRE(C.value()(n, k, i, y, xx) == Approx(cls[static_cast<std::size_t>(k)]));
          }
        }
    }
  }
  dtape tp;
  CHECK_THROWS_AS(dec.forward(tp, x, 0, 3), value_error);
  CHECK_THROWS_AS(dec.classify(tp, x), shape_error);
}

TEST_CASE("decoders: gradient check of every parameter and the embeddings", "[ghn][decoder][gradcheck]") {
  rng g(44);
  const ghn::max_shape ms{3, 2, 3};
  ghn::conv_decoder<double> dec(2, ms, 2, g);
  ghn::decoder_1d<double> d1(2, ms, g);
  ghn::bias_class<double> bc(ms, 2, g);
  auto x = autograd::parameter(test::random_tensor<double>({2, 2}, g), "x");
  std::vector<dvar> in{x};
  for (auto& p : dec.parameters()) in.push_back(p);
  // decoded block for a 2x4 kernel (window 2x3), tiled onto a 4x3x2x4 conv, plus the classifier head
  test::check_gradients(
      [&](dtape& tp, std::vector<dvar>& v) {
        auto D = dec.forward(tp, v[0], 2, 4);
        auto w = ghn::normalize_fan_in(tp, ghn::tile_to(tp, D, {4, 3, 2, 4}, {1}), ghn::param_role::weight);
        auto C = dec.classify(tp, D);
        auto c = ghn::tile_to(tp, C, {3, 5}, {0});
        return nn::add(tp, nn::reshape(tp, w, {-1}), nn::reshape(tp, ghn::tile_to(tp, c, {96}), {-1}));
      },
      in);
  std::vector<dvar> in1{x};
  for (auto& p : d1.parameters()) in1.push_back(p);
  for (auto& p : bc.parameters()) in1.push_back(p);
  test::check_gradients(
      [&](dtape& tp, std::vector<dvar>& v) {
        auto y = d1.forward(tp, v[0]);
        auto nw = ghn::normalize_fan_in(tp, ghn::tile_to(tp, y, {4}, {0, 0}), ghn::param_role::norm_weight);
        auto nb = ghn::normalize_fan_in(tp, ghn::tile_to(tp, y, {4}, {0, 1}), ghn::param_role::bias);
        auto cb = ghn::normalize_fan_in(tp, ghn::tile_to(tp, bc.forward(tp, y), {4}, {1}), ghn::param_role::bias);
        return nn::add(tp, nn::add(tp, nw, nb), cb);
      },
      in1);
}

TEST_CASE("GHN-2 CIFAR-10 parameter count breakdown", "[ghn][decoder]") {
  rng g(1111);
  const std::int64_t H = 32, nc = 10;
  const ghn::max_shape ms{64, 64, 11};
  ghn::decoder_1d<float> d1(H, ms, g);
  ghn::bias_class<float> bc(ms, nc, g);
  ghn::conv_decoder<float> dec(H, ms, nc, g);
  CHECK(d1.num_params() == 10432);   // (32*64 + 64) + (64*128 + 128)
  CHECK(bc.num_params() == 650);     // 64*10 + 10
  CHECK(dec.num_params() == 1597450);  // fc 511,104 + conv1 33,024 + conv2 1,052,672 + class 650
  CHECK(dec.fc_w.value().numel() + dec.fc_b.value().numel() == 511104);
  // the rest of GHN-2 (spec §10): op embedding, ShapeEncoder, GatedGNN, LayerNorm
  const std::int64_t embed = 15 * H;                           // 480
  const std::int64_t shape_enc = (391 + 1) * (H / 4) + (8 + 1) * (H / 4);  // 3,136 + 72
  const std::int64_t mlp = (H * (H / 2) + H / 2) + ((H / 2) * H + H);       // 1,072
  const std::int64_t gru = 6 * H * H + 6 * H;                               // 6,336
  const std::int64_t ln = 2 * H;
  CHECK(embed + shape_enc + 2 * mlp + gru + ln + d1.num_params() + bc.num_params() + dec.num_params() == 1620764);
}
