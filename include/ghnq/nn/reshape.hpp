/// \file
/// \brief Differentiable reshape (a view of the same values; the gradient is reshaped back).
#pragma once
#include <vector>

#include "ghnq/nn/common.hpp"

namespace ghnq::nn {

/// y = x viewed with new extents (one may be -1). No copy in the forward pass.
/// \code auto flat = ghnq::nn::reshape(tp, feat, {n, -1});   // [N, C, H, W] -> [N, C*H*W] \endcode
template <class T, class B>
var<T, B> reshape(tape<T, B>& tp, const var<T, B>& x, std::vector<std::int64_t> dims) {
  detail::require_contiguous(x, "reshape", "x");
  const bool tracked = tp.needs(x);
  auto out = tp.make_output(x.value().reshape(std::move(dims)), tracked);
  if (tracked) {
    tp.record([x, out]() {
      if (!out.has_grad()) return;
      detail::accumulate(x, out.grad());
    });
  }
  return out;
}

/// [N, d1, d2, ...] -> [N, d1*d2*...]
template <class T, class B>
var<T, B> flatten(tape<T, B>& tp, const var<T, B>& x) {
  GHNQ_CHECK(x.value().rank() >= 1, shape_error, "flatten: rank-0 input");
  return reshape(tp, x, {x.shape()[0], -1});
}

}  // namespace ghnq::nn
