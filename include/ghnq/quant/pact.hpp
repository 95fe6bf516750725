/// \file
/// \brief PACT (Choi et al., 2018): a learned clip alpha replaces ReLU before unsigned b-bit
///        quantization; alpha is an autograd var produced upstream (a parameter or the GHN).
///
/// Formulas (spec, normative; L = 2^b - 1 levels):
///   y = clamp(x, 0, alpha),  s = alpha / L,  y_q = nearbyint(y * (1/s)) * s
///   d y_q / d x     = 1 for 0 <= x < alpha, else 0
///   d y_q / d alpha = 1 for x >= alpha, else 0     (summed over the tensor: alpha is one value)
/// alpha must be finite; values below kScaleEps are raised to it (the gradient passes unchanged).
/// The L2 penalty on alpha the paper uses is left to the training loss.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "ghnq/backend/cpu/quant.hpp"
#include "ghnq/quant/common.hpp"

namespace ghnq::quant {

/// PACT activation quantization with run-time bit-width `bits` in [1, 16] (value_error otherwise);
/// alpha: a scalar or [1] var. Applies the ReLU itself (use it in place of relu).
/// \code
/// auto alpha = ghnq::autograd::parameter(ghnq::tensor<float>::full({1}, 10.f));
/// auto a_q = ghnq::quant::pact_quant(tp, pre_activation, alpha, 4);
/// \endcode
template <class T, class B>
var<T, B> pact_quant(tape<T, B>& tp, const var<T, B>& x, const var<T, B>& alpha, int bits) {
  detail::require_contiguous(x, "quant::pact_quant", "x");
  GHNQ_CHECK(bits >= 1 && bits <= kMaxBits, value_error, "quant::pact_quant: bit-width ", bits,
             " is outside [1, 16]");
  const auto a = detail::effective_steps(alpha, "quant::pact_quant", "alpha");
  GHNQ_CHECK(a.size() == 1, shape_error, "quant::pact_quant: alpha must hold one value, got shape ", alpha.shape());
  using K = backend::impl<B, backend::op::pact_quant>;
  const T av = a[0], levels = static_cast<T>((1 << bits) - 1);
  const std::int64_t n = x.value().numel();
  tensor<T, B> y(x.shape());
  K::forward(x.value().data(), y.data(), n, av, levels);
  const bool tracked = tp.needs(x, alpha);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([x, alpha, out, n, av, levels]() {
      if (!out.has_grad()) return;
      std::vector<double> da(1, 0.0);
      K::backward(x.value().data(), out.grad().data(), x.requires_grad() ? x.grad().data() : nullptr,
                  alpha.requires_grad() ? da.data() : nullptr, n, av, levels);
      if (alpha.requires_grad()) detail::add_to_grad(alpha, da, 1.0);
    });
  }
  return out;
}

/// PACT quantizer type (stateless: alpha is an input var).
/// \tparam tBits bit-width of the unsigned codes, 1..16 (static_assert).
/// \code
/// auto a_q = ghnq::quant::pact<4>{}(tp, pre_activation, alpha);
/// \endcode
template <int tBits>
struct pact {
  static_assert(valid_bits_v<tBits, false>, "ghnq::quant::pact: bit-width must be in [1, 16]");
  static constexpr int kBits = tBits;
  static constexpr bool kSigned = false;
  static constexpr int kQMin = 0;
  static constexpr int kQMax = (1 << tBits) - 1;
  static constexpr int kLevels = kQMax;
  /// The paper's initial clip (the spec: "about 6 to 10").
  static constexpr double kInitAlpha = 10.0;

  template <class T, class B>
  static var<T, B> quantize(tape<T, B>& tp, const var<T, B>& x, const var<T, B>& alpha) {
    return pact_quant(tp, x, alpha, tBits);
  }
  template <class T, class B>
  var<T, B> operator()(tape<T, B>& tp, const var<T, B>& x, const var<T, B>& alpha) const {
    return pact_quant(tp, x, alpha, tBits);
  }
};

}  // namespace ghnq::quant
