/// \file
/// \brief CPU GEMM through Eigen maps over ghnq storage (no copies, single-threaded Eigen).
#pragma once
#include <Eigen/Core>

#include "ghnq/backend/ops.hpp"
#include "ghnq/backend/tags.hpp"

namespace ghnq::backend {

template <>
struct impl<cpu_t, op::gemm> {
  template <class T>
  using rmat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  template <class T>
  using cmap = Eigen::Map<const rmat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
  template <class T>
  using map = Eigen::Map<rmat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

  /// C(m x n) = alpha * op(A) * op(B) + beta * C, row-major with leading dimensions.
  template <class T>
  static void run(bool trans_a, bool trans_b, long m, long n, long k, T alpha, const T* a, long lda,
                  const T* b, long ldb, T beta, T* c, long ldc) {
    if (m == 0 || n == 0) return;
    map<T> C(c, m, n, Eigen::OuterStride<>(ldc));
    if (k == 0) {
      if (beta == T(0)) C.setZero(); else C *= beta;
      return;
    }
    cmap<T> A(a, trans_a ? k : m, trans_a ? m : k, Eigen::OuterStride<>(lda));
    cmap<T> B(b, trans_b ? n : k, trans_b ? k : n, Eigen::OuterStride<>(ldb));
    if (beta == T(0)) {
      C.setZero();
    } else if (beta != T(1)) {
      C *= beta;
    }
    if (!trans_a && !trans_b) C.noalias() += alpha * A * B;
    else if (trans_a && !trans_b) C.noalias() += alpha * A.transpose() * B;
    else if (!trans_a && trans_b) C.noalias() += alpha * A * B.transpose();
    else C.noalias() += alpha * A.transpose() * B.transpose();
  }
};

}  // namespace ghnq::backend
