// Test support: random tensors, closeness checks and central-difference gradient checks.
#pragma once
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <vector>

#include "ghnq/autograd/tape.hpp"
#include "ghnq/core/rng.hpp"

namespace ghnq::test {

template <class T>
tensor<T> random_tensor(const shape& s, rng& g, double lo = -1.0, double hi = 1.0) {
  tensor<T> t(s);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.flat(i) = static_cast<T>(g.uniform(lo, hi));
  return t;
}

/// Every element of a and b within atol + rtol * max(|a|, |b|).
template <class T>
void require_close(const tensor<T>& a, const tensor<T>& b, double atol, double rtol = 0.0) {
  REQUIRE(a.shape() == b.shape());
  auto ac = a.contiguous();
  auto bc = b.contiguous();
  double worst = 0.0;
  std::int64_t where = -1;
  for (std::int64_t i = 0; i < ac.numel(); ++i) {
    const double x = static_cast<double>(ac.flat(i)), y = static_cast<double>(bc.flat(i));
    const double excess = std::abs(x - y) - (atol + rtol * std::max(std::abs(x), std::abs(y)));
    if (!(excess <= worst)) {  // also catches NaN
      worst = std::isnan(excess) ? INFINITY : excess;
      where = i;
    }
  }
  INFO("first worst element " << where << ": " << (where >= 0 ? ac.flat(where) : T(0)) << " vs "
                              << (where >= 0 ? bc.flat(where) : T(0)));
  REQUIRE(where == -1);
}

using dvar = autograd::var<double>;
using dtape = autograd::tape<double>;
using graph_fn = std::function<dvar(dtape&, std::vector<dvar>&)>;

/// Central-difference check of d(sum(R * f(inputs)))/d(input) for every input that requires a
/// gradient, with R a fixed random seed tensor. Analytic gradients come from the tape. Gradient
/// buffers start at random values G0 so that an op overwriting instead of accumulating fails;
/// inputs that do not require a gradient must not receive one.
inline void check_gradients(const graph_fn& f, std::vector<dvar> inputs, double eps = 1e-6,
                            double atol = 1e-6, double rtol = 1e-5, std::uint64_t seed = 7) {
  rng g(seed);
  std::vector<tensor<double>> g0(inputs.size());
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    inputs[k].reset_grad();
    if (inputs[k].requires_grad()) {
      g0[k] = random_tensor<double>(inputs[k].shape(), g);
      inputs[k].grad().copy_from(g0[k]);
    }
  }
  dtape tp;
  auto y = f(tp, inputs);
  REQUIRE(y.requires_grad());
  const auto R = random_tensor<double>(y.shape(), g);
  tp.backward(y, R);
  for (auto& v : inputs)
    if (!v.requires_grad()) REQUIRE_FALSE(v.has_grad());

  auto loss = [&]() {
    dtape t2;
    t2.set_recording(false);
    auto out = f(t2, inputs);
    double s = 0.0;
    for (std::int64_t i = 0; i < out.value().numel(); ++i) s += R.flat(i) * out.value().flat(i);
    return s;
  };
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    auto& v = inputs[k];
    if (!v.requires_grad()) continue;
    REQUIRE(v.has_grad());
    auto& x = v.value();
    for (std::int64_t i = 0; i < x.numel(); ++i) {
      const double x0 = x.flat(i);
      x.flat(i) = x0 + eps;
      const double lp = loss();
      x.flat(i) = x0 - eps;
      const double lm = loss();
      x.flat(i) = x0;
      const double numeric = (lp - lm) / (2 * eps);
      const double analytic = v.grad().flat(i) - g0[k].flat(i);
      INFO("input " << k << " (" << v.name() << ") element " << i << ": analytic " << analytic << ", numeric "
                    << numeric);
      REQUIRE(std::abs(analytic - numeric) <= atol + rtol * std::max(std::abs(analytic), std::abs(numeric)));
    }
  }
}

}  // namespace ghnq::test
