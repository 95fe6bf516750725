/// \file
/// \brief CPU kernels of batch normalization and layer normalization (forward and backward).
///
/// Statistics and every reduction are accumulated in double (also for float inputs), with a
/// two-pass mean / variance; batch norm sums each plane (the s values of one image and channel)
/// with SIMD partial sums in T first. Batch norm is parallel over channels, layer norm over rows
/// (and over columns for the parameter gradients), so results do not depend on the thread count.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <Eigen/Core>

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
/// Fused forms (the executor's batch norm followed by a ReLU that is the only reader of its output;
/// `relu` = false gives plain batch norm):
/// \code
/// // batch_stats and normalize in one sweep per channel; y = relu ? max(bn(x), 0) : bn(x)
/// template <class T> static void forward_batch(const T* x, std::int64_t n, std::int64_t c, std::int64_t s,
///                                              double eps, const T* gamma, const T* beta, bool relu,
///                                              T* y, T* mean, T* var, T* invstd);
/// // normalize with given statistics, then max(., 0) when relu
/// template <class T> static void normalize_act(const T* x, std::int64_t n, std::int64_t c, std::int64_t s,
///                                              const T* mean, const T* invstd, const T* gamma, const T* beta,
///                                              bool relu, T* y);
/// // backward with dy masked by y > 0 (y = the fused output; ymask null: no mask, as backward);
/// // overwrite_dx: dx = instead of += (dx need not be initialized)
/// template <class T> static void backward_masked(const T* x, const T* ymask, const T* dy, std::int64_t n,
///                                                std::int64_t c, std::int64_t s, const T* mean, const T* invstd,
///                                                const T* gamma, bool batch_stats, T* dx, T* dgamma, T* dbeta,
///                                                bool overwrite_dx = false);
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

// Eigen's packet types are attributed vector types; using them as template arguments is fine.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif
namespace bn_detail {
namespace ei = Eigen::internal;
template <class T>
using packet = typename ei::packet_traits<T>::type;
template <class T>
inline constexpr std::int64_t lanes = ei::packet_traits<T>::size;

/// sum_k p[k] over one plane, with four independent SIMD partial sums (fixed order: the result
/// depends on s only, not on threads).
template <class T>
T plane_sum(const T* p, std::int64_t s) {
  using pk = packet<T>;
  constexpr std::int64_t S = lanes<T>;
  pk a0 = ei::pset1<pk>(T(0)), a1 = a0, a2 = a0, a3 = a0;
  std::int64_t k = 0;
  for (; k + 4 * S <= s; k += 4 * S) {
    a0 = ei::padd(a0, ei::ploadu<pk>(p + k));
    a1 = ei::padd(a1, ei::ploadu<pk>(p + k + S));
    a2 = ei::padd(a2, ei::ploadu<pk>(p + k + 2 * S));
    a3 = ei::padd(a3, ei::ploadu<pk>(p + k + 3 * S));
  }
  for (; k + S <= s; k += S) a0 = ei::padd(a0, ei::ploadu<pk>(p + k));
  T r = ei::predux(ei::padd(ei::padd(a0, a1), ei::padd(a2, a3)));
  for (; k < s; ++k) r += p[k];
  return r;
}

/// sum_k (p[k] - mu)^2 over one plane (SIMD partial sums, fixed order).
template <class T>
T plane_sq_dev(const T* p, std::int64_t s, T mu) {
  using pk = packet<T>;
  constexpr std::int64_t S = lanes<T>;
  const pk m = ei::pset1<pk>(mu);
  pk a0 = ei::pset1<pk>(T(0)), a1 = a0, a2 = a0, a3 = a0;
  std::int64_t k = 0;
  for (; k + 4 * S <= s; k += 4 * S) {
    const pk d0 = ei::psub(ei::ploadu<pk>(p + k), m), d1 = ei::psub(ei::ploadu<pk>(p + k + S), m);
    const pk d2 = ei::psub(ei::ploadu<pk>(p + k + 2 * S), m), d3 = ei::psub(ei::ploadu<pk>(p + k + 3 * S), m);
    a0 = ei::pmadd(d0, d0, a0);
    a1 = ei::pmadd(d1, d1, a1);
    a2 = ei::pmadd(d2, d2, a2);
    a3 = ei::pmadd(d3, d3, a3);
  }
  for (; k + S <= s; k += S) {
    const pk d = ei::psub(ei::ploadu<pk>(p + k), m);
    a0 = ei::pmadd(d, d, a0);
  }
  T r = ei::predux(ei::padd(ei::padd(a0, a1), ei::padd(a2, a3)));
  for (; k < s; ++k) r += (p[k] - mu) * (p[k] - mu);
  return r;
}

/// sum_k g[k] and sum_k g[k] (x[k] - mu) over one plane (SIMD partial sums, fixed order).
template <class T>
void plane_dy_sums(const T* x, const T* g, std::int64_t s, T mu, T& sum_g, T& sum_gx) {
  using pk = packet<T>;
  constexpr std::int64_t S = lanes<T>;
  const pk m = ei::pset1<pk>(mu);
  pk a0 = ei::pset1<pk>(T(0)), a1 = a0, b0 = a0, b1 = a0;
  std::int64_t k = 0;
  for (; k + 2 * S <= s; k += 2 * S) {
    const pk g0 = ei::ploadu<pk>(g + k), g1 = ei::ploadu<pk>(g + k + S);
    a0 = ei::padd(a0, g0);
    a1 = ei::padd(a1, g1);
    b0 = ei::pmadd(g0, ei::psub(ei::ploadu<pk>(x + k), m), b0);
    b1 = ei::pmadd(g1, ei::psub(ei::ploadu<pk>(x + k + S), m), b1);
  }
  for (; k + S <= s; k += S) {
    const pk g0 = ei::ploadu<pk>(g + k);
    a0 = ei::padd(a0, g0);
    b0 = ei::pmadd(g0, ei::psub(ei::ploadu<pk>(x + k), m), b0);
  }
  T sg = ei::predux(ei::padd(a0, a1)), sgx = ei::predux(ei::padd(b0, b1));
  for (; k < s; ++k) {
    sg += g[k];
    sgx += g[k] * (x[k] - mu);
  }
  sum_g = sg;
  sum_gx = sgx;
}

/// The same with g[k] replaced by (y[k] > 0 ? g[k] : 0) (the gradient through a ReLU of output y).
template <class T>
void plane_dy_sums_masked(const T* x, const T* y, const T* g, std::int64_t s, T mu, T& sum_g, T& sum_gx) {
  using pk = packet<T>;
  constexpr std::int64_t S = lanes<T>;
  const pk m = ei::pset1<pk>(mu), z = ei::pset1<pk>(T(0));
  pk a0 = z, a1 = z, b0 = z, b1 = z;
  std::int64_t k = 0;
  for (; k + 2 * S <= s; k += 2 * S) {
    const pk g0 = ei::pand(ei::pcmp_lt(z, ei::ploadu<pk>(y + k)), ei::ploadu<pk>(g + k));
    const pk g1 = ei::pand(ei::pcmp_lt(z, ei::ploadu<pk>(y + k + S)), ei::ploadu<pk>(g + k + S));
    a0 = ei::padd(a0, g0);
    a1 = ei::padd(a1, g1);
    b0 = ei::pmadd(g0, ei::psub(ei::ploadu<pk>(x + k), m), b0);
    b1 = ei::pmadd(g1, ei::psub(ei::ploadu<pk>(x + k + S), m), b1);
  }
  for (; k + S <= s; k += S) {
    const pk g0 = ei::pand(ei::pcmp_lt(z, ei::ploadu<pk>(y + k)), ei::ploadu<pk>(g + k));
    a0 = ei::padd(a0, g0);
    b0 = ei::pmadd(g0, ei::psub(ei::ploadu<pk>(x + k), m), b0);
  }
  T sg = ei::predux(ei::padd(a0, a1)), sgx = ei::predux(ei::padd(b0, b1));
  for (; k < s; ++k) {
    const T gk = y[k] > T(0) ? g[k] : T(0);
    sg += gk;
    sgx += gk * (x[k] - mu);
  }
  sum_g = sg;
  sum_gx = sgx;
}

/// q[k] = (p[k] - mu) * scale + shift over one plane, then max(q[k], 0) when Relu.
template <bool Relu, class T>
void plane_affine(const T* p, T* q, std::int64_t s, T mu, T scale, T shift) {
  using pk = packet<T>;
  constexpr std::int64_t S = lanes<T>;
  const pk m = ei::pset1<pk>(mu), a = ei::pset1<pk>(scale), b = ei::pset1<pk>(shift), z = ei::pset1<pk>(T(0));
  auto op = [&](pk v) {
    const pk r = ei::pmadd(ei::psub(v, m), a, b);
    return Relu ? ei::pand(ei::pcmp_lt(z, r), r) : r;  // r > 0 ? r : 0 (NaN -> 0, as fn::relu)
  };
  std::int64_t k = 0;
  for (; k + 2 * S <= s; k += 2 * S) {
    ei::pstoreu(q + k, op(ei::ploadu<pk>(p + k)));
    ei::pstoreu(q + k + S, op(ei::ploadu<pk>(p + k + S)));
  }
  for (; k + S <= s; k += S) ei::pstoreu(q + k, op(ei::ploadu<pk>(p + k)));
  for (; k < s; ++k) {
    const T r = (p[k] - mu) * scale + shift;
    q[k] = Relu ? (r > T(0) ? r : T(0)) : r;
  }
}

/// d[k] (+= unless Assign, else =) kg g[k] - kx (x[k] - mu) - k0 over one plane; with y (not
/// null), g[k] is replaced by (y[k] > 0 ? g[k] : 0).
template <bool Assign, class T>
void plane_dx(const T* x, const T* y, const T* g, T* d, std::int64_t s, T mu, T kg, T kx, T k0) {
  using pk = packet<T>;
  constexpr std::int64_t S = lanes<T>;
  const pk m = ei::pset1<pk>(mu), vg = ei::pset1<pk>(kg), vx = ei::pset1<pk>(kx), v0 = ei::pset1<pk>(k0);
  const pk z = ei::pset1<pk>(T(0));
  auto put = [&](std::int64_t k, pk t) { ei::pstoreu(d + k, Assign ? t : ei::padd(ei::ploadu<pk>(d + k), t)); };
  std::int64_t k = 0;
  if (y) {
    for (; k + S <= s; k += S) {
      const pk gk = ei::pand(ei::pcmp_lt(z, ei::ploadu<pk>(y + k)), ei::ploadu<pk>(g + k));
      put(k, ei::psub(ei::pmul(vg, gk), ei::pmadd(vx, ei::psub(ei::ploadu<pk>(x + k), m), v0)));
    }
    for (; k < s; ++k) {
      const T t = kg * (y[k] > T(0) ? g[k] : T(0)) - (kx * (x[k] - mu) + k0);
      d[k] = Assign ? t : d[k] + t;
    }
    return;
  }
  for (; k + S <= s; k += S)
    put(k, ei::psub(ei::pmul(vg, ei::ploadu<pk>(g + k)), ei::pmadd(vx, ei::psub(ei::ploadu<pk>(x + k), m), v0)));
  for (; k < s; ++k) {
    const T t = kg * g[k] - (kx * (x[k] - mu) + k0);
    d[k] = Assign ? t : d[k] + t;
  }
}
}  // namespace bn_detail
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

/// Batch norm: parallel over channels; within a channel every reduction runs plane by plane
/// (SIMD partial sums in T over the s values of a plane, plane results summed in double, in
/// order), so results depend on the shape only, never on the thread count.
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
    parallel_for(0, c, grain(n * s), [&](std::int64_t c0, std::int64_t c1) {
      for (std::int64_t ch = c0; ch < c1; ++ch) channel_stats(x, n, c, s, ch, eps, mean, var, invstd);
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
    normalize_act(x, n, c, s, mean, invstd, gamma, beta, false, y);
  }

  template <class T>
  static void normalize_act(const T* x, std::int64_t n, std::int64_t c, std::int64_t s, const T* mean,
                            const T* invstd, const T* gamma, const T* beta, bool relu, T* y) {
    parallel_for(0, c, grain(n * s), [&](std::int64_t c0, std::int64_t c1) {
      for (std::int64_t ch = c0; ch < c1; ++ch) channel_normalize(x, n, c, s, ch, mean, invstd, gamma, beta, relu, y);
    });
  }

  /// Statistics and normalization of each channel in one task, while the channel's values are
  /// still in cache.
  template <class T>
  static void forward_batch(const T* x, std::int64_t n, std::int64_t c, std::int64_t s, double eps, const T* gamma,
                            const T* beta, bool relu, T* y, T* mean, T* var, T* invstd) {
    parallel_for(0, c, grain(n * s), [&](std::int64_t c0, std::int64_t c1) {
      for (std::int64_t ch = c0; ch < c1; ++ch) {
        channel_stats(x, n, c, s, ch, eps, mean, var, invstd);
        channel_normalize(x, n, c, s, ch, mean, invstd, gamma, beta, relu, y);
      }
    });
  }

  template <class T>
  static void backward(const T* x, const T* dy, std::int64_t n, std::int64_t c, std::int64_t s, const T* mean,
                       const T* invstd, const T* gamma, bool batch_stats, T* dx, T* dgamma, T* dbeta) {
    backward_masked(x, static_cast<const T*>(nullptr), dy, n, c, s, mean, invstd, gamma, batch_stats, dx, dgamma,
                    dbeta);
  }

  template <class T>
  static void backward_masked(const T* x, const T* ymask, const T* dy, std::int64_t n, std::int64_t c, std::int64_t s,
                              const T* mean, const T* invstd, const T* gamma, bool batch_stats, T* dx, T* dgamma,
                              T* dbeta, bool overwrite_dx = false) {
    const double m = static_cast<double>(n * s);
    parallel_for(0, c, grain(n * s), [&](std::int64_t c0, std::int64_t c1) {
      for (std::int64_t ch = c0; ch < c1; ++ch) {
        const T mu = mean[ch];
        const double is = static_cast<double>(invstd[ch]);
        double sum_dy = 0.0, sum_dy_xc = 0.0;  // sum dy, sum dy (x - mean)
        if (dgamma || dbeta || (dx && batch_stats)) {
          for (std::int64_t i = 0; i < n; ++i) {
            const std::int64_t off = (i * c + ch) * s;
            T sg, sgx;
            if (ymask) bn_detail::plane_dy_sums_masked(x + off, ymask + off, dy + off, s, mu, sg, sgx);
            else bn_detail::plane_dy_sums(x + off, dy + off, s, mu, sg, sgx);
            sum_dy += static_cast<double>(sg);
            sum_dy_xc += static_cast<double>(sgx);
          }
        }
        const double sum_dy_xhat = sum_dy_xc * is;
        if (dbeta) dbeta[ch] += static_cast<T>(sum_dy);
        if (dgamma) dgamma[ch] += static_cast<T>(sum_dy_xhat);
        if (!dx) continue;
        const double k0 = is * (gamma ? static_cast<double>(gamma[ch]) : 1.0);
        // training: dx = k0 * (dy - mean(dy) - xhat * mean(dy * xhat)); eval: dx = k0 * dy
        const double a = batch_stats ? sum_dy / m : 0.0;
        const double b = batch_stats ? sum_dy_xhat / m : 0.0;
        const T kg = static_cast<T>(k0), kx = static_cast<T>(k0 * b * is), ka = static_cast<T>(k0 * a);
        for (std::int64_t i = 0; i < n; ++i) {
          const std::int64_t off = (i * c + ch) * s;
          const T* ym = ymask ? ymask + off : nullptr;
          if (overwrite_dx) bn_detail::plane_dx<true>(x + off, ym, dy + off, dx + off, s, mu, kg, kx, ka);
          else bn_detail::plane_dx<false>(x + off, ym, dy + off, dx + off, s, mu, kg, kx, ka);
        }
      }
    });
  }

 private:
  /// Two-pass statistics of channel ch: plane sums in T (SIMD), accumulated in double.
  template <class T>
  static void channel_stats(const T* x, std::int64_t n, std::int64_t c, std::int64_t s, std::int64_t ch, double eps,
                            T* mean, T* var, T* invstd) {
    const double m = static_cast<double>(n * s);
    double sum = 0.0;
    for (std::int64_t i = 0; i < n; ++i) sum += static_cast<double>(bn_detail::plane_sum(x + (i * c + ch) * s, s));
    // Second pass around the mean rounded to T (no cancellation when |mean| >> std); the
    // rounding is corrected exactly: sum (x - mu_t)^2 = sum (x - mu)^2 + m (mu - mu_t)^2.
    const T mu_t = static_cast<T>(sum / m);
    double sq = 0.0;
    for (std::int64_t i = 0; i < n; ++i)
      sq += static_cast<double>(bn_detail::plane_sq_dev(x + (i * c + ch) * s, s, mu_t));
    const double dev = sum / m - static_cast<double>(mu_t);
    const double v = std::max(0.0, sq / m - dev * dev);
    mean[ch] = mu_t;
    var[ch] = static_cast<T>(v);
    invstd[ch] = static_cast<T>(1.0 / std::sqrt(v + eps));
  }

  template <class T>
  static void channel_normalize(const T* x, std::int64_t n, std::int64_t c, std::int64_t s, std::int64_t ch,
                                const T* mean, const T* invstd, const T* gamma, const T* beta, bool relu, T* y) {
    const T mu = mean[ch];
    const T scale = invstd[ch] * (gamma ? gamma[ch] : T(1));
    const T shift = beta ? beta[ch] : T(0);
    // (x - mean) first: no cancellation when |mean| >> std
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t off = (i * c + ch) * s;
      if (relu) bn_detail::plane_affine<true>(x + off, y + off, s, mu, scale, shift);
      else bn_detail::plane_affine<false>(x + off, y + off, s, mu, scale, shift);
    }
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
