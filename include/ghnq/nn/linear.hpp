/// \file
/// \brief Fully connected layer y = x W^T + b (x: [N, in], W: [out, in], b: [out]).
#pragma once
#include "ghnq/nn/common.hpp"

namespace ghnq::nn {

/// \code auto y = ghnq::nn::linear(tp, x, w, b);   // b may be a default-constructed var (no bias) \endcode
template <class T, class B>
var<T, B> linear(tape<T, B>& tp, const var<T, B>& x, const var<T, B>& w, const var<T, B>& b = {}) {
  detail::require_rank(x, 2, "linear", "x");
  detail::require_rank(w, 2, "linear", "weight");
  const auto n = x.shape()[0], in = x.shape()[1], outf = w.shape()[0];
  GHNQ_CHECK(w.shape()[1] == in, shape_error, "linear: input ", x.shape(), " does not match weight ", w.shape());
  if (b.defined()) {
    detail::require_rank(b, 1, "linear", "bias");
    GHNQ_CHECK(b.shape() == ghnq::shape({outf}), shape_error, "linear: bias ", b.shape(), " for weight ",
               w.shape());
  }
  using G = backend::impl<B, backend::op::gemm>;
  tensor<T, B> y({n, outf});
  if (b.defined()) {
    // broadcast bias rows, then y += x W^T
    for (std::int64_t i = 0; i < n; ++i)
      backend::impl<B, backend::op::memory>::copy(y.data() + i * outf, b.value().data(), sizeof(T) * outf);
    G::run(false, true, n, outf, in, T(1), x.value().data(), in, w.value().data(), in, T(1), y.data(), outf);
  } else {
    G::run(false, true, n, outf, in, T(1), x.value().data(), in, w.value().data(), in, T(0), y.data(), outf);
  }
  const bool tracked = b.defined() ? tp.needs(x, w, b) : tp.needs(x, w);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([x, w, b, out, n, in, outf]() {
      if (!out.has_grad()) return;
      const T* dy = out.grad().data();
      if (x.requires_grad())  // dx += dy W
        G::run(false, false, n, in, outf, T(1), dy, outf, w.value().data(), in, T(1), x.grad().data(), in);
      if (w.requires_grad())  // dW += dy^T x
        G::run(true, false, outf, in, n, T(1), dy, outf, x.value().data(), in, T(1), w.grad().data(), in);
      if (b.defined() && b.requires_grad())  // db += column sums of dy
        backend::impl<B, backend::op::axpy>::add_column_sums(dy, n, outf, b.grad().data());
    });
  }
  return out;
}

}  // namespace ghnq::nn
