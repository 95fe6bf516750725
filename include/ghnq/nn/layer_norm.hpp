/// \file
/// \brief Layer normalization over the last dimension (PyTorch `LayerNorm(D)`).
#pragma once
#include <cstdint>

#include "ghnq/backend/cpu/norm.hpp"
#include "ghnq/nn/common.hpp"

namespace ghnq::nn {

/// y = (x - mean) / sqrt(var + eps) * gamma + beta, with mean and biased variance of each row
/// over the last dimension D of x (any rank >= 1). gamma / beta are [D] or undefined vars.
/// \code
/// auto h = ghnq::nn::layer_norm(tp, nodes, ln_w, ln_b);   // nodes [V, H], ln_w, ln_b [H]
/// \endcode
template <class T, class B>
var<T, B> layer_norm(tape<T, B>& tp, const var<T, B>& x, const var<T, B>& gamma, const var<T, B>& beta,
                     double eps = 1e-5) {
  constexpr const char* kOp = "layer_norm";
  detail::require_contiguous(x, kOp, "x");
  GHNQ_CHECK(x.value().rank() >= 1, shape_error, kOp, ": x must have rank >= 1, got ", x.shape());
  const std::int64_t d = x.shape().dim(-1);
  GHNQ_CHECK(d > 0, shape_error, kOp, ": last dimension of x ", x.shape(), " is empty");
  const std::int64_t rows = x.value().numel() / d;
  for (const auto* p : {&gamma, &beta}) {
    if (!p->defined()) continue;
    const char* arg = p == &gamma ? "gamma" : "beta";
    detail::require_contiguous(*p, kOp, arg);
    GHNQ_CHECK(p->shape() == ghnq::shape({d}), shape_error, kOp, ": '", arg, "' of shape ", p->shape(),
               " does not match the last dimension of x ", x.shape());
  }
  GHNQ_CHECK(eps > 0.0, value_error, kOp, ": eps must be > 0, got ", eps);

  using K = backend::impl<B, backend::op::layer_norm>;
  tensor<T, B> y(x.shape()), mean({rows}), invstd({rows});
  K::forward(x.value().data(), rows, d, eps, gamma.defined() ? gamma.value().data() : nullptr,
             beta.defined() ? beta.value().data() : nullptr, y.data(), mean.data(), invstd.data());
  const bool tracked = tp.needs(x, gamma, beta);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([x, gamma, beta, out, mean, invstd, rows, d]() {
      if (!out.has_grad()) return;
      K::backward(x.value().data(), out.grad().data(), rows, d, mean.data(), invstd.data(),
                  gamma.defined() ? gamma.value().data() : nullptr, x.requires_grad() ? x.grad().data() : nullptr,
                  gamma.requires_grad() ? gamma.grad().data() : nullptr,
                  beta.requires_grad() ? beta.grad().data() : nullptr);
    });
  }
  return out;
}

}  // namespace ghnq::nn
