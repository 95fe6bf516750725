/// \file
/// \brief CPU kernels of spatial subsampling (x[:, :, ::s, ::s]) and per-channel scaling (SE gating).
#pragma once
#include <cstdint>

#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/backend/ops.hpp"
#include "ghnq/backend/tags.hpp"

namespace ghnq::backend {

namespace op {
/// Strided spatial subsampling of NCHW planes (`planes` = N*C), output ho = ceil(h/s), wo = ceil(w/s).
/// \code
/// template <class T> static void forward(const T* x, T* y, std::int64_t planes, int h, int w, int s);
/// template <class T> static void backward(const T* dy, T* dx, std::int64_t planes, int h, int w, int s); // dx +=
/// \endcode
struct subsample {};
/// y[n,c,:,:] = x[n,c,:,:] * s[n,c] on NCHW with hw = H*W.
/// \code
/// template <class T> static void forward(const T* x, const T* s, T* y, std::int64_t planes, std::int64_t hw);
/// template <class T> static void backward(const T* x, const T* s, const T* dy, T* dx, T* ds,
///                                         std::int64_t planes, std::int64_t hw); // dx, ds += (each may be null)
/// \endcode
struct channel_scale {};
/// Crop x[:, :, top:, left:] of NCHW planes (h x w) to (h - top) x (w - left).
/// \code
/// template <class T> static void forward(const T* x, T* y, std::int64_t planes, int h, int w, int top, int left);
/// template <class T> static void backward(const T* dy, T* dx, std::int64_t planes, int h, int w, int top, int left); // dx +=
/// \endcode
struct crop {};
}  // namespace op

template <>
struct impl<cpu_t, op::subsample> {
  static int out_size(int n, int s) { return (n + s - 1) / s; }
  template <class T>
  static void forward(const T* x, T* y, std::int64_t planes, int h, int w, int s) {
    const int ho = out_size(h, s), wo = out_size(w, s);
    parallel_for(0, planes, 16, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t p = b; p < e; ++p)
        for (int i = 0; i < ho; ++i)
          for (int j = 0; j < wo; ++j) y[(p * ho + i) * wo + j] = x[(p * h + i * s) * w + j * s];
    });
  }
  template <class T>
  static void backward(const T* dy, T* dx, std::int64_t planes, int h, int w, int s) {
    const int ho = out_size(h, s), wo = out_size(w, s);
    parallel_for(0, planes, 16, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t p = b; p < e; ++p)
        for (int i = 0; i < ho; ++i)
          for (int j = 0; j < wo; ++j) dx[(p * h + i * s) * w + j * s] += dy[(p * ho + i) * wo + j];
    });
  }
};

template <>
struct impl<cpu_t, op::channel_scale> {
  template <class T>
  static void forward(const T* x, const T* s, T* y, std::int64_t planes, std::int64_t hw) {
    parallel_for(0, planes, 16, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t p = b; p < e; ++p) {
        const T k = s[p];
        for (std::int64_t i = 0; i < hw; ++i) y[p * hw + i] = x[p * hw + i] * k;
      }
    });
  }
  template <class T>
  static void backward(const T* x, const T* s, const T* dy, T* dx, T* ds, std::int64_t planes, std::int64_t hw) {
    parallel_for(0, planes, 16, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t p = b; p < e; ++p) {
        const T k = s[p];
        double acc = 0;
        for (std::int64_t i = 0; i < hw; ++i) {
          if (dx) dx[p * hw + i] += dy[p * hw + i] * k;
          acc += static_cast<double>(dy[p * hw + i]) * static_cast<double>(x[p * hw + i]);
        }
        if (ds) ds[p] += static_cast<T>(acc);
      }
    });
  }
};

template <>
struct impl<cpu_t, op::crop> {
  template <class T>
  static void forward(const T* x, T* y, std::int64_t planes, int h, int w, int top, int left) {
    const int ho = h - top, wo = w - left;
    parallel_for(0, planes, 16, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t p = b; p < e; ++p)
        for (int i = 0; i < ho; ++i)
          for (int j = 0; j < wo; ++j) y[(p * ho + i) * wo + j] = x[(p * h + i + top) * w + j + left];
    });
  }
  template <class T>
  static void backward(const T* dy, T* dx, std::int64_t planes, int h, int w, int top, int left) {
    const int ho = h - top, wo = w - left;
    parallel_for(0, planes, 16, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t p = b; p < e; ++p)
        for (int i = 0; i < ho; ++i)
          for (int j = 0; j < wo; ++j) dx[(p * h + i + top) * w + j + left] += dy[(p * ho + i) * wo + j];
    });
  }
};

}  // namespace ghnq::backend
