/// \file
/// \brief Differentiable tensor statistics that quantizer scales are built from (mean |x|), and
///        the predicted-step op s = exp(log_factor) * stat.
///
/// The GHN predicts a quantizer's step as a log-scale factor times a statistic of the tensor,
/// s = exp(head(embedding)) * stat(x); these ops make stat(x) a var so gradients can also flow
/// through the statistic into x (or be cut by passing a var that does not require a gradient).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "ghnq/backend/cpu/quant.hpp"
#include "ghnq/quant/common.hpp"

namespace ghnq::quant {

/// out_c = factor * mean_i |x_ci| per channel of axis 0 ([C]) or over the whole tensor ([1]).
/// Backward: dx_ci += factor / n_c * sign(x_ci) * dout_c with sign(0) = 0 (n_c: elements per channel).
/// x must be contiguous and non-empty (value_error otherwise).
/// \code
/// auto s0 = ghnq::quant::mean_abs(tp, w, ghnq::quant::per_channel, 2.0 / std::sqrt(7.0));  // LSQ init, 4-bit signed
/// \endcode
template <class T, class B>
var<T, B> mean_abs(tape<T, B>& tp, const var<T, B>& x, granularity g = per_tensor, double factor = 1.0) {
  detail::require_contiguous(x, "quant::mean_abs", "x");
  const std::int64_t n = x.value().numel();
  GHNQ_CHECK(n > 0, value_error, "quant::mean_abs: x of shape ", x.shape(), " is empty");
  GHNQ_CHECK(std::isfinite(factor), value_error, "quant::mean_abs: factor ", factor, " is not finite");
  const std::int64_t channels = g == per_tensor ? 1 : x.shape()[0];
  GHNQ_CHECK(g == per_tensor || x.value().rank() >= 1, shape_error,
             "quant::mean_abs: per-channel statistics need x of rank >= 1, got ", x.shape());
  const std::int64_t inner = n / channels;
  using K = backend::impl<B, backend::op::mean_abs>;
  std::vector<T> host(static_cast<std::size_t>(channels));
  K::forward(x.value().data(), channels, inner, static_cast<T>(factor), host.data());
  auto out_value = tensor<T, B>::from(ghnq::shape{channels}, host);
  const bool tracked = tp.needs(x);
  auto out = tp.make_output(out_value, tracked);
  if (tracked) {
    tp.record([x, out, channels, inner, factor]() {
      if (!out.has_grad()) return;
      const auto dout = out.grad().to_vector();
      K::backward(x.value().data(), dout.data(), x.grad().data(), channels, inner, static_cast<T>(factor));
    });
  }
  return out;
}

/// s = exp(log_factor) * stat, elementwise, for a quantizer step or clip predicted as a log-scale
/// factor of a tensor statistic. Each operand is [1] (or a scalar) or [C]; a [1] operand is
/// broadcast, the result is [C] when either is. Backward: dlog_factor += s * ds, dstat +=
/// exp(log_factor) * ds (summed over the broadcast). log_factor = 0 gives s = stat (the
/// initialization "factor 1" of the spec).
/// \code
/// auto s = ghnq::quant::exp_scale(tp, head_out, ghnq::quant::mean_abs(tp, w, ghnq::quant::per_channel, 2.0));
/// \endcode
template <class T, class B>
var<T, B> exp_scale(tape<T, B>& tp, const var<T, B>& log_factor, const var<T, B>& stat) {
  detail::require_contiguous(log_factor, "quant::exp_scale", "log_factor");
  detail::require_contiguous(stat, "quant::exp_scale", "stat");
  GHNQ_CHECK(log_factor.value().rank() <= 1 && stat.value().rank() <= 1, shape_error,
             "quant::exp_scale: operands must be scalars, [1] or [C], got ", log_factor.shape(), " and ", stat.shape());
  const std::int64_t nl = log_factor.value().numel(), ns = stat.value().numel();
  GHNQ_CHECK(nl >= 1 && ns >= 1 && (nl == ns || nl == 1 || ns == 1), shape_error, "quant::exp_scale: shapes ",
             log_factor.shape(), " and ", stat.shape(), " do not broadcast");
  const std::int64_t n = std::max(nl, ns);
  const auto l = log_factor.value().to_vector();
  const auto st = stat.value().to_vector();
  std::vector<T> e(static_cast<std::size_t>(n)), s(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    e[static_cast<std::size_t>(i)] = std::exp(l[static_cast<std::size_t>(nl == 1 ? 0 : i)]);
    s[static_cast<std::size_t>(i)] = e[static_cast<std::size_t>(i)] * st[static_cast<std::size_t>(ns == 1 ? 0 : i)];
  }
  auto value = tensor<T, B>::from(ghnq::shape{n}, s);
  const bool tracked = tp.needs(log_factor, stat);
  auto out = tp.make_output(value, tracked);
  if (tracked) {
    tp.record([log_factor, stat, out, e, s, nl, ns, n]() {
      if (!out.has_grad()) return;
      const auto ds = out.grad().to_vector();
      std::vector<double> dl(static_cast<std::size_t>(nl), 0.0), dst(static_cast<std::size_t>(ns), 0.0);
      for (std::int64_t i = 0; i < n; ++i) {
        const auto k = static_cast<std::size_t>(i);
        dl[static_cast<std::size_t>(nl == 1 ? 0 : i)] += static_cast<double>(s[k]) * static_cast<double>(ds[k]);
        dst[static_cast<std::size_t>(ns == 1 ? 0 : i)] += static_cast<double>(e[k]) * static_cast<double>(ds[k]);
      }
      if (log_factor.requires_grad()) detail::add_to_grad(log_factor, dl, 1.0);
      if (stat.requires_grad()) detail::add_to_grad(stat, dst, 1.0);
    });
  }
  return out;
}

}  // namespace ghnq::quant
