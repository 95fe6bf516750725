/// \file
/// \brief CPU kernels of the sparse weighted row combination `out[r] += w * src_s[row]` over a list
/// of source matrices, and its adjoint (used by the GatedGNN message sums and row gathers).
#pragma once
#include <algorithm>
#include <cstdint>

#include <Eigen/Core>

#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/backend/ops.hpp"
#include "ghnq/backend/tags.hpp"

namespace ghnq::backend {

namespace op {
/// Weighted sum of rows picked from several row-major source matrices of width d.
/// Entry e reads row `src_row[e]` of source `src[e]` and adds `w[e]` times it to output row
/// `out_row[e]`. All index arrays are host arrays of n valid entries; `out` is zeroed by the caller.
/// \code
/// template <class T> static void forward(const T* const* srcs, std::int64_t d, const std::int64_t* out_row,
///                                        const std::int32_t* src, const std::int64_t* src_row, const T* w,
///                                        std::int64_t n, T* out);
///     // out[out_row[e], :] += w[e] * srcs[src[e]][src_row[e], :]
/// template <class T> static void backward(const T* dout, std::int64_t d, const std::int64_t* out_row,
///                                         const std::int32_t* src, const std::int64_t* src_row, const T* w,
///                                         std::int64_t n, T* const* dsrcs);
///     // dsrcs[src[e]][src_row[e], :] += w[e] * dout[out_row[e], :]  (entries whose dsrcs is null skipped)
/// \endcode
/// Both loops run the entries in order for every column, so repeated targets accumulate in a fixed
/// order whatever the thread count (parallelism is over column blocks).
struct combine_rows {};
}  // namespace op

template <>
struct impl<cpu_t, op::combine_rows> {
  static constexpr std::int64_t kWork = 1 << 17;
  // Column grain: the whole width (one task) unless n * d is large enough to pay for threads.
  static std::int64_t grain(std::int64_t n, std::int64_t d) {
    return n * d < kWork ? std::max<std::int64_t>(1, d) : std::max<std::int64_t>(16, kWork / std::max<std::int64_t>(1, n));
  }

  // y[0, len) += w * x[0, len); x and y never overlap (distinct buffers, or distinct rows).
  template <class T>
  static void axpy_row(T* y, const T* x, T w, std::int64_t len) {
    using V = Eigen::Matrix<T, Eigen::Dynamic, 1>;
    Eigen::Map<V>(y, len).noalias() += w * Eigen::Map<const V>(x, len);  // vectorized at any -O level
  }

  template <class T>
  static void forward(const T* const* srcs, std::int64_t d, const std::int64_t* out_row, const std::int32_t* src,
                      const std::int64_t* src_row, const T* w, std::int64_t n, T* out) {
    parallel_for(0, d, grain(n, d), [&](std::int64_t j0, std::int64_t j1) {
      for (std::int64_t e = 0; e < n; ++e) {
        axpy_row(out + out_row[e] * d + j0, srcs[src[e]] + src_row[e] * d + j0, w[e], j1 - j0);
      }
    });
  }

  template <class T>
  static void backward(const T* dout, std::int64_t d, const std::int64_t* out_row, const std::int32_t* src,
                       const std::int64_t* src_row, const T* w, std::int64_t n, T* const* dsrcs) {
    parallel_for(0, d, grain(n, d), [&](std::int64_t j0, std::int64_t j1) {
      for (std::int64_t e = 0; e < n; ++e) {
        T* ds = dsrcs[src[e]];
        if (ds == nullptr) continue;
        axpy_row(ds + src_row[e] * d + j0, dout + out_row[e] * d + j0, w[e], j1 - j0);
      }
    });
  }
};

}  // namespace ghnq::backend
