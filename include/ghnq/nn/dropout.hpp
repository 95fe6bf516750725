/// \file
/// \brief Inverted dropout with an explicit, seeded generator.
#pragma once
#include <cstdint>
#include <vector>

#include "ghnq/backend/cpu/dropout.hpp"
#include "ghnq/core/rng.hpp"
#include "ghnq/nn/common.hpp"

namespace ghnq::nn {

/// In training, each element is kept with probability 1 - p and scaled by 1/(1 - p), else set to
/// 0: y = x * mask, dx = dy * mask. Element i is dropped when the i-th draw `g.uniform() < p`
/// (one draw per element, in order), so the same generator state gives the same mask.
/// When `!training` or p == 0 the result is x itself and g is not advanced.
/// p must be in [0, 1) (value_error otherwise).
/// \code
/// ghnq::rng g(7);
/// auto h = ghnq::nn::dropout(tp, feat, 0.2, g, /*training=*/true);
/// \endcode
template <class T, class B>
var<T, B> dropout(tape<T, B>& tp, const var<T, B>& x, double p, rng& g, bool training) {
  GHNQ_CHECK(p >= 0.0 && p < 1.0, value_error, "dropout: p must be in [0, 1), got ", p);
  detail::require_contiguous(x, "dropout", "x");
  if (!training || p == 0.0) return x;
  const std::int64_t n = x.value().numel();
  const T keep = static_cast<T>(1.0 / (1.0 - p));
  std::vector<T> m(static_cast<std::size_t>(n));
  for (auto& v : m) v = g.uniform() < p ? T(0) : keep;
  const auto mask = tensor<T, B>::from(x.shape(), m);
  using K = backend::impl<B, backend::op::dropout>;
  tensor<T, B> y(x.shape());
  K::forward(x.value().data(), mask.data(), y.data(), n);
  const bool tracked = tp.needs(x);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([x, out, mask, n]() {
      if (!out.has_grad()) return;
      K::backward(out.grad().data(), mask.data(), x.grad().data(), n);
    });
  }
  return out;
}

}  // namespace ghnq::nn
