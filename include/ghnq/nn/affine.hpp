/// \file
/// \brief Elementwise affine map with constant coefficients: y = a * x + b (scaling, shifting).
#pragma once
#include "ghnq/backend/cpu/affine.hpp"
#include "ghnq/nn/common.hpp"

namespace ghnq::nn {

/// y = a * x + b elementwise (a, b constants, not trained); dx += a * dy.
/// \code auto w = ghnq::nn::affine(tp, p, std::sqrt(2.0 / fan_in));   // scale only \endcode
template <class T, class B>
var<T, B> affine(tape<T, B>& tp, const var<T, B>& x, double a, double b = 0.0) {
  detail::require_contiguous(x, "affine", "x");
  tensor<T, B> y(x.shape());
  backend::impl<B, backend::op::affine>::forward(static_cast<T>(a), static_cast<T>(b), x.value().data(), y.data(),
                                                 y.numel());
  const bool tracked = tp.needs(x);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([x, out, a]() {
      if (!out.has_grad()) return;
      backend::impl<B, backend::op::axpy>::run(static_cast<T>(a), out.grad().data(), x.grad().data(),
                                               x.value().numel());
    });
  }
  return out;
}

}  // namespace ghnq::nn
