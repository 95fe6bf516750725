/// \file
/// \brief Shared helpers of the differentiable ops in ghnq::nn.
#pragma once
#include <string>

#include "ghnq/autograd/tape.hpp"
#include "ghnq/backend/cpu.hpp"

namespace ghnq::nn {

using autograd::tape;
using autograd::var;

namespace detail {
/// Inputs of every op must be contiguous; names the op and the argument when not.
template <class T, class B>
void require_contiguous(const var<T, B>& v, const char* op, const char* arg) {
  GHNQ_CHECK(v.defined(), value_error, op, ": argument '", arg, "' is undefined");
  GHNQ_CHECK(v.value().is_contiguous(), shape_error, op, ": argument '", arg, "' of shape ", v.shape(),
             " is not contiguous");
}
template <class T, class B>
void require_rank(const var<T, B>& v, int rank, const char* op, const char* arg) {
  require_contiguous(v, op, arg);
  GHNQ_CHECK(v.value().rank() == rank, shape_error, op, ": argument '", arg, "' must have rank ", rank,
             ", got shape ", v.shape());
}
/// dst.grad() += src (same numel).
template <class T, class B>
void accumulate(const var<T, B>& dst, const tensor<T, B>& src) {
  backend::impl<B, backend::op::axpy>::run(T(1), src.data(), dst.grad().data(), src.numel());
}
}  // namespace detail

}  // namespace ghnq::nn
