// Tests of the quantizer layer (ghnq::quant): forward against the spec formulas written out
// naively here, every surrogate gradient against its stated formula, finite differences where the
// function (or the surrogate) is smooth, observers, extreme bit-widths, noise and bit dispatch.
//
// How each gradient is checked:
//  - STE / LSQ / PACT / binary surrogate gradients: analytically, against the spec's formulas
//    evaluated element by element in the test (gradient buffers pre-filled, so += is checked).
//  - LSQ step, binary statistic form: central differences of the *surrogate* function (the forward
//    with the rounding / sign residual frozen at the base point), computed in the test, in double,
//    with inputs kept away from rounding ties and clip boundaries.
//  - test::check_gradients (true central differences through the op) where the op is smooth:
//    the clipped regions of LSQ and PACT (constant codes there, so the surrogate is exact), the
//    path into upstream vars (s = exp_scale(log_factor, mean_abs(w))), mean_abs, exp_scale, noise.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "ghnq/quant.hpp"
#include "support/gradcheck.hpp"

using namespace ghnq;
namespace q = ghnq::quant;

namespace {

template <class T, int tBits, bool tSigned>
struct cfg {
  using type = T;
  static constexpr int kBits = tBits;
  static constexpr bool kSigned = tSigned;
};

#define GHNQ_QUANT_CFGS                                                                                          \
  (cfg<float, 2, true>), (cfg<double, 2, true>), (cfg<float, 3, true>), (cfg<double, 3, true>),                  \
      (cfg<float, 4, true>), (cfg<double, 4, true>), (cfg<float, 8, true>), (cfg<double, 8, true>),              \
      (cfg<float, 1, false>), (cfg<double, 1, false>), (cfg<float, 2, false>), (cfg<double, 2, false>),          \
      (cfg<float, 3, false>), (cfg<double, 3, false>), (cfg<float, 4, false>), (cfg<double, 4, false>),          \
      (cfg<float, 8, false>), (cfg<double, 8, false>)

template <class T>
using tvar = autograd::var<T>;

template <class T>
tvar<T> param_of(const tensor<T>& t) {
  return autograd::parameter(t.clone());
}

/// Naive uniform fake quantization of one element (spec formulas, arithmetic in T).
template <class T>
struct fq_ref {
  T y;
  bool inside;
};
template <class T>
fq_ref<T> naive_fq(T x, T s, T z, int q_min, int q_max) {
  const T inv = T(1) / s;
  const T r = std::nearbyint(x * inv) + z;
  T qv = r;
  if (qv < T(q_min)) qv = T(q_min);
  if (qv > T(q_max)) qv = T(q_max);
  return {(qv - z) * s, r >= T(q_min) && r <= T(q_max)};
}

/// Naive observer parameters for one channel range (spec formulas, arithmetic in T).
template <class T>
std::pair<T, T> naive_params(T lo, T hi, int q_min, int q_max, bool symmetric) {
  const T m = lo < T(0) ? lo : T(0), M = hi > T(0) ? hi : T(0);
  const T eps = std::numeric_limits<float>::epsilon();
  if (symmetric) {
    T s = std::max(-m, M) / (T(q_max - q_min) / T(2));
    if (s < eps) s = eps;
    return {s, T(0)};
  }
  T s = (M - m) / T(q_max - q_min);
  if (s < eps) s = eps;
  T z = T(q_min) - std::nearbyint(m / s);
  if (z < T(q_min)) z = T(q_min);
  if (z > T(q_max)) z = T(q_max);
  return {s, z};
}

/// Rounds k + 1/2 half to even: whichever of k, k + 1 is even.
long tie_to_even(long k) { return ((k % 2) + 2) % 2 == 0 ? k : k + 1; }

template <class T>
void require_equal(const tensor<T>& a, const std::vector<T>& b) {
  REQUIRE(a.numel() == static_cast<std::int64_t>(b.size()));
  std::int64_t bad = -1;
  for (std::int64_t i = 0; i < a.numel() && bad < 0; ++i) {
    const T u = a.flat(i), v = b[static_cast<std::size_t>(i)];
    if (!(u == v || (std::isnan(u) && std::isnan(v)))) bad = i;
  }
  INFO("first mismatch at " << bad << ": " << (bad >= 0 ? a.flat(bad) : T(0)) << " vs "
                            << (bad >= 0 ? b[static_cast<std::size_t>(bad)] : T(0)));
  REQUIRE(bad == -1);
}

template <class T>
void require_near(const tensor<T>& a, const std::vector<double>& b, double atol, double rtol) {
  REQUIRE(a.numel() == static_cast<std::int64_t>(b.size()));
  std::int64_t bad = -1;
  for (std::int64_t i = 0; i < a.numel() && bad < 0; ++i) {
    const double u = static_cast<double>(a.flat(i)), v = b[static_cast<std::size_t>(i)];
    if (!(std::abs(u - v) <= atol + rtol * std::max(std::abs(u), std::abs(v)))) bad = i;
  }
  INFO("first mismatch at " << bad << ": " << (bad >= 0 ? a.flat(bad) : T(0)) << " vs "
                            << (bad >= 0 ? b[static_cast<std::size_t>(bad)] : 0.0));
  REQUIRE(bad == -1);
}

/// Per-channel ranges computed naively.
template <class T>
void naive_range(const tensor<T>& x, std::int64_t channels, std::vector<T>& lo, std::vector<T>& hi) {
  const std::int64_t inner = x.numel() / channels;
  lo.assign(static_cast<std::size_t>(channels), std::numeric_limits<T>::infinity());
  hi.assign(static_cast<std::size_t>(channels), -std::numeric_limits<T>::infinity());
  for (std::int64_t c = 0; c < channels; ++c)
    for (std::int64_t i = 0; i < inner; ++i) {
      const T v = x.flat(c * inner + i);
      auto k = static_cast<std::size_t>(c);
      if (v < lo[k]) lo[k] = v;
      if (v > hi[k]) hi[k] = v;
    }
}

}  // namespace

// =============================================================================================
// uniform
// =============================================================================================

TEMPLATE_TEST_CASE("uniform fake quantization: observer parameters, forward and clipped STE match the spec",
                   "[quant][uniform]", GHNQ_QUANT_CFGS) {
  using T = typename TestType::type;
  constexpr int kB = TestType::kBits;
  constexpr bool kS = TestType::kSigned;
  constexpr int qmin = q::code_range<kB, kS>::kQMin, qmax = q::code_range<kB, kS>::kQMax;
  rng g(100 + kB);
  // shrink < 1: the observer's range is set to shrink * the data range, so values are clipped
  const auto run = [&](auto quantizer, q::mode m, const shape& sh, double lo, double hi, double shrink) {
    constexpr bool per_ch = decltype(quantizer)::kGranularity == q::per_channel;
    const auto xt = test::random_tensor<T>(sh, g, lo, hi);
    auto x = param_of(xt);
    const auto g0 = test::random_tensor<T>(sh, g);
    x.grad().copy_from(g0);
    const std::int64_t C = per_ch ? sh[0] : 1, inner = xt.numel() / C;
    std::vector<T> rlo, rhi;
    naive_range(xt, C, rlo, rhi);
    if (shrink < 1.0) {
      std::vector<double> slo, shi;
      for (std::size_t c = 0; c < rlo.size(); ++c) {
        slo.push_back(shrink * double(rlo[c]));
        shi.push_back(shrink * double(rhi[c]));
        rlo[c] = static_cast<T>(slo.back());
        rhi[c] = static_cast<T>(shi.back());
      }
      quantizer.state().set_range(slo, shi);
    }
    autograd::tape<T> tp;
    auto y = quantizer(tp, x, /*update=*/shrink >= 1.0);
    const auto p = quantizer.template params<T>();
    REQUIRE(p.channels() == C);
    CHECK(p.q_min == qmin);
    CHECK(p.q_max == qmax);
    std::vector<T> ey(static_cast<std::size_t>(xt.numel())), edx(ey.size());
    const auto dy = test::random_tensor<T>(sh, g);
    for (std::int64_t c = 0; c < C; ++c) {
      const auto [s, z] = naive_params<T>(rlo[static_cast<std::size_t>(c)], rhi[static_cast<std::size_t>(c)], qmin,
                                          qmax, m == q::mode::symmetric);
      REQUIRE(p.scale[static_cast<std::size_t>(c)] == s);
      REQUIRE(p.zero_point[static_cast<std::size_t>(c)] == z);
      for (std::int64_t i = c * inner; i < (c + 1) * inner; ++i) {
        const auto r = naive_fq<T>(xt.flat(i), s, z, qmin, qmax);
        ey[static_cast<std::size_t>(i)] = r.y;
        edx[static_cast<std::size_t>(i)] = g0.flat(i) + (r.inside ? dy.flat(i) : T(0));
        // the result is a code times s
        const T code = y.value().flat(i) / s + z;
        REQUIRE(std::abs(code - std::nearbyint(code)) < 1e-3);
      }
    }
    require_equal(y.value(), ey);
    tp.backward(y, dy);
    require_equal(x.grad(), edx);
  };
  const double lo = kS ? -1.5 : -0.4, hi = kS ? 1.0 : 2.0;
  for (const q::mode m : {q::mode::asymmetric, q::mode::symmetric}) {
    if (!kS && m == q::mode::symmetric) continue;
    for (const double shrink : {1.0, 0.6}) {
      run(q::uniform<kB, kS, q::per_tensor>(q::observer_kind::current, m), m, shape{37, 11}, lo, hi, shrink);
      run(q::uniform<kB, kS, q::per_channel>(q::observer_kind::current, m), m, shape{5, 3, 7}, lo, hi, shrink);
    }
    // more than one chunk per channel and a tail that is not a multiple of the block
    run(q::uniform<kB, kS, q::per_channel>(q::observer_kind::current, m), m, shape{2, 20011}, lo, hi, 0.8);
  }
}

TEMPLATE_TEST_CASE("uniform fake quantization: ties round half to even, clipping edges, x * (1/s)", "[quant][uniform]",
                   GHNQ_QUANT_CFGS) {
  using T = typename TestType::type;
  constexpr int kB = TestType::kBits;
  constexpr bool kS = TestType::kSigned;
  constexpr int qmin = q::code_range<kB, kS>::kQMin, qmax = q::code_range<kB, kS>::kQMax;
  const T s = T(0.25);  // power of two: x * (1/s) is exact for the constructed x
  for (const int z : {0, kS ? 0 : qmax / 2, kS ? -1 : qmax}) {
    q::uniform_params<T> p;
    p.scale = {s};
    p.zero_point = {T(z)};
    p.q_min = qmin;
    p.q_max = qmax;
    std::vector<T> xs, ey;
    std::vector<T> emask;
    for (long k = qmin - z - 3; k <= qmax - z + 2; ++k) {
      // tie k + 1/2 -> the even neighbour; then shift by z and clip
      const long r_half = tie_to_even(k) + z;
      const long c_half = std::min<long>(std::max<long>(r_half, qmin), qmax);
      xs.push_back(T(k + 0.5) * s);
      ey.push_back(T(c_half - z) * s);
      emask.push_back(r_half >= qmin && r_half <= qmax ? T(1) : T(0));
      // exact code k
      const long r = k + z, c = std::min<long>(std::max<long>(r, qmin), qmax);
      xs.push_back(T(k) * s);
      ey.push_back(T(c - z) * s);
      emask.push_back(r >= qmin && r <= qmax ? T(1) : T(0));
    }
    // just inside / beyond the edges: q_max * s and q_min * s (in code units after z)
    const T top = T(qmax - z) * s, bottom = T(qmin - z) * s;
    const T inf = std::numeric_limits<T>::infinity();
    for (const T v : {top, std::nextafter(top, inf), T(qmax - z + 0.49) * s, T(qmax - z + 0.51) * s,
                      T(qmax - z + 1) * s}) {
      xs.push_back(v);
      const bool in = v < T(qmax - z + 0.5) * s;
      ey.push_back(top);
      emask.push_back(in ? T(1) : T(0));
    }
    for (const T v : {bottom, std::nextafter(bottom, -inf), T(qmin - z - 0.49) * s, T(qmin - z - 0.51) * s,
                      T(qmin - z - 1) * s}) {
      xs.push_back(v);
      const bool in = v > T(qmin - z - 0.5) * s;
      ey.push_back(bottom);
      emask.push_back(in ? T(1) : T(0));
    }
    const auto n = static_cast<std::int64_t>(xs.size());
    auto x = autograd::parameter(tensor<T>::from(shape{n}, xs));
    autograd::tape<T> tp;
    auto y = q::fake_quant(tp, x, p);
    require_equal(y.value(), ey);
    tp.backward(y, tensor<T>::full(shape{n}, T(1)));
    require_equal(x.grad(), emask);
  }

  // the division is x * (1/s) (PyTorch), not x / s: find a value where the two round differently
  rng g(11);
  bool found = false;
  for (int it = 0; it < 2000000 && !found; ++it) {
    const T sc = static_cast<T>(g.uniform(0.01, 1.0));
    const long k = static_cast<long>(g.randint(-100, 99));
    const T xv = static_cast<T>((static_cast<double>(k) + 0.5) * static_cast<double>(sc));
    const T a = std::nearbyint(xv * (T(1) / sc)), b = std::nearbyint(xv / sc);
    if (a == b) continue;
    found = true;
    q::uniform_params<T> p;
    p.scale = {sc};
    p.zero_point = {T(0)};
    p.q_min = -1000;
    p.q_max = 1000;
    autograd::tape<T> tp;
    auto y = q::fake_quant(tp, tvar<T>(tensor<T>::from(shape{1}, {xv})), p);
    CHECK(y.value().flat(0) == a * sc);
    CHECK(y.value().flat(0) != b * sc);
  }
  CHECK(found);
}

TEMPLATE_TEST_CASE("uniform fake quantization of constant and all-zero tensors", "[quant][uniform]", float, double) {
  using T = TestType;
  const T eps = std::numeric_limits<float>::epsilon();
  for (const T c : {T(0.7), T(-0.7), T(0)}) {
    const auto x = tvar<T>(tensor<T>::full(shape{4, 6}, c));
    autograd::tape<T> tp;
    q::uniform<4, true> sym;
    q::uniform<4, true, q::per_channel> asym(q::observer_kind::current, q::mode::asymmetric);
    q::uniform<4, false> uns;
    const auto check = [&](const tvar<T>& y, const q::uniform_params<T>& p) {
      for (const T s : p.scale) {
        CHECK(std::isfinite(s));
        CHECK(s >= eps);
      }
      for (std::int64_t i = 0; i < y.value().numel(); ++i) {
        const T v = y.value().flat(i);
        REQUIRE(std::isfinite(v));
        // a constant lies on the range's end: within half a step (symmetric codes put M at
        // (q_max - q_min) / 2 = q_max + 1/2, which rounds to the clipped q_max + 1)
        if (c == T(0)) REQUIRE(v == T(0));
        else REQUIRE(std::abs(v - c) <= p.scale[0] / 2 * T(1 + 1e-5));
      }
    };
    auto ys = sym(tp, x);
    check(ys, sym.params<T>());
    auto ya = asym(tp, x);
    check(ya, asym.params<T>());
    auto yu = uns(tp, x);
    check(yu, uns.params<T>());
    if (c == T(0)) {
      CHECK(sym.params<T>().scale[0] == eps);
      CHECK(uns.params<T>().scale[0] == eps);
    }
  }
}

TEMPLATE_TEST_CASE("uniform quantization: NaN and Inf", "[quant][uniform]", float, double) {
  using T = TestType;
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  for (const T bad : {nan, inf, -inf})
  for (const std::int64_t pos : {5, 77}) {  // inside the vectorized lanes, and in a channel's tail
    auto xt = tensor<T>::full(shape{3, 40}, T(0.5));
    xt.flat(pos) = bad;
    q::uniform<8, true, q::per_channel> wq(q::observer_kind::current, q::mode::symmetric, 0.1, "conv3.weight");
    autograd::tape<T> tp;
    try {
      (void)wq(tp, tvar<T>(xt));
      FAIL("no exception");
    } catch (const numeric_error& e) {  // a value_error too
      const std::string msg = e.what();
      CHECK(msg.find("quant::observer::observe") != std::string::npos);
      CHECK(msg.find("conv3.weight") != std::string::npos);
      CHECK(msg.find("not finite") != std::string::npos);
    }
    CHECK_FALSE(wq.state().ready());  // state untouched
  }
  CHECK_THROWS_AS(q::make_uniform_params<T>({-nan}, {1.0}, -8, 7, q::mode::symmetric), value_error);
  CHECK_THROWS_AS(q::make_uniform_params<T>({0.0}, {inf}, 0, 15, q::mode::asymmetric), value_error);

  // explicit parameters: NaN propagates, +-Inf clip, and none of them gets a gradient
  q::uniform_params<T> p;
  p.scale = {T(0.5)};
  p.zero_point = {T(3)};
  p.q_min = 0;
  p.q_max = 15;
  auto x = autograd::parameter(tensor<T>::from(shape{4}, {nan, inf, -inf, T(1)}));
  autograd::tape<T> tp;
  auto y = q::fake_quant(tp, x, p);
  CHECK(std::isnan(y.value().flat(0)));
  CHECK(y.value().flat(1) == T(15 - 3) * T(0.5));
  CHECK(y.value().flat(2) == T(0 - 3) * T(0.5));
  CHECK(y.value().flat(3) == T(1));
  tp.backward(y, tensor<T>::full(shape{4}, T(1)));
  CHECK(x.grad().flat(0) == T(0));
  CHECK(x.grad().flat(1) == T(0));
  CHECK(x.grad().flat(2) == T(0));
  CHECK(x.grad().flat(3) == T(1));

  // invalid explicit parameters
  autograd::tape<T> t2;
  auto bad = p;
  bad.scale = {nan};
  CHECK_THROWS_AS(q::fake_quant(t2, x, bad), value_error);
  bad.scale = {T(0)};
  CHECK_THROWS_AS(q::fake_quant(t2, x, bad), value_error);
  bad.scale = {T(-1)};
  CHECK_THROWS_AS(q::fake_quant(t2, x, bad), value_error);
  bad = p;
  bad.zero_point = {T(2.5)};
  CHECK_THROWS_AS(q::fake_quant(t2, x, bad), value_error);
  bad.zero_point = {T(16)};
  CHECK_THROWS_AS(q::fake_quant(t2, x, bad), value_error);
  bad = p;
  bad.scale = {T(1), T(1)};
  bad.zero_point = {T(0), T(0)};
  CHECK_THROWS_AS(q::fake_quant(t2, x, bad), shape_error);  // 2 channels, x has 4 along axis 0
  bad.zero_point = {T(0)};
  CHECK_THROWS_AS(q::fake_quant(t2, x, bad), value_error);
  CHECK_THROWS_AS(q::make_uniform_params<T>({0.0}, {1.0}, 0, 15, q::mode::symmetric), value_error);
  using unsigned4 = q::uniform<4, false>;
  CHECK_THROWS_AS(unsigned4(q::observer_kind::current, q::mode::symmetric), value_error);
}

TEMPLATE_TEST_CASE("uniform fake quantization is idempotent and per-channel equals per-tensor per slice",
                   "[quant][uniform]", GHNQ_QUANT_CFGS) {
  using T = typename TestType::type;
  constexpr int kB = TestType::kBits;
  constexpr bool kS = TestType::kSigned;
  rng g(7 + kB);
  for (const q::mode m : {q::mode::asymmetric, q::mode::symmetric}) {
    if (!kS && m == q::mode::symmetric) continue;
    autograd::tape<T> tp;
    // idempotence with the same parameters
    const auto xt = test::random_tensor<T>({6, 50}, g, kS ? -2.0 : -0.3, 1.7);
    q::uniform<kB, kS, q::per_channel> qc(q::observer_kind::current, m);
    auto y1 = qc(tp, tvar<T>(xt));
    auto y2 = q::fake_quant(tp, y1, qc.template params<T>());
    require_equal(y2.value(), y1.value().to_vector());

    // single channel: per channel == per tensor, bit for bit
    const auto x1 = test::random_tensor<T>({1, 4, 5}, g, -1.0, 1.5);
    q::uniform<kB, kS, q::per_channel> pc(q::observer_kind::current, m);
    q::uniform<kB, kS, q::per_tensor> pt(q::observer_kind::current, m);
    auto a = pc(tp, tvar<T>(x1));
    auto b = pt(tp, tvar<T>(x1));
    CHECK(pc.template params<T>().scale == pt.template params<T>().scale);
    CHECK(pc.template params<T>().zero_point == pt.template params<T>().zero_point);
    require_equal(a.value(), b.value().to_vector());

    // several channels: channel c == the per-tensor quantization of slice c
    const auto y = qc(tp, tvar<T>(xt)).value();
    for (std::int64_t c = 0; c < 6; ++c) {
      q::uniform<kB, kS, q::per_tensor> slice_q(q::observer_kind::current, m);
      auto ys = slice_q(tp, tvar<T>(xt.select(c).clone()));
      require_equal(y.select(c).clone(), ys.value().to_vector());
    }
  }
}

TEST_CASE("observers: current, running min-max, moving average; widened to contain 0", "[quant][observer]") {
  using T = float;
  auto make = [](std::initializer_list<T> v) { return tensor<T>::from(shape{static_cast<std::int64_t>(v.size())}, v); };
  const auto x1 = make({-1.f, 0.5f, 2.f, 1.f}), x2 = make({-3.f, 1.f, 0.f, 0.5f});
  q::observer cur(q::observer_kind::current), mm(q::observer_kind::min_max),
      ma(q::observer_kind::moving_average, q::per_tensor, 0.25);
  CHECK_FALSE(cur.ready());
  for (auto* o : {&cur, &mm, &ma}) {
    o->observe(x1);
    o->observe(x2);
    CHECK(o->count() == 2);
  }
  CHECK(cur.lo()[0] == -3.0);
  CHECK(cur.hi()[0] == 1.0);
  CHECK(mm.lo()[0] == -3.0);
  CHECK(mm.hi()[0] == 2.0);
  CHECK(ma.lo()[0] == Approx(-1.0 + 0.25 * (-3.0 + 1.0)));
  CHECK(ma.hi()[0] == Approx(2.0 + 0.25 * (1.0 - 2.0)));
  ma.observe(x1);
  CHECK(ma.lo()[0] == Approx(-1.5 + 0.25 * (-1.0 + 1.5)));
  mm.reset();
  CHECK_FALSE(mm.ready());

  // a positive range is widened to [0, M]: unsigned z = 0, s = M / q_max; signed asymmetric z = q_min
  q::observer pos;
  pos.observe(make({0.5f, 2.f, 1.f}));
  auto pu = q::make_uniform_params<T>(pos.lo(), pos.hi(), 0, 255, q::mode::asymmetric);
  CHECK(pu.scale[0] == 2.f / 255.f);
  CHECK(pu.zero_point[0] == 0.f);
  auto ps = q::make_uniform_params<T>(pos.lo(), pos.hi(), -128, 127, q::mode::asymmetric);
  CHECK(ps.zero_point[0] == -128.f);
  // a negative range is widened to [m, 0]
  q::observer neg;
  neg.observe(make({-0.5f, -2.f}));
  auto pn = q::make_uniform_params<T>(neg.lo(), neg.hi(), -8, 7, q::mode::symmetric);
  CHECK(pn.scale[0] == 2.f / 7.5f);
  auto pa = q::make_uniform_params<T>(neg.lo(), neg.hi(), -8, 7, q::mode::asymmetric);
  CHECK(pa.scale[0] == 2.f / 15.f);
  CHECK(pa.zero_point[0] == 7.f);  // -8 - nearbyint(-2 / (2/15)) = 7

  // the zero point rounds half to even too: m / s = -2.5 exactly -> z = 0 - nearbyint(-2.5) = 2
  auto pt = q::make_uniform_params<T>({-0.625}, {3.125}, 0, 15, q::mode::asymmetric);
  CHECK(pt.scale[0] == 0.25f);
  CHECK(pt.zero_point[0] == 2.f);

  // the uniform quantizer only updates its observer when asked
  q::uniform<8, false> aq(q::observer_kind::moving_average, q::mode::asymmetric, 0.5);
  autograd::tape<T> tp;
  (void)aq(tp, tvar<T>(make({0.f, 4.f})));
  (void)aq(tp, tvar<T>(make({0.f, 2.f})));
  CHECK(aq.state().hi()[0] == Approx(3.0));
  (void)aq(tp, tvar<T>(make({0.f, 100.f})), /*update=*/false);
  CHECK(aq.state().hi()[0] == Approx(3.0));
  CHECK(aq.params<T>().scale[0] == Approx(3.0 / 255.0));

  // errors
  CHECK_THROWS_AS(q::observer(q::observer_kind::moving_average, q::per_tensor, 0.0), value_error);
  CHECK_THROWS_AS(q::observer(q::observer_kind::moving_average, q::per_tensor, 1.5), value_error);
  q::observer pc(q::observer_kind::min_max, q::per_channel);
  pc.observe(tensor<T>::zeros({3, 4}));
  CHECK_THROWS_AS(pc.observe(tensor<T>::zeros({2, 4})), shape_error);
  CHECK_THROWS_AS(pc.observe(tensor<T>()), value_error);
  CHECK_THROWS_AS(pc.observe(tensor<T>::zeros({3, 4}).transpose(0, 1)), shape_error);
  q::uniform<4> unobserved;
  CHECK_THROWS_AS(unobserved.params<T>(), value_error);

  // the range kernel against a naive loop: several chunks per channel and ragged tails
  rng g(3);
  for (const auto& sh : {shape{1, 100003}, shape{3, 40001}, shape{7, 5}}) {
    const auto x = test::random_tensor<T>(sh, g, -3.0, 2.0);
    q::observer o(q::observer_kind::current, q::per_channel);
    o.observe(x);
    std::vector<T> lo, hi;
    naive_range(x, sh[0], lo, hi);
    for (std::size_t c = 0; c < lo.size(); ++c) {
      CHECK(o.lo()[c] == lo[c]);
      CHECK(o.hi()[c] == hi[c]);
    }
  }
}

// =============================================================================================
// LSQ
// =============================================================================================

TEMPLATE_TEST_CASE("LSQ: forward, dv and ds (with the gradient scale) match the spec", "[quant][lsq]",
                   GHNQ_QUANT_CFGS) {
  using T = typename TestType::type;
  constexpr int kB = TestType::kBits;
  constexpr bool kS = TestType::kSigned;
  using Q = q::lsq<kB, kS>;
  constexpr int qn = Q::kQN, qp = Q::kQP;
  STATIC_REQUIRE(qn == -q::code_range<kB, kS>::kQMin);
  STATIC_REQUIRE(qp == q::code_range<kB, kS>::kQMax);
  rng g(40 + kB);
  for (const bool per_ch : {false, true}) {
    const shape sh{4, 6, 5};
    const std::int64_t C = per_ch ? 4 : 1, inner = sh.numel() / C;
    std::vector<T> sv;
    for (std::int64_t c = 0; c < C; ++c) sv.push_back(static_cast<T>(0.05 + 0.03 * static_cast<double>(c)));
    const double span = (qp + 1.5) * 0.15;  // beyond the range on both sides for every channel
    const auto xt = test::random_tensor<T>(sh, g, kS ? -span : -0.2 * span, span);
    auto x = param_of(xt);
    auto s = autograd::parameter(tensor<T>::from(shape{C}, sv));
    const auto g0x = test::random_tensor<T>(sh, g), g0s = test::random_tensor<T>({C}, g);
    x.grad().copy_from(g0x);
    s.grad().copy_from(g0s);
    autograd::tape<T> tp;
    auto y = Q{}(tp, x, s);  // weight role: N = numel / C
    const double gs = Q::grad_scale(inner);
    CHECK(gs == Approx(1.0 / std::sqrt(static_cast<double>(inner) * qp)));
    const auto dy = test::random_tensor<T>(sh, g);
    std::vector<T> ey(static_cast<std::size_t>(sh.numel())), edx(ey.size());
    std::vector<double> eds(static_cast<std::size_t>(C));
    for (std::int64_t c = 0; c < C; ++c) {
      const T st = sv[static_cast<std::size_t>(c)], inv = T(1) / st;
      double acc = 0;
      for (std::int64_t i = c * inner; i < (c + 1) * inner; ++i) {
        const T u = xt.flat(i) * inv;
        T cl = u;
        if (cl < T(-qn)) cl = T(-qn);
        if (cl > T(qp)) cl = T(qp);
        ey[static_cast<std::size_t>(i)] = std::nearbyint(cl) * st;
        const bool inside = T(-qn) < u && u < T(qp);
        edx[static_cast<std::size_t>(i)] = g0x.flat(i) + (inside ? dy.flat(i) : T(0));
        const T d = inside ? std::nearbyint(u) - u : (u <= T(-qn) ? T(-qn) : T(qp));
        acc += static_cast<double>(dy.flat(i) * d);
      }
      eds[static_cast<std::size_t>(c)] = static_cast<double>(g0s.flat(c)) + gs * acc;
    }
    require_equal(y.value(), ey);
    tp.backward(y, dy);
    require_equal(x.grad(), edx);
    require_near(s.grad(), eds, 1e-6, std::is_same_v<T, float> ? 1e-5 : 1e-12);
  }

  // boundaries: u == -Q_N and u == Q_P are outside (dv = 0, ds = -Q_N / Q_P); ties round to even
  {
    const T st = T(0.5);
    std::vector<T> xs = {T(-qn) * st, T(qp) * st, T(qp + 3) * st, T(-qn - 3) * st};
    for (long k = -qn; k < qp; ++k) xs.push_back(T(k + 0.5) * st);
    const auto n = static_cast<std::int64_t>(xs.size());
    auto x = autograd::parameter(tensor<T>::from(shape{n}, xs));
    auto s = autograd::parameter(tensor<T>::from(shape{1}, {st}));
    autograd::tape<T> tp;
    auto y = q::lsq_quant(tp, x, s, qn, qp, 1.0);
    tp.backward(y, tensor<T>::full(shape{n}, T(1)));
    CHECK(y.value().flat(0) == T(-qn) * st);
    CHECK(y.value().flat(1) == T(qp) * st);
    CHECK(y.value().flat(2) == T(qp) * st);
    CHECK(y.value().flat(3) == T(-qn) * st);
    for (int i = 0; i < 4; ++i) CHECK(x.grad().flat(i) == T(0));
    double ds = -qn + qp + qp - qn;
    for (long k = -qn; k < qp; ++k) {
      const auto i = static_cast<std::int64_t>(4 + (k + qn));
      CHECK(y.value().flat(i) == T(tie_to_even(k)) * st);
      CHECK(x.grad().flat(i) == T(1));
      ds += static_cast<double>(tie_to_even(k)) - (static_cast<double>(k) + 0.5);
    }
    CHECK(static_cast<double>(s.grad().flat(0)) == Approx(ds).margin(1e-6));
  }

  // LSQ init s0 = 2 mean|v| / sqrt(Q_P), per tensor and per channel
  {
    const auto vt = test::random_tensor<T>({3, 8}, g);
    autograd::tape<T> tp;
    auto s0 = Q::init_step(tp, tvar<T>(vt), q::per_channel);
    REQUIRE(s0.shape() == shape{3});
    for (std::int64_t c = 0; c < 3; ++c) {
      double m = 0;
      for (std::int64_t i = 0; i < 8; ++i) m += std::abs(static_cast<double>(vt(c, i)));
      CHECK(static_cast<double>(s0.value().flat(c)) == Approx(2.0 * m / 8.0 / std::sqrt(double(qp))).epsilon(1e-6));
    }
    auto s1 = Q::init_step(tp, tvar<T>(vt));
    REQUIRE(s1.shape() == shape{1});
  }
}

TEST_CASE("LSQ: the step gradient equals a finite difference of the surrogate", "[quant][lsq]") {
  // Surrogate (the function whose derivative LSQ's backward is): v_hat(s) = s * (clamp(v/s, -Q_N, Q_P) + c)
  // with c = nearbyint(clamp(v/s0)) - clamp(v/s0) frozen at s0. Central differences in s, away from
  // the clip boundaries, against the op's step gradient divided by its gradient scale.
  using T = double;
  rng g(5);
  for (const auto& [qn, qp] : {std::pair<int, int>{8, 7}, {0, 15}, {2, 1}, {1, 1}}) {
    for (const bool per_ch : {false, true}) {
      const std::int64_t C = per_ch ? 3 : 1, inner = 40;
      std::vector<T> sv = {0.11, 0.07, 0.16};
      sv.resize(static_cast<std::size_t>(C));
      tensor<T> xt({C, inner});
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t i = 0; i < inner; ++i) {
          double u;  // codes away from -Q_N and Q_P by at least 0.05
          do u = g.uniform(-qn - 2.0, qp + 2.0);
          while (std::abs(u + qn) < 0.05 || std::abs(u - qp) < 0.05);
          xt(c, i) = u * sv[static_cast<std::size_t>(c)];
        }
      const auto R = test::random_tensor<T>({C, inner}, g);
      const double gs = 0.37;
      auto s = autograd::parameter(tensor<T>::from(shape{C}, sv));
      autograd::tape<T> tp;
      auto y = q::lsq_quant(tp, tvar<T>(xt), s, qn, qp, gs);
      tp.backward(y, R);
      for (std::int64_t c = 0; c < C; ++c) {
        const T s0 = sv[static_cast<std::size_t>(c)];
        auto clampu = [&](T u) { return std::min<T>(std::max<T>(u, -qn), qp); };
        auto f = [&](T sc) {
          double acc = 0;
          for (std::int64_t i = 0; i < inner; ++i) {
            const T frozen = std::nearbyint(clampu(xt(c, i) / s0)) - clampu(xt(c, i) / s0);
            acc += R(c, i) * sc * (clampu(xt(c, i) / sc) + frozen);
          }
          return acc;
        };
        const double h = 1e-7;
        const double fd = (f(s0 + h) - f(s0 - h)) / (2 * h);
        CHECK(s.grad().flat(c) / gs == Approx(fd).epsilon(1e-6).margin(1e-7));
      }
    }
  }
}

TEST_CASE("LSQ: central differences where the op is smooth, and through an upstream step", "[quant][lsq]") {
  // Every code clipped: v_hat = -Q_N s or Q_P s, so d/ds is exact and d/dv = 0 matches the STE.
  rng g(9);
  const int qn = 4, qp = 3;
  tensor<double> xt({2, 6});
  for (std::int64_t i = 0; i < xt.numel(); ++i)
    xt.flat(i) = (g.bernoulli(0.5) ? 1.0 : -1.0) * g.uniform(0.6, 1.0);  // |x| / s >= 6 > Q
  auto x = autograd::parameter(xt.clone(), "x");
  auto s = autograd::parameter(tensor<double>::from(shape{2}, {0.1, 0.08}), "s");
  test::check_gradients(
      [&](test::dtape& tp, std::vector<test::dvar>& in) { return q::lsq_quant(tp, in[0], in[1], qn, qp, 1.0); },
      {x, s});
  auto s1 = autograd::parameter(tensor<double>::from(shape{1}, {0.1}), "s");
  test::check_gradients(
      [&](test::dtape& tp, std::vector<test::dvar>& in) { return q::lsq_quant(tp, in[0], in[1], qn, qp, 1.0); },
      {x, s1});
  // The GHN path: s = exp(log_factor) * 2 mean|w| / sqrt(Q_P); gradients reach log_factor and w.
  auto w = autograd::parameter(test::random_tensor<double>({2, 5}, g, 0.05, 0.1), "w");
  for (std::int64_t i = 0; i < w.value().numel(); i += 2) w.value().flat(i) *= -1;
  auto lf = autograd::parameter(tensor<double>::from(shape{2}, {0.1, -0.2}), "log_factor");
  auto xc = autograd::parameter(xt.clone(), "x");
  test::check_gradients(
      [&](test::dtape& tp, std::vector<test::dvar>& in) {
        auto st = q::mean_abs(tp, in[1], q::per_channel, 2.0 / std::sqrt(3.0));
        return q::lsq_quant(tp, in[0], q::exp_scale(tp, in[2], st), qn, qp, 1.0);
      },
      {xc, w, lf});
}

TEST_CASE("LSQ: roles, errors, step floor and thread-count independence", "[quant][lsq]") {
  using Q = q::lsq<4, false>;
  CHECK(Q::elements_per_step(shape{16, 3, 8, 8}, 1, q::lsq_role::activation) == 3 * 8 * 8);
  CHECK(Q::elements_per_step(shape{16, 3, 8, 8}, 1, q::lsq_role::weight) == 16 * 3 * 8 * 8);
  CHECK(Q::elements_per_step(shape{16, 3, 8, 8}, 16, q::lsq_role::weight) == 3 * 8 * 8);
  CHECK_THROWS_AS(Q::elements_per_step(shape{16, 3}, 16, q::lsq_role::activation), shape_error);
  CHECK(Q::grad_scale(100) == Approx(1.0 / std::sqrt(1500.0)));

  autograd::tape<float> tp;
  rng g(2);
  auto x = tvar<float>(test::random_tensor<float>({4, 10}, g));
  // a non-finite step (from non-finite activations or a diverged GHN's prediction) is a numeric_error
  // naming the op and the value, which evaluation scores as a non-finite network
  for (const float bad : {NAN, INFINITY, -INFINITY}) {
    INFO(bad);
    const auto sb = tvar<float>(tensor<float>::from(shape{2}, {0.1f, bad}));
    const auto x2 = tvar<float>(test::random_tensor<float>({2, 10}, g));
    CHECK_THROWS_AS(q::lsq_quant(tp, x, tvar<float>(tensor<float>::full({1}, bad)), 8, 7, 1.0), numeric_error);
    CHECK_THROWS_WITH(q::lsq_quant(tp, x2, sb, 8, 7, 1.0), Catch::Contains("quant::lsq_quant: 's'[1]") &&
                                                              Catch::Contains("is not finite"));
    CHECK_THROWS_AS(q::pact_quant(tp, x, tvar<float>(tensor<float>::full({1}, bad)), 4), numeric_error);
    rng ng(5);
    CHECK_THROWS_AS(q::noise_quant(tp, x2, sb, ng), numeric_error);
  }
  CHECK_THROWS_AS(q::lsq_quant(tp, x, tvar<float>(tensor<float>::full({3}, 0.1f)), 8, 7, 1.0), shape_error);
  CHECK_THROWS_AS(q::lsq_quant(tp, x, tvar<float>(tensor<float>::full({4, 1}, 0.1f)), 8, 7, 1.0), shape_error);
  CHECK_THROWS_AS(q::lsq_quant(tp, x, tvar<float>(tensor<float>::full({1}, 0.1f)), 8, 0, 1.0), value_error);
  CHECK_THROWS_AS(q::lsq_quant(tp, x, tvar<float>(tensor<float>::full({1}, 0.1f)), 8, 7, -1.0), value_error);
  // a step at or below zero is raised to kScaleEps
  auto yneg = q::lsq_quant(tp, x, tvar<float>(tensor<float>::full({1}, -0.5f)), 8, 7, 1.0);
  auto yeps = q::lsq_quant(tp, x, tvar<float>(tensor<float>::full({1}, float(q::kScaleEps))), 8, 7, 1.0);
  require_equal(yneg.value(), yeps.value().to_vector());

  // the step gradient is identical at 1 and 2 threads (fixed chunk grid, ordered partial sums)
  const auto big = test::random_tensor<float>({3, 150001}, g, -2.0, 2.0);
  const auto dy = test::random_tensor<float>({3, 150001}, g);
  auto run = [&]() {
    auto s = autograd::parameter(tensor<float>::from(shape{3}, {0.1f, 0.2f, 0.05f}));
    auto xx = autograd::parameter(big.clone());
    autograd::tape<float> t;
    auto y = q::lsq_quant(t, xx, s, 8, 7, 0.01);
    t.backward(y, dy);
    return std::make_pair(s.grad().to_vector(), y.value().to_vector());
  };
  std::pair<std::vector<float>, std::vector<float>> one, two;
  {
    thread_limit l(1);
    one = run();
  }
  {
    thread_limit l(2);
    two = run();
  }
  CHECK(one.first == two.first);
  CHECK(one.second == two.second);
}

// =============================================================================================
// PACT
// =============================================================================================

TEMPLATE_TEST_CASE_SIG("PACT: forward, d/dx and d/dalpha match the spec", "[quant][pact]", ((class T, int kB), T, kB),
                       (float, 1), (double, 1), (float, 2), (double, 2), (float, 3), (double, 3), (float, 4),
                       (double, 4), (float, 8), (double, 8)) {
  using P = q::pact<kB>;
  constexpr int L = P::kLevels;
  STATIC_REQUIRE(L == (1 << kB) - 1);
  rng g(60 + kB);
  const T av = T(0.9);
  const auto xt = test::random_tensor<T>({5, 41}, g, -0.5, 1.3);
  auto x = param_of(xt);
  auto alpha = autograd::parameter(tensor<T>::from(shape{1}, {av}));
  const auto g0x = test::random_tensor<T>(xt.shape(), g);
  x.grad().copy_from(g0x);
  alpha.grad().flat(0) = T(0.25);
  autograd::tape<T> tp;
  auto y = P{}(tp, x, alpha);
  const auto dy = test::random_tensor<T>(xt.shape(), g);
  std::vector<T> ey(static_cast<std::size_t>(xt.numel())), edx(ey.size());
  double da = 0.25;
  const T s = av / T(L), inv = T(1) / s;
  for (std::int64_t i = 0; i < xt.numel(); ++i) {
    T c = xt.flat(i);
    if (c < T(0)) c = T(0);
    if (c > av) c = av;
    ey[static_cast<std::size_t>(i)] = std::nearbyint(c * inv) * s;
    const bool in = xt.flat(i) >= T(0) && xt.flat(i) < av;
    edx[static_cast<std::size_t>(i)] = g0x.flat(i) + (in ? dy.flat(i) : T(0));
    if (xt.flat(i) >= av) da += static_cast<double>(dy.flat(i));
  }
  require_equal(y.value(), ey);
  tp.backward(y, dy);
  require_equal(x.grad(), edx);
  CHECK(static_cast<double>(alpha.grad().flat(0)) == Approx(da).epsilon(1e-5));

  // edges and ties: alpha = L / 4 gives s = 1/4 exactly
  {
    const T a2 = T(L) * T(0.25);
    std::vector<T> xs = {T(0), -std::numeric_limits<T>::denorm_min(), a2, std::nextafter(a2, T(0)), a2 + T(1)};
    for (long k = 0; k < std::min(L, 40); ++k) xs.push_back((T(k) + T(0.5)) * T(0.25));
    const auto n = static_cast<std::int64_t>(xs.size());
    auto xe = autograd::parameter(tensor<T>::from(shape{n}, xs));
    auto ae = autograd::parameter(tensor<T>::from(shape{1}, {a2}));
    autograd::tape<T> t2;
    auto ye = q::pact_quant(t2, xe, ae, kB);
    t2.backward(ye, tensor<T>::full(shape{n}, T(1)));
    CHECK(ye.value().flat(2) == a2);
    CHECK(ye.value().flat(4) == a2);
    CHECK(xe.grad().flat(0) == T(1));  // 0 <= x
    CHECK(xe.grad().flat(1) == T(0));  // x < 0
    CHECK(xe.grad().flat(2) == T(0));  // x == alpha is clipped
    CHECK(xe.grad().flat(3) == T(1));  // just below alpha
    CHECK(xe.grad().flat(4) == T(0));
    CHECK(ae.grad().flat(0) == T(2));  // x == alpha and x > alpha
    for (long k = 0; k < std::min(L, 40); ++k)
      CHECK(ye.value().flat(5 + k) == T(std::min<long>(tie_to_even(k), L)) * T(0.25));
  }
}

TEST_CASE("PACT: central differences in the clipped regions, errors", "[quant][pact]") {
  rng g(4);
  tensor<double> xt({3, 7});
  for (std::int64_t i = 0; i < xt.numel(); ++i)
    xt.flat(i) = g.bernoulli(0.5) ? g.uniform(-1.0, -0.1) : g.uniform(1.1, 2.0);
  auto x = autograd::parameter(xt, "x");
  auto alpha = autograd::parameter(tensor<double>::from(shape{1}, {0.9}), "alpha");
  for (int bits : {1, 2, 4, 8})
    test::check_gradients(
        [&](test::dtape& tp, std::vector<test::dvar>& in) { return q::pact_quant(tp, in[0], in[1], bits); },
        {x, alpha});
  autograd::tape<double> tp;
  CHECK_THROWS_AS(q::pact_quant(tp, x, alpha, 0), value_error);
  CHECK_THROWS_AS(q::pact_quant(tp, x, alpha, 17), value_error);
  CHECK_THROWS_AS(q::pact_quant(tp, x, tvar<double>(tensor<double>::full({2}, 1.0)), 4), shape_error);
  CHECK_THROWS_AS(q::pact_quant(tp, x, tvar<double>(tensor<double>::full({1}, INFINITY)), 4), value_error);
}

// =============================================================================================
// binary / ternary
// =============================================================================================

TEMPLATE_TEST_CASE("binary: sign(w) * mean|w| per tensor and per channel, surrogate gradients", "[quant][extreme]",
                   float, double) {
  using T = TestType;
  rng g(21);
  for (const q::granularity gr : {q::per_tensor, q::per_channel}) {
    const shape sh{3, 16};
    auto wt = test::random_tensor<T>(sh, g);
    wt.flat(5) = T(0);
    wt.flat(20) = T(0);
    const std::int64_t C = gr == q::per_channel ? 3 : 1, inner = sh.numel() / C;
    std::vector<double> mean(static_cast<std::size_t>(C), 0.0);
    for (std::int64_t i = 0; i < sh.numel(); ++i)
      mean[static_cast<std::size_t>(i / inner)] += std::abs(double(wt.flat(i)));
    for (auto& m : mean) m /= static_cast<double>(inner);

    // statistic form
    auto w = param_of(wt);
    const auto g0 = test::random_tensor<T>(sh, g);
    w.grad().copy_from(g0);
    autograd::tape<T> tp;
    auto y = gr == q::per_channel ? q::binary<q::per_channel>{}(tp, w) : q::binary<q::per_tensor>{}(tp, w);
    const auto dy = test::random_tensor<T>(sh, g);
    std::vector<double> ey(static_cast<std::size_t>(sh.numel())), edw(ey.size());
    std::vector<double> ds(static_cast<std::size_t>(C), 0.0);
    for (std::int64_t i = 0; i < sh.numel(); ++i) {
      const auto c = static_cast<std::size_t>(i / inner);
      const double v = wt.flat(i), m = mean[c];
      ey[static_cast<std::size_t>(i)] = v < 0 ? -m : m;  // sign(0) = +1
      const double sg = v < 0 ? -1 : 1, u = v / m;
      const bool inside = std::abs(u) < 1;
      ds[c] += double(dy.flat(i)) * (inside ? sg - u : sg);
    }
    for (std::int64_t i = 0; i < sh.numel(); ++i) {
      const auto c = static_cast<std::size_t>(i / inner);
      const double v = wt.flat(i);
      const bool inside = std::abs(v / mean[c]) < 1;
      const double sgn0 = v > 0 ? 1 : (v < 0 ? -1 : 0);  // d mean|w| / d w
      edw[static_cast<std::size_t>(i)] =
          double(g0.flat(i)) + (inside ? double(dy.flat(i)) : 0.0) + ds[c] * sgn0 / static_cast<double>(inner);
    }
    const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
    require_near(y.value(), ey, tol, tol);
    tp.backward(y, dy);
    require_near(w.grad(), edw, 10 * tol, 10 * tol);

    // step-var form: ds scaled by g = 1 / sqrt(elements per step)
    std::vector<T> sv;
    for (std::int64_t c = 0; c < C; ++c) sv.push_back(T(0.3 + 0.1 * double(c)));
    auto s = autograd::parameter(tensor<T>::from(shape{C}, sv));
    auto w2 = param_of(wt);
    autograd::tape<T> t2;
    auto y2 = gr == q::per_channel ? q::binary<q::per_channel>{}(t2, w2, s) : q::binary<q::per_tensor>{}(t2, w2, s);
    t2.backward(y2, dy);
    const double gs = 1.0 / std::sqrt(static_cast<double>(inner));
    std::vector<double> eds(static_cast<std::size_t>(C), 0.0);
    for (std::int64_t i = 0; i < sh.numel(); ++i) {
      const auto c = static_cast<std::size_t>(i / inner);
      const double v = wt.flat(i), st = sv[c], u = static_cast<double>(wt.flat(i) * (T(1) / sv[c]));
      const bool inside = std::abs(u) < 1;
      REQUIRE(double(y2.value().flat(i)) == (v < 0 ? -st : st));
      REQUIRE(double(w2.grad().flat(i)) == (inside ? double(dy.flat(i)) : 0.0));
      eds[c] += gs * double(dy.flat(i)) * ((v < 0 ? -1.0 : 1.0) - (inside ? u : 0.0));
    }
    require_near(s.grad(), eds, tol, tol);
  }
}

TEST_CASE("binary: statistic-form gradient equals a finite difference of the surrogate; mean_abs gradients",
          "[quant][extreme]") {
  // Surrogate: y_i(w) = s(w) * (clamp(w_i / s(w), -1, 1) + c_i), s = mean|w|, c_i frozen at w0.
  rng g(8);
  const std::int64_t n = 12;
  tensor<double> wt({n});
  for (std::int64_t i = 0; i < n; ++i) {
    double v;
    do v = g.uniform(-1.0, 1.0);
    while (std::abs(v) < 0.05);
    wt.flat(i) = v;
  }
  const auto R = test::random_tensor<double>({n}, g);
  auto w = autograd::parameter(wt.clone());
  autograd::tape<double> tp;
  auto y = q::binary_quant(tp, w, q::per_tensor);
  tp.backward(y, R);
  auto mean_abs = [&](const tensor<double>& v) {
    double m = 0;
    for (std::int64_t i = 0; i < n; ++i) m += std::abs(v.flat(i));
    return m / double(n);
  };
  const double s0 = mean_abs(wt);
  std::vector<double> frozen(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const double u = std::clamp(wt.flat(i) / s0, -1.0, 1.0);
    REQUIRE(std::abs(std::abs(wt.flat(i) / s0) - 1.0) > 1e-3);  // away from the clip edge
    frozen[static_cast<std::size_t>(i)] = (wt.flat(i) < 0 ? -1.0 : 1.0) - u;
  }
  auto f = [&](const tensor<double>& v) {
    const double s = mean_abs(v);
    double acc = 0;
    for (std::int64_t i = 0; i < n; ++i)
      acc += R.flat(i) * s * (std::clamp(v.flat(i) / s, -1.0, 1.0) + frozen[static_cast<std::size_t>(i)]);
    return acc;
  };
  for (std::int64_t i = 0; i < n; ++i) {
    auto wp = wt.clone(), wm = wt.clone();
    wp.flat(i) += 1e-7;
    wm.flat(i) -= 1e-7;
    const double fd = (f(wp) - f(wm)) / 2e-7;
    CHECK(w.grad().flat(i) == Approx(fd).epsilon(1e-6).margin(1e-7));
  }

  // mean_abs and exp_scale are smooth away from 0: true central differences
  auto x = autograd::parameter(wt.reshape({3, 4}).clone(), "x");
  for (const q::granularity gr : {q::per_tensor, q::per_channel})
    test::check_gradients(
        [&](test::dtape& t, std::vector<test::dvar>& in) { return q::mean_abs(t, in[0], gr, 1.7); }, {x});
  auto lf = autograd::parameter(tensor<double>::from(shape{1}, {0.3}), "lf");
  auto st = autograd::parameter(tensor<double>::from(shape{3}, {0.5, 1.5, 0.2}), "stat");
  test::check_gradients(
      [&](test::dtape& t, std::vector<test::dvar>& in) { return q::exp_scale(t, in[0], in[1]); }, {lf, st});
  test::check_gradients(
      [&](test::dtape& t, std::vector<test::dvar>& in) { return q::exp_scale(t, in[1], in[0]); }, {lf, st});
  autograd::tape<double> t3;
  CHECK_THROWS_AS(q::exp_scale(t3, st, tvar<double>(tensor<double>::full({2}, 1.0))), shape_error);
  CHECK_THROWS_AS(q::mean_abs(t3, tvar<double>(tensor<double>::zeros({0, 3}))), value_error);
}

TEMPLATE_TEST_CASE("ternary: levels {-s, 0, s}, s = 1.4 mean|w|, LSQ gradients with Q_N = Q_P = 1", "[quant][extreme]",
                   float, double) {
  using T = TestType;
  rng g(31);
  const auto wt = test::random_tensor<T>({4, 25}, g);
  autograd::tape<T> tp;
  auto w = param_of(wt);
  auto y = q::ternary<q::per_channel>{}(tp, w);
  auto stat = q::mean_abs(tp, tvar<T>(wt), q::per_channel, 1.4);
  for (std::int64_t c = 0; c < 4; ++c) {
    const T s = stat.value().flat(c);
    double m = 0;
    for (std::int64_t i = 0; i < 25; ++i) m += std::abs(double(wt(c, i)));
    CHECK(double(s) == Approx(1.4 * m / 25).epsilon(1e-6));
    int zeros = 0;
    for (std::int64_t i = 0; i < 25; ++i) {
      const T v = y.value()(c, i);
      REQUIRE((v == T(0) || v == s || v == -s));
      REQUIRE(v == std::nearbyint(std::clamp(wt(c, i) * (T(1) / s), T(-1), T(1))) * s);
      zeros += v == T(0);
    }
    CHECK(zeros > 0);
    CHECK(zeros < 25);
  }
  // step-var form == lsq_quant with Q_N = Q_P = 1 and g = 1 / sqrt(N)
  const auto dy = test::random_tensor<T>(wt.shape(), g);
  auto s1 = autograd::parameter(tensor<T>::from(shape{1}, {T(0.8)}));
  auto s2 = autograd::parameter(tensor<T>::from(shape{1}, {T(0.8)}));
  auto w1 = param_of(wt), w2 = param_of(wt);
  autograd::tape<T> t1, t2;
  auto a = q::ternary<>{}(t1, w1, s1);
  auto b = q::lsq_quant(t2, w2, s2, 1, 1, 1.0 / std::sqrt(100.0));
  t1.backward(a, dy);
  t2.backward(b, dy);
  require_equal(a.value(), b.value().to_vector());
  require_equal(w1.grad(), w2.grad().to_vector());
  require_equal(s1.grad(), s2.grad().to_vector());
  STATIC_REQUIRE(q::ternary<>::kQMin == -1);
  STATIC_REQUIRE(q::binary<>::kBits == 1);
}

// =============================================================================================
// noise
// =============================================================================================

TEMPLATE_TEST_CASE("noise: x + s u with u ~ U(-1/2, 1/2), seeded, thread-count independent, gradients",
                   "[quant][noise]", float, double) {
  using T = TestType;
  rng g0(13);
  const shape sh{3, 50000};
  const auto xt = test::random_tensor<T>(sh, g0);
  const std::vector<T> sv = {T(0.5), T(0.25), T(2)};
  auto run = [&](std::uint64_t seed) {
    rng g(seed);
    autograd::tape<T> tp;
    auto y = q::noise_quant(tp, tvar<T>(xt), tvar<T>(tensor<T>::from(shape{3}, sv)), g);
    return y.value().to_vector();
  };
  const auto y = run(99);
  for (std::int64_t c = 0; c < 3; ++c) {
    double sum = 0, sq = 0;
    for (std::int64_t i = 0; i < sh[1]; ++i) {
      const auto k = static_cast<std::size_t>(c * sh[1] + i);
      const double u = (double(y[k]) - double(xt.flat(c * sh[1] + i))) / double(sv[static_cast<std::size_t>(c)]);
      REQUIRE(std::abs(u) <= 0.5 + 1e-5);
      sum += u;
      sq += u * u;
    }
    CHECK(std::abs(sum / double(sh[1])) < 0.006);
    CHECK(sq / double(sh[1]) == Approx(1.0 / 12.0).epsilon(0.03));
  }
  CHECK(run(99) == y);
  CHECK(run(100) != y);
  {
    thread_limit one(1);
    CHECK(run(99) == y);
  }
  // one draw of the caller's generator
  rng a(5), b(5);
  autograd::tape<T> tp;
  q::uniform_params<T> p;
  p.scale = {T(0.1)};
  p.zero_point = {T(0)};
  p.q_min = -8;
  p.q_max = 7;
  (void)q::noise_quant(tp, tvar<T>(xt), p, a);
  (void)b.next();
  CHECK(a.next() == b.next());
  CHECK_THROWS_AS(q::noise_quant(tp, tvar<T>(xt), tvar<T>(tensor<T>::full({2}, T(1))), a), shape_error);
  CHECK_THROWS_AS(q::noise_quant(tp, tvar<T>(xt), tvar<T>(tensor<T>::full({1}, T(NAN))), a), value_error);

  // identity gradient in x (accumulated)
  auto x = param_of(xt);
  const auto gx = test::random_tensor<T>(sh, g0), dy = test::random_tensor<T>(sh, g0);
  x.grad().copy_from(gx);
  rng gn(1);
  autograd::tape<T> t2;
  auto yn = q::noise_quant(t2, x, p, gn);
  t2.backward(yn, dy);
  std::vector<T> e(static_cast<std::size_t>(sh.numel()));
  for (std::int64_t i = 0; i < sh.numel(); ++i) e[static_cast<std::size_t>(i)] = gx.flat(i) + dy.flat(i);
  require_equal(x.grad(), e);
}

TEST_CASE("noise: central differences in x and the step", "[quant][noise]") {
  rng g(3);
  auto x = autograd::parameter(test::random_tensor<double>({3, 5}, g), "x");
  auto s = autograd::parameter(tensor<double>::from(shape{3}, {0.2, 0.1, 0.4}), "s");
  auto s1 = autograd::parameter(tensor<double>::from(shape{1}, {0.3}), "s");
  for (const auto& sv : {s, s1})
    test::check_gradients(
        [&](test::dtape& tp, std::vector<test::dvar>& in) {
          rng gg(77);  // the same noise at every evaluation
          return q::noise_quant(tp, in[0], in[1], gg);
        },
        {x, sv});
}

// =============================================================================================
// bit-widths
// =============================================================================================

TEST_CASE("dispatch_bits maps run-time bit-widths to compile-time constants", "[quant][dispatch]") {
  for (const int b : {1, 2, 3, 4, 5, 6, 7, 8, 16})
    CHECK(q::dispatch_bits(b, [](auto c) { return decltype(c)::value; }) == b);
  for (const int b : {0, 9, 17, -1, 32}) {
    try {
      (void)q::dispatch_bits(b, [](auto c) { return decltype(c)::value; });
      FAIL("no exception for " << b);
    } catch (const value_error& e) {
      const std::string msg = e.what();
      CHECK(msg.find("bit-width " + std::to_string(b)) != std::string::npos);
      CHECK(msg.find("{1, 2, 3, 4, 5, 6, 7, 8, 16}") != std::string::npos);
    }
  }
  // signed quantizers need a set without 1
  CHECK(q::dispatch_bits(q::signed_bits{}, 4, [](auto c) { return q::lsq<decltype(c)::value>::kQP; }) == 7);
  CHECK(q::dispatch_bits(q::signed_bits{}, 8, [](auto c) { return q::uniform<decltype(c)::value>::kQMin; }) == -128);
  CHECK_THROWS_AS(q::dispatch_bits(q::signed_bits{}, 1, [](auto c) { return decltype(c)::value; }), value_error);
  CHECK(q::dispatch_bits(q::bit_set<3, 5>{}, 5, [](auto c) { return q::pact<decltype(c)::value>::kLevels; }) == 31);
  int seen = 0;
  q::dispatch_bits(2, [&](auto c) { seen = decltype(c)::value; });  // void result
  CHECK(seen == 2);
  CHECK(q::supported_bits::contains(16));
  CHECK_FALSE(q::supported_bits::contains(12));

  // ranges and the quantizer trait (compile time)
  STATIC_REQUIRE(q::code_range<1, false>::kQMax == 1);
  STATIC_REQUIRE(q::code_range<2, true>::kQMin == -2);
  STATIC_REQUIRE(q::code_range<8, false>::kQMax == 255);
  STATIC_REQUIRE(q::code_range<16, true>::kQMin == -32768);
  STATIC_REQUIRE(q::is_quantizer_v<q::uniform<4>>);
  STATIC_REQUIRE(q::is_quantizer_v<q::lsq<2, true>>);
  STATIC_REQUIRE(q::is_quantizer_v<q::pact<1>>);
  STATIC_REQUIRE(q::is_quantizer_v<q::binary<>>);
  STATIC_REQUIRE_FALSE(q::is_quantizer_v<int>);
  STATIC_REQUIRE_FALSE(q::valid_bits_v<1, true>);
  STATIC_REQUIRE(q::valid_bits_v<1, false>);
  STATIC_REQUIRE_FALSE(q::valid_bits_v<17, false>);
  CHECK(q::code_limits(3, true) == std::pair<int, int>{-4, 3});
  CHECK_THROWS_AS(q::code_limits(1, true), value_error);
  CHECK_THROWS_AS(q::code_limits(0, false), value_error);
}
