/// \file
/// \brief CPU kernels of (inverted) dropout: multiplication by a precomputed scaled mask.
#pragma once
#include <cstdint>

#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/backend/ops.hpp"
#include "ghnq/backend/tags.hpp"

namespace ghnq::backend {

namespace op {
/// The mask holds 0 for dropped elements and 1/(1-p) for kept ones (drawn on the host, so the
/// same seed gives the same mask on every backend).
/// \code
/// template <class T> static void forward(const T* x, const T* mask, T* y, std::int64_t n);     // y = x * mask
/// template <class T> static void backward(const T* dy, const T* mask, T* dx, std::int64_t n);  // dx += dy * mask
/// \endcode
struct dropout {};
}  // namespace op

template <>
struct impl<cpu_t, op::dropout> {
  static constexpr std::int64_t kGrain = 1 << 15;
  template <class T>
  static void forward(const T* x, const T* mask, T* y, std::int64_t n) {
    parallel_for(0, n, kGrain, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t i = b; i < e; ++i) y[i] = x[i] * mask[i];
    });
  }
  template <class T>
  static void backward(const T* dy, const T* mask, T* dx, std::int64_t n) {
    parallel_for(0, n, kGrain, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t i = b; i < e; ++i) dx[i] += dy[i] * mask[i];
    });
  }
};

}  // namespace ghnq::backend
