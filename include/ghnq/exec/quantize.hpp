/// \file
/// \brief Fake quantization of one conv / linear op's weight and input, as the executor applies it
/// under a quant_config (exec/quant_plan.hpp). Differentiable (straight-through or learned-step
/// gradients, see ghnq::quant).
///
/// Weights (after tiling and fan-in normalization of a predicted tensor; after BN folding when BN
/// is folded), per output channel:
///  - uniform: symmetric min-max of the tensor itself, clipped STE;
///  - lsq:     step s = exp(f_w) * 2 mean|w_c| / sqrt(Q_P), f_w the op's predicted log-factor
///             (0 when none is given: the LSQ initialization), gradient scale 1 / sqrt(N Q_P);
///  - binary:  sign(w) * mean|w_c| (1 bit, whatever w_bits says);
///  - ternary: {-1, 0, 1} * 1.4 mean|w_c| (whatever w_bits says).
/// Inputs, per tensor, with the statistics of the current batch (as BatchNorm in GHN-2's protocol):
///  - uniform: min-max of the batch (asymmetric with z = 0 for unsigned codes, symmetric for signed);
///  - lsq:     s = exp(f_a) * 2 mean|x| / sqrt(Q_P);
///  - pact:    alpha = exp(f_a) * max(x) for unsigned inputs (clip at 0 and alpha); signed inputs
///             use lsq.
/// The statistic is a constant of the step (no gradient flows through it); gradients of the learned
/// step / clip flow through exp(f) into whatever predicted f. With `noise`, uniform and lsq use
/// pseudo-quantization noise x + s u, u ~ U(-1/2, 1/2), instead of rounding.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "ghnq/core/rng.hpp"
#include "ghnq/exec/quant_plan.hpp"
#include "ghnq/quant.hpp"

namespace ghnq::exec {

/// Per-op learned log-factors (f_w, f_a above) predicted for a network: one var per op, undefined
/// where none is predicted (factor 1). Weight factors may be [1] or [out_channels].
template <class T, class B>
struct quant_factors {
  std::vector<autograd::var<T, B>> weight, input;
};

namespace detail {

template <class T, class B>
autograd::var<T, B> constant_of(const tensor<T, B>& t) {
  return autograd::var<T, B>(t, false);
}

/// exp(f) * stat with stat a constant; stat alone when f is undefined.
template <class T, class B>
autograd::var<T, B> scaled(autograd::tape<T, B>& tp, const autograd::var<T, B>& f, const autograd::var<T, B>& stat) {
  if (!f.defined()) return stat;
  return quant::exp_scale(tp, f, stat);
}

/// quant::fake_quant's op (the same values and clipped-STE gradient) for parameters fresh from
/// make_uniform_params (valid by construction: no checks repeated), whose backward writes a fresh
/// gradient buffer of x (var::grad_for_write) instead of zeroing it and adding to it. x is the
/// input of one conv / linear op, so its gradient buffer is usually fresh: this saves a zeroing
/// pass and a read of dx per quantized tensor.
template <class T, class B>
autograd::var<T, B> fake_quant_fresh(autograd::tape<T, B>& tp, const autograd::var<T, B>& x,
                                     const quant::uniform_params<T>& p) {
  quant::detail::require_contiguous(x, "exec::quantize", "x");
  const auto [channels, inner] = quant::detail::channel_layout(x, p.channels(), "exec::quantize", "params.scale");
  using K = backend::impl<B, backend::op::fake_quant>;
  const T qmin = static_cast<T>(p.q_min), qmax = static_cast<T>(p.q_max);
  tensor<T, B> y(x.shape());
  K::forward(x.value().data(), y.data(), channels, inner, p.scale.data(), p.zero_point.data(), qmin, qmax);
  const bool tracked = tp.needs(x);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([x, out, channels = channels, inner = inner, scale = p.scale, zp = p.zero_point, qmin, qmax]() {
      if (!out.has_grad()) return;
      bool fresh = false;
      T* dx = x.grad_for_write(fresh).data();
      K::backward(x.value().data(), out.grad().data(), dx, channels, inner, scale.data(), zp.data(), qmin, qmax,
                  fresh);
    });
  }
  return out;
}

template <class T, class B>
autograd::var<T, B> detached_mean_abs(const autograd::var<T, B>& x, quant::granularity g, double factor) {
  autograd::tape<T, B> scratch;
  autograd::no_grad<autograd::tape<T, B>> ng(scratch);
  return constant_of(quant::mean_abs(scratch, constant_of(x.value()), g, factor).value());
}

}  // namespace detail

/// Fake-quantized weight of a conv / linear op (see the file comment); w unchanged when
/// p.w_bits == 0. `f` may be undefined. `noise` is used only with q.noise.
template <class T, class B>
autograd::var<T, B> quantize_weight(autograd::tape<T, B>& tp, const autograd::var<T, B>& w, const op_quant& p,
                                    const quant_config& q, const autograd::var<T, B>& f, rng* noise = nullptr) {
  if (p.w_bits == 0) return w;
  switch (q.wq) {
    case weight_quantizer::binary: return quant::binary_quant(tp, w, quant::per_channel);
    case weight_quantizer::ternary: return quant::ternary_quant(tp, w, quant::per_channel);
    case weight_quantizer::lsq: {
      const auto [qmin, qmax] = quant::code_limits(std::max(2, p.w_bits), true);
      const auto stat = detail::detached_mean_abs(w, quant::per_channel, 2.0 / std::sqrt(static_cast<double>(qmax)));
      const auto s = detail::scaled(tp, f, stat);
      if (q.noise && noise != nullptr) return quant::noise_quant(tp, w, s, *noise);
      const double n = static_cast<double>(w.value().numel()) / static_cast<double>(w.shape()[0]);
      return quant::lsq_quant(tp, w, s, -qmin, qmax, 1.0 / std::sqrt(n * qmax));
    }
    case weight_quantizer::uniform:
    default: {
      const auto [qmin, qmax] = quant::code_limits(std::max(2, p.w_bits), true);
      quant::observer obs(quant::observer_kind::current, quant::per_channel, 0.1, "weight");
      obs.observe(w.value());
      const auto up = quant::make_uniform_params<T>(obs.lo(), obs.hi(), qmin, qmax, quant::mode::symmetric);
      if (q.noise && noise != nullptr) return quant::noise_quant(tp, w, up, *noise);
      return detail::fake_quant_fresh(tp, w, up);
    }
  }
}

/// Fake-quantized input of a conv / linear op (see the file comment); x unchanged when
/// p.a_bits == 0. `f` may be undefined. `noise` is used only with q.noise.
template <class T, class B>
autograd::var<T, B> quantize_input(autograd::tape<T, B>& tp, const autograd::var<T, B>& x, const op_quant& p,
                                   const quant_config& q, const autograd::var<T, B>& f, rng* noise = nullptr) {
  if (p.a_bits == 0) return x;
  const bool is_signed = p.a_signed;
  const int bits = is_signed ? std::max(2, p.a_bits) : p.a_bits;
  const auto [qmin, qmax] = quant::code_limits(bits, is_signed);
  const act_quantizer kind = (q.aq == act_quantizer::pact && is_signed) ? act_quantizer::lsq : q.aq;
  switch (kind) {
    case act_quantizer::pact: {
      quant::observer obs(quant::observer_kind::current, quant::per_tensor, 0.1, "input");
      obs.observe(x.value());
      const auto hi = std::max(obs.hi()[0], quant::kScaleEps);
      const auto stat = detail::constant_of(tensor<T, B>::full({1}, static_cast<T>(hi)));
      return quant::pact_quant(tp, x, detail::scaled(tp, f, stat), bits);
    }
    case act_quantizer::lsq: {
      const auto stat = detail::detached_mean_abs(x, quant::per_tensor, 2.0 / std::sqrt(static_cast<double>(qmax)));
      const auto s = detail::scaled(tp, f, stat);
      if (q.noise && noise != nullptr) return quant::noise_quant(tp, x, s, *noise);
      const double n = static_cast<double>(x.value().numel()) / static_cast<double>(x.shape()[0]);
      return quant::lsq_quant(tp, x, s, -qmin, qmax, 1.0 / std::sqrt(n * qmax));
    }
    case act_quantizer::uniform:
    default: {
      quant::observer obs(quant::observer_kind::current, quant::per_tensor, 0.1, "input");
      obs.observe(x.value());
      const auto up = quant::make_uniform_params<T>(obs.lo(), obs.hi(), qmin, qmax,
                                                    is_signed ? quant::mode::symmetric : quant::mode::asymmetric);
      if (q.noise && noise != nullptr) return quant::noise_quant(tp, x, up, *noise);
      return detail::fake_quant_fresh(tp, x, up);
    }
  }
}

}  // namespace ghnq::exec
