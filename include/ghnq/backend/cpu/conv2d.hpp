/// \file
/// \brief CPU 2-D convolution kernels (NCHW input, OIHW weight): im2col + Eigen GEMM for dense and
/// grouped convolutions, a direct kernel for depthwise ones (one input channel per group).
///
/// Work is split with ghnq::parallel_for (oneTBB) over blocks of images; Eigen stays
/// single-threaded inside each task. Several images share one GEMM when the image is small, so
/// the GEMM sees at least a few hundred columns. Scratch buffers are allocated once per task,
/// never per image. Weight and bias gradients are reduced over a fixed, shape-determined set of
/// image chunks in a fixed order, so results do not depend on the number of threads.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "ghnq/backend/cpu/gemm.hpp"
#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/backend/ops.hpp"
#include "ghnq/backend/tags.hpp"
#include "ghnq/core/error.hpp"

namespace ghnq::backend {

/// Geometry of a 2-D convolution: input [n, cin, h, w], weight [cout, cin/groups, kh, kw],
/// output [n, cout, ho, wo] with ho = (h + 2 pad_h - dil_h (kh - 1) - 1) / stride_h + 1 (same for w).
/// Callers validate it (cin and cout divisible by groups, ho, wo >= 1).
struct conv2d_geometry {
  std::int64_t n = 0, cin = 0, h = 0, w = 0;
  std::int64_t cout = 0, kh = 1, kw = 1;
  std::int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1, groups = 1;
  std::int64_t ho = 0, wo = 0;

  /// Input channels per group.
  std::int64_t cin_g() const noexcept { return cin / groups; }
  /// Output channels per group.
  std::int64_t cout_g() const noexcept { return cout / groups; }
  /// Multiply-adds times two of the forward pass: 2 n cout ho wo (cin/groups) kh kw.
  double flops() const noexcept {
    return 2.0 * static_cast<double>(n) * static_cast<double>(cout) * static_cast<double>(ho * wo) *
           static_cast<double>(cin_g() * kh * kw);
  }
};

namespace op {
/// 2-D convolution (cross-correlation, as in PyTorch) over a `conv2d_geometry`.
/// \code
/// template <class T> static void forward(const conv2d_geometry& g, const T* x, const T* w,
///                                        const T* b /* nullable */, T* y);        // y =
/// template <class T> static void backward(const conv2d_geometry& g, const T* x, const T* w,
///                                         const T* dy, T* dx, T* dw, T* db);      // +=, each nullable
/// \endcode
/// All tensors are contiguous: x [n, cin, h, w], w [cout, cin/groups, kh, kw], b [cout],
/// y and dy [n, cout, ho, wo]. backward accumulates into the gradients that are not null.
struct conv2d {};
}  // namespace op

// Eigen's packet types are attributed vector types; using them as template arguments is fine.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif
namespace conv_detail {

/// Uninitialized, 64-byte aligned scratch array (one allocation, freed on scope exit).
template <class T>
class scratch {
 public:
  explicit scratch(std::int64_t n) {
    if (n <= 0) return;
    const std::size_t bytes = (static_cast<std::size_t>(n) * sizeof(T) + 63) / 64 * 64;
    p_ = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (!p_) throw std::bad_alloc();
  }
  ~scratch() { std::free(p_); }
  scratch(const scratch&) = delete;
  scratch& operator=(const scratch&) = delete;
  T* get() const noexcept { return p_; }

 private:
  T* p_ = nullptr;
};

/// ceil(a / b) for b > 0 and any sign of a.
inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

/// Range [lo, hi) of output positions o with o * stride + off inside [0, in); empty ranges have lo == hi.
inline void valid_range(std::int64_t off, std::int64_t stride, std::int64_t in, std::int64_t out, std::int64_t& lo,
                        std::int64_t& hi) {
  lo = std::max<std::int64_t>(0, ceil_div(-off, stride));
  hi = std::min<std::int64_t>(out, ceil_div(in - off, stride));
  if (hi < lo) hi = lo;
}

template <class T>
void zero(T* p, std::int64_t n) {
  if (n > 0) std::memset(p, 0, static_cast<std::size_t>(n) * sizeof(T));
}

/// True when im2col rows are one shifted contiguous copy of the input plane (stride 1, wo == w).
inline bool contiguous_rows(const conv2d_geometry& g) {
  return g.stride_h == 1 && g.stride_w == 1 && g.wo == g.w;
}

/// im2col of one image and one group, output rows [r0, r1): `src` holds cg planes [h, w]; row
/// (c kh + ki) kw + kj of the column matrix (stored at dst + row * ld, (r1 - r0) wo entries,
/// column (oh - r0) wo + ow) holds x[c, oh sh + ki dh - ph, ow sw + kj dw - pw], zero where that
/// falls in the padding.
template <class T>
void im2col(const conv2d_geometry& g, std::int64_t cg, const T* src, T* dst, std::int64_t ld, std::int64_t r0,
            std::int64_t r1) {
  const std::int64_t H = g.h, W = g.w, Wo = g.wo, Pc = (r1 - r0) * Wo, base = r0 * Wo;
  const bool fast = contiguous_rows(g);
  for (std::int64_t c = 0; c < cg; ++c) {
    const T* s = src + c * H * W;
    for (std::int64_t ki = 0; ki < g.kh; ++ki) {
      const std::int64_t ih0 = ki * g.dil_h - g.pad_h;
      std::int64_t lo, hi;
      valid_range(ih0, g.stride_h, H, g.ho, lo, hi);
      lo = std::max(lo, r0);
      hi = std::max(std::min(hi, r1), lo);
      for (std::int64_t kj = 0; kj < g.kw; ++kj) {
        T* d = dst + ((c * g.kh + ki) * g.kw + kj) * ld;
        const std::int64_t iw0 = kj * g.dil_w - g.pad_w;
        std::int64_t ow_lo, ow_hi;
        valid_range(iw0, g.stride_w, W, Wo, ow_lo, ow_hi);
        if (ow_lo == ow_hi || lo == hi) {
          zero(d, Pc);
          continue;
        }
        zero(d, (lo - r0) * Wo);
        zero(d + (hi - r0) * Wo, (r1 - hi) * Wo);
        if (fast) {
          // column index t (relative to the image) reads source index t + ih0 * W + iw0.
          const std::int64_t t0 = lo * Wo + ow_lo, t1 = (hi - 1) * Wo + ow_hi;
          std::memcpy(d + t0 - base, s + t0 + ih0 * W + iw0, static_cast<std::size_t>(t1 - t0) * sizeof(T));
          if (ow_lo > 0 || ow_hi < Wo) {
            for (std::int64_t oh = lo; oh < hi; ++oh) {
              T* row = d + (oh - r0) * Wo;
              for (std::int64_t ow = 0; ow < ow_lo; ++ow) row[ow] = T(0);
              for (std::int64_t ow = ow_hi; ow < Wo; ++ow) row[ow] = T(0);
            }
          }
        } else {
          for (std::int64_t oh = lo; oh < hi; ++oh) {
            T* row = d + (oh - r0) * Wo;
            const T* srow = s + (oh * g.stride_h + ih0) * W;  // input row; column ow sw + iw0
            zero(row, ow_lo);
            zero(row + ow_hi, Wo - ow_hi);
            if (g.stride_w == 1) {
              std::memcpy(row + ow_lo, srow + (ow_lo + iw0), static_cast<std::size_t>(ow_hi - ow_lo) * sizeof(T));
            } else {
              const std::int64_t sw = g.stride_w;
              for (std::int64_t ow = ow_lo; ow < ow_hi; ++ow) row[ow] = srow[ow * sw + iw0];
            }
          }
        }
      }
    }
  }
}

/// col2im (adjoint of im2col) for output rows [r0, r1), accumulating: dst planes += scattered
/// columns. May overwrite padding entries of `col` (scratch) with zeros.
template <class T>
void col2im_add(const conv2d_geometry& g, std::int64_t cg, T* col, std::int64_t ld, T* dst, std::int64_t r0,
                std::int64_t r1) {
  const std::int64_t H = g.h, W = g.w, Wo = g.wo, base = r0 * Wo;
  const bool fast = contiguous_rows(g);
  for (std::int64_t c = 0; c < cg; ++c) {
    T* s = dst + c * H * W;
    for (std::int64_t ki = 0; ki < g.kh; ++ki) {
      const std::int64_t ih0 = ki * g.dil_h - g.pad_h;
      std::int64_t lo, hi;
      valid_range(ih0, g.stride_h, H, g.ho, lo, hi);
      lo = std::max(lo, r0);
      hi = std::min(hi, r1);
      if (hi <= lo) continue;
      for (std::int64_t kj = 0; kj < g.kw; ++kj) {
        T* d = col + ((c * g.kh + ki) * g.kw + kj) * ld;
        const std::int64_t iw0 = kj * g.dil_w - g.pad_w;
        std::int64_t ow_lo, ow_hi;
        valid_range(iw0, g.stride_w, W, Wo, ow_lo, ow_hi);
        if (ow_lo == ow_hi) continue;
        if (fast) {
          if (ow_lo > 0 || ow_hi < Wo) {
            for (std::int64_t oh = lo; oh < hi; ++oh) {
              T* row = d + (oh - r0) * Wo;
              for (std::int64_t ow = 0; ow < ow_lo; ++ow) row[ow] = T(0);
              for (std::int64_t ow = ow_hi; ow < Wo; ++ow) row[ow] = T(0);
            }
          }
          const std::int64_t t0 = lo * Wo + ow_lo, n = (hi - 1) * Wo + ow_hi - t0;
          T* out = s + (t0 + ih0 * W + iw0);
          const T* in = d + (t0 - base);
          for (std::int64_t t = 0; t < n; ++t) out[t] += in[t];
        } else {
          const std::int64_t sw = g.stride_w;
          for (std::int64_t oh = lo; oh < hi; ++oh) {
            const T* row = d + (oh - r0) * Wo;
            T* srow = s + (oh * g.stride_h + ih0) * W;  // input row; column ow sw + iw0
            if (sw == 1) {
              T* out = srow + (ow_lo + iw0);
              const T* in = row + ow_lo;
              for (std::int64_t k = 0; k < ow_hi - ow_lo; ++k) out[k] += in[k];
            } else {
              for (std::int64_t ow = ow_lo; ow < ow_hi; ++ow) srow[ow * sw + iw0] += row[ow];
            }
          }
        }
      }
    }
  }
}

/// How a dense/grouped convolution is cut into GEMMs and tasks (depends on the shape only).
struct conv_plan {
  std::int64_t cg = 0, og = 0, K = 0, P = 0, HW = 0;
  std::int64_t nb = 1;      ///< images per GEMM
  std::int64_t blocks = 0;  ///< ceil(n / nb)
  std::int64_t rows = 0;    ///< output rows per GEMM when one image is cut into row tiles (nb == 1)
  std::int64_t tiles = 1;   ///< row tiles per image: ceil(ho / rows)
  std::int64_t col_elems = 0;  ///< size of the column-matrix scratch
  bool pointwise = false;   ///< 1x1, stride 1, no padding: the image itself is the column matrix

  /// Columns a GEMM should have at least, and the largest column matrix (elements) to build.
  static constexpr std::int64_t kTargetCols = 512;
  static constexpr std::int64_t kMaxColElems = std::int64_t(1) << 20;
  /// Upper bound on the number of weight-gradient partial sums (fixed, not the thread count).
  static constexpr std::int64_t kMaxChunks = 8;

  explicit conv_plan(const conv2d_geometry& g) {
    cg = g.cin_g();
    og = g.cout_g();
    K = cg * g.kh * g.kw;
    P = g.ho * g.wo;
    HW = g.h * g.w;
    pointwise = g.kh == 1 && g.kw == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h == 0 && g.pad_w == 0;
    nb = std::max<std::int64_t>(1, std::min<std::int64_t>(g.n, ceil_div(kTargetCols, std::max<std::int64_t>(P, 1))));
    while (nb > 1 && K * nb * P > kMaxColElems) --nb;
    blocks = g.n > 0 ? ceil_div(g.n, nb) : 0;
    // Large images: GEMMs over row tiles of about kTargetCols columns, so that the column
    // matrix is still in cache when the GEMM packs it.
    rows = g.ho;
    if (nb == 1 && !pointwise && P > kTargetCols) {
      const std::int64_t want = std::max<std::int64_t>(ceil_div(P, kTargetCols), ceil_div(K * P, kMaxColElems));
      rows = ceil_div(g.ho, std::min(want, g.ho));
    }
    tiles = ceil_div(g.ho, std::max<std::int64_t>(rows, 1));
    col_elems = pointwise && nb == 1 ? 0 : K * (tiles > 1 ? rows * g.wo : nb * P);
  }
  /// Number of weight-gradient chunks: at most kMaxChunks and at most ~64 Mi elements of partials.
  std::int64_t chunks(std::int64_t weight_elems) const {
    std::int64_t c = std::min(blocks, kMaxChunks);
    const std::int64_t budget = std::int64_t(1) << 26;
    while (c > 1 && c * weight_elems > budget) --c;
    return std::max<std::int64_t>(c, 1);
  }
};

// ---------------------------------------------------------------------------------------------
// Depthwise (one input channel per group, any channel multiplier): direct kernels on a padded
// copy of the plane. Stride 1 uses the "wide row" trick: outputs are computed on an ho x (w + 2 pw)
// grid, so every tap is a constant offset into the padded plane and all taps of a block of
// outputs are summed in registers; the extra columns are dropped.

struct dw_geom {
  std::int64_t Hp, Wp, padded;  // padded plane extents and allocation (with slack)
  std::int64_t L;               // wide output length ho * Wp (stride 1)
  std::int64_t reach;           // largest tap offset (kh - 1) dh Wp + (kw - 1) dw
  bool wide;                    // stride 1 in both directions
  explicit dw_geom(const conv2d_geometry& g) {
    Hp = g.h + 2 * g.pad_h;
    Wp = g.w + 2 * g.pad_w;
    reach = (g.kh - 1) * g.dil_h * Wp + (g.kw - 1) * g.dil_w;
    padded = Hp * Wp + (g.kw - 1) * g.dil_w + 16;
    L = g.ho * Wp;
    wide = g.stride_h == 1 && g.stride_w == 1;
  }
};

/// y[t] += sum_k wv[k] * src[t + off[k]] for t in [0, n): the taps of a block of 4 SIMD packets
/// are summed in registers (Eigen's packet primitives, so any ISA Eigen supports).
template <class T>
void taps_accumulate(const T* src, const std::int64_t* off, const T* wv, std::int64_t taps, T* y, std::int64_t n) {
  namespace ei = Eigen::internal;
  using pk = typename ei::packet_traits<T>::type;
  constexpr std::int64_t S = ei::packet_traits<T>::size;
  std::int64_t t = 0;
  for (; t + 4 * S <= n; t += 4 * S) {
    pk a0 = ei::ploadu<pk>(y + t), a1 = ei::ploadu<pk>(y + t + S), a2 = ei::ploadu<pk>(y + t + 2 * S),
       a3 = ei::ploadu<pk>(y + t + 3 * S);
    for (std::int64_t k = 0; k < taps; ++k) {
      const pk w = ei::pset1<pk>(wv[k]);
      const T* sk = src + t + off[k];
      a0 = ei::pmadd(w, ei::ploadu<pk>(sk), a0);
      a1 = ei::pmadd(w, ei::ploadu<pk>(sk + S), a1);
      a2 = ei::pmadd(w, ei::ploadu<pk>(sk + 2 * S), a2);
      a3 = ei::pmadd(w, ei::ploadu<pk>(sk + 3 * S), a3);
    }
    ei::pstoreu(y + t, a0);
    ei::pstoreu(y + t + S, a1);
    ei::pstoreu(y + t + 2 * S, a2);
    ei::pstoreu(y + t + 3 * S, a3);
  }
  for (; t + S <= n; t += S) {
    pk a = ei::ploadu<pk>(y + t);
    for (std::int64_t k = 0; k < taps; ++k) a = ei::pmadd(ei::pset1<pk>(wv[k]), ei::ploadu<pk>(src + t + off[k]), a);
    ei::pstoreu(y + t, a);
  }
  for (; t < n; ++t) {
    T a = y[t];
    for (std::int64_t k = 0; k < taps; ++k) a += wv[k] * src[t + off[k]];
    y[t] = a;
  }
}

/// sum_t a[t] b[t] with independent SIMD partial sums.
template <class T>
T dot(const T* a, const T* b, std::int64_t n) {
  namespace ei = Eigen::internal;
  using pk = typename ei::packet_traits<T>::type;
  constexpr std::int64_t S = ei::packet_traits<T>::size;
  pk s0 = ei::pset1<pk>(T(0)), s1 = s0;
  std::int64_t t = 0;
  for (; t + 2 * S <= n; t += 2 * S) {
    s0 = ei::pmadd(ei::ploadu<pk>(a + t), ei::ploadu<pk>(b + t), s0);
    s1 = ei::pmadd(ei::ploadu<pk>(a + t + S), ei::ploadu<pk>(b + t + S), s1);
  }
  T s = ei::predux(ei::padd(s0, s1));
  for (; t < n; ++t) s += a[t] * b[t];
  return s;
}

/// One step of a short copy with packet type `pk` (then its half packets): dst[t..] (+)= src[t..].
template <bool Add, class pk, class T>
void short_copy_step(T* dst, const T* src, std::int64_t n, std::int64_t& t) {
  namespace ei = Eigen::internal;
  constexpr std::int64_t S = ei::unpacket_traits<pk>::size;
  for (; t + S <= n; t += S) {
    if constexpr (Add)
      ei::pstoreu(dst + t, ei::padd(ei::ploadu<pk>(dst + t), ei::ploadu<pk>(src + t)));
    else
      ei::pstoreu(dst + t, ei::ploadu<pk>(src + t));
  }
  using half = typename ei::unpacket_traits<pk>::half;
  if constexpr (ei::unpacket_traits<half>::size < S) short_copy_step<Add, half>(dst, src, n, t);
}

/// dst[0, n) = src[0, n) (+= when Add) for the short rows of small images, without a library
/// call: full packets, then one masked packet where the ISA has them (AVX, AVX-512 float), else
/// half and quarter packets and at most a few scalars. Add never uses masked stores: a load that
/// overlaps a recent masked store (the next short row) cannot be store-forwarded and stalls.
template <bool Add = false, class T>
EIGEN_ALWAYS_INLINE void short_copy(T* dst, const T* src, std::int64_t n) {
  namespace ei = Eigen::internal;
  using pk = typename ei::packet_traits<T>::type;
  constexpr std::int64_t S = ei::packet_traits<T>::size;
  if constexpr (!Add && S > 1 && ei::unpacket_traits<pk>::masked_load_available &&
                ei::unpacket_traits<pk>::masked_store_available) {
    using mask_t = typename ei::unpacket_traits<pk>::mask_t;
    std::int64_t t = 0;
    for (; t + S <= n; t += S) {
      if constexpr (Add)
        ei::pstoreu(dst + t, ei::padd(ei::ploadu<pk>(dst + t), ei::ploadu<pk>(src + t)));
      else
        ei::pstoreu(dst + t, ei::ploadu<pk>(src + t));
    }
    if (t < n) {
      const auto m = static_cast<mask_t>((1u << (n - t)) - 1u);
      if constexpr (Add)
        ei::pstoreu(dst + t, ei::padd(ei::ploadu<pk>(dst + t, m), ei::ploadu<pk>(src + t, m)), m);
      else
        ei::pstoreu(dst + t, ei::ploadu<pk>(src + t, m), m);
    }
  } else {
    std::int64_t t = 0;
    short_copy_step<Add, pk>(dst, src, n, t);
    for (int r = 0; r < 3; ++r, ++t) {  // at most (smallest packet size - 1) elements remain
      if (t >= n) break;
      if constexpr (Add)
        dst[t] += src[t];
      else
        dst[t] = src[t];
    }
    GHNQ_ASSERT(t >= n);
  }
}

template <class pk, class T>
void short_zero_step(T* dst, std::int64_t n, std::int64_t& t) {
  namespace ei = Eigen::internal;
  constexpr std::int64_t S = ei::unpacket_traits<pk>::size;
  const pk z = ei::pset1<pk>(T(0));
  for (; t + S <= n; t += S) ei::pstoreu(dst + t, z);
  using half = typename ei::unpacket_traits<pk>::half;
  if constexpr (ei::unpacket_traits<half>::size < S) short_zero_step<half>(dst, n, t);
}

/// dst[0, n) = 0 for short runs, without a library call.
template <class T>
void short_zero(T* dst, std::int64_t n) {
  std::int64_t t = 0;
  short_zero_step<typename Eigen::internal::packet_traits<T>::type>(dst, n, t);
  for (int r = 0; r < 3; ++r, ++t) {
    if (t >= n) break;
    dst[t] = T(0);
  }
  GHNQ_ASSERT(t >= n);
}

/// Copy plane [h, w] into the interior of the padded plane [Hp, Wp]. The border (and the slack
/// after the plane) is never written here: callers zero the buffer once per task.
template <class T>
void pad_plane(const conv2d_geometry& g, const dw_geom& d, const T* src, T* dst) {
  T* base = dst + g.pad_h * d.Wp + g.pad_w;
  for (std::int64_t i = 0; i < g.h; ++i) short_copy(base + i * d.Wp, src + i * g.w, g.w);
}

/// dy plane [ho, wo] -> [ho, Wp] (wide stride-1 layout). The extra columns are never written
/// here: callers zero the buffer once per task.
template <class T>
void widen_plane(const conv2d_geometry& g, const dw_geom& d, const T* src, T* dst) {
  for (std::int64_t i = 0; i < g.ho; ++i) short_copy(dst + i * d.Wp, src + i * g.wo, g.wo);
}

/// Offsets of the taps in the padded plane: forward (+) or, for the adjoint, backward (-).
inline void tap_offsets(const conv2d_geometry& g, const dw_geom& d, std::int64_t sign, std::int64_t* off) {
  for (std::int64_t ki = 0; ki < g.kh; ++ki)
    for (std::int64_t kj = 0; kj < g.kw; ++kj) off[ki * g.kw + kj] = sign * (ki * g.dil_h * d.Wp + kj * g.dil_w);
}

/// Multiply-adds a depthwise task should do at least (amortizes its scratch allocation).
inline constexpr std::int64_t kTaskMacs = std::int64_t(1) << 17;
/// Planes padded ahead of use in the depthwise kernels.
inline constexpr std::int64_t kPlaneBatch = 8;

template <class T>
void depthwise_forward(const conv2d_geometry& g, const T* x, const T* w, const T* b, T* y) {
  const dw_geom d(g);
  const std::int64_t m = g.cout_g(), taps = g.kh * g.kw, P = g.ho * g.wo, planes = g.n * g.cin;
  const std::int64_t grain = std::max<std::int64_t>(1, kTaskMacs / std::max<std::int64_t>(1, m * P * taps));
  parallel_for(0, planes, grain, [&](std::int64_t first, std::int64_t last) {
    // Planes are padded a batch at a time, away from their use (no store-forwarding stalls).
    const std::int64_t stride = (d.padded + 15) / 16 * 16;
    scratch<T> xpads(kPlaneBatch * stride), yext(d.wide ? d.L : 0);
    zero(xpads.get(), kPlaneBatch * stride);
    scratch<std::int64_t> off(taps);
    tap_offsets(g, d, 1, off.get());
    for (std::int64_t pl = first; pl < last; ++pl) {
      const std::int64_t n = pl / g.cin, c = pl % g.cin;
      const std::int64_t slot = (pl - first) % kPlaneBatch;
      if (slot == 0)
        for (std::int64_t q = pl; q < std::min(last, pl + kPlaneBatch); ++q)
          pad_plane(g, d, x + q * g.h * g.w, xpads.get() + (q - pl) * stride);
      const T* xpad = xpads.get() + slot * stride;
      for (std::int64_t mi = 0; mi < m; ++mi) {
        const std::int64_t co = c * m + mi;
        const T* wk = w + co * taps;
        const T bias = b ? b[co] : T(0);
        T* yp = y + (n * g.cout + co) * P;
        if (d.wide) {
          T* ye = yext.get();
          std::fill_n(ye, d.L, bias);
          taps_accumulate(xpad, off.get(), wk, taps, ye, d.L);
          for (std::int64_t oh = 0; oh < g.ho; ++oh) short_copy(yp + oh * g.wo, ye + oh * d.Wp, g.wo);
        } else {
          const std::int64_t sw = g.stride_w;
          for (std::int64_t oh = 0; oh < g.ho; ++oh) {
            T* yrow = yp + oh * g.wo;
            for (std::int64_t ow = 0; ow < g.wo; ++ow) yrow[ow] = bias;
            for (std::int64_t ki = 0; ki < g.kh; ++ki) {
              const T* xrow = xpad + (oh * g.stride_h + ki * g.dil_h) * d.Wp;
              for (std::int64_t kj = 0; kj < g.kw; ++kj) {
                const T wv = wk[ki * g.kw + kj];
                const T* xs = xrow + kj * g.dil_w;
                for (std::int64_t ow = 0; ow < g.wo; ++ow) yrow[ow] += wv * xs[ow * sw];
              }
            }
          }
        }
      }
    }
  });
}

template <class T>
void depthwise_backward_data(const conv2d_geometry& g, const T* w, const T* dy, T* dx) {
  const dw_geom d(g);
  const std::int64_t m = g.cout_g(), taps = g.kh * g.kw, P = g.ho * g.wo, planes = g.n * g.cin;
  const std::int64_t grain = std::max<std::int64_t>(1, kTaskMacs / std::max<std::int64_t>(1, m * P * taps));
  parallel_for(0, planes, grain, [&](std::int64_t first, std::int64_t last) {
    // Wide layout: dx_wide[u] (u = i Wp + j', rows of the image, all Wp columns) gathers
    // w[k] * dy_wide[u + pad_h Wp - off_k]; dy_wide lives between zero margins of `reach` entries.
    const std::int64_t Lx = g.h * d.Wp;
    scratch<T> dxpad(d.wide ? 0 : d.padded), dxw(d.wide ? Lx : 0), dyb(d.wide ? d.L + 2 * d.reach + 16 : 0);
    zero(dyb.get(), d.wide ? d.L + 2 * d.reach + 16 : 0);
    scratch<std::int64_t> off(taps);
    tap_offsets(g, d, -1, off.get());
    for (std::int64_t pl = first; pl < last; ++pl) {
      const std::int64_t n = pl / g.cin, c = pl % g.cin;
      T* dxp = dx + pl * g.h * g.w;
      if (d.wide) {
        zero(dxw.get(), Lx);
        for (std::int64_t mi = 0; mi < m; ++mi) {
          const std::int64_t co = c * m + mi;
          widen_plane(g, d, dy + (n * g.cout + co) * P, dyb.get() + d.reach);
          taps_accumulate(dyb.get() + d.reach + g.pad_h * d.Wp, off.get(), w + co * taps, taps, dxw.get(), Lx);
        }
        for (std::int64_t i = 0; i < g.h; ++i) short_copy<true>(dxp + i * g.w, dxw.get() + i * d.Wp + g.pad_w, g.w);
        continue;
      }
      zero(dxpad.get(), d.padded);
      const std::int64_t sw = g.stride_w;
      for (std::int64_t mi = 0; mi < m; ++mi) {
        const std::int64_t co = c * m + mi;
        const T* wk = w + co * taps;
        const T* dyp = dy + (n * g.cout + co) * P;
        for (std::int64_t oh = 0; oh < g.ho; ++oh) {
          const T* dyrow = dyp + oh * g.wo;
          for (std::int64_t ki = 0; ki < g.kh; ++ki) {
            T* xrow = dxpad.get() + (oh * g.stride_h + ki * g.dil_h) * d.Wp;
            for (std::int64_t kj = 0; kj < g.kw; ++kj) {
              const T wv = wk[ki * g.kw + kj];
              T* xs = xrow + kj * g.dil_w;
              for (std::int64_t ow = 0; ow < g.wo; ++ow) xs[ow * sw] += wv * dyrow[ow];
            }
          }
        }
      }
      for (std::int64_t i = 0; i < g.h; ++i) {
        const T* src = dxpad.get() + (i + g.pad_h) * d.Wp + g.pad_w;
        T* dst = dxp + i * g.w;
        for (std::int64_t j = 0; j < g.w; ++j) dst[j] += src[j];
      }
    }
  });
}

/// dw[co] += sum over images; one task per output channel, images summed in order.
template <class T>
void depthwise_backward_weight(const conv2d_geometry& g, const T* x, const T* dy, T* dw) {
  const dw_geom d(g);
  const std::int64_t m = g.cout_g(), taps = g.kh * g.kw, P = g.ho * g.wo;
  const std::int64_t grain = std::max<std::int64_t>(1, kTaskMacs / std::max<std::int64_t>(1, g.n * P * taps));
  parallel_for(0, g.cout, grain, [&](std::int64_t first, std::int64_t last) {
    scratch<T> xpad(d.padded), dyext(d.wide ? d.L : 0), acc(taps);
    zero(xpad.get(), d.padded);
    zero(dyext.get(), d.wide ? d.L : 0);
    scratch<std::int64_t> off(taps);
    tap_offsets(g, d, 1, off.get());
    for (std::int64_t co = first; co < last; ++co) {
      const std::int64_t c = co / m;
      zero(acc.get(), taps);
      for (std::int64_t n = 0; n < g.n; ++n) {
        pad_plane(g, d, x + (n * g.cin + c) * g.h * g.w, xpad.get());
        const T* dyp = dy + (n * g.cout + co) * P;
        if (d.wide) {
          widen_plane(g, d, dyp, dyext.get());
          for (std::int64_t k = 0; k < taps; ++k) acc.get()[k] += dot(dyext.get(), xpad.get() + off.get()[k], d.L);
        } else {
          const std::int64_t sw = g.stride_w;
          for (std::int64_t ki = 0; ki < g.kh; ++ki)
            for (std::int64_t kj = 0; kj < g.kw; ++kj) {
              T s = T(0);
              for (std::int64_t oh = 0; oh < g.ho; ++oh) {
                const T* dyrow = dyp + oh * g.wo;
                const T* xs = xpad.get() + (oh * g.stride_h + ki * g.dil_h) * d.Wp + kj * g.dil_w;
                if (sw == 1) {
                  s += dot(dyrow, xs, g.wo);
                } else {
                  for (std::int64_t ow = 0; ow < g.wo; ++ow) s += dyrow[ow] * xs[ow * sw];
                }
              }
              acc.get()[ki * g.kw + kj] += s;
            }
        }
      }
      for (std::int64_t k = 0; k < taps; ++k) dw[co * taps + k] += acc.get()[k];
    }
  });
}

/// db[co] += sum of dy over images and positions; one task per channel range (fixed order).
template <class T>
void bias_backward(const conv2d_geometry& g, const T* dy, T* db) {
  const std::int64_t P = g.ho * g.wo;
  const std::int64_t grain = std::max<std::int64_t>(1, 32768 / std::max<std::int64_t>(1, g.n * P));
  parallel_for(0, g.cout, grain, [&](std::int64_t first, std::int64_t last) {
    for (std::int64_t co = first; co < last; ++co) {
      T s = T(0);
      for (std::int64_t n = 0; n < g.n; ++n)
        s += Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(dy + (n * g.cout + co) * P, P).sum();
      db[co] += s;
    }
  });
}

}  // namespace conv_detail
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

template <>
struct impl<cpu_t, op::conv2d> {
  using gemm = impl<cpu_t, op::gemm>;

  /// y = conv(x, w) + b (b may be null). See op::conv2d for the layouts.
  template <class T>
  static void forward(const conv2d_geometry& g, const T* x, const T* w, const T* b, T* y) {
    if (g.n == 0 || g.cout == 0) return;
    if (g.cin_g() == 1) {
      conv_detail::depthwise_forward(g, x, w, b, y);
      return;
    }
    const conv_detail::conv_plan p(g);
    parallel_for(0, p.blocks, 1, [&](std::int64_t first, std::int64_t last) {
      conv_detail::scratch<T> col(p.col_elems), ytmp(p.nb > 1 ? p.og * p.nb * p.P : 0);
      for (std::int64_t blk = first; blk < last; ++blk) {
        const std::int64_t n0 = blk * p.nb, cnt = std::min(p.nb, g.n - n0), L = cnt * p.P;
        for (std::int64_t gi = 0; gi < g.groups; ++gi) {
          const T* A = w + gi * p.og * p.K;
          const T* bias = b ? b + gi * p.og : nullptr;
          const T* xg = x + (n0 * g.cin + gi * p.cg) * p.HW;
          if (cnt == 1) {  // one image: GEMMs straight into y, over row tiles
            T* yg = y + (n0 * g.cout + gi * p.og) * p.P;
            if (bias)
              for (std::int64_t o = 0; o < p.og; ++o) std::fill_n(yg + o * p.P, p.P, bias[o]);
            const T beta = bias ? T(1) : T(0);
            if (p.pointwise) {
              gemm::run<T>(false, false, p.og, p.P, p.K, T(1), A, p.K, xg, p.P, beta, yg, p.P);
              continue;
            }
            for (std::int64_t r0 = 0; r0 < g.ho; r0 += p.rows) {
              const std::int64_t r1 = std::min(g.ho, r0 + p.rows), Lc = (r1 - r0) * g.wo;
              conv_detail::im2col(g, p.cg, xg, col.get(), Lc, r0, r1);
              gemm::run<T>(false, false, p.og, Lc, p.K, T(1), A, p.K, col.get(), Lc, beta, yg + r0 * g.wo, p.P);
            }
            continue;
          }
          // several images: one GEMM over their columns, then scatter (+ bias) into y
          for (std::int64_t i = 0; i < cnt; ++i)
            conv_detail::im2col(g, p.cg, xg + i * g.cin * p.HW, col.get() + i * p.P, L, 0, g.ho);
          gemm::run<T>(false, false, p.og, L, p.K, T(1), A, p.K, col.get(), L, T(0), ytmp.get(), L);
          for (std::int64_t i = 0; i < cnt; ++i)
            for (std::int64_t o = 0; o < p.og; ++o) {
              const T* src = ytmp.get() + o * L + i * p.P;
              T* dst = y + ((n0 + i) * g.cout + gi * p.og + o) * p.P;
              const T bv = bias ? bias[o] : T(0);
              for (std::int64_t t = 0; t < p.P; ++t) dst[t] = src[t] + bv;
            }
        }
      }
    });
  }

  /// dx += dL/dx, dw += dL/dw, db += dL/db for the gradient dy of the output; null pointers are
  /// skipped. x is read only for dw, w only for dx.
  template <class T>
  static void backward(const conv2d_geometry& g, const T* x, const T* w, const T* dy, T* dx, T* dw, T* db) {
    if (g.n == 0 || g.cout == 0) return;
    if (db) conv_detail::bias_backward(g, dy, db);
    if (!dx && !dw) return;
    if (g.cin_g() == 1) {
      if (dx) conv_detail::depthwise_backward_data(g, w, dy, dx);
      if (dw) conv_detail::depthwise_backward_weight(g, x, dy, dw);
      return;
    }
    const conv_detail::conv_plan p(g);
    const std::int64_t wsize = g.cout * p.K;
    const std::int64_t chunks = dw ? p.chunks(wsize) : p.blocks;
    // Weight-gradient partial sums, one per chunk (the only chunk writes into dw directly).
    conv_detail::scratch<T> partial(dw && chunks > 1 ? chunks * wsize : 0);
    parallel_for(0, chunks, 1, [&](std::int64_t cfirst, std::int64_t clast) {
      conv_detail::scratch<T> col(p.col_elems), dyb(p.nb > 1 ? p.og * p.nb * p.P : 0);
      for (std::int64_t c = cfirst; c < clast; ++c) {
        T* dwc = nullptr;
        if (dw) {
          dwc = chunks > 1 ? partial.get() + c * wsize : dw;
          if (chunks > 1) conv_detail::zero(dwc, wsize);
        }
        const std::int64_t bfirst = p.blocks * c / chunks, blast = p.blocks * (c + 1) / chunks;
        for (std::int64_t blk = bfirst; blk < blast; ++blk)
          block_backward(g, p, blk, x, w, dy, dx, dwc, col.get(), dyb.get());
      }
    });
    if (dw && chunks > 1) {
      const T* part = partial.get();
      parallel_for(0, wsize, 4096, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t c = 0; c < chunks; ++c) {
          const T* pc = part + c * wsize;
          for (std::int64_t i = first; i < last; ++i) dw[i] += pc[i];
        }
      });
    }
  }

 private:
  template <class T>
  static void block_backward(const conv2d_geometry& g, const conv_detail::conv_plan& p, std::int64_t blk, const T* x,
                             const T* w, const T* dy, T* dx, T* dw, T* col, T* dyb) {
    const std::int64_t n0 = blk * p.nb, cnt = std::min(p.nb, g.n - n0), L = cnt * p.P;
    for (std::int64_t gi = 0; gi < g.groups; ++gi) {
      const T* Wg = w + gi * p.og * p.K;
      const T* xg = x + (n0 * g.cin + gi * p.cg) * p.HW;
      T* dxg = dx ? dx + (n0 * g.cin + gi * p.cg) * p.HW : nullptr;
      T* dwg = dw ? dw + gi * p.og * p.K : nullptr;
      if (cnt == 1) {  // one image, over row tiles: dY is read in place
        const T* DY = dy + (n0 * g.cout + gi * p.og) * p.P;
        if (p.pointwise) {
          if (dwg) gemm::run<T>(false, true, p.og, p.K, p.P, T(1), DY, p.P, xg, p.P, T(1), dwg, p.K);
          if (dxg) gemm::run<T>(true, false, p.cg, p.P, p.og, T(1), Wg, p.K, DY, p.P, T(1), dxg, p.P);
          continue;
        }
        for (std::int64_t r0 = 0; r0 < g.ho; r0 += p.rows) {
          const std::int64_t r1 = std::min(g.ho, r0 + p.rows), Lc = (r1 - r0) * g.wo;
          const T* DYt = DY + r0 * g.wo;
          if (dwg) {  // dW_g += dY col^T
            conv_detail::im2col(g, p.cg, xg, col, Lc, r0, r1);
            gemm::run<T>(false, true, p.og, p.K, Lc, T(1), DYt, p.P, col, Lc, T(1), dwg, p.K);
          }
          if (dxg) {  // dcol = W_g^T dY, then col2im
            gemm::run<T>(true, false, p.K, Lc, p.og, T(1), Wg, p.K, DYt, p.P, T(0), col, Lc);
            conv_detail::col2im_add(g, p.cg, col, Lc, dxg, r0, r1);
          }
        }
        continue;
      }
      // several images: gather their dY columns, one GEMM each for dW and dcol
      for (std::int64_t i = 0; i < cnt; ++i)
        for (std::int64_t o = 0; o < p.og; ++o)
          std::memcpy(dyb + o * L + i * p.P, dy + ((n0 + i) * g.cout + gi * p.og + o) * p.P,
                      static_cast<std::size_t>(p.P) * sizeof(T));
      if (dwg) {
        for (std::int64_t i = 0; i < cnt; ++i)
          conv_detail::im2col(g, p.cg, xg + i * g.cin * p.HW, col + i * p.P, L, 0, g.ho);
        gemm::run<T>(false, true, p.og, p.K, L, T(1), dyb, L, col, L, T(1), dwg, p.K);
      }
      if (dxg) {
        gemm::run<T>(true, false, p.K, L, p.og, T(1), Wg, p.K, dyb, L, T(0), col, L);
        for (std::int64_t i = 0; i < cnt; ++i)
          conv_detail::col2im_add(g, p.cg, col + i * p.P, L, dxg + i * g.cin * p.HW, 0, g.ho);
      }
    }
  }
};

}  // namespace ghnq::backend
