/// \file
/// \brief Extreme bit-widths: binary (levels {-s, +s}) and ternary (levels {-s, 0, s}) weight
///        quantizers, with a learned / predicted step var or with a step from mean |w|.
///
/// Binary: y = s_c * sign(w), sign(0) = +1 (two levels, never 0). With s = mean|w| (per tensor
/// or per channel) this is XNOR-Net's / the spec's sign(w) * mean|w|. Gradients use the LSQ-style
/// surrogate y = s * sign_ste(w / s) with sign_ste' = 1 on (-1, 1):
///   d y / d w = 1 where |w| < s, else 0          (the clipped STE in units of s)
///   d y / d s = sign(w) - w / s where |w| < s, sign(w) elsewhere   (times grad_scale)
/// Ternary: LSQ with the restricted range Q_N = Q_P = 1 (spec: "{-1,0,1}·s (restricted range)"):
///   y = nearbyint(clamp(w / s, -1, 1)) * s, gradients of lsq.hpp with Q_N = Q_P = 1.
/// The statistic forms (no step argument) compute s as a differentiable statistic of w, so the
/// gradient to w also contains the path through s:
///   binary:  s = mean|w|                            (d s / d w_i = sign(w_i) / n)
///   ternary: s = kTernaryFactor * mean|w| = 1.4 mean|w| (threshold s/2 = 0.7 mean|w|, the TWN
///            threshold of Li et al. 2016; the level 1.4 mean|w| is close to TWN's optimal level
///            for Gaussian weights, about 1.48 mean|w|)
/// and pass grad_scale = 1 (the exact chain rule through the statistic).
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "ghnq/backend/cpu/quant.hpp"
#include "ghnq/quant/common.hpp"
#include "ghnq/quant/lsq.hpp"
#include "ghnq/quant/statistic.hpp"

namespace ghnq::quant {

/// s = kTernaryFactor * mean|w| in the statistic form of ternary quantization.
inline constexpr double kTernaryFactor = 1.4;

/// Binary quantization y = s_c * sign(w) (sign(0) = +1) with step var s (scalar, [1] or [C] with
/// C = w.dim(0); finite, raised to kScaleEps) and the surrogate gradients of the file comment;
/// the step gradient is multiplied by grad_scale (LSQ's rule with Q_P = 1: 1 / sqrt(N)).
/// \code
/// auto w_b = ghnq::quant::binary_quant(tp, w, s, 1.0 / std::sqrt(double(w.value().numel())));
/// \endcode
template <class T, class B>
var<T, B> binary_quant(tape<T, B>& tp, const var<T, B>& w, const var<T, B>& s, double grad_scale) {
  detail::require_contiguous(w, "quant::binary_quant", "w");
  GHNQ_CHECK(std::isfinite(grad_scale) && grad_scale >= 0.0, value_error, "quant::binary_quant: gradient scale ",
             grad_scale, " is not finite and non-negative");
  auto step = detail::effective_steps(s, "quant::binary_quant", "s");
  const auto [channels, inner] =
      detail::channel_layout(w, static_cast<std::int64_t>(step.size()), "quant::binary_quant", "s");
  using K = backend::impl<B, backend::op::binary_quant>;
  tensor<T, B> y(w.shape());
  K::forward(w.value().data(), y.data(), channels, inner, step.data());
  const bool tracked = tp.needs(w, s);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([w, s, out, channels = channels, inner = inner, step, grad_scale]() {
      if (!out.has_grad()) return;
      std::vector<double> ds(s.requires_grad() ? step.size() : 0, 0.0);
      K::backward(w.value().data(), out.grad().data(), w.requires_grad() ? w.grad().data() : nullptr,
                  s.requires_grad() ? ds.data() : nullptr, channels, inner, step.data());
      if (s.requires_grad()) detail::add_to_grad(s, ds, grad_scale);
    });
  }
  return out;
}

/// Binary quantization with s = mean|w| per tensor or per channel (sign(w) * mean|w|), gradients
/// through the statistic included (file comment).
/// \code
/// auto w_b = ghnq::quant::binary_quant(tp, w, ghnq::quant::per_channel);
/// \endcode
template <class T, class B>
var<T, B> binary_quant(tape<T, B>& tp, const var<T, B>& w, granularity g = per_tensor) {
  return binary_quant(tp, w, mean_abs(tp, w, g, 1.0), 1.0);
}

/// Ternary quantization y = nearbyint(clamp(w / s, -1, 1)) * s with step var s: lsq_quant with
/// Q_N = Q_P = 1 (gradients of lsq.hpp, the step gradient times grad_scale).
/// \code
/// auto w_t = ghnq::quant::ternary_quant(tp, w, s, 1.0 / std::sqrt(double(w.value().numel())));
/// \endcode
template <class T, class B>
var<T, B> ternary_quant(tape<T, B>& tp, const var<T, B>& w, const var<T, B>& s, double grad_scale) {
  return lsq_quant(tp, w, s, 1, 1, grad_scale);
}

/// Ternary quantization with s = kTernaryFactor * mean|w| per tensor or per channel, gradients
/// through the statistic included.
/// \code
/// auto w_t = ghnq::quant::ternary_quant(tp, w, ghnq::quant::per_channel);
/// \endcode
template <class T, class B>
var<T, B> ternary_quant(tape<T, B>& tp, const var<T, B>& w, granularity g = per_tensor) {
  return lsq_quant(tp, w, mean_abs(tp, w, g, kTernaryFactor), 1, 1, 1.0);
}

/// Binary weight quantizer type (kBits = 1, levels {-s, +s}).
/// \tparam tGranularity per_tensor or per_channel (axis 0) for the statistic form.
/// \code
/// using bq = ghnq::quant::binary<ghnq::quant::per_channel>;
/// auto w_b  = bq{}(tp, w);         // s = mean|w| per channel
/// auto w_b2 = bq{}(tp, w, s_var);  // s predicted upstream, g = 1 / sqrt(elements per step)
/// \endcode
template <granularity tGranularity = granularity::per_tensor>
struct binary {
  static constexpr int kBits = 1;
  static constexpr bool kSigned = true;
  static constexpr int kQMin = -1;  ///< codes {-1, +1}
  static constexpr int kQMax = 1;
  static constexpr granularity kGranularity = tGranularity;

  template <class T, class B>
  var<T, B> operator()(tape<T, B>& tp, const var<T, B>& w) const {
    return binary_quant(tp, w, tGranularity);
  }
  template <class T, class B>
  var<T, B> operator()(tape<T, B>& tp, const var<T, B>& w, const var<T, B>& s) const {
    GHNQ_CHECK(w.defined() && s.defined(), value_error, "quant::binary: undefined argument");
    return binary_quant(tp, w, s, lsq<1, false>::grad_scale(lsq<1, false>::elements_per_step(
                                      w.shape(), s.value().numel(), lsq_role::weight)));
  }
};

/// Ternary weight quantizer type (levels {-s, 0, s}, stored in 2 bits).
/// \tparam tGranularity per_tensor or per_channel (axis 0) for the statistic form.
/// \code
/// auto w_t = ghnq::quant::ternary<>{}(tp, w);   // s = 1.4 mean|w|
/// \endcode
template <granularity tGranularity = granularity::per_tensor>
struct ternary {
  static constexpr int kBits = 2;
  static constexpr bool kSigned = true;
  static constexpr int kQMin = -1;
  static constexpr int kQMax = 1;
  static constexpr granularity kGranularity = tGranularity;
  static constexpr double kInitFactor = kTernaryFactor;

  template <class T, class B>
  var<T, B> operator()(tape<T, B>& tp, const var<T, B>& w) const {
    return ternary_quant(tp, w, tGranularity);
  }
  template <class T, class B>
  var<T, B> operator()(tape<T, B>& tp, const var<T, B>& w, const var<T, B>& s) const {
    GHNQ_CHECK(w.defined() && s.defined(), value_error, "quant::ternary: undefined argument");
    return ternary_quant(tp, w, s, lsq<1, false>::grad_scale(lsq<1, false>::elements_per_step(
                                       w.shape(), s.value().numel(), lsq_role::weight)));
  }
};

}  // namespace ghnq::quant
