/// \file
/// \brief Pointwise activations: relu, sigmoid, tanh, hardswish (forward and backward).
#pragma once
#include "ghnq/nn/common.hpp"

namespace ghnq::nn {

/// y = Fn(x) elementwise; dx += dy * Fn'(x) (written directly into a fresh gradient buffer).
template <class Fn, class T, class B>
var<T, B> activation(tape<T, B>& tp, const var<T, B>& x) {
  detail::require_contiguous(x, "activation", "x");
  using K = backend::impl<B, backend::op::activation<Fn>>;
  tensor<T, B> y(x.shape());
  K::forward(x.value().data(), y.data(), y.numel());
  const bool tracked = tp.needs(x);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([x, out]() {
      if (!out.has_grad()) return;
      bool first = false;
      T* dx = x.grad_for_write(first).data();
      K::backward(x.value().data(), out.value().data(), out.grad().data(), dx, x.value().numel(), first);
    });
  }
  return out;
}

/// max(x, 0)
template <class T, class B>
var<T, B> relu(tape<T, B>& tp, const var<T, B>& x) { return activation<backend::fn::relu>(tp, x); }
/// 1 / (1 + exp(-x))
template <class T, class B>
var<T, B> sigmoid(tape<T, B>& tp, const var<T, B>& x) { return activation<backend::fn::sigmoid>(tp, x); }
/// tanh(x)
template <class T, class B>
var<T, B> tanh(tape<T, B>& tp, const var<T, B>& x) { return activation<backend::fn::tanh>(tp, x); }
/// x * relu6(x + 3) / 6
template <class T, class B>
var<T, B> hardswish(tape<T, B>& tp, const var<T, B>& x) { return activation<backend::fn::hardswish>(tp, x); }

}  // namespace ghnq::nn
