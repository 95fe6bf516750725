/// \file
/// \brief CPU 2-D convolution kernels (NCHW input, OIHW weight): direct "wide rows" register-tiled
/// kernels for dense and grouped convolutions of stride 1 and 2 (no im2col, no GEMM packing),
/// im2col + Eigen GEMM for the other shapes, and direct kernels for depthwise ones (one input
/// channel per group).
///
/// Work is split with ghnq::parallel_for (oneTBB) over blocks of images; Eigen stays
/// single-threaded inside each task. Small images are stacked (direct kernels) or share one GEMM
/// (im2col), so every kernel sees at least a few hundred positions. Scratch buffers are allocated
/// once per task, never per image. Weight and bias gradients are reduced over a fixed,
/// shape-determined set of image chunks in a fixed order, so results do not depend on the number
/// of threads. `conv_detail::direct_conv_mode` selects where the direct kernels run (tests
/// compare them with the im2col path).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

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
///                                         const T* dy, T* dx, T* dw, T* db,       // +=, each nullable
///                                         bool overwrite_dx = false);             // dx = instead of +=
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
void depthwise_backward_data(const conv2d_geometry& g, const T* w, const T* dy, T* dx, bool overwrite = false) {
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
        for (std::int64_t i = 0; i < g.h; ++i) {
          if (overwrite) short_copy<false>(dxp + i * g.w, dxw.get() + i * d.Wp + g.pad_w, g.w);
          else short_copy<true>(dxp + i * g.w, dxw.get() + i * d.Wp + g.pad_w, g.w);
        }
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
        for (std::int64_t j = 0; j < g.w; ++j) dst[j] = overwrite ? src[j] : dst[j] + src[j];
      }
    }
  });
}

/// acc[j] += sum_{t < L} y[t] x[off[j] + t] for TC taps at once: y is loaded once per packet
/// for all of them (one load per multiply-add instead of two).
template <int TC, class T>
void taps_dot(const T* y, const T* x, const std::int64_t* off, std::int64_t L, T* acc) {
  namespace ei = Eigen::internal;
  using pk = typename ei::packet_traits<T>::type;
  constexpr std::int64_t S = ei::packet_traits<T>::size;
  pk a[TC];
  const T* xs[TC];
#pragma GCC unroll 16
  for (int j = 0; j < TC; ++j) {
    a[j] = ei::pset1<pk>(T(0));
    xs[j] = x + off[j];
  }
  std::int64_t t = 0;
  for (; t + S <= L; t += S) {
    const pk d = ei::ploadu<pk>(y + t);
#pragma GCC unroll 16
    for (int j = 0; j < TC; ++j) a[j] = ei::pmadd(d, ei::ploadu<pk>(xs[j] + t), a[j]);
  }
#pragma GCC unroll 16
  for (int j = 0; j < TC; ++j) {
    T r = ei::predux(a[j]);
    for (std::int64_t u = t; u < L; ++u) r += y[u] * xs[j][u];
    acc[j] += r;
  }
}

/// taps_dot over any number of taps, in groups of up to 9 (3x3 in one pass).
template <class T>
void taps_dot_all(const T* y, const T* x, const std::int64_t* off, std::int64_t taps, std::int64_t L, T* acc) {
  for (std::int64_t k = 0; k < taps; k += 9) {
    switch (std::min<std::int64_t>(9, taps - k)) {
      case 9: taps_dot<9>(y, x, off + k, L, acc + k); break;
      case 8: taps_dot<8>(y, x, off + k, L, acc + k); break;
      case 7: taps_dot<7>(y, x, off + k, L, acc + k); break;
      case 6: taps_dot<6>(y, x, off + k, L, acc + k); break;
      case 5: taps_dot<5>(y, x, off + k, L, acc + k); break;
      case 4: taps_dot<4>(y, x, off + k, L, acc + k); break;
      case 3: taps_dot<3>(y, x, off + k, L, acc + k); break;
      case 2: taps_dot<2>(y, x, off + k, L, acc + k); break;
      default: taps_dot<1>(y, x, off + k, L, acc + k); break;
    }
  }
}

/// dw[co] += sum over images, in order; a task owns a range of output channels and walks the
/// images in the outer loop, so it reads x and dy as contiguous runs of planes.
template <class T>
void depthwise_backward_weight(const conv2d_geometry& g, const T* x, const T* dy, T* dw) {
  const dw_geom d(g);
  const std::int64_t m = g.cout_g(), taps = g.kh * g.kw, P = g.ho * g.wo;
  const std::int64_t grain = std::max<std::int64_t>(1, kTaskMacs / std::max<std::int64_t>(1, g.n * P * taps));
  parallel_for(0, g.cout, grain, [&](std::int64_t first, std::int64_t last) {
    scratch<T> xpad(d.padded), dyext(d.wide ? d.L : 0), acc((last - first) * taps);
    zero(xpad.get(), d.padded);
    zero(dyext.get(), d.wide ? d.L : 0);
    zero(acc.get(), (last - first) * taps);
    scratch<std::int64_t> off(taps);
    tap_offsets(g, d, 1, off.get());
    for (std::int64_t n = 0; n < g.n; ++n) {
      std::int64_t padded_c = -1;
      for (std::int64_t co = first; co < last; ++co) {
        const std::int64_t c = co / m;
        if (c != padded_c) {
          pad_plane(g, d, x + (n * g.cin + c) * g.h * g.w, xpad.get());
          padded_c = c;
        }
        const T* dyp = dy + (n * g.cout + co) * P;
        T* a = acc.get() + (co - first) * taps;
        if (d.wide) {
          widen_plane(g, d, dyp, dyext.get());
          taps_dot_all(dyext.get(), xpad.get(), off.get(), taps, d.L, a);
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
              a[ki * g.kw + kj] += s;
            }
        }
      }
    }
    for (std::int64_t co = first; co < last; ++co)
      for (std::int64_t k = 0; k < taps; ++k) dw[co * taps + k] += acc.get()[(co - first) * taps + k];
  });
}

// ---------------------------------------------------------------------------------------------
// Direct dense convolution for stride 1 ("wide rows" implicit GEMM: no im2col, no GEMM packing).
// The input planes of a block of B images are copied into a zero-padded layout of row pitch
// P >= w + pad_w (the right padding of a row doubles as the left padding of the next), image b
// starting pad_h + b Hs rows down with Hs = h + pad_h (the zero rows between images double as
// bottom and top padding). Output row oh of image b is wide row b Hs + oh; output (oh, ow) is
// computed at the wide index t = (b Hs + oh) P + ow, where tap (ki, kj) of input channel c reads
// the padded buffer at t + c plane + ki dh P + kj dw: a GEMM whose right-hand rows are shifted
// views of the padded input. Positions outside the outputs are computed and dropped. A register
// tile holds kMR output channels x kNT packets of positions over the whole reduction (every input
// channel and tap); the weights are packed once per call. The data gradient is the same kernel
// run on the padded output gradient with flipped, transposed weights (stride 1 makes its slot
// height ho + (kh - 1) dh - pad_h equal Hs, so one dy layout serves both gradients); the weight
// gradient sums dy_wide[o, t] x_pad[c, t + off_k] over t in kWO x kWK register tiles, block by
// block of images in a fixed order.

#ifdef EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS
inline constexpr int kVecRegs = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS;
#else
inline constexpr int kVecRegs = 16;
#endif
/// Register tiles: output channels x packets of the forward tile, and output channels x
/// (channel, tap) pairs of the weight-gradient tile (24 accumulators with 32 vector registers).
inline constexpr int kMR = kVecRegs >= 32 ? 8 : 4;
inline constexpr int kNT = kVecRegs >= 32 ? 3 : 2;
inline constexpr int kWO = kVecRegs >= 32 ? 4 : 2;
inline constexpr int kWK = kVecRegs >= 32 ? 6 : 4;
/// Wide positions a block of images should reach (images are stacked until it does, as long as
/// the block's padded input and output planes stay within kBlockElems elements: L2-resident).
inline constexpr std::int64_t kBlockPositions = 2048;
inline constexpr std::int64_t kBlockElems = std::int64_t(1) << 17;
/// Weight-gradient partial sums of the direct kernels: image ranges (fixed, not the thread count).
inline constexpr std::int64_t kDirectChunks = 4;

/// Image ranges of the weight gradient (at most kDirectChunks, at most ~64 Mi partial elements),
/// and the block size adjusted to cut every range into equal blocks of at most `want` images.
inline void direct_blocks(std::int64_t n, std::int64_t wsize, std::int64_t want, std::int64_t& chunks,
                          std::int64_t& B) {
  chunks = std::max<std::int64_t>(1, std::min(n, kDirectChunks));
  while (chunks > 1 && chunks * wsize > (std::int64_t(1) << 26)) --chunks;
  const std::int64_t per = ceil_div(n, chunks);
  const std::int64_t blocks = ceil_div(per, std::max<std::int64_t>(1, std::min(want, per)));
  B = ceil_div(per, blocks);
}

/// Keeps a packet in a register: GCC otherwise folds its load into every FMA that reads it,
/// which turns one load per packet into one per use (the weight-gradient tile becomes
/// load-bound).
template <class Packet>
EIGEN_ALWAYS_INLINE void in_register(Packet& v) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && defined(__SSE2__)
  __asm__("" : "+v"(v));
#else
  (void)v;
#endif
}

/// Whether impl<cpu_t, op::conv2d> may use the direct kernels: 0 never, 1 where they pay off
/// (default), 2 wherever they apply (tests compare both paths).
inline int direct_conv_mode = 1;

template <class T>
constexpr std::int64_t lanes() {
  return Eigen::internal::packet_traits<T>::size;
}
inline std::int64_t round_up(std::int64_t a, std::int64_t b) { return (a + b - 1) / b * b; }

/// Wide layout of up to B stacked planes [hi, wi] (one channel of B images) read by a stride-1
/// kh x kw kernel (dilation dh, dw; padding ph, pw) that produces `rows` output rows per image.
/// Element (i, j) of image b lives at top + (b Hs + i) P + j of its channel's plane, top =
/// ph P + pw; everything else is zero.
struct wide_layout {
  std::int64_t P = 0, Hs = 0, B = 1, top = 0, rows = 0;
  std::int64_t reach = 0;  ///< largest tap offset (kh - 1) dh P + (kw - 1) dw
  std::int64_t plane = 0;  ///< elements per channel plane (every read stays inside it)
  std::int64_t hi = 0, wi = 0;
  wide_layout(std::int64_t hi_, std::int64_t wi_, std::int64_t rows_, std::int64_t ph, std::int64_t pw,
              std::int64_t kh, std::int64_t kw, std::int64_t dh, std::int64_t dw, std::int64_t pitch,
              std::int64_t slot, std::int64_t images)
      : P(pitch), Hs(slot), B(images), top(ph * pitch + pw), rows(rows_), hi(hi_), wi(wi_) {
    reach = (kh - 1) * dh * P + (kw - 1) * dw;
    plane = round_up(std::max(length(B, 64) + reach, top + B * Hs * P), 16);
  }
  /// Computed output positions for `count` images: up to the last output row, in whole packets.
  std::int64_t length(std::int64_t count, std::int64_t S) const { return round_up(((count - 1) * Hs + rows) * P, S); }
  /// The plane extends to at least n elements (reads of another user of the same buffer).
  void cover(std::int64_t n) { plane = std::max(plane, round_up(n, 16)); }
  /// True when one image's layout is the dense plane itself (no padding, pitch == width).
  bool dense(std::int64_t S) const { return B == 1 && top == 0 && P == wi && reach == 0 && (hi * wi) % S == 0; }
  /// Copy planes src + b stride [hi, wi] (b < count) into their places in dst; with count < B
  /// the slots of the missing images are zeroed (stale values would enter sums over all positions).
  template <class T>
  void load(const T* src, std::int64_t stride, std::int64_t count, T* dst) const {
    for (std::int64_t b = 0; b < count; ++b)
      for (std::int64_t i = 0; i < hi; ++i) short_copy(dst + top + (b * Hs + i) * P, src + b * stride + i * wi, wi);
    if (count < B) zero(dst + top + count * Hs * P, (B - count) * Hs * P);
  }
};

/// y[r ldy + t + j S] (=, or += when Accum) acc[r][j] (+ bias[r]) for the kMR x NT register tile
/// of positions [t0, t0 + NT S): sum over k < K of wp[k kMR + r] * x[koff[k] + t0 + j S].
/// Only rows r < rows are stored.
template <int NT, bool Accum, class T>
void direct_tile(const T* x, const std::int64_t* koff, std::int64_t K, const T* wp, const T* bias, int rows, T* y,
                 std::int64_t ldy) {
  namespace ei = Eigen::internal;
  using pk = typename ei::packet_traits<T>::type;
  constexpr std::int64_t S = ei::packet_traits<T>::size;
  pk acc[kMR][NT];
#pragma GCC unroll 8
  for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NT; ++j) acc[r][j] = ei::pset1<pk>(T(0));
  for (std::int64_t k = 0; k < K; ++k) {
    const T* src = x + koff[k];
    pk v[NT];
#pragma GCC unroll 4
    for (int j = 0; j < NT; ++j) {
      v[j] = ei::ploadu<pk>(src + j * S);
      in_register(v[j]);
    }
    const T* w = wp + k * kMR;
#pragma GCC unroll 8
    for (int r = 0; r < kMR; ++r) {
      const pk wr = ei::pset1<pk>(w[r]);
#pragma GCC unroll 4
      for (int j = 0; j < NT; ++j) acc[r][j] = ei::pmadd(wr, v[j], acc[r][j]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kMR; ++r) {
    if (r >= rows) break;
    T* yr = y + r * ldy;
    const pk b = ei::pset1<pk>(bias ? bias[r] : T(0));
#pragma GCC unroll 4
    for (int j = 0; j < NT; ++j) {
      pk v = ei::padd(acc[r][j], b);
      if constexpr (Accum) v = ei::padd(v, ei::ploadu<pk>(yr + j * S));
      ei::pstoreu(yr + j * S, v);
    }
  }
}

/// out[o, t] (=, or += when Accum) for o < outs and t < L: the register tiles over every group of
/// kMR output channels. wpk holds the packed weights [ceil(outs / kMR)][K][kMR].
template <bool Accum, class T>
void direct_run(const T* xpad, const std::int64_t* koff, std::int64_t K, const T* wpk, const T* bias,
                std::int64_t outs, std::int64_t L, T* out, std::int64_t ldo) {
  constexpr std::int64_t S = lanes<T>();
  for (std::int64_t o0 = 0; o0 < outs; o0 += kMR) {
    const T* wp = wpk + (o0 / kMR) * K * kMR;
    const T* bt = bias ? bias + o0 : nullptr;
    const int rows = static_cast<int>(std::min<std::int64_t>(kMR, outs - o0));
    T* yo = out + o0 * ldo;
    std::int64_t t = 0;
    for (; t + kNT * S <= L; t += kNT * S) direct_tile<kNT, Accum>(xpad + t, koff, K, wp, bt, rows, yo + t, ldo);
    for (; t < L; t += S) direct_tile<1, Accum>(xpad + t, koff, K, wp, bt, rows, yo + t, ldo);
  }
}

/// Packed weights of the forward tiles: wpk[ot][k][r] = w[(ot kMR + r) K + k] (0 past `outs`).
template <class T>
void pack_forward_weights(const T* w, std::int64_t outs, std::int64_t K, T* wpk) {
  for (std::int64_t o0 = 0; o0 < outs; o0 += kMR)
    for (std::int64_t k = 0; k < K; ++k)
      for (int r = 0; r < kMR; ++r)
        wpk[(o0 / kMR * K + k) * kMR + r] = o0 + r < outs ? w[(o0 + r) * K + k] : T(0);
}

/// Packed weights of the data gradient (a forward conv of dy with flipped, transposed weights):
/// wpk[ct][o taps + q][r] = w[o, ct kMR + r, taps - 1 - q] of one group (og x cg x taps).
template <class T>
void pack_data_weights(const T* w, std::int64_t og, std::int64_t cg, std::int64_t taps, T* wpk) {
  const std::int64_t K = og * taps;
  for (std::int64_t c0 = 0; c0 < cg; c0 += kMR)
    for (std::int64_t o = 0; o < og; ++o)
      for (std::int64_t q = 0; q < taps; ++q)
        for (int r = 0; r < kMR; ++r)
          wpk[(c0 / kMR * K + o * taps + q) * kMR + r] =
              c0 + r < cg ? w[(o * cg + c0 + r) * taps + (taps - 1 - q)] : T(0);
}

/// koff[c taps + ki kw + kj] = c plane + ki dh P + kj dw.
inline void direct_offsets(std::int64_t channels, std::int64_t plane, std::int64_t kh, std::int64_t kw,
                           std::int64_t dh, std::int64_t dw, std::int64_t P, std::int64_t* koff) {
  for (std::int64_t c = 0; c < channels; ++c)
    for (std::int64_t ki = 0; ki < kh; ++ki)
      for (std::int64_t kj = 0; kj < kw; ++kj) koff[(c * kh + ki) * kw + kj] = c * plane + ki * dh * P + kj * dw;
}

/// dst[o, i, :wo] (=, or += when Add) wide[o, i P, :wo] (+ bias[o]) for o < outs, i < ho.
template <bool Add, class T>
void direct_compact(const T* wide, std::int64_t ldw, std::int64_t P, std::int64_t outs, std::int64_t ho,
                    std::int64_t wo, const T* bias, T* dst) {
  for (std::int64_t o = 0; o < outs; ++o) {
    const T* src = wide + o * ldw;
    T* d = dst + o * ho * wo;
    if (bias) {
      const T b = bias[o];
      for (std::int64_t i = 0; i < ho; ++i)
        for (std::int64_t j = 0; j < wo; ++j) {
          if constexpr (Add) d[i * wo + j] += src[i * P + j] + b;
          else d[i * wo + j] = src[i * P + j] + b;
        }
    } else {
      for (std::int64_t i = 0; i < ho; ++i) short_copy<Add>(d + i * wo, src + i * P, wo);
    }
  }
}

/// out[i kWK + j] = sum over images m < count and t < L of dyr[i][m sy + t] xr[j][m sx + t]
/// (packets of partial sums, then reduced; L is a multiple of the packet size).
template <class T>
void dw_tile(const T* const* dyr, const T* const* xr, std::int64_t L, std::int64_t count, std::int64_t sy,
             std::int64_t sx, T* out) {
  namespace ei = Eigen::internal;
  using pk = typename ei::packet_traits<T>::type;
  constexpr std::int64_t S = ei::packet_traits<T>::size;
  pk acc[kWO][kWK];
#pragma GCC unroll 8
  for (int i = 0; i < kWO; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < kWK; ++j) acc[i][j] = ei::pset1<pk>(T(0));
  for (std::int64_t m = 0; m < count; ++m) {
    const std::int64_t oy = m * sy, ox = m * sx;
    for (std::int64_t t = 0; t < L; t += S) {
      pk d[kWO];
#pragma GCC unroll 8
      for (int i = 0; i < kWO; ++i) d[i] = ei::ploadu<pk>(dyr[i] + oy + t);
#pragma GCC unroll 8
      for (int j = 0; j < kWK; ++j) {
        pk xv = ei::ploadu<pk>(xr[j] + ox + t);
        in_register(xv);
#pragma GCC unroll 8
        for (int i = 0; i < kWO; ++i) acc[i][j] = ei::pmadd(d[i], xv, acc[i][j]);
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < kWO; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < kWK; ++j) out[i * kWK + j] = ei::predux(acc[i][j]);
}

/// dW[o, k] += sum over `count` images (strides sy, sx) and t < L of dyw[o plane_y + t]
/// xb[koff[k] + t] for o < og, k < K, in kWO x kWK register tiles (tile: kWO kWK scratch).
template <class T>
void direct_weight_grad(const T* dyw, std::int64_t plane_y, std::int64_t og, const T* xb, const std::int64_t* koff,
                        std::int64_t K, std::int64_t L, std::int64_t count, std::int64_t sy, std::int64_t sx, T* dwg,
                        T* tile) {
  const T* dyr[kWO];
  const T* xr[kWK];
  for (std::int64_t o0 = 0; o0 < og; o0 += kWO) {
    for (int i = 0; i < kWO; ++i) dyr[i] = dyw + std::min<std::int64_t>(o0 + i, og - 1) * plane_y;
    for (std::int64_t k0 = 0; k0 < K; k0 += kWK) {
      for (int j = 0; j < kWK; ++j) xr[j] = xb + koff[std::min<std::int64_t>(k0 + j, K - 1)];
      dw_tile(dyr, xr, L, count, sy, sx, tile);  // rows past og / K repeat the last one: dropped
      for (int i = 0; i < kWO && o0 + i < og; ++i)
        for (int j = 0; j < kWK && k0 + j < K; ++j) dwg[(o0 + i) * K + k0 + j] += tile[i * kWK + j];
    }
  }
}

/// How a stride-1 dense convolution runs on the direct kernels (depends on the shape only).
struct direct_plan {
  bool ok = false;  ///< the direct kernels apply and (mode 1) pay off
  std::int64_t cg = 0, og = 0, taps = 0, K = 0, Kb = 0;
  std::int64_t ph_b = 0, pw_b = 0;  ///< padding of the data gradient as a forward conv of dy
  std::int64_t Hs = 0;              ///< rows per image slot: h + pad_h (= ho + ph_b)
  std::int64_t B = 1;               ///< images per block
  std::int64_t chunks = 1;          ///< image ranges of the weight-gradient partial sums

  direct_plan(const conv2d_geometry& g, std::int64_t S) {
    if (direct_conv_mode == 0 || g.stride_h != 1 || g.stride_w != 1 || g.n == 0) return;
    cg = g.cin_g();
    og = g.cout_g();
    if (cg < 2) return;  // depthwise: its own kernels
    taps = g.kh * g.kw;
    K = cg * taps;
    Kb = og * taps;
    ph_b = (g.kh - 1) * g.dil_h - g.pad_h;
    pw_b = (g.kw - 1) * g.dil_w - g.pad_w;
    if (ph_b < 0 || pw_b < 0) return;  // more padding than the kernel reach: im2col path
    Hs = g.h + g.pad_h;
    const std::int64_t P = std::max(g.w + g.pad_w, g.wo + pw_b);
    const std::int64_t fit = kBlockElems / ((cg + og) * Hs * P);
    direct_blocks(g.n, g.cout * K, std::max<std::int64_t>(1, std::min(ceil_div(kBlockPositions, Hs * P), fit)), chunks,
                  B);
    // 1x1 without padding over whole packets: one image per block, x and dy read in place
    if (taps == 1 && g.pad_h == 0 && g.pad_w == 0 && (g.h * g.w) % S == 0) B = 1;
    if (direct_conv_mode == 2) {
      ok = true;
      return;
    }
    // Computed positions per output (padding columns and rows are computed and dropped): the
    // direct kernels run near the GEMM peak, the im2col path at 50-65 % of it (measured: direct
    // wins up to about twice the work, e.g. 7x7 on 8x8 images, and loses on 7x7 on 4x4).
    const double waste = static_cast<double>(B > 1 ? Hs * P : round_up(g.ho * P, S)) /
                         static_cast<double>(g.ho * g.wo);
    ok = waste <= 2.0 && og >= 4 && K >= 8;
  }
  /// Row pitch, shared by the x, dy and dx layouts.
  std::int64_t pitch(const conv2d_geometry& g) const { return std::max(g.w + g.pad_w, g.wo + pw_b); }
};

template <class T>
void direct_forward(const conv2d_geometry& g, const direct_plan& p, const T* x, const T* w, const T* b, T* y) {
  constexpr std::int64_t S = lanes<T>();
  const std::int64_t HW = g.h * g.w, Po = g.ho * g.wo;
  const wide_layout lx(g.h, g.w, g.ho, g.pad_h, g.pad_w, g.kh, g.kw, g.dil_h, g.dil_w, p.pitch(g), p.Hs, p.B);
  // 1x1 without padding, one image of whole packets: x is its own layout and y its own output.
  const bool dense = lx.dense(S);
  const std::int64_t plane = dense ? HW : lx.plane, Lfull = lx.length(p.B, S);
  const std::int64_t og_pad = round_up(p.og, kMR);
  scratch<T> wpk(g.groups * og_pad * p.K);
  for (std::int64_t gi = 0; gi < g.groups; ++gi)
    pack_forward_weights(w + gi * p.og * p.K, p.og, p.K, wpk.get() + gi * og_pad * p.K);
  scratch<std::int64_t> koff(p.K);
  direct_offsets(p.cg, plane, g.kh, g.kw, g.dil_h, g.dil_w, lx.P, koff.get());
  parallel_for(0, ceil_div(g.n, p.B), 1, [&](std::int64_t first, std::int64_t last) {
    scratch<T> xpad(dense ? 0 : p.cg * plane), ywide(dense ? 0 : og_pad * Lfull);
    zero(xpad.get(), dense ? 0 : p.cg * plane);
    for (std::int64_t blk = first; blk < last; ++blk) {
      const std::int64_t n0 = blk * p.B, cnt = std::min(p.B, g.n - n0), L = lx.length(cnt, S);
      for (std::int64_t gi = 0; gi < g.groups; ++gi) {
        const T* xg = x + (n0 * g.cin + gi * p.cg) * HW;
        T* yg = y + (n0 * g.cout + gi * p.og) * Po;
        const T* bg = b ? b + gi * p.og : nullptr;
        const T* wg = wpk.get() + gi * og_pad * p.K;
        if (dense) {
          direct_run<false>(xg, koff.get(), p.K, wg, bg, p.og, L, yg, Po);
          continue;
        }
        for (std::int64_t c = 0; c < p.cg; ++c) lx.load(xg + c * HW, g.cin * HW, cnt, xpad.get() + c * plane);
        direct_run<false>(xpad.get(), koff.get(), p.K, wg, static_cast<const T*>(nullptr), p.og, L, ywide.get(),
                          Lfull);
        for (std::int64_t i = 0; i < cnt; ++i)
          direct_compact<false>(ywide.get() + i * p.Hs * lx.P, Lfull, lx.P, p.og, g.ho, g.wo, bg,
                                yg + i * g.cout * Po);
      }
    }
  });
}

/// dx += and dw += of a stride-1 convolution on the direct kernels. Images are cut into `chunks`
/// fixed ranges; each sums its weight gradient block by block into its own partial (the only
/// chunk writes into dw), and the partials are added in chunk order: no dependence on threads.
template <class T>
void direct_backward(const conv2d_geometry& g, const direct_plan& p, const T* x, const T* w, const T* dy, T* dx,
                     T* dw, std::int64_t chunks, bool overwrite) {
  constexpr std::int64_t S = lanes<T>();
  const std::int64_t HW = g.h * g.w, Po = g.ho * g.wo, P = p.pitch(g);
  // dy as the input of the data-gradient conv (padding ph_b, pw_b; h output rows per image) and,
  // from its `top` on, as the wide output gradient of the weight-gradient sums.
  wide_layout ly(g.ho, g.wo, g.h, p.ph_b, p.pw_b, g.kh, g.kw, g.dil_h, g.dil_w, P, p.Hs, p.B);
  const wide_layout lx(g.h, g.w, g.ho, g.pad_h, g.pad_w, g.kh, g.kw, g.dil_h, g.dil_w, P, p.Hs, p.B);
  ly.cover(ly.top + lx.length(p.B, S));
  const bool dense_y = ly.dense(S), dense_x = lx.dense(S);  // 1x1, no padding, one image
  const std::int64_t plane_y = dense_y ? Po : ly.plane, plane_x = dense_x ? HW : lx.plane;
  const std::int64_t Ly_full = ly.length(p.B, S);
  const std::int64_t cg_pad = round_up(p.cg, kMR), wsize = g.cout * p.K;
  scratch<T> wpk(dx ? g.groups * cg_pad * p.Kb : 0);
  scratch<std::int64_t> koff_b(dx ? p.Kb : 0), koff_w(dw ? p.K : 0);
  if (dx) {
    for (std::int64_t gi = 0; gi < g.groups; ++gi)
      pack_data_weights(w + gi * p.og * p.K, p.og, p.cg, p.taps, wpk.get() + gi * cg_pad * p.Kb);
    direct_offsets(p.og, plane_y, g.kh, g.kw, g.dil_h, g.dil_w, P, koff_b.get());
  }
  if (dw) direct_offsets(p.cg, plane_x, g.kh, g.kw, g.dil_h, g.dil_w, P, koff_w.get());
  scratch<T> partial(dw && chunks > 1 ? chunks * wsize : 0);
  auto weight_grad = [&](const T* dyw, std::int64_t sy, const T* xb, std::int64_t sx, std::int64_t L,
                         std::int64_t count, T* dwg, T* tile) {
    direct_weight_grad(dyw, plane_y, p.og, xb, koff_w.get(), p.K, L, count, sy, sx, dwg, tile);
  };
  parallel_for(0, chunks, 1, [&](std::int64_t cfirst, std::int64_t clast) {
    const bool copy_y = !dense_y, copy_x = dw && !dense_x;
    scratch<T> ypad(copy_y ? p.og * plane_y : 0), xpad(copy_x ? p.cg * plane_x : 0),
        dxwide(dx && !(dense_x && dense_y) ? cg_pad * Ly_full : 0), tile(kWO * kWK);
    zero(ypad.get(), copy_y ? p.og * plane_y : 0);
    zero(xpad.get(), copy_x ? p.cg * plane_x : 0);
    for (std::int64_t c = cfirst; c < clast; ++c) {
      T* dwc = nullptr;
      if (dw) {
        dwc = chunks > 1 ? partial.get() + c * wsize : dw;
        if (chunks > 1) zero(dwc, wsize);
      }
      const std::int64_t nfirst = g.n * c / chunks, nlast = g.n * (c + 1) / chunks;
      if (dense_x && dense_y) {  // 1x1 without padding: everything in place, one image at a time
        for (std::int64_t gi = 0; gi < g.groups; ++gi) {
          if (dx)
            for (std::int64_t n = nfirst; n < nlast; ++n) {
              const T* yn = dy + (n * g.cout + gi * p.og) * Po;
              const T* wg = wpk.get() + gi * cg_pad * p.Kb;
              T* dxn = dx + (n * g.cin + gi * p.cg) * HW;
              if (overwrite) direct_run<false>(yn, koff_b.get(), p.Kb, wg, static_cast<const T*>(nullptr), p.cg, HW, dxn, HW);
              else direct_run<true>(yn, koff_b.get(), p.Kb, wg, static_cast<const T*>(nullptr), p.cg, HW, dxn, HW);
            }
          if (dw && nlast > nfirst)
            weight_grad(dy + (nfirst * g.cout + gi * p.og) * Po, g.cout * Po, x + (nfirst * g.cin + gi * p.cg) * HW,
                        g.cin * HW, HW, nlast - nfirst, dwc + gi * p.og * p.K, tile.get());
        }
        continue;
      }
      for (std::int64_t n0 = nfirst; n0 < nlast; n0 += p.B) {
        const std::int64_t cnt = std::min(p.B, nlast - n0);
        for (std::int64_t gi = 0; gi < g.groups; ++gi) {
          const T* dyg = dy + (n0 * g.cout + gi * p.og) * Po;
          const T* yb = dyg;  // dy in its padded layout
          if (copy_y) {
            for (std::int64_t o = 0; o < p.og; ++o) ly.load(dyg + o * Po, g.cout * Po, cnt, ypad.get() + o * plane_y);
            yb = ypad.get();
          }
          if (dx) {
            T* dxg = dx + (n0 * g.cin + gi * p.cg) * HW;
            const T* wg = wpk.get() + gi * cg_pad * p.Kb;
            const std::int64_t L = ly.length(cnt, S);
            direct_run<false>(yb, koff_b.get(), p.Kb, wg, static_cast<const T*>(nullptr), p.cg, L, dxwide.get(),
                              Ly_full);
            for (std::int64_t i = 0; i < cnt; ++i) {
              T* dxi = dxg + i * g.cin * HW;
              const T* src = dxwide.get() + i * p.Hs * P;
              if (overwrite) direct_compact<false>(src, Ly_full, P, p.cg, g.h, g.w, static_cast<const T*>(nullptr), dxi);
              else direct_compact<true>(src, Ly_full, P, p.cg, g.h, g.w, static_cast<const T*>(nullptr), dxi);
            }
          }
          if (!dw) continue;
          const T* xb = x + (n0 * g.cin + gi * p.cg) * HW;
          if (copy_x) {
            for (std::int64_t ci = 0; ci < p.cg; ++ci) lx.load(xb + ci * HW, g.cin * HW, cnt, xpad.get() + ci * plane_x);
            xb = xpad.get();
          }
          // wide output gradient (pitch P) from dy's `top` on
          weight_grad(yb + (dense_y ? 0 : ly.top), 0, xb, 0, lx.length(cnt, S), 1, dwc + gi * p.og * p.K, tile.get());
        }
      }
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

// ---------------------------------------------------------------------------------------------
// Stride 2 on the direct kernels (polyphase). Input channel c is split into its four phase
// planes x[c, u::2, v::2] (u, v in {0, 1}), stacked in the wide layout like stride-1 inputs:
// tap (ki, kj) reads phase (e_h mod 2, e_w mod 2) with e_h = ki - pad_h, e_w = kj - pad_w at the
// constant offset (floor(e_h / 2), floor(e_w / 2)) from output (oh, ow), so the forward and the
// weight gradient are stride-1 problems over 4 cg phase planes. The data gradient of each
// phase (u, v) of dx is a stride-1 correlation of dy with the taps of that phase.

inline std::int64_t floor_half(std::int64_t e) { return e >= 0 ? e / 2 : -((1 - e) / 2); }

struct stride2_plan {
  bool ok = false;
  std::int64_t cg = 0, og = 0, taps = 0, K = 0;
  std::int64_t hq = 0, wq = 0;  ///< phase plane extents: ceil(h / 2), ceil(w / 2)
  std::int64_t fh0 = 0, fh1 = 0, fw0 = 0, fw1 = 0;  ///< range of floor(e / 2) over the taps
  // phase planes of x (forward, weight gradient): element (b, i, j) at top + (b Hs + i) P + j
  std::int64_t Th = 0, Tw = 0, P = 0, Hs = 0, B = 1, chunks = 1;
  // dy for the data gradient: element (b, oh, ow) at top2 + (b Hs2 + oh) P2 + ow
  std::int64_t Dh = 0, Dw = 0, P2 = 0, Hs2 = 0;
  bool used[4] = {false, false, false, false};  ///< phases (u 2 + v) that some tap reads

  stride2_plan(const conv2d_geometry& g, std::int64_t S) {
    if (direct_conv_mode == 0 || g.stride_h != 2 || g.stride_w != 2 || g.dil_h != 1 || g.dil_w != 1 || g.n == 0)
      return;
    cg = g.cin_g();
    og = g.cout_g();
    if (cg < 2) return;  // depthwise: its own kernels
    taps = g.kh * g.kw;
    K = cg * taps;
    hq = (g.h + 1) / 2;
    wq = (g.w + 1) / 2;
    fh0 = floor_half(-g.pad_h);
    fh1 = floor_half(g.kh - 1 - g.pad_h);
    fw0 = floor_half(-g.pad_w);
    fw1 = floor_half(g.kw - 1 - g.pad_w);
    for (std::int64_t ki = 0; ki < g.kh; ++ki)
      for (std::int64_t kj = 0; kj < g.kw; ++kj) {
        const std::int64_t eh = ki - g.pad_h, ew = kj - g.pad_w;
        used[(eh - 2 * floor_half(eh)) * 2 + (ew - 2 * floor_half(ew))] = true;
      }
    Th = std::max<std::int64_t>(0, -fh0);
    Tw = std::max<std::int64_t>(0, -fw0);
    const std::int64_t Rh = std::max<std::int64_t>(0, g.ho - 1 + fh1 - (hq - 1));
    const std::int64_t Rw = std::max<std::int64_t>(0, g.wo - 1 + fw1 - (wq - 1));
    P = std::max(wq + std::max(Tw, Rw), g.wo);
    Hs = std::max(hq + std::max(Th, Rh), g.ho);
    Dh = std::max<std::int64_t>(0, fh1);
    Dw = std::max<std::int64_t>(0, fw1);
    const std::int64_t Rh2 = std::max<std::int64_t>(0, hq - 1 - fh0 - (g.ho - 1));
    const std::int64_t Rw2 = std::max<std::int64_t>(0, wq - 1 - fw0 - (g.wo - 1));
    P2 = std::max(g.wo + std::max(Dw, Rw2), wq);
    Hs2 = std::max(g.ho + std::max(Dh, Rh2), hq);
    const std::int64_t fit = kBlockElems / ((4 * cg + og) * Hs * P);
    direct_blocks(g.n, g.cout * K, std::max<std::int64_t>(1, std::min(ceil_div(kBlockPositions, Hs * P), fit)), chunks,
                  B);
    if (direct_conv_mode == 2) {
      ok = true;
      return;
    }
    const double waste = static_cast<double>(B > 1 ? Hs * P : round_up(g.ho * P, S)) /
                         static_cast<double>(g.ho * g.wo);
    ok = waste <= 2.0 && og >= 4 && K >= 4;
  }
  std::int64_t top() const { return Th * P + Tw; }
  std::int64_t top2() const { return Dh * P2 + Dw; }
  /// Output positions of `count` stacked images (forward, weight gradient) / of the dx phases.
  std::int64_t length(const conv2d_geometry& g, std::int64_t count, std::int64_t S) const {
    return round_up(((count - 1) * Hs + g.ho) * P, S);
  }
  std::int64_t length2(std::int64_t count, std::int64_t S) const {
    return round_up(((count - 1) * Hs2 + hq) * P2, S);
  }
  std::int64_t plane_x(const conv2d_geometry& g, std::int64_t S) const {
    const std::int64_t reach = (Th + fh1) * P + (Tw + fw1);
    return round_up(std::max(length(g, B, S) + reach, top() + B * Hs * P), 16);
  }
  std::int64_t plane_w(const conv2d_geometry& g, std::int64_t S) const {
    return round_up(std::max(length(g, B, S), B * Hs * P), 16);
  }
  std::int64_t plane_y2(std::int64_t S) const {
    const std::int64_t reach2 = (Dh - fh0) * P2 + (Dw - fw0);
    return round_up(std::max(length2(B, S) + reach2, top2() + B * Hs2 * P2), 16);
  }
  /// Phase planes of input channels [0, cg) of `count` images (image stride `stride`) into dst
  /// (plane q = (c 2 + u) 2 + v at q plane); slots of missing images are zeroed.
  template <class T>
  void load_phases(const conv2d_geometry& g, const T* x, std::int64_t stride, std::int64_t count, T* dst,
                   std::int64_t plane) const {
    for (std::int64_t c = 0; c < cg; ++c)
      for (std::int64_t u = 0; u < 2; ++u)
        for (std::int64_t v = 0; v < 2; ++v) {
          if (!used[u * 2 + v]) continue;  // never read (e.g. 1x1: only phase (0, 0))
          T* q = dst + ((c * 2 + u) * 2 + v) * plane + top();
          for (std::int64_t b = 0; b < count; ++b) {
            const T* src = x + b * stride + c * g.h * g.w;
            for (std::int64_t i = 0; 2 * i + u < g.h; ++i) {
              const T* row = src + (2 * i + u) * g.w + v;
              T* d = q + (b * Hs + i) * P;
              for (std::int64_t j = 0; 2 * j + v < g.w; ++j) d[j] = row[2 * j];
            }
          }
          if (count < B) zero(q + count * Hs * P, (B - count) * Hs * P);
        }
  }
  /// dy planes [0, og) of `count` images into dst: element (b, oh, ow) at top + (b hs + oh) p + ow.
  template <class T>
  void load_dy(const conv2d_geometry& g, const T* dy, std::int64_t stride, std::int64_t count, T* dst,
               std::int64_t plane, std::int64_t top_, std::int64_t hs, std::int64_t p) const {
    const std::int64_t Po = g.ho * g.wo;
    for (std::int64_t o = 0; o < og; ++o) {
      T* q = dst + o * plane + top_;
      for (std::int64_t b = 0; b < count; ++b)
        for (std::int64_t i = 0; i < g.ho; ++i) short_copy(q + (b * hs + i) * p, dy + b * stride + o * Po + i * g.wo, g.wo);
      if (count < B) zero(q + count * hs * p, (B - count) * hs * p);
    }
  }
};

template <class T>
void stride2_forward(const conv2d_geometry& g, const stride2_plan& p, const T* x, const T* w, const T* b, T* y) {
  constexpr std::int64_t S = lanes<T>();
  const std::int64_t HW = g.h * g.w, Po = g.ho * g.wo, plane = p.plane_x(g, S), Lfull = p.length(g, p.B, S);
  const std::int64_t og_pad = round_up(p.og, kMR);
  scratch<T> wpk(g.groups * og_pad * p.K);
  for (std::int64_t gi = 0; gi < g.groups; ++gi)
    pack_forward_weights(w + gi * p.og * p.K, p.og, p.K, wpk.get() + gi * og_pad * p.K);
  scratch<std::int64_t> koff(p.K);
  for (std::int64_t c = 0; c < p.cg; ++c)
    for (std::int64_t ki = 0; ki < g.kh; ++ki)
      for (std::int64_t kj = 0; kj < g.kw; ++kj) {
        const std::int64_t eh = ki - g.pad_h, ew = kj - g.pad_w, fh = floor_half(eh), fw = floor_half(ew);
        const std::int64_t q = (c * 2 + (eh - 2 * fh)) * 2 + (ew - 2 * fw);
        koff.get()[(c * g.kh + ki) * g.kw + kj] = q * plane + (p.Th + fh) * p.P + (p.Tw + fw);
      }
  parallel_for(0, ceil_div(g.n, p.B), 1, [&](std::int64_t first, std::int64_t last) {
    scratch<T> xph(4 * p.cg * plane), ywide(og_pad * Lfull);
    zero(xph.get(), 4 * p.cg * plane);
    for (std::int64_t blk = first; blk < last; ++blk) {
      const std::int64_t n0 = blk * p.B, cnt = std::min(p.B, g.n - n0);
      for (std::int64_t gi = 0; gi < g.groups; ++gi) {
        p.load_phases(g, x + (n0 * g.cin + gi * p.cg) * HW, g.cin * HW, cnt, xph.get(), plane);
        direct_run<false>(xph.get(), koff.get(), p.K, wpk.get() + gi * og_pad * p.K, static_cast<const T*>(nullptr),
                          p.og, p.length(g, cnt, S), ywide.get(), Lfull);
        for (std::int64_t i = 0; i < cnt; ++i)
          direct_compact<false>(ywide.get() + i * p.Hs * p.P, Lfull, p.P, p.og, g.ho, g.wo, b ? b + gi * p.og : nullptr,
                                y + ((n0 + i) * g.cout + gi * p.og) * Po);
      }
    }
  });
}

template <class T>
void stride2_backward(const conv2d_geometry& g, const stride2_plan& p, const T* x, const T* w, const T* dy, T* dx,
                      T* dw, std::int64_t chunks, bool overwrite) {
  constexpr std::int64_t S = lanes<T>();
  const std::int64_t HW = g.h * g.w, Po = g.ho * g.wo, wsize = g.cout * p.K;
  const std::int64_t plane_x = p.plane_x(g, S), plane_w = p.plane_w(g, S), plane_y2 = p.plane_y2(S);
  const std::int64_t L2full = p.length2(p.B, S), cg_pad = round_up(p.cg, kMR);
  // weight gradient: offsets of the forward taps in the phase planes
  scratch<std::int64_t> koff(dw ? p.K : 0);
  if (dw)
    for (std::int64_t c = 0; c < p.cg; ++c)
      for (std::int64_t ki = 0; ki < g.kh; ++ki)
        for (std::int64_t kj = 0; kj < g.kw; ++kj) {
          const std::int64_t eh = ki - g.pad_h, ew = kj - g.pad_w, fh = floor_half(eh), fw = floor_half(ew);
          const std::int64_t q = (c * 2 + (eh - 2 * fh)) * 2 + (ew - 2 * fw);
          koff.get()[(c * g.kh + ki) * g.kw + kj] = q * plane_x + (p.Th + fh) * p.P + (p.Tw + fw);
        }
  // data gradient: per phase (u, v) of dx, its taps, their dy offsets and packed weights
  struct phase {
    std::int64_t u = 0, v = 0, K = 0;
    std::vector<std::int64_t> koff;
    std::vector<T> wpk;  // [groups][cg_pad / kMR][K][kMR]
  };
  std::vector<phase> phases;
  if (dx)
    for (std::int64_t u = 0; u < 2; ++u)
      for (std::int64_t v = 0; v < 2; ++v) {
        phase ph;
        ph.u = u;
        ph.v = v;
        std::vector<std::int64_t> tap_list, dyoff;
        for (std::int64_t ki = 0; ki < g.kh; ++ki)
          for (std::int64_t kj = 0; kj < g.kw; ++kj) {
            const std::int64_t eh = ki - g.pad_h, ew = kj - g.pad_w, fh = floor_half(eh), fw = floor_half(ew);
            if (eh - 2 * fh != u || ew - 2 * fw != v) continue;
            tap_list.push_back(ki * g.kw + kj);
            dyoff.push_back((p.Dh - fh) * p.P2 + (p.Dw - fw));
          }
        const std::int64_t nt = static_cast<std::int64_t>(tap_list.size());
        ph.K = p.og * nt;
        for (std::int64_t o = 0; o < p.og; ++o)
          for (std::int64_t k = 0; k < nt; ++k) ph.koff.push_back(o * plane_y2 + dyoff[static_cast<std::size_t>(k)]);
        ph.wpk.assign(static_cast<std::size_t>(g.groups * cg_pad * ph.K), T(0));
        for (std::int64_t gi = 0; gi < g.groups; ++gi)
          for (std::int64_t c0 = 0; c0 < p.cg; c0 += kMR)
            for (std::int64_t o = 0; o < p.og; ++o)
              for (std::int64_t k = 0; k < nt; ++k)
                for (int r = 0; r < kMR && c0 + r < p.cg; ++r)
                  ph.wpk[static_cast<std::size_t>(((gi * cg_pad + c0) * ph.K + (o * nt + k) * kMR) + r)] =
                      w[((gi * p.og + o) * p.cg + c0 + r) * p.taps + tap_list[static_cast<std::size_t>(k)]];
        phases.push_back(std::move(ph));
      }
  scratch<T> partial(dw && chunks > 1 ? chunks * wsize : 0);
  parallel_for(0, chunks, 1, [&](std::int64_t cfirst, std::int64_t clast) {
    scratch<T> xph(dw ? 4 * p.cg * plane_x : 0), dyw(dw ? p.og * plane_w : 0), dyp(dx ? p.og * plane_y2 : 0),
        dxwide(dx ? cg_pad * L2full : 0), tile(kWO * kWK);
    zero(xph.get(), dw ? 4 * p.cg * plane_x : 0);
    zero(dyw.get(), dw ? p.og * plane_w : 0);
    zero(dyp.get(), dx ? p.og * plane_y2 : 0);
    for (std::int64_t c = cfirst; c < clast; ++c) {
      T* dwc = nullptr;
      if (dw) {
        dwc = chunks > 1 ? partial.get() + c * wsize : dw;
        if (chunks > 1) zero(dwc, wsize);
      }
      const std::int64_t nfirst = g.n * c / chunks, nlast = g.n * (c + 1) / chunks;
      for (std::int64_t n0 = nfirst; n0 < nlast; n0 += p.B) {
        const std::int64_t cnt = std::min(p.B, nlast - n0);
        for (std::int64_t gi = 0; gi < g.groups; ++gi) {
          const T* dyg = dy + (n0 * g.cout + gi * p.og) * Po;
          if (dw) {
            p.load_phases(g, x + (n0 * g.cin + gi * p.cg) * HW, g.cin * HW, cnt, xph.get(), plane_x);
            p.load_dy(g, dyg, g.cout * Po, cnt, dyw.get(), plane_w, 0, p.Hs, p.P);
            direct_weight_grad(dyw.get(), plane_w, p.og, xph.get(), koff.get(), p.K, p.length(g, cnt, S), 1, 0, 0,
                               dwc + gi * p.og * p.K, tile.get());
          }
          if (!dx) continue;
          p.load_dy(g, dyg, g.cout * Po, cnt, dyp.get(), plane_y2, p.top2(), p.Hs2, p.P2);
          T* dxg = dx + (n0 * g.cin + gi * p.cg) * HW;
          for (const phase& ph : phases) {
            if (ph.K > 0)
              direct_run<false>(dyp.get(), ph.koff.data(), ph.K, ph.wpk.data() + gi * cg_pad * ph.K,
                                static_cast<const T*>(nullptr), p.cg, p.length2(cnt, S), dxwide.get(), L2full);
            else if (!overwrite)
              continue;
            for (std::int64_t b = 0; b < cnt; ++b)
              for (std::int64_t ci = 0; ci < p.cg; ++ci) {
                T* d = dxg + (b * g.cin + ci) * HW;
                const T* src = dxwide.get() + ci * L2full + b * p.Hs2 * p.P2;
                for (std::int64_t i = 0; 2 * i + ph.u < g.h; ++i) {
                  T* drow = d + (2 * i + ph.u) * g.w + ph.v;
                  const T* srow = src + i * p.P2;
                  for (std::int64_t j = 0; 2 * j + ph.v < g.w; ++j) {
                    const T val = ph.K > 0 ? srow[j] : T(0);
                    drow[2 * j] = overwrite ? val : drow[2 * j] + val;
                  }
                }
              }
          }
        }
      }
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
    if (const conv_detail::direct_plan dp(g, conv_detail::lanes<T>()); dp.ok) {
      conv_detail::direct_forward(g, dp, x, w, b, y);
      return;
    }
    if (const conv_detail::stride2_plan sp(g, conv_detail::lanes<T>()); sp.ok) {
      conv_detail::stride2_forward(g, sp, x, w, b, y);
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
  /// skipped. x is read only for dw, w only for dx. With overwrite_dx, dx = dL/dx instead (dx
  /// need not be initialized: the first gradient of a value, without zeroing its buffer).
  template <class T>
  static void backward(const conv2d_geometry& g, const T* x, const T* w, const T* dy, T* dx, T* dw, T* db,
                       bool overwrite_dx = false) {
    if (g.n == 0 || g.cout == 0) {
      if (dx && overwrite_dx) conv_detail::zero(dx, g.n * g.cin * g.h * g.w);
      return;
    }
    if (db) conv_detail::bias_backward(g, dy, db);
    if (!dx && !dw) return;
    if (g.cin_g() == 1) {
      if (dx) conv_detail::depthwise_backward_data(g, w, dy, dx, overwrite_dx);
      if (dw) conv_detail::depthwise_backward_weight(g, x, dy, dw);
      return;
    }
    // weight-gradient partials over a fixed number of image ranges (not the thread count); with
    // no weight gradient, one range per block of images
    if (const conv_detail::direct_plan dp(g, conv_detail::lanes<T>()); dp.ok) {
      conv_detail::direct_backward(g, dp, x, w, dy, dx, dw, dw ? dp.chunks : conv_detail::ceil_div(g.n, dp.B),
                                   overwrite_dx);
      return;
    }
    if (const conv_detail::stride2_plan sp(g, conv_detail::lanes<T>()); sp.ok) {
      conv_detail::stride2_backward(g, sp, x, w, dy, dx, dw, dw ? sp.chunks : conv_detail::ceil_div(g.n, sp.B),
                                    overwrite_dx);
      return;
    }
    if (dx && overwrite_dx) {  // col2im scatters with +=
      parallel_for(0, g.n, 4, [&](std::int64_t first, std::int64_t last) {
        conv_detail::zero(dx + first * g.cin * g.h * g.w, (last - first) * g.cin * g.h * g.w);
      });
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
