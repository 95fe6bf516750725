/// \file
/// \brief CPU kernels of the quantizers (uniform fake quantization, LSQ, PACT, binary, noise,
///        range and mean-|x| statistics) dispatched as backend::impl.
///
/// Layout shared by every kernel: a contiguous tensor of `channels * inner` elements, channel c
/// holding elements [c * inner, (c + 1) * inner) (per-tensor quantization: channels = 1). Per-channel
/// arrays (parameters `scale`, `zero_point`, `step`, statistics `lo`, `hi`, `out`, and the gradients
/// `dstep`, `dalpha`, `dout`) are host arrays of `channels` values; element arrays live on the backend.
///
/// Work is split into a fixed grid of chunks that never cross a channel boundary (kChunk elements at
/// most); oneTBB runs the chunks in parallel. Reductions (LSQ step gradient, PACT clip gradient,
/// binary step gradient, noise step gradient, ranges, mean |x|) write one partial per chunk, in
/// double, and the partials are added per channel in chunk order afterwards: results do not depend
/// on the thread count. Inner loops work on blocks of kBlock elements through `__restrict`
/// pointers (reductions in kLanes independent accumulators) so that GCC vectorizes them at -O2 too.
///
/// Rounding is round-half-to-even: `std::nearbyint` under the default floating-point environment.
/// NaN elements contribute zero to every gradient computed here (they propagate in the forward
/// results); infinite elements are clipped like any other out-of-range value. Gradient masks are
/// applied by multiplication, so a clipped element adds dy * 0 (a non-finite dy still propagates).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/backend/ops.hpp"
#include "ghnq/backend/tags.hpp"
#include "ghnq/core/rng.hpp"

namespace ghnq::backend {

namespace op {
/// Uniform affine fake quantization with the clipped straight-through estimator:
/// q = clamp(nearbyint(x * (1/s_c)) + z_c, q_min, q_max), y = (q - z_c) * s_c;
/// dx += dy where q_min <= nearbyint(x * (1/s_c)) + z_c <= q_max. With `overwrite` the backward
/// writes dx = dy * mask instead (dx may then be uninitialized: a fresh gradient buffer, see
/// var::grad_for_write), which saves zeroing dx and reading it back.
/// \code
/// template <class T> static void forward(const T* x, T* y, std::int64_t channels, std::int64_t inner,
///                                        const T* scale, const T* zero_point, T q_min, T q_max);
/// template <class T> static void backward(const T* x, const T* dy, T* dx, std::int64_t channels,
///                                         std::int64_t inner, const T* scale, const T* zero_point,
///                                         T q_min, T q_max, bool overwrite = false);      // dx += / =
/// \endcode
struct fake_quant {};

/// Per-channel minimum and maximum; returns false when some element is NaN or infinite.
/// \code
/// template <class T> static bool run(const T* x, std::int64_t channels, std::int64_t inner, T* lo, T* hi);
/// \endcode
struct quant_range {};

/// LSQ (Esser et al. 2020) with step s_c: u = x / s_c (computed x * (1/s_c)),
/// y = nearbyint(clamp(u, -q_n, q_p)) * s_c. Backward: dx += dy where -q_n < u < q_p;
/// dstep[c] += sum dy * (nearbyint(u) - u inside, -q_n where u <= -q_n, q_p where u >= q_p)
/// (unscaled; the caller applies LSQ's gradient scale). dx or dstep may be null.
/// \code
/// template <class T> static void forward(const T* x, T* y, std::int64_t channels, std::int64_t inner,
///                                        const T* step, T q_n, T q_p);
/// template <class T> static void backward(const T* x, const T* dy, T* dx, double* dstep,
///                                         std::int64_t channels, std::int64_t inner, const T* step,
///                                         T q_n, T q_p);
/// \endcode
struct lsq_quant {};

/// PACT (Choi et al. 2018) with clip alpha and L = 2^b - 1 levels: y = clamp(x, 0, alpha),
/// s = alpha / L, out = nearbyint(y * (1/s)) * s. Backward: dx += dy where 0 <= x < alpha;
/// *dalpha += sum of dy where x >= alpha. dx or dalpha may be null.
/// \code
/// template <class T> static void forward(const T* x, T* y, std::int64_t n, T alpha, T levels);
/// template <class T> static void backward(const T* x, const T* dy, T* dx, double* dalpha,
///                                         std::int64_t n, T alpha, T levels);
/// \endcode
struct pact_quant {};

/// Binary quantization y = s_c * sign(x) with sign(0) = +1. Backward (LSQ-style surrogate
/// y = s * sign_ste(x / s)): dx += dy where |x / s_c| < 1; dstep[c] += sum dy * (sign(x) - x / s_c
/// inside, sign(x) outside). dx or dstep may be null.
/// \code
/// template <class T> static void forward(const T* x, T* y, std::int64_t channels, std::int64_t inner, const T* step);
/// template <class T> static void backward(const T* x, const T* dy, T* dx, double* dstep,
///                                         std::int64_t channels, std::int64_t inner, const T* step);
/// \endcode
struct binary_quant {};

/// Statistic out[c] = factor * mean_i |x_ci|; backward dx += factor / inner * sign(x) * dout[c]
/// (sign(0) = 0).
/// \code
/// template <class T> static void forward(const T* x, std::int64_t channels, std::int64_t inner, T factor, T* out);
/// template <class T> static void backward(const T* x, const T* dout, T* dx, std::int64_t channels,
///                                         std::int64_t inner, T factor);
/// \endcode
struct mean_abs {};

/// Pseudo-quantization noise y = x + s_c * u, u ~ U(-1/2, 1/2): chunk k of the fixed chunk grid
/// draws its u in order from ghnq::rng(noise_stream_seed(seed, k)) (u = uniform() - 1/2), so the
/// noise depends on (seed, channels, inner) only, not on the thread count.
/// backward_step: dstep[c] += sum dy * u (the same u, regenerated from the seed).
/// \code
/// template <class T> static void forward(const T* x, T* y, std::int64_t channels, std::int64_t inner,
///                                        const T* step, std::uint64_t seed);
/// template <class T> static void backward_step(const T* dy, double* dstep, std::int64_t channels,
///                                              std::int64_t inner, std::uint64_t seed);
/// \endcode
struct quant_noise {};
}  // namespace op

namespace quant_detail {

inline constexpr std::int64_t kChunk = 1 << 14;     ///< elements per chunk of the fixed grid
inline constexpr std::int64_t kMinWork = 1 << 15;   ///< elements per parallel piece, at least
inline constexpr std::int64_t kBlock = 64;          ///< elements per vectorized block
inline constexpr int kLanes = 16;                   ///< independent accumulators of the reductions

/// The fixed chunk grid over `channels` rows of `inner` elements.
struct grid {
  std::int64_t channels, inner, per_channel;
  grid(std::int64_t c, std::int64_t n) : channels(c), inner(n), per_channel(n > 0 ? (n + kChunk - 1) / kChunk : 0) {}
  std::int64_t tasks() const { return channels * per_channel; }
  /// Calls f(task, channel, begin, end) for every chunk, in parallel.
  template <class F>
  void run(F&& f) const {
    const std::int64_t nt = tasks();
    if (nt <= 0) return;
    const std::int64_t len = std::min(inner, kChunk);
    const std::int64_t grain = std::max<std::int64_t>(1, kMinWork / std::max<std::int64_t>(len, 1));
    parallel_for(0, nt, grain, [&](std::int64_t t0, std::int64_t t1) {
      for (std::int64_t t = t0; t < t1; ++t) {
        const std::int64_t c = t / per_channel, k = t % per_channel;
        const std::int64_t b = c * inner + k * kChunk;
        const std::int64_t e = c * inner + std::min(inner, (k + 1) * kChunk);
        f(t, c, b, e);
      }
    });
  }
  /// out[c] += sum of partial[t] over the chunks of channel c, in chunk order.
  void reduce(const std::vector<double>& partial, double* out) const {
    for (std::int64_t c = 0; c < channels; ++c) {
      double s = 0.0;
      for (std::int64_t k = 0; k < per_channel; ++k) s += partial[static_cast<std::size_t>(c * per_channel + k)];
      out[c] += s;
    }
  }
};

/// Runs block(ptr offset, count) over [b, e) in full kBlock blocks then the tail.
template <class F>
inline void blocks(std::int64_t b, std::int64_t e, F&& block) {
  std::int64_t i = b;
  for (; i + kBlock <= e; i += kBlock) block(i, kBlock);
  if (i < e) block(i, e - i);
}

/// Sums lanes in fixed order.
inline double lane_sum(const double* acc) {
  double s = 0.0;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

// ---- uniform --------------------------------------------------------------------------------
template <class T>
inline void fq_forward_block(const T* __restrict x, T* __restrict y, std::int64_t n, T s, T inv, T z, T qmin,
                             T qmax) {
  for (std::int64_t i = 0; i < n; ++i) {
    const T q = std::min(std::max(std::nearbyint(x[i] * inv) + z, qmin), qmax);
    y[i] = (q - z) * s;
  }
}
template <class T>
inline void fq_backward_block(const T* __restrict x, const T* __restrict dy, T* __restrict dx, std::int64_t n,
                              T inv, T z, T qmin, T qmax) {
  for (std::int64_t i = 0; i < n; ++i) {
    const T q = std::nearbyint(x[i] * inv) + z;
    dx[i] += dy[i] * (static_cast<T>(q >= qmin) * static_cast<T>(q <= qmax));
  }
}
template <class T>
inline void fq_backward_write_block(const T* __restrict x, const T* __restrict dy, T* __restrict dx, std::int64_t n,
                                    T inv, T z, T qmin, T qmax) {
  for (std::int64_t i = 0; i < n; ++i) {
    const T q = std::nearbyint(x[i] * inv) + z;
    dx[i] = dy[i] * (static_cast<T>(q >= qmin) * static_cast<T>(q <= qmax));
  }
}

// ---- ranges ---------------------------------------------------------------------------------
/// min and max of x[0, n) (n >= 1); returns false when an element is NaN or infinite.
/// The lane loop must stay a loop: at -O3 GCC 12 unrolls it completely before the loop vectorizer
/// runs and the result is scalar code (about 5x the time in a QAT step's profile); `#pragma GCC
/// unroll 1` keeps it a 16-lane vector loop.
template <class T>
[[gnu::noinline]] bool minmax_range(const T* __restrict x, std::int64_t n, T& lo_out, T& hi_out) {
  T lo[kLanes], hi[kLanes], bad[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    lo[l] = hi[l] = x[0];
    bad[l] = T(0);
  }
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma GCC unroll 1
    for (int l = 0; l < kLanes; ++l) {
      const T v = x[i + l];
      lo[l] = v < lo[l] ? v : lo[l];
      hi[l] = v > hi[l] ? v : hi[l];
      bad[l] += v * T(0);  // NaN once any element is NaN or infinite
    }
  }
  for (int l = 0; i + l < n; ++l) {
    const T v = x[i + l];
    lo[l] = v < lo[l] ? v : lo[l];
    hi[l] = v > hi[l] ? v : hi[l];
    bad[l] += v * T(0);
  }
  bool finite = true;
  lo_out = lo[0];
  hi_out = hi[0];
  for (int l = 0; l < kLanes; ++l) {
    lo_out = lo[l] < lo_out ? lo[l] : lo_out;
    hi_out = hi[l] > hi_out ? hi[l] : hi_out;
    finite = finite && bad[l] == T(0);
  }
  return finite;
}

/// Reduction over a range with kLanes independent accumulators: elem(i, acc[lane]) for i in [0, n),
/// element i going to lane i % kLanes; the lanes are added in order at the end, so the result
/// depends on n and the data alone. The *_range functions take restrict pointers and are kept out
/// of line (called once per chunk: GCC vectorizes them reliably there, less so once inlined into
/// the parallel loop's lambda); their element
/// functions apply masks by multiplication (0 or 1 in T) rather than by selects, which GCC
/// vectorizes in every variant; so a clipped element contributes dy * 0 (a non-finite dy still
/// propagates).

// ---- LSQ ------------------------------------------------------------------------------------
template <class T>
inline void lsq_forward_block(const T* __restrict x, T* __restrict y, std::int64_t n, T s, T inv, T qn, T qp) {
  for (std::int64_t i = 0; i < n; ++i) y[i] = std::nearbyint(std::min(std::max(x[i] * inv, -qn), qp)) * s;
}
template <bool kDx, bool kDs, class T>
inline void lsq_backward_elem(T xv, T g, T* dxp, double& acc, T inv, T qn, T qp) {
  const T u = xv * inv;
  const T inside = static_cast<T>(u > -qn) * static_cast<T>(u < qp);
  if constexpr (kDx) *dxp += g * inside;
  if constexpr (kDs) {
    T uc = u > -qn ? u : -qn;  // NaN -> -qn, so NaN elements contribute 0
    uc = uc < qp ? uc : qp;
    const T d = inside * (std::nearbyint(uc) - uc) - static_cast<T>(u <= -qn) * qn + static_cast<T>(u >= qp) * qp;
    acc += static_cast<double>(g * d);
  }
}
template <bool kDx, bool kDs, class T>
[[gnu::noinline]] double lsq_backward_range(const T* __restrict x, const T* __restrict dy, T* __restrict dx,
                                            std::int64_t n, T inv, T qn, T qp) {
  double acc[kLanes] = {};
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l)
      lsq_backward_elem<kDx, kDs, T>(x[i + l], dy[i + l], kDx ? dx + i + l : nullptr, acc[l], inv, qn, qp);
  for (int l = 0; i + l < n; ++l)
    lsq_backward_elem<kDx, kDs, T>(x[i + l], dy[i + l], kDx ? dx + i + l : nullptr, acc[l], inv, qn, qp);
  return lane_sum(acc);
}

// ---- PACT -----------------------------------------------------------------------------------
template <class T>
inline void pact_forward_block(const T* __restrict x, T* __restrict y, std::int64_t n, T alpha, T s, T inv) {
  for (std::int64_t i = 0; i < n; ++i) y[i] = std::nearbyint(std::min(std::max(x[i], T(0)), alpha) * inv) * s;
}
template <bool kDx, bool kDa, class T>
inline void pact_backward_elem(T v, T g, T* dxp, double& acc, T alpha) {
  if constexpr (kDx) *dxp += g * (static_cast<T>(v >= T(0)) * static_cast<T>(v < alpha));
  if constexpr (kDa) acc += static_cast<double>(g * static_cast<T>(v >= alpha));
}
template <bool kDx, bool kDa, class T>
[[gnu::noinline]] double pact_backward_range(const T* __restrict x, const T* __restrict dy, T* __restrict dx,
                                             std::int64_t n, T alpha) {
  double acc[kLanes] = {};
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l)
      pact_backward_elem<kDx, kDa, T>(x[i + l], dy[i + l], kDx ? dx + i + l : nullptr, acc[l], alpha);
  for (int l = 0; i + l < n; ++l)
    pact_backward_elem<kDx, kDa, T>(x[i + l], dy[i + l], kDx ? dx + i + l : nullptr, acc[l], alpha);
  return lane_sum(acc);
}

// ---- binary ---------------------------------------------------------------------------------
template <class T>
inline void binary_forward_block(const T* __restrict x, T* __restrict y, std::int64_t n, T s) {
  for (std::int64_t i = 0; i < n; ++i) y[i] = x[i] < T(0) ? -s : (x[i] >= T(0) ? s : x[i]);  // NaN stays NaN
}
template <bool kDx, bool kDs, class T>
inline void binary_backward_elem(T xv, T g, T* dxp, double& acc, T inv) {
  const T u = xv * inv;
  const T inside = static_cast<T>(u > T(-1)) * static_cast<T>(u < T(1));
  if constexpr (kDx) *dxp += g * inside;
  if constexpr (kDs) {
    const T sg = static_cast<T>(xv >= T(0)) - static_cast<T>(xv < T(0));  // sign(0) = +1; NaN: 0
    T uc = u > T(-1) ? u : T(-1);                                          // NaN -> -1 (times inside = 0)
    uc = uc < T(1) ? uc : T(1);
    acc += static_cast<double>(g * (sg - inside * uc));
  }
}
template <bool kDx, bool kDs, class T>
[[gnu::noinline]] double binary_backward_range(const T* __restrict x, const T* __restrict dy, T* __restrict dx,
                                               std::int64_t n, T inv) {
  double acc[kLanes] = {};
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l)
      binary_backward_elem<kDx, kDs, T>(x[i + l], dy[i + l], kDx ? dx + i + l : nullptr, acc[l], inv);
  for (int l = 0; i + l < n; ++l)
    binary_backward_elem<kDx, kDs, T>(x[i + l], dy[i + l], kDx ? dx + i + l : nullptr, acc[l], inv);
  return lane_sum(acc);
}

// ---- mean |x| -------------------------------------------------------------------------------
template <class T>
[[gnu::noinline]] double abs_range(const T* __restrict x, std::int64_t n) {
  double acc[kLanes] = {};
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<double>(std::abs(x[i + l]));
  for (int l = 0; i + l < n; ++l) acc[l] += static_cast<double>(std::abs(x[i + l]));
  return lane_sum(acc);
}
template <class T>
inline void sign_block(const T* __restrict x, T* __restrict dx, std::int64_t n, T g) {
  for (std::int64_t i = 0; i < n; ++i) dx[i] += x[i] > T(0) ? g : (x[i] < T(0) ? -g : T(0));
}

// ---- noise ----------------------------------------------------------------------------------
/// Seed of chunk k's stream (a splitmix-style mix, so neighbouring chunks are decorrelated).
inline std::uint64_t noise_stream_seed(std::uint64_t seed, std::uint64_t k) {
  std::uint64_t z = seed + 0x9e3779b97f4a7c15ULL * (k + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
/// Next n uniforms in [-1/2, 1/2) of a stream: u = g.uniform() - 1/2, rounded to T.
template <class T>
inline void noise_fill(rng& g, T* u, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) u[i] = static_cast<T>(g.uniform() - 0.5);
}
inline constexpr std::int64_t kNoiseBuffer = 256;  ///< noise values generated at a time
static_assert(kNoiseBuffer % kLanes == 0 && kChunk % kNoiseBuffer == 0, "noise buffers keep the lane order");
template <class T>
inline void noise_forward_block(const T* __restrict x, const T* __restrict u, T* __restrict y, std::int64_t n, T s) {
  for (std::int64_t i = 0; i < n; ++i) y[i] = x[i] + s * u[i];
}
/// sum dy * u over [0, n) with acc's lanes continuing across calls (element i -> lane i % kLanes).
template <class T>
inline void noise_step_range(const T* __restrict dy, const T* __restrict u, double* __restrict acc, std::int64_t n) {
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<double>(dy[i + l] * u[i + l]);
  for (int l = 0; i + l < n; ++l) acc[l] += static_cast<double>(dy[i + l] * u[i + l]);
}

}  // namespace quant_detail

template <>
struct impl<cpu_t, op::fake_quant> {
  template <class T>
  static void forward(const T* x, T* y, std::int64_t channels, std::int64_t inner, const T* scale,
                      const T* zero_point, T q_min, T q_max) {
    const quant_detail::grid g(channels, inner);
    g.run([&](std::int64_t, std::int64_t c, std::int64_t b, std::int64_t e) {
      const T s = scale[c], inv = T(1) / s, z = zero_point[c];
      quant_detail::blocks(b, e, [&](std::int64_t i, std::int64_t n) {
        quant_detail::fq_forward_block<T>(x + i, y + i, n, s, inv, z, q_min, q_max);
      });
    });
  }
  template <class T>
  static void backward(const T* x, const T* dy, T* dx, std::int64_t channels, std::int64_t inner, const T* scale,
                       const T* zero_point, T q_min, T q_max, bool overwrite = false) {
    const quant_detail::grid g(channels, inner);
    g.run([&](std::int64_t, std::int64_t c, std::int64_t b, std::int64_t e) {
      const T inv = T(1) / scale[c], z = zero_point[c];
      quant_detail::blocks(b, e, [&](std::int64_t i, std::int64_t n) {
        if (overwrite) quant_detail::fq_backward_write_block<T>(x + i, dy + i, dx + i, n, inv, z, q_min, q_max);
        else quant_detail::fq_backward_block<T>(x + i, dy + i, dx + i, n, inv, z, q_min, q_max);
      });
    });
  }
};

template <>
struct impl<cpu_t, op::quant_range> {
  template <class T>
  static bool run(const T* x, std::int64_t channels, std::int64_t inner, T* lo, T* hi) {
    using namespace quant_detail;
    const grid g(channels, inner);
    const auto nt = static_cast<std::size_t>(g.tasks());
    std::vector<T> plo(nt), phi(nt);
    std::vector<unsigned char> pbad(nt, 0);
    g.run([&](std::int64_t t, std::int64_t, std::int64_t b, std::int64_t e) {
      const auto k = static_cast<std::size_t>(t);
      pbad[k] = minmax_range<T>(x + b, e - b, plo[k], phi[k]) ? 0 : 1;
    });
    bool finite = true;
    for (std::int64_t c = 0; c < channels; ++c) {
      for (std::int64_t k = 0; k < g.per_channel; ++k) {
        const auto t = static_cast<std::size_t>(c * g.per_channel + k);
        lo[c] = k == 0 ? plo[t] : std::min(lo[c], plo[t]);
        hi[c] = k == 0 ? phi[t] : std::max(hi[c], phi[t]);
        finite = finite && !pbad[t];
      }
    }
    return finite;
  }
};

template <>
struct impl<cpu_t, op::lsq_quant> {
  template <class T>
  static void forward(const T* x, T* y, std::int64_t channels, std::int64_t inner, const T* step, T q_n, T q_p) {
    const quant_detail::grid g(channels, inner);
    g.run([&](std::int64_t, std::int64_t c, std::int64_t b, std::int64_t e) {
      const T s = step[c], inv = T(1) / s;
      quant_detail::blocks(b, e, [&](std::int64_t i, std::int64_t n) {
        quant_detail::lsq_forward_block<T>(x + i, y + i, n, s, inv, q_n, q_p);
      });
    });
  }
  template <class T>
  static void backward(const T* x, const T* dy, T* dx, double* dstep, std::int64_t channels, std::int64_t inner,
                       const T* step, T q_n, T q_p) {
    if (dx && dstep) run<true, true>(x, dy, dx, dstep, channels, inner, step, q_n, q_p);
    else if (dx) run<true, false>(x, dy, dx, dstep, channels, inner, step, q_n, q_p);
    else if (dstep) run<false, true>(x, dy, dx, dstep, channels, inner, step, q_n, q_p);
  }

 private:
  template <bool kDx, bool kDs, class T>
  static void run(const T* x, const T* dy, T* dx, double* dstep, std::int64_t channels, std::int64_t inner,
                  const T* step, T q_n, T q_p) {
    using namespace quant_detail;
    const grid g(channels, inner);
    std::vector<double> partial(kDs ? static_cast<std::size_t>(g.tasks()) : 0);
    g.run([&](std::int64_t t, std::int64_t c, std::int64_t b, std::int64_t e) {
      const double r = lsq_backward_range<kDx, kDs, T>(x + b, dy + b, kDx ? dx + b : nullptr, e - b,
                                                       T(1) / step[c], q_n, q_p);
      if constexpr (kDs) partial[static_cast<std::size_t>(t)] = r;
    });
    if constexpr (kDs) g.reduce(partial, dstep);
  }
};

template <>
struct impl<cpu_t, op::pact_quant> {
  template <class T>
  static void forward(const T* x, T* y, std::int64_t n, T alpha, T levels) {
    const T s = alpha / levels, inv = T(1) / s;
    const quant_detail::grid g(1, n);
    g.run([&](std::int64_t, std::int64_t, std::int64_t b, std::int64_t e) {
      quant_detail::blocks(b, e, [&](std::int64_t i, std::int64_t m) {
        quant_detail::pact_forward_block<T>(x + i, y + i, m, alpha, s, inv);
      });
    });
  }
  template <class T>
  static void backward(const T* x, const T* dy, T* dx, double* dalpha, std::int64_t n, T alpha, T levels) {
    (void)levels;
    if (dx && dalpha) run<true, true>(x, dy, dx, dalpha, n, alpha);
    else if (dx) run<true, false>(x, dy, dx, dalpha, n, alpha);
    else if (dalpha) run<false, true>(x, dy, dx, dalpha, n, alpha);
  }

 private:
  template <bool kDx, bool kDa, class T>
  static void run(const T* x, const T* dy, T* dx, double* dalpha, std::int64_t n, T alpha) {
    using namespace quant_detail;
    const grid g(1, n);
    std::vector<double> partial(kDa ? static_cast<std::size_t>(g.tasks()) : 0);
    g.run([&](std::int64_t t, std::int64_t, std::int64_t b, std::int64_t e) {
      const double r = pact_backward_range<kDx, kDa, T>(x + b, dy + b, kDx ? dx + b : nullptr, e - b, alpha);
      if constexpr (kDa) partial[static_cast<std::size_t>(t)] = r;
    });
    if constexpr (kDa) g.reduce(partial, dalpha);
  }
};

template <>
struct impl<cpu_t, op::binary_quant> {
  template <class T>
  static void forward(const T* x, T* y, std::int64_t channels, std::int64_t inner, const T* step) {
    const quant_detail::grid g(channels, inner);
    g.run([&](std::int64_t, std::int64_t c, std::int64_t b, std::int64_t e) {
      const T s = step[c];
      quant_detail::blocks(b, e, [&](std::int64_t i, std::int64_t n) {
        quant_detail::binary_forward_block<T>(x + i, y + i, n, s);
      });
    });
  }
  template <class T>
  static void backward(const T* x, const T* dy, T* dx, double* dstep, std::int64_t channels, std::int64_t inner,
                       const T* step) {
    if (dx && dstep) run<true, true>(x, dy, dx, dstep, channels, inner, step);
    else if (dx) run<true, false>(x, dy, dx, dstep, channels, inner, step);
    else if (dstep) run<false, true>(x, dy, dx, dstep, channels, inner, step);
  }

 private:
  template <bool kDx, bool kDs, class T>
  static void run(const T* x, const T* dy, T* dx, double* dstep, std::int64_t channels, std::int64_t inner,
                  const T* step) {
    using namespace quant_detail;
    const grid g(channels, inner);
    std::vector<double> partial(kDs ? static_cast<std::size_t>(g.tasks()) : 0);
    g.run([&](std::int64_t t, std::int64_t c, std::int64_t b, std::int64_t e) {
      const double r = binary_backward_range<kDx, kDs, T>(x + b, dy + b, kDx ? dx + b : nullptr, e - b, T(1) / step[c]);
      if constexpr (kDs) partial[static_cast<std::size_t>(t)] = r;
    });
    if constexpr (kDs) g.reduce(partial, dstep);
  }
};

template <>
struct impl<cpu_t, op::mean_abs> {
  template <class T>
  static void forward(const T* x, std::int64_t channels, std::int64_t inner, T factor, T* out) {
    using namespace quant_detail;
    const grid g(channels, inner);
    std::vector<double> partial(static_cast<std::size_t>(g.tasks()));
    g.run([&](std::int64_t t, std::int64_t, std::int64_t b, std::int64_t e) {
      partial[static_cast<std::size_t>(t)] = abs_range<T>(x + b, e - b);
    });
    std::vector<double> sums(static_cast<std::size_t>(channels), 0.0);
    g.reduce(partial, sums.data());
    for (std::int64_t c = 0; c < channels; ++c)
      out[c] = inner > 0 ? static_cast<T>(static_cast<double>(factor) * sums[static_cast<std::size_t>(c)] /
                                          static_cast<double>(inner))
                         : T(0);
  }
  template <class T>
  static void backward(const T* x, const T* dout, T* dx, std::int64_t channels, std::int64_t inner, T factor) {
    const quant_detail::grid g(channels, inner);
    g.run([&](std::int64_t, std::int64_t c, std::int64_t b, std::int64_t e) {
      const T gc = factor * dout[c] / static_cast<T>(inner);
      quant_detail::blocks(b, e, [&](std::int64_t i, std::int64_t n) {
        quant_detail::sign_block<T>(x + i, dx + i, n, gc);
      });
    });
  }
};

template <>
struct impl<cpu_t, op::quant_noise> {
  template <class T>
  static void forward(const T* x, T* y, std::int64_t channels, std::int64_t inner, const T* step, std::uint64_t seed) {
    using namespace quant_detail;
    const grid g(channels, inner);
    g.run([&](std::int64_t t, std::int64_t c, std::int64_t b, std::int64_t e) {
      rng r(noise_stream_seed(seed, static_cast<std::uint64_t>(t)));
      const T s = step[c];
      T u[kNoiseBuffer];
      for (std::int64_t i0 = b; i0 < e; i0 += kNoiseBuffer) {
        const std::int64_t i1 = std::min(e, i0 + kNoiseBuffer);
        noise_fill<T>(r, u, i1 - i0);
        blocks(i0, i1, [&](std::int64_t i, std::int64_t n) {
          noise_forward_block<T>(x + i, u + (i - i0), y + i, n, s);
        });
      }
    });
  }
  template <class T>
  static void backward_step(const T* dy, double* dstep, std::int64_t channels, std::int64_t inner, std::uint64_t seed) {
    using namespace quant_detail;
    const grid g(channels, inner);
    std::vector<double> partial(static_cast<std::size_t>(g.tasks()));
    g.run([&](std::int64_t t, std::int64_t, std::int64_t b, std::int64_t e) {
      rng r(noise_stream_seed(seed, static_cast<std::uint64_t>(t)));
      T u[kNoiseBuffer];
      double acc[kLanes] = {};
      for (std::int64_t i0 = b; i0 < e; i0 += kNoiseBuffer) {
        const std::int64_t i1 = std::min(e, i0 + kNoiseBuffer);
        noise_fill<T>(r, u, i1 - i0);
        noise_step_range<T>(dy + i0, u, acc, i1 - i0);  // kNoiseBuffer is a multiple of kLanes
      }
      partial[static_cast<std::size_t>(t)] = lane_sum(acc);
    });
    g.reduce(partial, dstep);
  }
};

}  // namespace ghnq::backend
