/// \file
/// \brief CPU kernels of batch normalization and layer normalization (forward and backward).
///
/// Statistics and every reduction are accumulated in double (also for float inputs), with a
/// two-pass mean / variance. Batch norm is parallel over channels, layer norm over rows (and
/// over columns for the parameter gradients), so results do not depend on the thread count.
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
/// Batch normalization of x viewed as [n, c, s] (s = H*W for NCHW, 1 for [N, C]); statistics per
/// channel over the m = n*s values of that channel. Pointers are backend memory; gamma, beta,
/// dx, dgamma, dbeta may be null (no affine scale / shift, gradient not wanted).
/// \code
/// // mean, biased var and invstd = 1/sqrt(var + eps) of every channel
/// template <class T> static void batch_stats(const T* x, std::int64_t n, std::int64_t c, std::int64_t s,
///                                            double eps, T* mean, T* var, T* invstd);
/// // invstd = 1/sqrt(var + eps) (eval mode, from the running variance)
/// template <class T> static void invstd_of(const T* var, std::int64_t c, double eps, T* invstd);
/// // running = (1-momentum)*running + momentum*batch, with the unbiased variance var*m/(m-1)
/// template <class T> static void update_running(std::int64_t c, std::int64_t m, double momentum,
///                                               const T* mean, const T* var, T* running_mean, T* running_var);
/// // y = (x - mean) * invstd * gamma + beta
/// template <class T> static void normalize(const T* x, std::int64_t n, std::int64_t c, std::int64_t s,
///                                          const T* mean, const T* invstd, const T* gamma, const T* beta, T* y);
/// // gradients (+=); batch_stats: through the batch statistics (training), else with fixed statistics
/// template <class T> static void backward(const T* x, const T* dy, std::int64_t n, std::int64_t c, std::int64_t s,
///                                         const T* mean, const T* invstd, const T* gamma, bool batch_stats,
///                                         T* dx, T* dgamma, T* dbeta);
/// \endcode
struct batch_norm {};

/// Layer normalization over the last dimension of x viewed as [rows, d].
/// \code
/// // y = (x - mean_r) * invstd_r * gamma + beta; saves mean and invstd per row
/// template <class T> static void forward(const T* x, std::int64_t rows, std::int64_t d, double eps,
///                                        const T* gamma, const T* beta, T* y, T* mean, T* invstd);
/// // gradients (+=); gamma, dx, dgamma, dbeta may be null
/// template <class T> static void backward(const T* x, const T* dy, std::int64_t rows, std::int64_t d,
///                                         const T* mean, const T* invstd, const T* gamma,
///                                         T* dx, T* dgamma, T* dbeta);
/// \endcode
struct layer_norm {};
}  // namespace op

template <>
struct impl<cpu_t, op::batch_norm> {
  /// Values per parallel task (channels are grouped until a task has about this much work).
  static constexpr std::int64_t kWork = 1 << 14;

  static std::int64_t grain(std::int64_t per_channel) {
    return std::max<std::int64_t>(1, kWork / std::max<std::int64_t>(1, per_channel));
  }

  template <class T>
  static void batch_stats(const T* x, std::int64_t n, std::int64_t c, std::int64_t s, double eps, T* mean, T* var,
                          T* invstd) {
    const double m = static_cast<double>(n * s);
    parallel_for(0, c, grain(n * s), [&](std::int64_t c0, std::int64_t c1) {
      for (std::int64_t ch = c0; ch < c1; ++ch) {
        double sum = 0.0;
        for (std::int64_t i = 0; i < n; ++i) {
          const T* p = x + (i * c + ch) * s;
          for (std::int64_t k = 0; k < s; ++k) sum += static_cast<double>(p[k]);
        }
        const double mu = sum / m;
        double sq = 0.0;
        for (std::int64_t i = 0; i < n; ++i) {
          const T* p = x + (i * c + ch) * s;
          for (std::int64_t k = 0; k < s; ++k) {
            const double d = static_cast<double>(p[k]) - mu;
            sq += d * d;
          }
        }
        const double v = sq / m;
        mean[ch] = static_cast<T>(mu);
        var[ch] = static_cast<T>(v);
        invstd[ch] = static_cast<T>(1.0 / std::sqrt(v + eps));
      }
    });
  }

  template <class T>
  static void invstd_of(const T* var, std::int64_t c, double eps, T* invstd) {
    for (std::int64_t ch = 0; ch < c; ++ch) invstd[ch] = static_cast<T>(1.0 / std::sqrt(static_cast<double>(var[ch]) + eps));
  }

  template <class T>
  static void update_running(std::int64_t c, std::int64_t m, double momentum, const T* mean, const T* var,
                             T* running_mean, T* running_var) {
    const double unbias = m > 1 ? static_cast<double>(m) / static_cast<double>(m - 1) : 1.0;
    for (std::int64_t ch = 0; ch < c; ++ch) {
      running_mean[ch] = static_cast<T>((1.0 - momentum) * static_cast<double>(running_mean[ch]) +
                                        momentum * static_cast<double>(mean[ch]));
      running_var[ch] = static_cast<T>((1.0 - momentum) * static_cast<double>(running_var[ch]) +
                                       momentum * static_cast<double>(var[ch]) * unbias);
    }
  }

  template <class T>
  static void normalize(const T* x, std::int64_t n, std::int64_t c, std::int64_t s, const T* mean, const T* invstd,
                        const T* gamma, const T* beta, T* y) {
    parallel_for(0, c, grain(n * s), [&](std::int64_t c0, std::int64_t c1) {
      for (std::int64_t ch = c0; ch < c1; ++ch) {
        const T mu = mean[ch];
        const T scale = invstd[ch] * (gamma ? gamma[ch] : T(1));
        const T shift = beta ? beta[ch] : T(0);
        for (std::int64_t i = 0; i < n; ++i) {
          const T* p = x + (i * c + ch) * s;
          T* q = y + (i * c + ch) * s;
          // (x - mean) first: no cancellation when |mean| >> std
          for (std::int64_t k = 0; k < s; ++k) q[k] = (p[k] - mu) * scale + shift;
        }
      }
    });
  }

  template <class T>
  static void backward(const T* x, const T* dy, std::int64_t n, std::int64_t c, std::int64_t s, const T* mean,
                       const T* invstd, const T* gamma, bool batch_stats, T* dx, T* dgamma, T* dbeta) {
    const double m = static_cast<double>(n * s);
    parallel_for(0, c, grain(n * s), [&](std::int64_t c0, std::int64_t c1) {
      for (std::int64_t ch = c0; ch < c1; ++ch) {
        const double mu = static_cast<double>(mean[ch]), is = static_cast<double>(invstd[ch]);
        double sum_dy = 0.0, sum_dy_xhat = 0.0;
        for (std::int64_t i = 0; i < n; ++i) {
          const T* p = x + (i * c + ch) * s;
          const T* g = dy + (i * c + ch) * s;
          for (std::int64_t k = 0; k < s; ++k) {
            const double gd = static_cast<double>(g[k]);
            sum_dy += gd;
            sum_dy_xhat += gd * (static_cast<double>(p[k]) - mu) * is;
          }
        }
        if (dbeta) dbeta[ch] += static_cast<T>(sum_dy);
        if (dgamma) dgamma[ch] += static_cast<T>(sum_dy_xhat);
        if (!dx) continue;
        const double k0 = is * (gamma ? static_cast<double>(gamma[ch]) : 1.0);
        // training: dx = k0 * (dy - mean(dy) - xhat * mean(dy * xhat)); eval: dx = k0 * dy
        const double a = batch_stats ? sum_dy / m : 0.0;
        const double b = batch_stats ? sum_dy_xhat / m : 0.0;
        for (std::int64_t i = 0; i < n; ++i) {
          const T* p = x + (i * c + ch) * s;
          const T* g = dy + (i * c + ch) * s;
          T* q = dx + (i * c + ch) * s;
          for (std::int64_t k = 0; k < s; ++k) {
            const double xhat = (static_cast<double>(p[k]) - mu) * is;
            q[k] += static_cast<T>(k0 * (static_cast<double>(g[k]) - a - xhat * b));
          }
        }
      }
    });
  }
};

template <>
struct impl<cpu_t, op::layer_norm> {
  static constexpr std::int64_t kWork = 1 << 14;

  template <class T>
  static void forward(const T* x, std::int64_t rows, std::int64_t d, double eps, const T* gamma, const T* beta,
                      T* y, T* mean, T* invstd) {
    const std::int64_t grain = std::max<std::int64_t>(1, kWork / std::max<std::int64_t>(1, d));
    parallel_for(0, rows, grain, [&](std::int64_t r0, std::int64_t r1) {
      for (std::int64_t r = r0; r < r1; ++r) {
        const T* p = x + r * d;
        double sum = 0.0;
        for (std::int64_t j = 0; j < d; ++j) sum += static_cast<double>(p[j]);
        const double mu = sum / static_cast<double>(d);
        double sq = 0.0;
        for (std::int64_t j = 0; j < d; ++j) {
          const double t = static_cast<double>(p[j]) - mu;
          sq += t * t;
        }
        const double is = 1.0 / std::sqrt(sq / static_cast<double>(d) + eps);
        mean[r] = static_cast<T>(mu);
        invstd[r] = static_cast<T>(is);
        T* q = y + r * d;
        for (std::int64_t j = 0; j < d; ++j) {
          const double xhat = (static_cast<double>(p[j]) - mu) * is;
          const double g = gamma ? static_cast<double>(gamma[j]) : 1.0;
          const double b = beta ? static_cast<double>(beta[j]) : 0.0;
          q[j] = static_cast<T>(xhat * g + b);
        }
      }
    });
  }

  template <class T>
  static void backward(const T* x, const T* dy, std::int64_t rows, std::int64_t d, const T* mean, const T* invstd,
                       const T* gamma, T* dx, T* dgamma, T* dbeta) {
    if (dx) {
      const std::int64_t grain = std::max<std::int64_t>(1, kWork / std::max<std::int64_t>(1, d));
      parallel_for(0, rows, grain, [&](std::int64_t r0, std::int64_t r1) {
        for (std::int64_t r = r0; r < r1; ++r) {
          const T* p = x + r * d;
          const T* g = dy + r * d;
          const double mu = static_cast<double>(mean[r]), is = static_cast<double>(invstd[r]);
          double a = 0.0, b = 0.0;  // mean(dxhat), mean(dxhat * xhat)
          for (std::int64_t j = 0; j < d; ++j) {
            const double dxhat = static_cast<double>(g[j]) * (gamma ? static_cast<double>(gamma[j]) : 1.0);
            a += dxhat;
            b += dxhat * (static_cast<double>(p[j]) - mu) * is;
          }
          a /= static_cast<double>(d);
          b /= static_cast<double>(d);
          T* q = dx + r * d;
          for (std::int64_t j = 0; j < d; ++j) {
            const double dxhat = static_cast<double>(g[j]) * (gamma ? static_cast<double>(gamma[j]) : 1.0);
            const double xhat = (static_cast<double>(p[j]) - mu) * is;
            q[j] += static_cast<T>(is * (dxhat - a - xhat * b));
          }
        }
      });
    }
    if (dgamma || dbeta) {
      // column blocks in parallel, rows summed in order inside each block: deterministic
      const std::int64_t grain = std::max<std::int64_t>(16, kWork / std::max<std::int64_t>(1, rows));
      parallel_for(0, d, grain, [&](std::int64_t j0, std::int64_t j1) {
        std::vector<double> sg(static_cast<std::size_t>(j1 - j0), 0.0), sb(sg.size(), 0.0);
        for (std::int64_t r = 0; r < rows; ++r) {
          const T* p = x + r * d;
          const T* g = dy + r * d;
          const double mu = static_cast<double>(mean[r]), is = static_cast<double>(invstd[r]);
          for (std::int64_t j = j0; j < j1; ++j) {
            const double gd = static_cast<double>(g[j]);
            sb[static_cast<std::size_t>(j - j0)] += gd;
            sg[static_cast<std::size_t>(j - j0)] += gd * (static_cast<double>(p[j]) - mu) * is;
          }
        }
        for (std::int64_t j = j0; j < j1; ++j) {
          if (dgamma) dgamma[j] += static_cast<T>(sg[static_cast<std::size_t>(j - j0)]);
          if (dbeta) dbeta[j] += static_cast<T>(sb[static_cast<std::size_t>(j - j0)]);
        }
      });
    }
  }
};

}  // namespace ghnq::backend
