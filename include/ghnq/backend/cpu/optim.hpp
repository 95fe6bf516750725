/// \file
/// \brief CPU kernels of the optimizers and of gradient-norm clipping (op tags sgd_update,
/// adam_update, grad_norm; their interfaces are documented at the tags).
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
/// One SGD step on one parameter of n elements (PyTorch torch.optim.SGD):
/// \code
/// template <class T>
/// static void run(T* p, const T* g, T* buf, std::int64_t n, T lr, T momentum, T one_minus_dampening,
///                 T weight_decay, bool nesterov, bool first);
/// \endcode
/// d = g + weight_decay * p; with momentum != 0: buf = first ? d : momentum * buf + (1 - dampening) * d,
/// d = nesterov ? d + momentum * buf : buf (buf may be null when momentum == 0); p -= lr * d.
struct sgd_update {};

/// One Adam/AdamW step on one parameter of n elements (PyTorch torch.optim.Adam / AdamW):
/// \code
/// template <class T>
/// static void run(T* p, const T* g, T* m, T* v, std::int64_t n, T one_minus_beta1, T beta2,
///                 T one_minus_beta2, T eps, T weight_decay, T decay, bool decoupled, T step_size,
///                 T bias_correction2_sqrt);
/// \endcode
/// decoupled: p *= decay (= 1 - lr * weight_decay), else g' = g + weight_decay * p;
/// m += (1 - beta1) * (g' - m); v = beta2 * v + (1 - beta2) * g'^2;
/// p -= step_size * m / (sqrt(v) / bias_correction2_sqrt + eps).
/// The scalar coefficients are computed in double by the caller and rounded once to T.
struct adam_update {};
}  // namespace op

template <>
struct impl<cpu_t, op::sgd_update> {
  static constexpr std::int64_t kGrain = 1 << 14;
  template <class T>
  static void run(T* p, const T* g, T* buf, std::int64_t n, T lr, T momentum, T one_minus_dampening,
                  T weight_decay, bool nesterov, bool first) {
    parallel_for(0, n, kGrain, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t i = b; i < e; ++i) {
        T d = g[i];
        if (weight_decay != T(0)) d += weight_decay * p[i];
        if (momentum != T(0)) {
          buf[i] = first ? d : momentum * buf[i] + one_minus_dampening * d;
          d = nesterov ? d + momentum * buf[i] : buf[i];
        }
        p[i] -= lr * d;
      }
    });
  }
};

template <>
struct impl<cpu_t, op::adam_update> {
  static constexpr std::int64_t kGrain = 1 << 14;
  template <class T>
  static void run(T* p, const T* g, T* m, T* v, std::int64_t n, T one_minus_beta1, T beta2, T one_minus_beta2,
                  T eps, T weight_decay, T decay, bool decoupled, T step_size, T bias_correction2_sqrt) {
    parallel_for(0, n, kGrain, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t i = b; i < e; ++i) {
        T gi = g[i];
        if (weight_decay != T(0)) {
          if (decoupled) {
            p[i] *= decay;
          } else {
            gi += weight_decay * p[i];
          }
        }
        m[i] += one_minus_beta1 * (gi - m[i]);
        v[i] = beta2 * v[i] + one_minus_beta2 * gi * gi;
        const T denom = std::sqrt(v[i]) / bias_correction2_sqrt + eps;
        p[i] -= step_size * m[i] / denom;
      }
    });
  }
};

}  // namespace ghnq::backend

namespace ghnq::backend {

namespace op {
/// Sum of squares (in double) and in-place scaling of a buffer of n elements.
/// \code
/// template <class T> static double sum_squares(const T* x, std::int64_t n);  // deterministic
/// template <class T> static void scale(T* x, T alpha, std::int64_t n);        // x *= alpha
/// \endcode
struct grad_norm {};
}  // namespace op

template <>
struct impl<cpu_t, op::grad_norm> {
  static constexpr std::int64_t kChunk = 1 << 14;
  template <class T>
  static double sum_squares(const T* x, std::int64_t n) {
    auto chunk_sum = [x](std::int64_t b, std::int64_t e) {
      double s = 0.0;
      for (std::int64_t i = b; i < e; ++i) s += static_cast<double>(x[i]) * static_cast<double>(x[i]);
      return s;
    };
    if (n <= kChunk) return chunk_sum(0, n);
    const std::int64_t chunks = (n + kChunk - 1) / kChunk;
    std::vector<double> partial(static_cast<std::size_t>(chunks));
    parallel_for(0, chunks, 1, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t c = b; c < e; ++c) {
        partial[static_cast<std::size_t>(c)] = chunk_sum(c * kChunk, std::min(n, (c + 1) * kChunk));
      }
    });
    double s = 0.0;
    for (double v : partial) s += v;
    return s;
  }
  template <class T>
  static void scale(T* x, T alpha, std::int64_t n) {
    parallel_for(0, n, kChunk, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t i = b; i < e; ++i) x[i] *= alpha;
    });
  }
};

}  // namespace ghnq::backend
