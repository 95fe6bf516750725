/// \file
/// \brief Parameter initializers (seeded): Kaiming normal/uniform, fan-in uniform, constants.
#pragma once
#include <cmath>

#include "ghnq/core/rng.hpp"
#include "ghnq/tensor/tensor.hpp"

namespace ghnq::nn::init {

/// Fan-in of a weight tensor: product of all extents but the first ([out, in, kh, kw] -> in*kh*kw).
template <class T>
std::int64_t fan_in(const tensor<T>& w) {
  GHNQ_CHECK(w.rank() >= 2, shape_error, "init::fan_in: weight of shape ", w.shape(), " has rank < 2");
  return w.numel() / w.dim(0);
}

/// N(0, gain^2 / fan_in) with gain = sqrt(2) (He et al., for ReLU networks).
template <class T>
void kaiming_normal(tensor<T>& w, rng& g, std::int64_t fan = 0) {
  if (fan == 0) fan = fan_in(w);
  const double sd = std::sqrt(2.0 / static_cast<double>(fan));
  for (std::int64_t i = 0; i < w.numel(); ++i) w.flat(i) = static_cast<T>(g.normal() * sd);
}

/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for conv/linear weights and biases.
template <class T>
void uniform_fan_in(tensor<T>& w, rng& g, std::int64_t fan) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan));
  for (std::int64_t i = 0; i < w.numel(); ++i) w.flat(i) = static_cast<T>(g.uniform(-bound, bound));
}

/// Every element = v.
template <class T>
void constant(tensor<T>& w, T v) {
  w.fill(v);
}

}  // namespace ghnq::nn::init
