/// \file
/// \brief Embedding lookup: rows of a table picked by integer indices.
#pragma once
#include <cstdint>
#include <vector>

#include "ghnq/backend/cpu/indexing.hpp"
#include "ghnq/nn/common.hpp"

namespace ghnq::nn {

/// out[i, :] = weight[indices[i], :] for weight [V, D] -> out [n, D] (n = indices.size()).
/// Every index must be in [0, V) (value_error naming its position and value). The backward pass
/// scatter-adds into weight's gradient (repeated indices accumulate).
/// \code
/// auto e = ghnq::nn::embedding(tp, op_table, {0, 3, 3, 7});   // op_table [15, 32] -> [4, 32]
/// \endcode
template <class T, class B>
var<T, B> embedding(tape<T, B>& tp, const var<T, B>& weight, const std::vector<std::int64_t>& indices) {
  detail::require_rank(weight, 2, "embedding", "weight");
  const std::int64_t v = weight.shape()[0], d = weight.shape()[1];
  const auto n = static_cast<std::int64_t>(indices.size());
  for (std::int64_t i = 0; i < n; ++i) {
    const auto ix = indices[static_cast<std::size_t>(i)];
    GHNQ_CHECK(ix >= 0 && ix < v, value_error, "embedding: index ", ix, " at position ", i,
               " is out of range [0, ", v, ") for weight ", weight.shape());
  }
  using K = backend::impl<B, backend::op::embedding>;
  tensor<T, B> y({n, d});
  K::gather(weight.value().data(), d, indices.data(), n, y.data());
  const bool tracked = tp.needs(weight);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([weight, out, indices, n, d]() {
      if (!out.has_grad()) return;
      K::scatter_add(out.grad().data(), d, indices.data(), n, weight.grad().data());
    });
  }
  return out;
}

}  // namespace ghnq::nn
