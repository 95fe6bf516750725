/// \file
/// \brief Initialization shared by the GHN modules: parameters drawn U(-bound, bound) in element order.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "ghnq/autograd/variable.hpp"
#include "ghnq/core/rng.hpp"

namespace ghnq::ghn::detail {

/// A parameter with every element drawn U(-bound, bound), in row-major order (PyTorch's Linear /
/// Conv / GRUCell default uses bound = 1 / sqrt(fan_in)).
template <class T, class B>
autograd::var<T, B> uniform_parameter(const ghnq::shape& s, double bound, rng& g, std::string name) {
  std::vector<T> v(static_cast<std::size_t>(s.numel()));
  for (auto& e : v) e = static_cast<T>(g.uniform(-bound, bound));
  return autograd::parameter(tensor<T, B>::from(s, v), std::move(name));
}

}  // namespace ghnq::ghn::detail
