/// \file
/// \brief CPU kernel of the elementwise affine map y = a * x + b with scalar constants a, b.
#pragma once
#include <cstdint>

#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/backend/ops.hpp"
#include "ghnq/backend/tags.hpp"

namespace ghnq::backend {

namespace op {
/// \code
/// template <class T> static void forward(T a, T b, const T* x, T* y, std::int64_t n);  // y[i] = a*x[i] + b
/// \endcode
/// The backward pass (dx += a * dy) uses op::axpy.
struct affine {};
}  // namespace op

template <>
struct impl<cpu_t, op::affine> {
  static constexpr std::int64_t kGrain = 1 << 15;

  template <class T>
  static void forward(T a, T b, const T* x, T* y, std::int64_t n) {
    parallel_for(0, n, kGrain, [&](std::int64_t i0, std::int64_t i1) {
      for (std::int64_t i = i0; i < i1; ++i) y[i] = a * x[i] + b;
    });
  }
};

}  // namespace ghnq::backend
