/// \file
/// \brief Zero-copy views of CPU tensors as xtensor expressions and Eigen maps.
/// \code
/// auto t = ghnq::tensor<float>::zeros({3, 4});
/// auto x = ghnq::as_xtensor(t);   x(1, 2) = 5.f;         // writes into t
/// auto m = ghnq::as_matrix(t);    m.row(0).setOnes();     // writes into t
/// \endcode
#pragma once
#include <Eigen/Core>
#include <xtensor/xadapt.hpp>

#include "ghnq/tensor/tensor.hpp"

namespace ghnq {

namespace detail {
template <class T>
std::size_t strided_span(const tensor<T, backend::cpu_t>& t) {
  std::int64_t span = 1;
  for (int i = 0; i < t.rank(); ++i) span += (t.shape()[i] - 1) * t.strides()[i];
  return t.numel() == 0 ? 0 : static_cast<std::size_t>(span);
}
}  // namespace detail

/// xtensor adaptor over the tensor's memory (strided views supported). No copy.
template <class T>
auto as_xtensor(tensor<T, backend::cpu_t>& t) {
  std::vector<std::size_t> shp(t.shape().begin(), t.shape().end());
  std::vector<std::ptrdiff_t> str(t.strides().begin(), t.strides().end());
  return xt::adapt(t.data(), detail::strided_span(t), xt::no_ownership(), shp, str);
}
template <class T>
auto as_xtensor(const tensor<T, backend::cpu_t>& t) {
  std::vector<std::size_t> shp(t.shape().begin(), t.shape().end());
  std::vector<std::ptrdiff_t> str(t.strides().begin(), t.strides().end());
  return xt::adapt(t.data(), detail::strided_span(t), xt::no_ownership(), shp, str);
}

template <class T>
using row_matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using matrix_map = Eigen::Map<row_matrix<T>, Eigen::Unaligned, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;
template <class T>
using const_matrix_map =
    Eigen::Map<const row_matrix<T>, Eigen::Unaligned, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;
template <class T>
using vector_map = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>>;
template <class T>
using const_vector_map = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>;

/// Row-major Eigen map of a rank-2 tensor (strided views allowed). No copy.
template <class T>
matrix_map<T> as_matrix(tensor<T, backend::cpu_t>& t) {
  GHNQ_CHECK(t.rank() == 2, shape_error, "as_matrix: expected a rank-2 tensor, got ", t.shape());
  return {t.data(), t.dim(0), t.dim(1), Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(t.strides()[0], t.strides()[1])};
}
template <class T>
const_matrix_map<T> as_matrix(const tensor<T, backend::cpu_t>& t) {
  GHNQ_CHECK(t.rank() == 2, shape_error, "as_matrix: expected a rank-2 tensor, got ", t.shape());
  return {t.data(), t.dim(0), t.dim(1), Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(t.strides()[0], t.strides()[1])};
}
/// Eigen vector map over all elements of a contiguous tensor. No copy.
template <class T>
vector_map<T> as_vector(tensor<T, backend::cpu_t>& t) {
  GHNQ_CHECK(t.is_contiguous(), shape_error, "as_vector: tensor ", t.shape(), " is not contiguous");
  return {t.data(), t.numel()};
}
template <class T>
const_vector_map<T> as_vector(const tensor<T, backend::cpu_t>& t) {
  GHNQ_CHECK(t.is_contiguous(), shape_error, "as_vector: tensor ", t.shape(), " is not contiguous");
  return {t.data(), t.numel()};
}

}  // namespace ghnq
