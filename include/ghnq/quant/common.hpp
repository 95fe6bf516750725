/// \file
/// \brief Shared vocabulary of the quantizers: integer ranges of b-bit codes, granularity,
///        symmetric / asymmetric mode, the scale floor, uniform_params, the is_quantizer trait.
///
/// Conventions of every quantizer in ghnq::quant (spec: shared/spec/quantization.md):
///  - b-bit codes. Signed: q_min = -2^(b-1), q_max = 2^(b-1) - 1. Unsigned: q_min = 0,
///    q_max = 2^b - 1. Bit-widths are template parameters checked by static_assert: 1..16 for
///    unsigned codes, 2..16 for signed ones (a signed 1-bit code {-1, 0} is degenerate and LSQ's
///    Q_P = 0 would divide by zero; binary() and ternary() in extreme.hpp cover the extreme cases).
///  - Rounding is round-half-to-even, `std::nearbyint` under the default floating-point environment,
///    applied to x * inv_s with inv_s = 1 / s computed first (as PyTorch's fake-quant kernels).
///  - Scales are floored at kScaleEps = FLT_EPSILON (2^-23 ~ 1.19e-7, PyTorch's observer default), so
///    a constant or all-zero tensor never divides by zero.
///  - Granularity: one scale for the tensor, or one per index of axis 0 (the output channel of a
///    conv [O, I, kh, kw] or linear [O, I] weight).
///  - NaN / Inf: observers throw numeric_error (a value_error) naming the op when a range is not
///    finite, and so do the ops taking a learned step / clip when one of its values is not. The
///    quantization ops themselves propagate NaN in the forward result, clip +-Inf like any
///    out-of-range value, and give NaN elements a zero gradient.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "ghnq/core/error.hpp"
#include "ghnq/nn/common.hpp"
#include "ghnq/tensor/tensor.hpp"

namespace ghnq::quant {

using autograd::tape;
using autograd::var;

/// One scale for the whole tensor, or one per index of axis 0.
enum class granularity { per_tensor, per_channel };
inline constexpr granularity per_tensor = granularity::per_tensor;
inline constexpr granularity per_channel = granularity::per_channel;

/// Uniform quantizer mode. symmetric: z = 0, s = max(|m|, |M|) / ((q_max - q_min) / 2), signed
/// codes only. asymmetric (affine): s = (M - m) / (q_max - q_min), z = clamp(q_min - round(m / s)).
enum class mode { symmetric, asymmetric };

/// Lower bound of every scale (and of LSQ steps, PACT clips, binary steps): FLT_EPSILON.
inline constexpr double kScaleEps = static_cast<double>(std::numeric_limits<float>::epsilon());

/// Smallest and largest bit-width a quantizer with signed / unsigned codes accepts.
inline constexpr int kMaxBits = 16;
template <bool tSigned>
inline constexpr int kMinBits = tSigned ? 2 : 1;

/// True when a `tBits`-bit code with the given signedness is supported (see kMinBits, kMaxBits).
template <int tBits, bool tSigned>
inline constexpr bool valid_bits_v = tBits >= kMinBits<tSigned> && tBits <= kMaxBits;

/// Integer range of b-bit codes: signed [-2^(b-1), 2^(b-1) - 1], unsigned [0, 2^b - 1].
/// \tparam tBits   bit-width, 1..16 (2..16 when signed).
/// \tparam tSigned signed (two's complement) or unsigned codes.
/// \code static_assert(ghnq::quant::code_range<4, true>::kQMin == -8); \endcode
template <int tBits, bool tSigned>
struct code_range {
  static_assert(tBits >= 1 && tBits <= kMaxBits, "ghnq::quant: bit-width must be in [1, 16]");
  static_assert(!tSigned || tBits >= 2,
                "ghnq::quant: signed codes need at least 2 bits (binary / ternary cover 1-bit and ternary weights)");
  static constexpr int kBits = tBits;
  static constexpr bool kSigned = tSigned;
  static constexpr int kQMin = tSigned ? -(1 << (tBits - 1)) : 0;
  static constexpr int kQMax = tSigned ? (1 << (tBits - 1)) - 1 : (1 << tBits) - 1;
};

/// Run-time version of code_range: {q_min, q_max} of `bits`-bit codes; value_error outside 1..16
/// (2..16 when signed).
inline std::pair<int, int> code_limits(int bits, bool is_signed) {
  GHNQ_CHECK(bits >= (is_signed ? 2 : 1) && bits <= kMaxBits, value_error, "quant::code_limits: bit-width ", bits,
             " is outside [", is_signed ? 2 : 1, ", ", kMaxBits, "] for ", is_signed ? "signed" : "unsigned",
             " codes");
  return is_signed ? std::pair<int, int>{-(1 << (bits - 1)), (1 << (bits - 1)) - 1}
                   : std::pair<int, int>{0, (1 << bits) - 1};
}

/// Scale and zero point of a uniform quantizer, per tensor (one entry) or per channel of axis 0
/// (one entry per channel). Host-side; the zero points are integers stored in T.
/// x_hat = s_c * (clamp(nearbyint(x * (1 / s_c)) + z_c, q_min, q_max) - z_c).
template <class T>
struct uniform_params {
  std::vector<T> scale;       ///< s_c > 0
  std::vector<T> zero_point;  ///< z_c, integer-valued, in [q_min, q_max]
  int q_min = 0;
  int q_max = 0;
  /// Number of channels (1: per tensor).
  std::int64_t channels() const noexcept { return static_cast<std::int64_t>(scale.size()); }
};

namespace detail {
template <class Q, class = void>
struct has_quantizer_api : std::false_type {};
template <class Q>
struct has_quantizer_api<Q, std::void_t<decltype(Q::kBits), decltype(Q::kQMin), decltype(Q::kQMax)>>
    : std::true_type {};
}  // namespace detail

/// Trait: Q is a ghnq quantizer type (exposes static kBits, kQMin, kQMax).
template <class Q>
struct is_quantizer : detail::has_quantizer_api<Q> {};
template <class Q>
inline constexpr bool is_quantizer_v = is_quantizer<Q>::value;
#if defined(__cpp_concepts)
template <class Q>
concept quantizer = is_quantizer_v<Q>;
#endif

namespace detail {
using nn::detail::accumulate;
using nn::detail::require_contiguous;

/// (channels, inner) of x for a parameter holding `count` values: count 1 is per tensor, otherwise
/// count must equal x.dim(0) (shape_error naming op and arg otherwise).
template <class T, class B>
std::pair<std::int64_t, std::int64_t> channel_layout(const var<T, B>& x, std::int64_t count, const char* op,
                                                     const char* arg) {
  const std::int64_t n = x.value().numel();
  if (count == 1) return {1, n};
  GHNQ_CHECK(x.value().rank() >= 1 && x.shape()[0] == count, shape_error, op, ": '", arg, "' holds ", count,
             " values but x of shape ", x.shape(), " has ", x.value().rank() >= 1 ? x.shape()[0] : 0,
             " channels along axis 0 (one value per tensor or one per channel)");
  return {count, count > 0 ? n / count : 0};
}

/// Host copy of a learned per-tensor / per-channel parameter var (scalar, [1] or [C]); checks its
/// rank and that every value is finite (numeric_error otherwise: a step computed from non-finite
/// activations or predicted from a diverged GHN is a numerical failure of the network, which
/// evaluation scores as non-finite).
template <class T, class B>
std::vector<T> finite_steps(const var<T, B>& s, const char* op, const char* arg) {
  GHNQ_CHECK(s.defined(), value_error, op, ": argument '", arg, "' is undefined");
  GHNQ_CHECK(s.value().rank() <= 1, shape_error, op, ": '", arg, "' must be a scalar, [1] or [C], got shape ",
             s.shape());
  auto v = s.value().to_vector();
  for (std::size_t c = 0; c < v.size(); ++c)
    GHNQ_CHECK(std::isfinite(static_cast<double>(v[c])), numeric_error, op, ": '", arg, "'[", c, "] = ", v[c],
               " is not finite");
  return v;
}

/// finite_steps with values below kScaleEps raised to kScaleEps (for ops that divide by the step).
template <class T, class B>
std::vector<T> effective_steps(const var<T, B>& s, const char* op, const char* arg) {
  auto v = finite_steps(s, op, arg);
  for (auto& e : v)
    if (!(e >= static_cast<T>(kScaleEps))) e = static_cast<T>(kScaleEps);
  return v;
}

/// grad(v)[c] += scale * add[c] for a per-tensor / per-channel parameter var (any backend).
template <class T, class B>
void add_to_grad(const var<T, B>& v, const std::vector<double>& add, double scale) {
  auto& g = v.grad();
  std::vector<T> host = g.to_vector();
  for (std::size_t c = 0; c < host.size(); ++c) host[c] += static_cast<T>(scale * add[c]);
  backend::impl<B, backend::op::memory>::copy_from_host(g.data(), host.data(), host.size() * sizeof(T));
}
}  // namespace detail

}  // namespace ghnq::quant
