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

}  // namespace ghnq::backend
