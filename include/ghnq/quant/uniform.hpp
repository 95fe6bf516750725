/// \file
/// \brief Uniform (affine or symmetric) fake quantization with the clipped straight-through
///        estimator: `make_uniform_params`, the op `fake_quant`, and the quantizer type `uniform`.
///
/// Formulas (spec, normative; b-bit codes [q_min, q_max], see common.hpp):
///   range [m, M] from an observer, widened to contain 0: m <- min(m, 0), M <- max(M, 0)
///   asymmetric: s = (M - m) / (q_max - q_min), s <- max(s, kScaleEps),
///               z = clamp(q_min - nearbyint(m / s), q_min, q_max)
///   symmetric:  s = max(-m, M) / ((q_max - q_min) / 2), s <- max(s, kScaleEps), z = 0 (signed only)
///   forward:    q = clamp(nearbyint(x * (1/s)) + z, q_min, q_max),  x_hat = (q - z) * s
///   backward:   dx += dy where q_min <= nearbyint(x * (1/s)) + z <= q_max, else 0 (clipped STE)
/// Arithmetic is in T (float: bit-identical to PyTorch's fake_quantize_per_{tensor,channel}_affine
/// and to its observers' _calculate_qparams for the same range).
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "ghnq/backend/cpu/quant.hpp"
#include "ghnq/quant/common.hpp"
#include "ghnq/quant/observer.hpp"

namespace ghnq::quant {

/// Scale and zero point per channel from the ranges [lo_c, hi_c] (widened to contain 0) by the
/// formulas of the file comment, computed in T. Throws value_error when a bound is not finite,
/// when lo_c > hi_c, when q_min >= q_max, or for mode::symmetric with unsigned codes (q_min >= 0:
/// use asymmetric, which gives z = 0 and s = M / q_max for non-negative data).
/// \code
/// auto p = ghnq::quant::make_uniform_params<float>({-1.0}, {3.0}, -128, 127, ghnq::quant::mode::asymmetric);
/// // p.scale[0] == 4/255, p.zero_point[0] == -128 - nearbyint(-1 / (4/255)) == -96
/// \endcode
template <class T>
uniform_params<T> make_uniform_params(const std::vector<double>& lo, const std::vector<double>& hi, int q_min,
                                      int q_max, mode m) {
  GHNQ_CHECK(!lo.empty() && lo.size() == hi.size(), value_error, "quant::make_uniform_params: ", lo.size(),
             " minima and ", hi.size(), " maxima");
  GHNQ_CHECK(q_min < q_max, value_error, "quant::make_uniform_params: empty code range [", q_min, ", ", q_max, "]");
  GHNQ_CHECK(m == mode::asymmetric || q_min < 0, value_error, "quant::make_uniform_params: symmetric mode needs ",
             "signed codes, got [", q_min, ", ", q_max, "] (use mode::asymmetric for unsigned codes)");
  uniform_params<T> p;
  p.q_min = q_min;
  p.q_max = q_max;
  p.scale.resize(lo.size());
  p.zero_point.resize(lo.size());
  const T eps = static_cast<T>(kScaleEps), qmin = static_cast<T>(q_min), qmax = static_cast<T>(q_max);
  for (std::size_t c = 0; c < lo.size(); ++c) {
    GHNQ_CHECK(std::isfinite(lo[c]) && std::isfinite(hi[c]) && lo[c] <= hi[c], value_error,
               "quant::make_uniform_params: range [", lo[c], ", ", hi[c], "] of channel ", c,
               " is not a finite interval");
    const T mn = std::min(static_cast<T>(lo[c]), T(0)), mx = std::max(static_cast<T>(hi[c]), T(0));
    if (m == mode::asymmetric) {
      const T s = std::max((mx - mn) / static_cast<T>(q_max - q_min), eps);
      p.scale[c] = s;
      p.zero_point[c] = std::min(std::max(qmin - std::nearbyint(mn / s), qmin), qmax);
    } else {
      p.scale[c] = std::max(std::max(-mn, mx) / (static_cast<T>(q_max - q_min) / T(2)), eps);
      p.zero_point[c] = T(0);
    }
  }
  return p;
}

/// Fake quantization x_hat = (clamp(nearbyint(x * (1/s_c)) + z_c, q_min, q_max) - z_c) * s_c with
/// the clipped STE backward (file comment). p holds one (s, z) for the whole tensor or one per
/// index of x's axis 0. Scales must be finite and positive (values below kScaleEps are raised to
/// it), zero points integers in [q_min, q_max] (value_error otherwise). No gradient flows to p.
/// \code
/// auto p = ghnq::quant::make_uniform_params<float>(obs.lo(), obs.hi(), -8, 7, ghnq::quant::mode::symmetric);
/// auto w_hat = ghnq::quant::fake_quant(tp, w, p);
/// \endcode
template <class T, class B>
var<T, B> fake_quant(tape<T, B>& tp, const var<T, B>& x, const uniform_params<T>& p) {
  detail::require_contiguous(x, "quant::fake_quant", "x");
  GHNQ_CHECK(p.q_min < p.q_max, value_error, "quant::fake_quant: empty code range [", p.q_min, ", ", p.q_max, "]");
  GHNQ_CHECK(!p.scale.empty() && p.zero_point.size() == p.scale.size(), value_error, "quant::fake_quant: ",
             p.scale.size(), " scales and ", p.zero_point.size(), " zero points");
  const auto [channels, inner] = detail::channel_layout(x, p.channels(), "quant::fake_quant", "params.scale");
  std::vector<T> scale(p.scale);
  for (std::size_t c = 0; c < scale.size(); ++c) {
    GHNQ_CHECK(std::isfinite(static_cast<double>(scale[c])) && scale[c] > T(0), value_error,
               "quant::fake_quant: scale[", c, "] = ", scale[c], " is not a finite positive number");
    scale[c] = std::max(scale[c], static_cast<T>(kScaleEps));
    const T z = p.zero_point[c];
    GHNQ_CHECK(z == std::nearbyint(z) && z >= static_cast<T>(p.q_min) && z <= static_cast<T>(p.q_max), value_error,
               "quant::fake_quant: zero_point[", c, "] = ", z, " is not an integer in [", p.q_min, ", ", p.q_max, "]");
  }
  using K = backend::impl<B, backend::op::fake_quant>;
  const T qmin = static_cast<T>(p.q_min), qmax = static_cast<T>(p.q_max);
  tensor<T, B> y(x.shape());
  K::forward(x.value().data(), y.data(), channels, inner, scale.data(), p.zero_point.data(), qmin, qmax);
  const bool tracked = tp.needs(x);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([x, out, channels = channels, inner = inner, scale, zp = p.zero_point, qmin, qmax]() {
      if (!out.has_grad()) return;
      K::backward(x.value().data(), out.grad().data(), x.grad().data(), channels, inner, scale.data(), zp.data(),
                  qmin, qmax);
    });
  }
  return out;
}

/// Uniform quantizer type: b-bit codes, a granularity, a run-time mode and an observer with state.
/// Calling it observes x (when `update`) and fake-quantizes x with the parameters of the state.
/// \tparam tBits        bit-width: 1..16 unsigned, 2..16 signed (static_assert).
/// \tparam tSigned      signed codes (weights, signed activations) or unsigned (after ReLU).
/// \tparam tGranularity per_tensor, or per_channel along axis 0 (weights).
/// Mode defaults to symmetric for signed codes and asymmetric for unsigned ones; symmetric with
/// unsigned codes is a value_error (make_uniform_params). Observer kind defaults to `current`
/// (the range of the tensor being quantized: right for predicted weights); activations use
/// moving_average or min_max.
/// \code
/// ghnq::quant::uniform<4, true, ghnq::quant::per_channel> wq;                            // weights
/// ghnq::quant::uniform<4, false> aq(ghnq::quant::observer_kind::moving_average);          // ReLU outputs
/// auto w_hat = wq(tp, w);
/// auto a_hat = aq(tp, a, /*update=*/training);
/// \endcode
template <int tBits, bool tSigned = true, granularity tGranularity = granularity::per_tensor>
class uniform {
  static_assert(valid_bits_v<tBits, tSigned>,
                "ghnq::quant::uniform: bit-width must be in [1, 16] for unsigned and [2, 16] for signed codes");

 public:
  static constexpr int kBits = tBits;
  static constexpr bool kSigned = tSigned;
  static constexpr granularity kGranularity = tGranularity;
  static constexpr int kQMin = code_range<tBits, tSigned>::kQMin;
  static constexpr int kQMax = code_range<tBits, tSigned>::kQMax;
  static constexpr mode kDefaultMode = tSigned ? mode::symmetric : mode::asymmetric;

  /// \param kind     observer merge rule (observer.hpp).
  /// \param m        symmetric (signed codes only) or asymmetric.
  /// \param momentum moving_average weight of a new range, in (0, 1].
  /// \param name     quoted in error messages.
  explicit uniform(observer_kind kind = observer_kind::current, mode m = kDefaultMode, double momentum = 0.1,
                   std::string name = {})
      : mode_(m), obs_(kind, tGranularity, momentum, std::move(name)) {
    GHNQ_CHECK(m == mode::asymmetric || tSigned, value_error, "quant::uniform: symmetric mode needs signed codes",
               " (unsigned: use mode::asymmetric)");
  }

  /// Observes x when `update` (or when nothing was observed yet), then returns fake_quant(tp, x, params()).
  template <class T, class B>
  var<T, B> operator()(tape<T, B>& tp, const var<T, B>& x, bool update = true) {
    GHNQ_CHECK(x.defined(), value_error, "quant::uniform: argument 'x' is undefined");
    if (update || !obs_.ready()) obs_.observe(x.value());
    return fake_quant(tp, x, params<T>());
  }

  /// Scale and zero point of the current state (value_error before the first observation).
  template <class T>
  uniform_params<T> params() const {
    GHNQ_CHECK(obs_.ready(), value_error, "quant::uniform::params: nothing observed yet",
               obs_.name().empty() ? "" : " ('" + obs_.name() + "')");
    return make_uniform_params<T>(obs_.lo(), obs_.hi(), kQMin, kQMax, mode_);
  }

  mode symmetry() const noexcept { return mode_; }
  observer& state() noexcept { return obs_; }
  const observer& state() const noexcept { return obs_; }

 private:
  mode mode_;
  observer obs_;
};

}  // namespace ghnq::quant
