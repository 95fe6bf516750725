/// \file
/// \brief Spatial pooling of NCHW tensors: max_pool2d, avg_pool2d (padding excluded from the
/// average) and global_avg_pool ([N, C, H, W] -> [N, C]).
#pragma once
#include <cstdint>
#include <limits>

#include "ghnq/backend/cpu/pool.hpp"
#include "ghnq/nn/common.hpp"

namespace ghnq::nn {

/// Square window size, stride and padding of a 2-D pooling (0 <= padding <= kernel / 2).
struct pool2d_params {
  int kernel = 3, stride = 1, padding = 1;
};

namespace detail {
/// Validates x and p for pooling op `op` and returns the geometry.
template <class T, class B>
backend::pool2d_geometry pool_geometry(const var<T, B>& x, const pool2d_params& p, const char* op) {
  require_rank(x, 4, op, "x");
  GHNQ_CHECK(p.kernel >= 1 && p.stride >= 1, value_error, op, ": kernel and stride must be >= 1, got kernel ",
             p.kernel, ", stride ", p.stride);
  GHNQ_CHECK(p.padding >= 0 && 2 * p.padding <= p.kernel, value_error, op, ": padding must be in [0, kernel / 2], got ",
             p.padding, " for kernel ", p.kernel);
  const auto& s = x.shape();
  backend::pool2d_geometry g;
  g.n = s[0];
  g.c = s[1];
  g.h = s[2];
  g.w = s[3];
  g.kernel = p.kernel;
  g.stride = p.stride;
  g.pad = p.padding;
  const std::int64_t sh = g.h + 2 * g.pad - g.kernel, sw = g.w + 2 * g.pad - g.kernel;
  g.ho = sh < 0 ? 0 : sh / g.stride + 1;
  g.wo = sw < 0 ? 0 : sw / g.stride + 1;
  GHNQ_CHECK(g.ho >= 1 && g.wo >= 1, shape_error, op, ": output would be empty (", g.ho, "x", g.wo, ") for input x ", s,
             ", kernel ", p.kernel, ", stride ", p.stride, ", padding ", p.padding);
  GHNQ_CHECK(g.h * g.w <= std::numeric_limits<std::int32_t>::max(), shape_error, op, ": plane of input x ", s,
             " is too large");
  return g;
}
}  // namespace detail

/// y[n, c, i, j] = max of x[n, c] over the window rows i s - p .. i s - p + k - 1 (same for
/// columns) clipped to the image (padding never wins). Output [N, C, Ho, Wo] with
/// Ho = (H + 2 p - k) / s + 1. The gradient goes to the first maximal element of each window.
/// \code auto y = ghnq::nn::max_pool2d(tp, x, {3, 2, 1});   // kernel 3, stride 2, padding 1 \endcode
template <class T, class B>
var<T, B> max_pool2d(tape<T, B>& tp, const var<T, B>& x, const pool2d_params& p = {}) {
  const auto g = detail::pool_geometry(x, p, "max_pool2d");
  using K = backend::impl<B, backend::op::max_pool2d>;
  tensor<T, B> y({g.n, g.c, g.ho, g.wo});
  const bool tracked = tp.needs(x);
  tensor<std::int32_t, B> argmax;
  if (tracked) argmax = tensor<std::int32_t, B>({g.n, g.c, g.ho, g.wo});
  K::forward(g, x.value().data(), y.data(), tracked ? argmax.data() : nullptr);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([x, out, argmax, g]() {
      if (!out.has_grad()) return;
      K::backward(g, out.grad().data(), argmax.data(), x.grad().data());
    });
  }
  return out;
}

/// y[n, c, i, j] = mean of x[n, c] over the window clipped to the image: padded positions are
/// not counted (PyTorch's count_include_pad = false). Output shape as for max_pool2d.
/// \code auto y = ghnq::nn::avg_pool2d(tp, x);   // 3x3, stride 1, padding 1: same size \endcode
template <class T, class B>
var<T, B> avg_pool2d(tape<T, B>& tp, const var<T, B>& x, const pool2d_params& p = {}) {
  const auto g = detail::pool_geometry(x, p, "avg_pool2d");
  using K = backend::impl<B, backend::op::avg_pool2d>;
  tensor<T, B> y({g.n, g.c, g.ho, g.wo});
  K::forward(g, x.value().data(), y.data());
  const bool tracked = tp.needs(x);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([x, out, g]() {
      if (!out.has_grad()) return;
      K::backward(g, out.grad().data(), x.grad().data());
    });
  }
  return out;
}

/// y[n, c] = mean over (i, j) of x[n, c, i, j]: [N, C, H, W] -> [N, C]; dx += dy / (H W).
/// \code auto feats = ghnq::nn::global_avg_pool(tp, x);   // [N, C] \endcode
template <class T, class B>
var<T, B> global_avg_pool(tape<T, B>& tp, const var<T, B>& x) {
  detail::require_rank(x, 4, "global_avg_pool", "x");
  const auto& s = x.shape();
  GHNQ_CHECK(s[2] * s[3] >= 1, shape_error, "global_avg_pool: input x ", s, " has an empty plane");
  const std::int64_t planes = s[0] * s[1], hw = s[2] * s[3];
  using K = backend::impl<B, backend::op::global_avg_pool>;
  tensor<T, B> y({s[0], s[1]});
  K::forward(planes, hw, x.value().data(), y.data());
  const bool tracked = tp.needs(x);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([x, out, planes, hw]() {
      if (!out.has_grad()) return;
      K::backward(planes, hw, out.grad().data(), x.grad().data());
    });
  }
  return out;
}

}  // namespace ghnq::nn
