/// \file
/// \brief CPU kernels of the flat index-map gather `y[j] = x[idx[j]]` and its scatter-add adjoint.
#pragma once
#include <algorithm>
#include <cstdint>

#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/backend/ops.hpp"
#include "ghnq/backend/tags.hpp"

namespace ghnq::backend {

namespace op {
/// Flat gather through an index map (any permutation, slicing, repetition or tiling of elements).
/// `idx` is a host array of n valid flat offsets into x.
/// \code
/// template <class T> static void forward(const T* x, const std::int64_t* idx, std::int64_t n, T* y);
///     // y[j] = x[idx[j]]
/// template <class T> static void scatter_add(const T* dy, const std::int64_t* idx, std::int64_t n, T* dx,
///                                            bool injective);
///     // dx[idx[j]] += dy[j]; `injective` promises that no offset repeats (allows a parallel loop)
/// \endcode
struct gather_flat {};

/// Periodic strided gathers into several outputs ("tiles"), without index arrays. Tile t has a 4-D
/// extent dims[4t..4t+3] (trailing 1s for lower ranks), a base offset, periods p[4t..] >= 1 and strides
/// s[4t..] >= 0 into x, and a scale a[t]; the caller has checked every reachable offset.
/// \code
/// template <class T> static void forward(const T* x, std::int64_t n_tiles, const std::int64_t* dims,
///                                        const std::int64_t* base, const std::int64_t* p, const std::int64_t* s,
///                                        const T* a, T* const* y);
///     // y_t[e0, e1, e2, e3] = a[t] * x[base[t] + sum_d (e_d mod p[4t + d]) * s[4t + d]]
/// template <class T> static void scatter_add(const T* const* dy, std::int64_t n_tiles, const std::int64_t* dims,
///                                            const std::int64_t* base, const std::int64_t* p, const std::int64_t* s,
///                                            const T* a, T* dx, bool disjoint);
///     // the adjoint: dx[...] += a[t] * dy_t[e] (tiles whose dy is null skipped); `disjoint` promises that
///     // no two tiles read a common element of x (allows tiles in parallel); within a tile, elements in order
/// \endcode
struct gather_tiles {};
}  // namespace op

template <>
struct impl<cpu_t, op::gather_flat> {
  static constexpr std::int64_t kGrain = 1 << 14;

  template <class T>
  static void forward(const T* x, const std::int64_t* idx, std::int64_t n, T* y) {
    parallel_for(0, n, kGrain, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t j = b; j < e; ++j) y[j] = x[idx[j]];
    });
  }

  template <class T>
  static void scatter_add(const T* dy, const std::int64_t* idx, std::int64_t n, T* dx, bool injective) {
    if (injective) {  // every dx element is written by at most one j: no races, order-independent
      parallel_for(0, n, kGrain, [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t j = b; j < e; ++j) dx[idx[j]] += dy[j];
      });
    } else {  // repeated offsets (tiling): serial, in index order, so the sums are deterministic
      for (std::int64_t j = 0; j < n; ++j) dx[idx[j]] += dy[j];
    }
  }
};

template <>
struct impl<cpu_t, op::gather_tiles> {
  static constexpr std::int64_t kWork = 1 << 14;  // elements per task, roughly

  // Forward: the "core" y[:c0, :c1, :c2, :c3] (c = min(extent, period)) is read from x in runs that
  // merge the trailing dims while the source is contiguous in them (a tile without wrap-around from a
  // contiguous block is one run); the rest of y is filled by copying already written parts of y
  // (periodicity), so repeated targets cost a memcpy.
  template <class T>
  static void forward(const T* x, std::int64_t n_tiles, const std::int64_t* dims, const std::int64_t* base,
                      const std::int64_t* p, const std::int64_t* s, const T* a, T* const* y) {
    run(n_tiles, dims, true, [&](std::int64_t t) {
      const std::int64_t* d = dims + 4 * t;
      const std::int64_t* pt = p + 4 * t;
      const std::int64_t* st = s + 4 * t;
      std::int64_t c[4], inner[4];
      for (int k = 0; k < 4; ++k) c[k] = std::min(d[k], pt[k]);
      inner[3] = 1;
      for (int k = 3; k > 0; --k) inner[k - 1] = inner[k] * d[k];
      // runs cover dims m..3 (dims > m complete): length L, source stride st[3]
      int m = 3;
      while (m > 0 && c[m] == d[m] && st[m - 1] == inner[m - 1] * st[3]) --m;
      const std::int64_t L = c[m] * inner[m];
      T* yt = y[t];
      const T at = a[t];
      const T* xt = x + base[t];
      for (std::int64_t i0 = 0; i0 < (m > 0 ? c[0] : 1); ++i0) {
        for (std::int64_t i1 = 0; i1 < (m > 1 ? c[1] : 1); ++i1) {
          for (std::int64_t i2 = 0; i2 < (m > 2 ? c[2] : 1); ++i2) {
            T* yb = yt + i0 * inner[0] + i1 * inner[1] + i2 * inner[2];
            scaled_copy(xt + i0 * st[0] + i1 * st[1] + i2 * st[2], st[3], L, at, yb);
            if (m == 3) extend(yb, c[3], d[3]);
          }
          if (m >= 2) extend(yt + i0 * inner[0] + i1 * inner[1], c[2] * inner[2], d[2] * inner[2]);
        }
        if (m >= 1) extend(yt + i0 * inner[0], c[1] * inner[1], d[1] * inner[1]);
      }
      extend(yt, c[0] * inner[0], d[0] * inner[0]);
    });
  }

  template <class T>
  static void scatter_add(const T* const* dy, std::int64_t n_tiles, const std::int64_t* dims, const std::int64_t* base,
                          const std::int64_t* p, const std::int64_t* s, const T* a, T* dx, bool disjoint) {
    run(n_tiles, dims, disjoint, [&](std::int64_t t) {
      if (dy[t] == nullptr) return;
      const T* dyt = dy[t];
      const T at = a[t];
      const std::int64_t* d = dims + 4 * t;
      const std::int64_t* pt = p + 4 * t;
      const std::int64_t* st = s + 4 * t;
      // elements in row-major order; wrap counters instead of divisions; runs along dim 3
      std::int64_t e = 0;
      for (std::int64_t i0 = 0, k0 = 0; i0 < d[0]; ++i0, k0 = k0 + 1 == pt[0] ? 0 : k0 + 1)
        for (std::int64_t i1 = 0, k1 = 0; i1 < d[1]; ++i1, k1 = k1 + 1 == pt[1] ? 0 : k1 + 1)
          for (std::int64_t i2 = 0, k2 = 0; i2 < d[2]; ++i2, k2 = k2 + 1 == pt[2] ? 0 : k2 + 1) {
            T* xb = dx + base[t] + k0 * st[0] + k1 * st[1] + k2 * st[2];
            for (std::int64_t i3 = 0; i3 < d[3]; i3 += pt[3]) {
              const std::int64_t n = std::min(pt[3], d[3] - i3);
              const T* g = dyt + e;
              e += n;
              if (st[3] == 1) {
                for (std::int64_t j = 0; j < n; ++j) xb[j] += at * g[j];
              } else {
                for (std::int64_t j = 0; j < n; ++j) xb[j * st[3]] += at * g[j];
              }
            }
          }
    });
  }

 private:
  // Tiles in parallel (when allowed and worth it), each tile serially.
  template <class F>
  static void run(std::int64_t n_tiles, const std::int64_t* dims, bool parallel, F&& per_tile) {
    std::int64_t total = 0;
    for (std::int64_t t = 0; t < n_tiles; ++t) total += dims[4 * t] * dims[4 * t + 1] * dims[4 * t + 2] * dims[4 * t + 3];
    if (!parallel || total < kWork || n_tiles == 1) {
      for (std::int64_t t = 0; t < n_tiles; ++t) per_tile(t);
      return;
    }
    const std::int64_t grain = std::max<std::int64_t>(1, n_tiles * kWork / total);
    parallel_for(0, n_tiles, grain, [&](std::int64_t t0, std::int64_t t1) {
      for (std::int64_t t = t0; t < t1; ++t) per_tile(t);
    });
  }
  // y[j] = a * x[j * stride], j < n
  template <class T>
  static void scaled_copy(const T* x, std::int64_t stride, std::int64_t n, T a, T* y) {
    if (stride == 1) {
      for (std::int64_t j = 0; j < n; ++j) y[j] = a * x[j];
    } else {
      for (std::int64_t j = 0; j < n; ++j) y[j] = a * x[j * stride];
    }
  }
  // y[have, total) continues the period-`have` pattern of y[0, have) (copies of doubling size).
  template <class T>
  static void extend(T* y, std::int64_t have, std::int64_t total) {
    while (have < total) {
      const std::int64_t c = std::min(have, total - have);
      std::copy_n(y, c, y + have);
      have += c;
    }
  }
};

}  // namespace ghnq::backend
