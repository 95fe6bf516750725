/// \file
/// \brief CPU pooling kernels over NCHW planes: max and average pooling (square window, zero or
/// -inf padding) and global average pooling, forward and backward.
///
/// Planes (n, c) are independent, so every kernel is a ghnq::parallel_for over planes.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/backend/ops.hpp"
#include "ghnq/backend/tags.hpp"

namespace ghnq::backend {

/// Geometry of a square-window 2-D pooling: input [n, c, h, w], output [n, c, ho, wo] with
/// ho = (h + 2 pad - kernel) / stride + 1. Callers validate it (pad <= kernel / 2, ho, wo >= 1),
/// which guarantees that every window holds at least one input element.
struct pool2d_geometry {
  std::int64_t n = 0, c = 0, h = 0, w = 0;
  std::int64_t kernel = 1, stride = 1, pad = 0;
  std::int64_t ho = 0, wo = 0;
};

namespace op {
/// Max pooling; padding never wins (acts as -inf). `argmax` (nullable) receives, per output, the
/// index inside its input plane (i w + j) of the first maximal element in row-major window
/// order (-1 when the window holds only NaN or -inf; that output then passes no gradient, and
/// its value is -inf).
/// \code
/// template <class T> static void forward(const pool2d_geometry& g, const T* x, T* y, std::int32_t* argmax);
/// template <class T> static void backward(const pool2d_geometry& g, const T* dy, const std::int32_t* argmax,
///                                         T* dx);                                  // dx +=
/// \endcode
struct max_pool2d {};
/// Average pooling over the input elements inside each window (padding excluded from the count).
/// \code
/// template <class T> static void forward(const pool2d_geometry& g, const T* x, T* y);
/// template <class T> static void backward(const pool2d_geometry& g, const T* dy, T* dx);   // dx +=
/// \endcode
struct avg_pool2d {};
/// Mean over each plane: x [n, c, hw] -> y [n, c].
/// \code
/// template <class T> static void forward(std::int64_t planes, std::int64_t hw, const T* x, T* y);
/// template <class T> static void backward(std::int64_t planes, std::int64_t hw, const T* dy, T* dx); // dx +=
/// \endcode
struct global_avg_pool {};
}  // namespace op

namespace pool_detail {
/// Clipped window [lo, hi) of output index o along an axis of extent `in`.
inline void window(const pool2d_geometry& g, std::int64_t o, std::int64_t in, std::int64_t& lo, std::int64_t& hi) {
  const std::int64_t s = o * g.stride - g.pad;
  lo = std::max<std::int64_t>(s, 0);
  hi = std::min<std::int64_t>(s + g.kernel, in);
}
/// Planes per task so that a task touches roughly `work` elements.
inline std::int64_t plane_grain(std::int64_t per_plane, std::int64_t work = 1 << 16) {
  return std::max<std::int64_t>(1, work / std::max<std::int64_t>(1, per_plane));
}
/// 1 / (number of in-image positions of the window of output o), per output index.
template <class T>
std::vector<T> inverse_counts(const pool2d_geometry& g, std::int64_t in, std::int64_t out) {
  std::vector<T> r(static_cast<std::size_t>(out));
  for (std::int64_t o = 0; o < out; ++o) {
    std::int64_t lo, hi;
    window(g, o, in, lo, hi);
    r[static_cast<std::size_t>(o)] = T(1) / static_cast<T>(hi - lo);
  }
  return r;
}

/// "Wide" layout of the separable pooling kernels. The plane is padded to [Hp, Wp] and stored
/// flat; the window sums/maxima are computed for every stride-1 position t = r Wp + c of the flat
/// array with long contiguous loops (row pass: t + u, u < k; column pass: t + v Wp, v < k), and
/// output (oh, ow) is read at t = oh s Wp + ow s. Positions that wrap around a row end are
/// computed but never read.
struct wide_layout {
  std::int64_t Hp, Wp;
  std::int64_t padded;  ///< Hp Wp plus k - 1 entries of slack for the row pass
  std::int64_t rows;    ///< Hp Wp: length of the row pass
  std::int64_t cols;    ///< (Hp - k + 1) Wp: length of the column pass
  explicit wide_layout(const pool2d_geometry& g)
      : Hp(g.h + 2 * g.pad), Wp(g.w + 2 * g.pad), padded(Hp * Wp + g.kernel - 1), rows(Hp * Wp),
        cols((Hp - g.kernel + 1) * Wp) {}
  std::int64_t at(const pool2d_geometry& g, std::int64_t oh, std::int64_t ow) const {
    return oh * g.stride * Wp + ow * g.stride;
  }
  /// Copy plane x [h, w] into the interior of the padded buffer (border written by the caller).
  template <class T>
  void load(const pool2d_geometry& g, const T* x, T* pad) const {
    for (std::int64_t i = 0; i < g.h; ++i) std::copy_n(x + i * g.w, g.w, pad + (i + g.pad) * Wp + g.pad);
  }
};
}  // namespace pool_detail

namespace pool_detail {
// Eigen's packet types are attributed vector types; using them as template arguments is fine.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif
/// For t in [0, n): m[t] = max over k < taps of src[t + k off], and code[t] = the code of the first
/// maximal candidate (strictly greater wins, so ties keep the earlier one; NaN never wins; -1 when
/// nothing beats -inf). Candidate k's code is cand[t + k off] + k add_step when cand is given,
/// else k (add_step + 1). Written with Eigen packets: compilers turn the scalar form of this
/// loop into masked stores and branches.
template <class T>
void max_with_code(const T* src, const T* cand, std::int64_t off, std::int64_t taps, T add_step, T* m, T* code,
                   std::int64_t n) {
  namespace ei = Eigen::internal;
  using pk = typename ei::packet_traits<T>::type;
  constexpr std::int64_t S = ei::packet_traits<T>::size;
  const T lowest = -std::numeric_limits<T>::infinity();
  std::int64_t t = 0;
  for (; t + S <= n; t += S) {
    pk mv = ei::pset1<pk>(lowest), cv = ei::pset1<pk>(T(-1));
    for (std::int64_t k = 0; k < taps; ++k) {
      const pk v = ei::ploadu<pk>(src + t + k * off);
      const pk gt = ei::pcmp_lt(mv, v);
      const pk c = cand ? ei::padd(ei::ploadu<pk>(cand + t + k * off), ei::pset1<pk>(add_step * static_cast<T>(k)))
                        : ei::pset1<pk>(add_step * static_cast<T>(k) + static_cast<T>(k));
      mv = ei::pselect(gt, v, mv);
      cv = ei::pselect(gt, c, cv);
    }
    ei::pstoreu(m + t, mv);
    ei::pstoreu(code + t, cv);
  }
  for (; t < n; ++t) {
    T mv = lowest, cv = T(-1);
    for (std::int64_t k = 0; k < taps; ++k) {
      const T v = src[t + k * off];
      if (v > mv) {
        mv = v;
        cv = cand ? cand[t + k * off] + add_step * static_cast<T>(k) : add_step * static_cast<T>(k) + static_cast<T>(k);
      }
    }
    m[t] = mv;
    code[t] = cv;
  }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
}  // namespace pool_detail

template <>
struct impl<cpu_t, op::max_pool2d> {
  /// Separable in the wide layout: row maxima with the column u of the first maximum, then
  /// maxima over rows with the code v w + u of the first such row, which is the first maximum in
  /// row-major window order; the argmax is (oh s - p) w + (ow s - p) + code. The border is NaN
  /// and maxima start at -inf, so padding never wins and is never the argmax.
  template <class T>
  static void forward(const pool2d_geometry& g, const T* x, T* y, std::int32_t* argmax) {
    const std::int64_t HW = g.h * g.w, P = g.ho * g.wo, k = g.kernel;
    const pool_detail::wide_layout wl(g);
    parallel_for(0, g.n * g.c, pool_detail::plane_grain(wl.rows * 2 * k), [&](std::int64_t b, std::int64_t e) {
      std::vector<T> pad(static_cast<std::size_t>(wl.padded), std::numeric_limits<T>::quiet_NaN()),
          hm(static_cast<std::size_t>(wl.rows)), hc(static_cast<std::size_t>(wl.rows)),
          ym(static_cast<std::size_t>(wl.cols)), yc(static_cast<std::size_t>(wl.cols));
      for (std::int64_t pl = b; pl < e; ++pl) {
        wl.load(g, x + pl * HW, pad.data());
        // row pass: candidate u has code u; column pass: candidate v has code hc + v w
        pool_detail::max_with_code<T>(pad.data(), nullptr, 1, k, T(0), hm.data(), hc.data(), wl.rows);
        pool_detail::max_with_code<T>(hm.data(), hc.data(), wl.Wp, k, static_cast<T>(g.w), ym.data(), yc.data(),
                                      wl.cols);
        T* yp = y + pl * P;
        std::int32_t* ap = argmax ? argmax + pl * P : nullptr;
        for (std::int64_t oh = 0; oh < g.ho; ++oh) {
          const T* ymr = ym.data() + oh * g.stride * wl.Wp;
          T* yr = yp + oh * g.wo;
          for (std::int64_t ow = 0; ow < g.wo; ++ow) yr[ow] = ymr[ow * g.stride];
          if (!ap) continue;
          const T* ycr = yc.data() + oh * g.stride * wl.Wp;
          std::int32_t* ar = ap + oh * g.wo;
          const auto base = static_cast<std::int32_t>((oh * g.stride - g.pad) * g.w - g.pad);
          for (std::int64_t ow = 0; ow < g.wo; ++ow) {
            const auto c = static_cast<std::int32_t>(ycr[ow * g.stride]);
            ar[ow] = c < 0 ? -1 : base + static_cast<std::int32_t>(ow * g.stride) + c;
          }
        }
      }
    });
  }

  template <class T>
  static void backward(const pool2d_geometry& g, const T* dy, const std::int32_t* argmax, T* dx) {
    const std::int64_t HW = g.h * g.w, P = g.ho * g.wo;
    parallel_for(0, g.n * g.c, pool_detail::plane_grain(HW + P), [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t pl = b; pl < e; ++pl) {
        const T* dyp = dy + pl * P;
        const std::int32_t* ap = argmax + pl * P;
        T* dxp = dx + pl * HW;
        for (std::int64_t o = 0; o < P; ++o)
          if (ap[o] >= 0) dxp[ap[o]] += dyp[o];
      }
    });
  }
};

template <>
struct impl<cpu_t, op::avg_pool2d> {
  /// Separable in the wide layout over the zero-padded plane: row sums, then sums over rows,
  /// times 1 / (in-image count).
  template <class T>
  static void forward(const pool2d_geometry& g, const T* x, T* y) {
    const std::int64_t HW = g.h * g.w, P = g.ho * g.wo, k = g.kernel;
    const pool_detail::wide_layout wl(g);
    const auto ih = pool_detail::inverse_counts<T>(g, g.h, g.ho), iw = pool_detail::inverse_counts<T>(g, g.w, g.wo);
    parallel_for(0, g.n * g.c, pool_detail::plane_grain(wl.rows * 2 * k), [&](std::int64_t b, std::int64_t e) {
      std::vector<T> pad(static_cast<std::size_t>(wl.padded), T(0)), hs(static_cast<std::size_t>(wl.rows)),
          ys(static_cast<std::size_t>(wl.cols));
      for (std::int64_t pl = b; pl < e; ++pl) {
        wl.load(g, x + pl * HW, pad.data());
        T* HS = hs.data();
        T* YS = ys.data();
        std::copy_n(pad.data(), wl.rows, HS);
        for (std::int64_t u = 1; u < k; ++u) {
          const T* src = pad.data() + u;
          for (std::int64_t t = 0; t < wl.rows; ++t) HS[t] += src[t];
        }
        std::copy_n(HS, wl.cols, YS);
        for (std::int64_t v = 1; v < k; ++v) {
          const T* src = HS + v * wl.Wp;
          for (std::int64_t t = 0; t < wl.cols; ++t) YS[t] += src[t];
        }
        T* yp = y + pl * P;
        for (std::int64_t oh = 0; oh < g.ho; ++oh) {
          const T sh = ih[static_cast<std::size_t>(oh)];
          for (std::int64_t ow = 0; ow < g.wo; ++ow)
            yp[oh * g.wo + ow] =
                ys[static_cast<std::size_t>(wl.at(g, oh, ow))] * (sh * iw[static_cast<std::size_t>(ow)]);
        }
      }
    });
  }

  /// Adjoint of forward: dy / count placed on the wide grid, spread over rows, then over columns.
  template <class T>
  static void backward(const pool2d_geometry& g, const T* dy, T* dx) {
    const std::int64_t HW = g.h * g.w, P = g.ho * g.wo, k = g.kernel;
    const pool_detail::wide_layout wl(g);
    const auto ih = pool_detail::inverse_counts<T>(g, g.h, g.ho), iw = pool_detail::inverse_counts<T>(g, g.w, g.wo);
    parallel_for(0, g.n * g.c, pool_detail::plane_grain(wl.rows * 2 * k), [&](std::int64_t b, std::int64_t e) {
      // gy: (k - 1) Wp zeros, the wide output gradient (cols), zeros up to rows;
      // gh: k - 1 zeros, then the row-pass gradient (rows). The adjoints become gathers.
      std::vector<T> gy(static_cast<std::size_t>((k - 1) * wl.Wp + wl.rows)),
          gh(static_cast<std::size_t>(k - 1 + wl.rows)), gx(static_cast<std::size_t>(wl.rows));
      for (std::int64_t pl = b; pl < e; ++pl) {
        const T* dyp = dy + pl * P;
        // gy is kept with (k - 1) Wp zeros in front, so the column adjoint is a gather.
        T* gyc = gy.data() + (k - 1) * wl.Wp;
        std::fill(gy.begin(), gy.end(), T(0));
        for (std::int64_t oh = 0; oh < g.ho; ++oh) {
          const T sh = ih[static_cast<std::size_t>(oh)];
          for (std::int64_t ow = 0; ow < g.wo; ++ow)
            gyc[wl.at(g, oh, ow)] = dyp[oh * g.wo + ow] * (sh * iw[static_cast<std::size_t>(ow)]);
        }
        // gh[t] = sum_v gy[t - v Wp] for t in [0, rows)
        T* ghc = gh.data() + (k - 1);
        std::fill_n(gh.begin(), k - 1, T(0));
        std::copy_n(gyc, wl.rows, ghc);
        for (std::int64_t v = 1; v < k; ++v) {
          const T* src = gyc - v * wl.Wp;
          for (std::int64_t t = 0; t < wl.rows; ++t) ghc[t] += src[t];
        }
        // gx[t] = sum_u gh[t - u]; dx[i, j] += gx[(i + p) Wp + j + p]
        T* GX = gx.data();
        std::copy_n(ghc, wl.rows, GX);
        for (std::int64_t u = 1; u < k; ++u) {
          const T* src = ghc - u;
          for (std::int64_t t = 0; t < wl.rows; ++t) GX[t] += src[t];
        }
        T* dxp = dx + pl * HW;
        for (std::int64_t i = 0; i < g.h; ++i) {
          const T* row = GX + (i + g.pad) * wl.Wp + g.pad;
          T* dr = dxp + i * g.w;
          for (std::int64_t j = 0; j < g.w; ++j) dr[j] += row[j];
        }
      }
    });
  }
};

template <>
struct impl<cpu_t, op::global_avg_pool> {
  template <class T>
  static void forward(std::int64_t planes, std::int64_t hw, const T* x, T* y) {
    parallel_for(0, planes, pool_detail::plane_grain(hw, 32768), [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t pl = b; pl < e; ++pl) {
        const T* xp = x + pl * hw;
        T s = T(0);
        for (std::int64_t i = 0; i < hw; ++i) s += xp[i];
        y[pl] = s / static_cast<T>(hw);
      }
    });
  }
  template <class T>
  static void backward(std::int64_t planes, std::int64_t hw, const T* dy, T* dx) {
    parallel_for(0, planes, pool_detail::plane_grain(hw, 32768), [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t pl = b; pl < e; ++pl) {
        const T v = dy[pl] / static_cast<T>(hw);
        T* dxp = dx + pl * hw;
        for (std::int64_t i = 0; i < hw; ++i) dxp[i] += v;
      }
    });
  }
};

}  // namespace ghnq::backend
