/// \file
/// \brief Elementwise sum of two tensors of the same shape (residual connections, cell sums).
#pragma once
#include "ghnq/nn/common.hpp"

namespace ghnq::nn {

/// z = a + b (same shapes); da += dz, db += dz.
template <class T, class B>
var<T, B> add(tape<T, B>& tp, const var<T, B>& a, const var<T, B>& b) {
  detail::require_contiguous(a, "add", "a");
  detail::require_contiguous(b, "add", "b");
  GHNQ_CHECK(a.shape() == b.shape(), shape_error, "add: shapes ", a.shape(), " and ", b.shape(), " differ");
  using K = backend::impl<B, backend::op::axpy>;
  tensor<T, B> z(a.shape());
  K::add(a.value().data(), b.value().data(), z.data(), z.numel());
  const bool tracked = tp.needs(a, b);
  auto out = tp.make_output(z, tracked);
  if (tracked) {
    tp.record([a, b, out]() {
      if (!out.has_grad()) return;
      if (a.requires_grad()) detail::accumulate(a, out.grad());
      if (b.requires_grad()) detail::accumulate(b, out.grad());
    });
  }
  return out;
}

}  // namespace ghnq::nn
