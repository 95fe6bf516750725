/// \file
/// \brief Operation tags dispatched through `backend::impl<Backend, Op>`.
///
/// Each tag documents the static interface a backend specialization provides.
#pragma once

namespace ghnq::backend::op {

/// Memory management.
/// \code
/// static void* allocate(std::size_t bytes);
/// static void  deallocate(void* p) noexcept;
/// static void  copy_to_host(void* host_dst, const void* src, std::size_t bytes);
/// static void  copy_from_host(void* dst, const void* host_src, std::size_t bytes);
/// static void  copy(void* dst, const void* src, std::size_t bytes);          // same backend
/// static void  zero(void* p, std::size_t bytes);
/// \endcode
struct memory {};

/// Row-major general matrix multiply C = alpha * op(A) * op(B) + beta * C.
/// \code
/// template <class T>
/// static void run(bool trans_a, bool trans_b, long m, long n, long k, T alpha,
///                 const T* a, long lda, const T* b, long ldb, T beta, T* c, long ldc);
/// \endcode
/// op(A) is m x k, op(B) is k x n, C is m x n; leading dimensions are row strides of the
/// stored (untransposed) matrices.
struct gemm {};

}  // namespace ghnq::backend::op
