/// \file
/// \brief CPU copy-by-index kernels: embedding row gather / scatter-add and concatenation blocks.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/backend/ops.hpp"
#include "ghnq/backend/tags.hpp"

namespace ghnq::backend {

namespace op {
/// Rows of a table [v, d] picked by indices. `idx` is a host array of n valid row indices.
/// \code
/// template <class T> static void gather(const T* weight, std::int64_t d, const std::int64_t* idx,
///                                       std::int64_t n, T* out);          // out[i, :] = weight[idx[i], :]
/// template <class T> static void scatter_add(const T* dout, std::int64_t d, const std::int64_t* idx,
///                                            std::int64_t n, T* dweight);  // dweight[idx[i], :] += dout[i, :]
/// \endcode
struct embedding {};

/// One input of a concatenation: the input is `outer` blocks of `inner` values; block o lands at
/// dst[o * inner_dst + offset, +inner).
/// \code
/// template <class T> static void copy_in(const T* src, std::int64_t outer, std::int64_t inner,
///                                        T* dst, std::int64_t inner_dst, std::int64_t offset);
/// template <class T> static void add_out(const T* ddst, std::int64_t outer, std::int64_t inner,
///                                        std::int64_t inner_dst, std::int64_t offset, T* dsrc,
///                                        bool overwrite = false);  // dsrc += (= with overwrite)
/// \endcode
struct concat {};
}  // namespace op

template <>
struct impl<cpu_t, op::embedding> {
  static constexpr std::int64_t kWork = 1 << 14;

  template <class T>
  static void gather(const T* weight, std::int64_t d, const std::int64_t* idx, std::int64_t n, T* out) {
    const std::int64_t grain = std::max<std::int64_t>(1, kWork / std::max<std::int64_t>(1, d));
    parallel_for(0, n, grain, [&](std::int64_t i0, std::int64_t i1) {
      for (std::int64_t i = i0; i < i1; ++i)
        std::memcpy(out + i * d, weight + idx[i] * d, static_cast<std::size_t>(d) * sizeof(T));
    });
  }

  template <class T>
  static void scatter_add(const T* dout, std::int64_t d, const std::int64_t* idx, std::int64_t n, T* dweight) {
    // parallel over column blocks, indices in order: no races on repeated indices, deterministic
    const std::int64_t grain = std::max<std::int64_t>(16, kWork / std::max<std::int64_t>(1, n));
    parallel_for(0, d, grain, [&](std::int64_t j0, std::int64_t j1) {
      for (std::int64_t i = 0; i < n; ++i) {
        const T* g = dout + i * d;
        T* w = dweight + idx[i] * d;
        for (std::int64_t j = j0; j < j1; ++j) w[j] += g[j];
      }
    });
  }
};

template <>
struct impl<cpu_t, op::concat> {
  static constexpr std::int64_t kWork = 1 << 15;

  template <class T>
  static void copy_in(const T* src, std::int64_t outer, std::int64_t inner, T* dst, std::int64_t inner_dst,
                      std::int64_t offset) {
    const std::int64_t grain = std::max<std::int64_t>(1, kWork / std::max<std::int64_t>(1, inner));
    parallel_for(0, outer, grain, [&](std::int64_t o0, std::int64_t o1) {
      for (std::int64_t o = o0; o < o1; ++o)
        std::memcpy(dst + o * inner_dst + offset, src + o * inner, static_cast<std::size_t>(inner) * sizeof(T));
    });
  }

  template <class T>
  static void add_out(const T* ddst, std::int64_t outer, std::int64_t inner, std::int64_t inner_dst,
                      std::int64_t offset, T* dsrc, bool overwrite = false) {
    const std::int64_t grain = std::max<std::int64_t>(1, kWork / std::max<std::int64_t>(1, inner));
    parallel_for(0, outer, grain, [&](std::int64_t o0, std::int64_t o1) {
      for (std::int64_t o = o0; o < o1; ++o) {
        const T* g = ddst + o * inner_dst + offset;
        T* q = dsrc + o * inner;
        if (overwrite) std::memcpy(q, g, static_cast<std::size_t>(inner) * sizeof(T));
        else
          for (std::int64_t k = 0; k < inner; ++k) q[k] += g[k];
      }
    });
  }
};

}  // namespace ghnq::backend
