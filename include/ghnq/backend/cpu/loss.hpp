/// \file
/// \brief CPU kernel of the softmax cross-entropy loss with label smoothing (log-sum-exp stabilised).
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
/// Mean cross-entropy of logits [n, c] against integer labels with label smoothing eps:
/// target = (1 - eps) * onehot(label) + eps / c, loss = mean_i( -sum_j target_ij * log softmax(x_i)_j ).
/// `labels` is a host array of n valid labels (checked by the caller); other pointers are backend memory.
/// \code
/// // prob [n, c] receives softmax(x) (saved for backward); loss[0] the mean loss
/// template <class T> static void forward(const T* logits, std::int64_t n, std::int64_t c,
///                                        const std::int32_t* labels, double eps, T* prob, T* loss);
/// // dlogits += dloss[0] / n * (prob - target)
/// template <class T> static void backward(const T* prob, std::int64_t n, std::int64_t c,
///                                         const std::int32_t* labels, double eps, const T* dloss, T* dlogits);
/// \endcode
struct cross_entropy {};
}  // namespace op

template <>
struct impl<cpu_t, op::cross_entropy> {
  static constexpr std::int64_t kWork = 1 << 14;

  template <class T>
  static void forward(const T* logits, std::int64_t n, std::int64_t c, const std::int32_t* labels, double eps,
                      T* prob, T* loss) {
    std::vector<double> row_loss(static_cast<std::size_t>(n), 0.0);
    const std::int64_t grain = std::max<std::int64_t>(1, kWork / std::max<std::int64_t>(1, c));
    const double off = eps / static_cast<double>(c);
    parallel_for(0, n, grain, [&](std::int64_t r0, std::int64_t r1) {
      for (std::int64_t r = r0; r < r1; ++r) {
        const T* x = logits + r * c;
        double mx = static_cast<double>(x[0]);
        for (std::int64_t j = 1; j < c; ++j) mx = std::max(mx, static_cast<double>(x[j]));
        double se = 0.0, sx = 0.0;
        for (std::int64_t j = 0; j < c; ++j) {
          se += std::exp(static_cast<double>(x[j]) - mx);
          sx += static_cast<double>(x[j]);
        }
        const double lse = mx + std::log(se);
        T* p = prob + r * c;
        for (std::int64_t j = 0; j < c; ++j) p[j] = static_cast<T>(std::exp(static_cast<double>(x[j]) - lse));
        // -sum_j t_j (x_j - lse) with sum_j t_j = 1
        row_loss[static_cast<std::size_t>(r)] =
            lse - (1.0 - eps) * static_cast<double>(x[labels[r]]) - off * sx;
      }
    });
    double total = 0.0;
    for (double v : row_loss) total += v;  // fixed order: independent of the thread count
    loss[0] = static_cast<T>(n > 0 ? total / static_cast<double>(n) : 0.0);
  }

  template <class T>
  static void backward(const T* prob, std::int64_t n, std::int64_t c, const std::int32_t* labels, double eps,
                       const T* dloss, T* dlogits) {
    if (n == 0) return;
    const double scale = static_cast<double>(dloss[0]) / static_cast<double>(n);
    const double off = eps / static_cast<double>(c);
    const std::int64_t grain = std::max<std::int64_t>(1, kWork / std::max<std::int64_t>(1, c));
    parallel_for(0, n, grain, [&](std::int64_t r0, std::int64_t r1) {
      for (std::int64_t r = r0; r < r1; ++r) {
        const T* p = prob + r * c;
        T* g = dlogits + r * c;
        for (std::int64_t j = 0; j < c; ++j) {
          const double t = off + (j == labels[r] ? 1.0 - eps : 0.0);
          g[j] += static_cast<T>(scale * (static_cast<double>(p[j]) - t));
        }
      }
    });
  }
};

}  // namespace ghnq::backend
