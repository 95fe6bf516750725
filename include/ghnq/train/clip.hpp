/// \file
/// \brief Global gradient-norm clipping (torch.nn.utils.clip_grad_norm_ with norm_type = 2).
///
/// The norm is accumulated in double over fixed-size chunks whose partial sums are added in a
/// fixed order, so it does not depend on the thread count.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "ghnq/autograd/variable.hpp"
#include "ghnq/backend/cpu/optim.hpp"
#include "ghnq/backend/tags.hpp"
#include "ghnq/core/error.hpp"



namespace ghnq::train {

/// Global L2 norm sqrt(sum over parameters of sum(grad^2)) of the existing gradient buffers
/// (parameters without one are skipped).
template <class T, class B>
double grad_norm(const std::vector<autograd::var<T, B>>& params) {
  double s = 0.0;
  for (const auto& p : params) {
    if (!p.defined() || !p.has_grad()) continue;
    auto& g = p.grad();
    GHNQ_CHECK(g.is_contiguous(), shape_error, "grad_norm: gradient of '", p.name(), "' is not contiguous");
    s += backend::impl<B, backend::op::grad_norm>::sum_squares(static_cast<const T*>(g.data()), g.numel());
  }
  return std::sqrt(s);
}

/// Clip the global L2 norm of the gradients to `max_norm` (> 0), like torch.nn.utils.clip_grad_norm_:
/// norm = grad_norm(params); coef = max_norm / (norm + 1e-6); when coef < 1 every gradient is
/// multiplied by coef in place. Returns the norm before clipping. A non-finite norm leaves the
/// gradients unchanged (the caller can test the returned value and skip the step).
/// \code
/// tp.backward(loss);
/// double n = ghnq::train::clip_grad_norm(opt.params(), 5.0);
/// opt.step();
/// \endcode
template <class T, class B>
double clip_grad_norm(const std::vector<autograd::var<T, B>>& params, double max_norm) {
  GHNQ_CHECK(std::isfinite(max_norm) && max_norm > 0.0, value_error, "clip_grad_norm: max_norm = ", max_norm,
             " must be finite and > 0");
  const double norm = grad_norm(params);
  if (!std::isfinite(norm)) return norm;
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) {
    for (const auto& p : params) {
      if (!p.defined() || !p.has_grad()) continue;
      auto& g = p.grad();
      backend::impl<B, backend::op::grad_norm>::scale(g.data(), static_cast<T>(coef), g.numel());
    }
  }
  return norm;
}

}  // namespace ghnq::train
