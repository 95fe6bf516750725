/// \file
/// \brief CPU pointwise kernels of a GRU cell (the two GEMMs run through op::gemm).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/backend/ops.hpp"
#include "ghnq/backend/tags.hpp"

namespace ghnq::backend {

namespace op {
/// Gate math of a GRU cell (PyTorch order r, z, n) for n rows of hidden size hs. `gi` and `gh`
/// are [n, 3hs] buffers holding x W_ih^T and h W_hh^T; biases (may be null) are added to them in
/// place, so afterwards they hold the full gate pre-activations. `gates` [n, 3hs] receives r, z, n.
/// \code
/// // r = s(gi_r + gh_r); z = s(gi_z + gh_z); n = tanh(gi_n + r * gh_n); h' = (1 - z) * n + z * h
/// template <class T> static void forward(T* gi, T* gh, const T* b_ih, const T* b_hh, const T* h,
///                                        std::int64_t n, std::int64_t hs, T* gates, T* h_new);
/// // from dh' : dgi, dgh [n, 3hs] (overwritten) = gradients of the pre-activations; dh += dh' * z (dh may be null)
/// template <class T> static void backward(const T* gates, const T* gh, const T* h, const T* dh_new,
///                                         std::int64_t n, std::int64_t hs, T* dgi, T* dgh, T* dh);
/// // db[j] += sum_i dg[i, j] for dg [n, m]
/// template <class T> static void bias_grad(const T* dg, std::int64_t n, std::int64_t m, T* db);
/// \endcode
struct gru_cell {};
}  // namespace op

template <>
struct impl<cpu_t, op::gru_cell> {
  static constexpr std::int64_t kWork = 1 << 13;

  static std::int64_t row_grain(std::int64_t hs) { return std::max<std::int64_t>(1, kWork / std::max<std::int64_t>(1, hs)); }
  template <class T>
  static T sigmoid(T v) { return T(1) / (T(1) + std::exp(-v)); }

  template <class T>
  static void forward(T* gi, T* gh, const T* b_ih, const T* b_hh, const T* h, std::int64_t n, std::int64_t hs,
                      T* gates, T* h_new) {
    const std::int64_t w = 3 * hs;
    parallel_for(0, n, row_grain(hs), [&](std::int64_t i0, std::int64_t i1) {
      for (std::int64_t i = i0; i < i1; ++i) {
        T* a = gi + i * w;
        T* b = gh + i * w;
        if (b_ih)
          for (std::int64_t j = 0; j < w; ++j) a[j] += b_ih[j];
        if (b_hh)
          for (std::int64_t j = 0; j < w; ++j) b[j] += b_hh[j];
        T* g = gates + i * w;
        const T* hp = h + i * hs;
        T* out = h_new + i * hs;
        for (std::int64_t j = 0; j < hs; ++j) {
          const T r = sigmoid(a[j] + b[j]);
          const T z = sigmoid(a[hs + j] + b[hs + j]);
          const T nn = std::tanh(a[2 * hs + j] + r * b[2 * hs + j]);
          g[j] = r;
          g[hs + j] = z;
          g[2 * hs + j] = nn;
          out[j] = (T(1) - z) * nn + z * hp[j];
        }
      }
    });
  }

  template <class T>
  static void backward(const T* gates, const T* gh, const T* h, const T* dh_new, std::int64_t n, std::int64_t hs,
                       T* dgi, T* dgh, T* dh) {
    const std::int64_t w = 3 * hs;
    parallel_for(0, n, row_grain(hs), [&](std::int64_t i0, std::int64_t i1) {
      for (std::int64_t i = i0; i < i1; ++i) {
        const T* g = gates + i * w;
        const T* b = gh + i * w;
        const T* hp = h + i * hs;
        const T* d = dh_new + i * hs;
        T* da = dgi + i * w;
        T* db = dgh + i * w;
        for (std::int64_t j = 0; j < hs; ++j) {
          const T r = g[j], z = g[hs + j], nn = g[2 * hs + j];
          const T dn = d[j] * (T(1) - z) * (T(1) - nn * nn);  // through tanh
          const T dz = d[j] * (hp[j] - nn) * z * (T(1) - z);  // through sigmoid
          const T dr = dn * b[2 * hs + j] * r * (T(1) - r);
          da[j] = dr;
          db[j] = dr;
          da[hs + j] = dz;
          db[hs + j] = dz;
          da[2 * hs + j] = dn;
          db[2 * hs + j] = dn * r;
          if (dh) dh[i * hs + j] += d[j] * z;
        }
      }
    });
  }

  template <class T>
  static void bias_grad(const T* dg, std::int64_t n, std::int64_t m, T* db) {
    const std::int64_t grain = std::max<std::int64_t>(16, kWork / std::max<std::int64_t>(1, n));
    parallel_for(0, m, grain, [&](std::int64_t j0, std::int64_t j1) {
      std::vector<double> acc(static_cast<std::size_t>(j1 - j0), 0.0);
      for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t j = j0; j < j1; ++j) acc[static_cast<std::size_t>(j - j0)] += static_cast<double>(dg[i * m + j]);
      for (std::int64_t j = j0; j < j1; ++j) db[j] += static_cast<T>(acc[static_cast<std::size_t>(j - j0)]);
    });
  }
};

}  // namespace ghnq::backend
