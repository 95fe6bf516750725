/// \file
/// \brief LSQ (Esser et al., ICLR 2020): fake quantization with a learned step s that is an
///        autograd var produced upstream (a free parameter, or the GHN's prediction).
///
/// Formulas (spec, normative; Q_N = -q_min, Q_P = q_max):
///   u = v * (1/s)                            (s <- max(s, kScaleEps); s must be finite)
///   forward:  v_hat = nearbyint(clamp(u, -Q_N, Q_P)) * s
///   d v_hat / d v = 1 where -Q_N < u < Q_P, else 0
///   d v_hat / d s = nearbyint(u) - u where -Q_N < u < Q_P; -Q_N where u <= -Q_N; Q_P where u >= Q_P
///   the step gradient is multiplied by g (LSQ's gradient scale, g = 1 / sqrt(N * Q_P)):
///   ds_c += g * sum_{i in c} dy_i * d v_hat_i / d s_c
/// The floor on s is a straight-through clamp: the gradient reaches s unchanged.
///
/// N (elements quantized with one step) — the choice ghnq makes, via lsq_role:
///   weight:     N = numel / number of steps (the tensor, or one output channel when s is [C])
///   activation: N = numel / x.dim(0), the features of one sample (the LSQ paper's N_F; some
///               implementations use the batch's numel instead, which only rescales g by
///               1/sqrt(batch)); a per-channel step is not accepted for activations.
/// Init (spec): s = 2 mean|v| / sqrt(Q_P); `lsq<...>::init_step` returns it as a var through
/// quant::mean_abs, so s = exp(head(embedding)) * init_step(v) stays differentiable.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "ghnq/backend/cpu/quant.hpp"
#include "ghnq/quant/common.hpp"
#include "ghnq/quant/statistic.hpp"

namespace ghnq::quant {

/// Which N LSQ's gradient scale uses (file comment).
enum class lsq_role { weight, activation };

/// LSQ fake quantization with run-time code limits: v_hat = nearbyint(clamp(v/s, -q_n, q_p)) * s,
/// gradients as in the file comment, the step gradient multiplied by `grad_scale`.
/// s: scalar, [1] (per tensor) or [C] with C = x.dim(0) (per channel); finite (value_error).
/// q_n >= 0, q_p >= 1, grad_scale finite and >= 0 (value_error otherwise).
/// \code
/// auto stat = ghnq::quant::mean_abs(tp, w, ghnq::quant::per_tensor, 2.0 / std::sqrt(7.0));
/// auto s = ghnq::quant::exp_scale(tp, log_factor, stat);  // log_factor: [1], predicted by the GHN
/// auto w_hat = ghnq::quant::lsq_quant(tp, w, s, 8, 7, 1.0 / std::sqrt(w.value().numel() * 7.0));
/// \endcode
template <class T, class B>
var<T, B> lsq_quant(tape<T, B>& tp, const var<T, B>& x, const var<T, B>& s, int q_n, int q_p, double grad_scale) {
  detail::require_contiguous(x, "quant::lsq_quant", "x");
  GHNQ_CHECK(q_n >= 0 && q_p >= 1, value_error, "quant::lsq_quant: code limits Q_N = ", q_n, ", Q_P = ", q_p,
             " (need Q_N >= 0, Q_P >= 1)");
  GHNQ_CHECK(std::isfinite(grad_scale) && grad_scale >= 0.0, value_error, "quant::lsq_quant: gradient scale ",
             grad_scale, " is not finite and non-negative");
  auto step = detail::effective_steps(s, "quant::lsq_quant", "s");
  const auto [channels, inner] =
      detail::channel_layout(x, static_cast<std::int64_t>(step.size()), "quant::lsq_quant", "s");
  using K = backend::impl<B, backend::op::lsq_quant>;
  const T qn = static_cast<T>(q_n), qp = static_cast<T>(q_p);
  tensor<T, B> y(x.shape());
  K::forward(x.value().data(), y.data(), channels, inner, step.data(), qn, qp);
  const bool tracked = tp.needs(x, s);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([x, s, out, channels = channels, inner = inner, step, qn, qp, grad_scale]() {
      if (!out.has_grad()) return;
      std::vector<double> ds(s.requires_grad() ? step.size() : 0, 0.0);
      K::backward(x.value().data(), out.grad().data(), x.requires_grad() ? x.grad().data() : nullptr,
                  s.requires_grad() ? ds.data() : nullptr, channels, inner, step.data(), qn, qp);
      if (s.requires_grad()) detail::add_to_grad(s, ds, grad_scale);
    });
  }
  return out;
}

/// LSQ quantizer type (stateless: the step is an input var).
/// \tparam tBits   bit-width: 1..16 unsigned, 2..16 signed (static_assert; Q_P >= 1).
/// \tparam tSigned signed codes (weights) or unsigned (activations after ReLU).
/// \code
/// using q4 = ghnq::quant::lsq<4>;                                // Q_N = 8, Q_P = 7
/// auto s = ghnq::quant::mean_abs(tp, w, ghnq::quant::per_channel, q4::kInitFactor);  // or a GHN prediction
/// auto w_hat = q4{}(tp, w, s);                                  // lsq_role::weight
/// auto a_hat = ghnq::quant::lsq<4, false>{}(tp, a, s_a, ghnq::quant::lsq_role::activation);
/// \endcode
template <int tBits, bool tSigned = true>
struct lsq {
  static_assert(valid_bits_v<tBits, tSigned>,
                "ghnq::quant::lsq: bit-width must be in [1, 16] for unsigned and [2, 16] for signed codes");
  static constexpr int kBits = tBits;
  static constexpr bool kSigned = tSigned;
  static constexpr int kQMin = code_range<tBits, tSigned>::kQMin;
  static constexpr int kQMax = code_range<tBits, tSigned>::kQMax;
  static constexpr int kQN = -kQMin;
  static constexpr int kQP = kQMax;
  /// LSQ init factor 2 / sqrt(Q_P): s0 = kInitFactor * mean|v|.
  static inline const double kInitFactor = 2.0 / std::sqrt(static_cast<double>(kQP));

  /// g = 1 / sqrt(n * Q_P) for n elements per step (n >= 1).
  static double grad_scale(std::int64_t n) {
    GHNQ_CHECK(n >= 1, value_error, "quant::lsq::grad_scale: ", n, " elements per step");
    return 1.0 / std::sqrt(static_cast<double>(n) * static_cast<double>(kQP));
  }
  /// N of the file comment for x quantized with `steps` steps (1 or x.dim(0)) in the given role.
  static std::int64_t elements_per_step(const ghnq::shape& x, std::int64_t steps, lsq_role role) {
    const std::int64_t n = x.numel();
    if (role == lsq_role::weight) return steps > 0 ? n / steps : n;
    GHNQ_CHECK(steps == 1, shape_error, "quant::lsq: an activation step must be per tensor, got ", steps,
               " steps for x of shape ", x);
    return x.rank() >= 2 && x[0] > 0 ? n / x[0] : n;
  }
  /// s0 = 2 mean|v| / sqrt(Q_P) per tensor ([1]) or per channel ([C]), differentiable in v.
  template <class T, class B>
  static var<T, B> init_step(tape<T, B>& tp, const var<T, B>& v, granularity g = per_tensor) {
    return mean_abs(tp, v, g, kInitFactor);
  }
  /// lsq_quant with this type's Q_N, Q_P and g = grad_scale(elements_per_step(x, s, role)).
  template <class T, class B>
  static var<T, B> quantize(tape<T, B>& tp, const var<T, B>& x, const var<T, B>& s, lsq_role role = lsq_role::weight) {
    GHNQ_CHECK(x.defined() && s.defined(), value_error, "quant::lsq: undefined argument");
    const double g = grad_scale(elements_per_step(x.shape(), s.value().numel(), role));
    return lsq_quant(tp, x, s, kQN, kQP, g);
  }
  template <class T, class B>
  var<T, B> operator()(tape<T, B>& tp, const var<T, B>& x, const var<T, B>& s, lsq_role role = lsq_role::weight) const {
    return quantize(tp, x, s, role);
  }
};

}  // namespace ghnq::quant
