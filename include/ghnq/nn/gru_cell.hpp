/// \file
/// \brief GRU cell (PyTorch `GRUCell` convention, gates r, z, n).
#pragma once
#include <cstdint>

#include "ghnq/backend/cpu/gemm.hpp"
#include "ghnq/backend/cpu/gru.hpp"
#include "ghnq/nn/common.hpp"

namespace ghnq::nn {

/// One GRU step for a batch: x [N, in], h [N, H], w_ih [3H, in], w_hh [3H, H], b_ih, b_hh [3H]
/// (biases may be undefined vars). Gate blocks are stacked r, z, n in the weights:
/// \code
/// // r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
/// // z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
/// // n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))
/// // h' = (1 - z) * n + z * h
/// auto h1 = ghnq::nn::gru_cell(tp, msg, h0, w_ih, w_hh, b_ih, b_hh);   // [N, H]
/// \endcode
/// Each of x W_ih^T and h W_hh^T is one GEMM over the three stacked gates.
template <class T, class B>
var<T, B> gru_cell(tape<T, B>& tp, const var<T, B>& x, const var<T, B>& h, const var<T, B>& w_ih,
                   const var<T, B>& w_hh, const var<T, B>& b_ih, const var<T, B>& b_hh) {
  constexpr const char* kOp = "gru_cell";
  detail::require_rank(x, 2, kOp, "x");
  detail::require_rank(h, 2, kOp, "h");
  detail::require_rank(w_ih, 2, kOp, "w_ih");
  detail::require_rank(w_hh, 2, kOp, "w_hh");
  const std::int64_t n = x.shape()[0], in = x.shape()[1], hs = h.shape()[1];
  GHNQ_CHECK(h.shape()[0] == n, shape_error, kOp, ": batch of x ", x.shape(), " and h ", h.shape(), " differ");
  GHNQ_CHECK(w_ih.shape() == ghnq::shape({3 * hs, in}), shape_error, kOp, ": w_ih ", w_ih.shape(), " must be [",
             3 * hs, ", ", in, "] for x ", x.shape(), " and h ", h.shape());
  GHNQ_CHECK(w_hh.shape() == ghnq::shape({3 * hs, hs}), shape_error, kOp, ": w_hh ", w_hh.shape(), " must be [",
             3 * hs, ", ", hs, "] for h ", h.shape());
  for (const auto* p : {&b_ih, &b_hh}) {
    if (!p->defined()) continue;
    const char* arg = p == &b_ih ? "b_ih" : "b_hh";
    detail::require_contiguous(*p, kOp, arg);
    GHNQ_CHECK(p->shape() == ghnq::shape({3 * hs}), shape_error, kOp, ": '", arg, "' of shape ", p->shape(),
               " must be [", 3 * hs, "] for h ", h.shape());
  }

  using G = backend::impl<B, backend::op::gemm>;
  using K = backend::impl<B, backend::op::gru_cell>;
  const std::int64_t w3 = 3 * hs;
  tensor<T, B> gi({n, w3}), gh({n, w3}), gates({n, w3}), hn({n, hs});
  G::run(false, true, n, w3, in, T(1), x.value().data(), in, w_ih.value().data(), in, T(0), gi.data(), w3);
  G::run(false, true, n, w3, hs, T(1), h.value().data(), hs, w_hh.value().data(), hs, T(0), gh.data(), w3);
  K::forward(gi.data(), gh.data(), b_ih.defined() ? b_ih.value().data() : nullptr,
             b_hh.defined() ? b_hh.value().data() : nullptr, h.value().data(), n, hs, gates.data(), hn.data());

  const bool tracked = tp.needs(x, h, w_ih, w_hh, b_ih, b_hh);
  auto out = tp.make_output(hn, tracked);
  if (tracked) {
    tp.record([x, h, w_ih, w_hh, b_ih, b_hh, out, gates, gh, n, in, hs, w3]() {
      if (!out.has_grad()) return;
      tensor<T, B> dgi({n, w3}), dgh({n, w3});
      K::backward(gates.data(), gh.data(), h.value().data(), out.grad().data(), n, hs, dgi.data(), dgh.data(),
                  h.requires_grad() ? h.grad().data() : nullptr);
      if (x.requires_grad())  // dx += dgi W_ih
        G::run(false, false, n, in, w3, T(1), dgi.data(), w3, w_ih.value().data(), in, T(1), x.grad().data(), in);
      if (h.requires_grad())  // dh += dgh W_hh
        G::run(false, false, n, hs, w3, T(1), dgh.data(), w3, w_hh.value().data(), hs, T(1), h.grad().data(), hs);
      if (w_ih.requires_grad())  // dW_ih += dgi^T x
        G::run(true, false, w3, in, n, T(1), dgi.data(), w3, x.value().data(), in, T(1), w_ih.grad().data(), in);
      if (w_hh.requires_grad())  // dW_hh += dgh^T h
        G::run(true, false, w3, hs, n, T(1), dgh.data(), w3, h.value().data(), hs, T(1), w_hh.grad().data(), hs);
      if (b_ih.requires_grad()) K::bias_grad(dgi.data(), n, w3, b_ih.grad().data());
      if (b_hh.requires_grad()) K::bias_grad(dgh.data(), n, w3, b_hh.grad().data());
    });
  }
  return out;
}

}  // namespace ghnq::nn
