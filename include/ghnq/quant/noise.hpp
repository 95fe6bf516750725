/// \file
/// \brief Pseudo-quantization noise for the "noise" training strategy: y = x + s * u,
///        u ~ U(-1/2, 1/2), in place of rounding (spec; as in DiffQ, Défossez et al. 2021).
///
/// Gradients: d y / d x = 1 (identity); d y / d s_c = u (summed over channel c), so a step that is
/// a var (LSQ's, or the GHN's prediction) is trained by the noise strategy too.
/// Randomness: each call draws one 64-bit seed from the caller's ghnq::rng (advancing it by exactly
/// one draw); the noise is a function of that seed and the layout (channels, elements per channel),
/// generated in parallel and identical at any thread count. The backward pass regenerates u from
/// the seed instead of storing it.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "ghnq/backend/cpu/quant.hpp"
#include "ghnq/core/rng.hpp"
#include "ghnq/quant/common.hpp"

namespace ghnq::quant {

/// y = x + s_c * u with step var s (scalar, [1], or [C] with C = x.dim(0); finite, numeric_error
/// otherwise; used as given, no floor: nothing divides by s). Advances g by one draw.
/// \code
/// ghnq::rng g(seed);
/// auto w_n = ghnq::quant::noise_quant(tp, w, s, g);
/// \endcode
template <class T, class B>
var<T, B> noise_quant(tape<T, B>& tp, const var<T, B>& x, const var<T, B>& s, rng& g) {
  detail::require_contiguous(x, "quant::noise_quant", "x");
  const auto step = detail::finite_steps(s, "quant::noise_quant", "s");
  const auto [channels, inner] =
      detail::channel_layout(x, static_cast<std::int64_t>(step.size()), "quant::noise_quant", "s");
  const std::uint64_t seed = g.next();
  using K = backend::impl<B, backend::op::quant_noise>;
  tensor<T, B> y(x.shape());
  K::forward(x.value().data(), y.data(), channels, inner, step.data(), seed);
  const bool tracked = tp.needs(x, s);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([x, s, out, channels = channels, inner = inner, seed]() {
      if (!out.has_grad()) return;
      if (x.requires_grad()) detail::accumulate(x, out.grad());
      if (s.requires_grad()) {
        std::vector<double> ds(static_cast<std::size_t>(channels), 0.0);
        K::backward_step(out.grad().data(), ds.data(), channels, inner, seed);
        detail::add_to_grad(s, ds, 1.0);
      }
    });
  }
  return out;
}

/// y = x + s_c * u with the scales of uniform parameters (e.g. from an observer); no gradient to
/// the scales. Advances g by one draw.
/// \code
/// auto a_n = ghnq::quant::noise_quant(tp, a, act_quantizer.params<float>(), g);
/// \endcode
template <class T, class B>
var<T, B> noise_quant(tape<T, B>& tp, const var<T, B>& x, const uniform_params<T>& p, rng& g) {
  GHNQ_CHECK(!p.scale.empty(), value_error, "quant::noise_quant: no scales in the parameters");
  var<T, B> s(tensor<T, B>::from(ghnq::shape{p.channels()}, p.scale), false);
  return noise_quant(tp, x, s, g);
}

}  // namespace ghnq::quant
