/// \file
/// \brief CPU elementwise kernels (activations, add/axpy) dispatched as backend::impl.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/backend/ops.hpp"
#include "ghnq/backend/tags.hpp"

namespace ghnq::backend {

namespace op {
/// Pointwise activation `Fn` (fn::relu, fn::sigmoid, ...).
/// \code
/// template <class T> static void forward(const T* x, T* y, std::int64_t n);
/// template <class T> static void backward(const T* x, const T* y, const T* dy, T* dx, std::int64_t n,
///                                         bool overwrite = false);               // dx += (= with overwrite)
/// \endcode
template <class Fn>
struct activation {};
/// Accumulation y += alpha * x, sums z = x + y, and column sums (bias gradients).
struct axpy {};
}  // namespace op

/// Pointwise functions with their derivatives (in terms of x and y = f(x)).
namespace fn {
struct relu {
  template <class T> static T f(T x) { return x > T(0) ? x : T(0); }
  template <class T> static T df(T x, T) { return x > T(0) ? T(1) : T(0); }
};
struct sigmoid {
  template <class T> static T f(T x) { return T(1) / (T(1) + std::exp(-x)); }
  template <class T> static T df(T, T y) { return y * (T(1) - y); }
};
struct tanh {
  template <class T> static T f(T x) { return std::tanh(x); }
  template <class T> static T df(T, T y) { return T(1) - y * y; }
};
/// hardswish(x) = x * relu6(x + 3) / 6
struct hardswish {
  template <class T> static T f(T x) {
    return x <= T(-3) ? T(0) : (x >= T(3) ? x : x * (x + T(3)) / T(6));
  }
  template <class T> static T df(T x, T) {
    return x < T(-3) ? T(0) : (x > T(3) ? T(1) : (T(2) * x + T(3)) / T(6));
  }
};
}  // namespace fn

template <class Fn>
struct impl<cpu_t, op::activation<Fn>> {
  static constexpr std::int64_t kGrain = 1 << 15;
  template <class T>
  static void forward(const T* x, T* y, std::int64_t n) {
    parallel_for(0, n, kGrain, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t i = b; i < e; ++i) y[i] = Fn::f(x[i]);
    });
  }
  template <class T>
  static void backward(const T* x, const T* y, const T* dy, T* dx, std::int64_t n, bool overwrite = false) {
    parallel_for(0, n, kGrain, [&](std::int64_t b, std::int64_t e) {
      if (overwrite)
        for (std::int64_t i = b; i < e; ++i) dx[i] = dy[i] * Fn::df(x[i], y[i]);
      else
        for (std::int64_t i = b; i < e; ++i) dx[i] += dy[i] * Fn::df(x[i], y[i]);
    });
  }
};

template <>
struct impl<cpu_t, op::axpy> {
  static constexpr std::int64_t kGrain = 1 << 15;
  /// y[i] += alpha * x[i]
  template <class T>
  static void run(T alpha, const T* x, T* y, std::int64_t n) {
    parallel_for(0, n, kGrain, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t i = b; i < e; ++i) y[i] += alpha * x[i];
    });
  }
  /// acc[j] += sum_i x[i * cols + j] (column sums of a row-major rows x cols matrix, in double).
  template <class T>
  static void add_column_sums(const T* x, std::int64_t rows, std::int64_t cols, T* acc) {
    parallel_for(0, cols, 64, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t j = b; j < e; ++j) {
        double s = 0;
        for (std::int64_t i = 0; i < rows; ++i) s += static_cast<double>(x[i * cols + j]);
        acc[j] += static_cast<T>(s);
      }
    });
  }
  /// z[i] = x[i] + y[i]
  template <class T>
  static void add(const T* x, const T* y, T* z, std::int64_t n) {
    parallel_for(0, n, kGrain, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t i = b; i < e; ++i) z[i] = x[i] + y[i];
    });
  }
};

}  // namespace ghnq::backend
