/// \file
/// \brief Classification loss (softmax cross-entropy with label smoothing) and an accuracy helper.
#pragma once
#include <cstdint>
#include <vector>

#include "ghnq/backend/cpu/loss.hpp"
#include "ghnq/nn/common.hpp"

namespace ghnq::nn {

/// Mean cross-entropy of logits [N, C] against labels (N values, each in [0, C), else
/// value_error), with label smoothing eps in [0, 1) (PyTorch semantics):
/// target = (1 - eps) * onehot(label) + eps / C,
/// loss = (1/N) sum_i ( logsumexp(x_i) - sum_j target_ij * x_ij ).
/// Returns a one-element var of shape [1]; dlogits = dloss / N * (softmax(x) - target).
/// \code
/// auto loss = ghnq::nn::cross_entropy(tp, logits, labels, 0.1);
/// tp.backward(loss);
/// \endcode
template <class T, class B>
var<T, B> cross_entropy(tape<T, B>& tp, const var<T, B>& logits, const std::vector<std::int32_t>& labels,
                        double label_smoothing = 0.0) {
  constexpr const char* kOp = "cross_entropy";
  detail::require_rank(logits, 2, kOp, "logits");
  const std::int64_t n = logits.shape()[0], c = logits.shape()[1];
  GHNQ_CHECK(static_cast<std::int64_t>(labels.size()) == n, shape_error, kOp, ": ", labels.size(),
             " labels for logits ", logits.shape());
  GHNQ_CHECK(c > 0, shape_error, kOp, ": logits ", logits.shape(), " have no classes");
  GHNQ_CHECK(label_smoothing >= 0.0 && label_smoothing < 1.0, value_error, kOp,
             ": label_smoothing must be in [0, 1), got ", label_smoothing);
  for (std::int64_t i = 0; i < n; ++i) {
    const auto l = labels[static_cast<std::size_t>(i)];
    GHNQ_CHECK(l >= 0 && l < c, value_error, kOp, ": label ", l, " of sample ", i, " is out of range [0, ", c,
               ")");
  }
  using K = backend::impl<B, backend::op::cross_entropy>;
  tensor<T, B> prob({n, c}), loss({1});
  K::forward(logits.value().data(), n, c, labels.data(), label_smoothing, prob.data(), loss.data());
  const bool tracked = tp.needs(logits);
  auto out = tp.make_output(loss, tracked);
  if (tracked) {
    tp.record([logits, out, prob, labels, n, c, label_smoothing]() {
      if (!out.has_grad()) return;
      K::backward(prob.data(), n, c, labels.data(), label_smoothing, out.grad().data(), logits.grad().data());
    });
  }
  return out;
}

/// Number of rows of logits [N, C] whose argmax (first maximum on ties) equals the label.
/// \code
/// const auto correct = ghnq::nn::count_correct(logits.value(), labels);
/// \endcode
template <class T>
std::int64_t count_correct(const tensor<T>& logits, const std::vector<std::int32_t>& labels) {
  GHNQ_CHECK(logits.rank() == 2, shape_error, "count_correct: logits must be [N, C], got ", logits.shape());
  const std::int64_t n = logits.dim(0), c = logits.dim(1);
  GHNQ_CHECK(static_cast<std::int64_t>(labels.size()) == n, shape_error, "count_correct: ", labels.size(),
             " labels for logits ", logits.shape());
  std::int64_t correct = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    std::int64_t best = 0;
    for (std::int64_t j = 1; j < c; ++j)
      if (logits(i, j) > logits(i, best)) best = j;
    if (c > 0 && best == labels[static_cast<std::size_t>(i)]) ++correct;
  }
  return correct;
}

}  // namespace ghnq::nn
