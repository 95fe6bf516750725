/// \file
/// \brief CUDA GEMM: `backend::impl<cuda_t, op::gemm>` through cuBLAS (sgemm / dgemm), row-major.
///
/// cuBLAS is column-major. A row-major m x n matrix C with row stride ldc is, read column-major,
/// C^T (n x m, leading dimension ldc); so C = alpha op(A) op(B) + beta C is computed as
/// C^T = alpha op(B)^T op(A)^T + beta C^T with the operands swapped and the same op flags.
/// Host API only (cublas_v2.h); full FP32/FP64 math (no TF32 unless the user's environment
/// forces it, e.g. NVIDIA_TF32_OVERRIDE=1).
#pragma once
#include "ghnq/backend/ops.hpp"
#include "ghnq/backend/tags.hpp"
#include "ghnq/core/config.hpp"
#include "ghnq/core/error.hpp"

#if GHNQ_HAS_CUDA
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <climits>
#include <initializer_list>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "ghnq/backend/cuda/memory.hpp"

namespace ghnq::cuda {

namespace detail {
/// Name of a cuBLAS status (e.g. "CUBLAS_STATUS_INVALID_VALUE").
inline const char* cublas_status_name(cublasStatus_t s) noexcept {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_<unknown>";
  }
}

/// Throws backend_error naming the cuBLAS status, the failed call and its call site.
inline void cublas_check(cublasStatus_t s, const char* call, const char* file, int line) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  throw backend_error(::ghnq::detail::concat("cuBLAS error ", cublas_status_name(s), " (", static_cast<int>(s),
                                             ") in ", call, " at ", file, ":", line));
}
}  // namespace detail

}  // namespace ghnq::cuda

/// Checks a cuBLAS call: throws ghnq::backend_error("cuBLAS error <status> (<code>) in <call> at
/// <file>:<line>") unless it returns CUBLAS_STATUS_SUCCESS.
#define GHNQ_CUBLAS_CHECK(call) ::ghnq::cuda::detail::cublas_check((call), #call, __FILE__, __LINE__)

namespace ghnq::cuda {

/// The calling thread's cuBLAS handle for the current device, created on first use and destroyed
/// when the thread exits (one handle per thread and device; handles are not shared between threads).
/// Throws backend_error when no device can be used or cublasCreate fails.
/// \code cublasHandle_t h = ghnq::cuda::cublas_handle(); \endcode
inline cublasHandle_t cublas_handle() {
  struct per_thread {
    std::vector<cublasHandle_t> by_device;
    ~per_thread() {
      for (auto h : by_device)
        if (h) (void)cublasDestroy(h);  // errors at teardown are ignored
    }
  };
  thread_local per_thread handles;
  int dev = 0;
  GHNQ_CUDA_CHECK(cudaGetDevice(&dev));
  const auto d = static_cast<std::size_t>(dev);
  if (handles.by_device.size() <= d) handles.by_device.resize(d + 1, nullptr);
  if (!handles.by_device[d]) {
    cublasHandle_t h = nullptr;
    GHNQ_CUBLAS_CHECK(cublasCreate(&h));
    handles.by_device[d] = h;
  }
  return handles.by_device[d];
}

}  // namespace ghnq::cuda

namespace ghnq::backend {

/// Row-major GEMM on device pointers (see op::gemm): C(m x n) = alpha op(A) op(B) + beta C.
/// As in BLAS, C is not read when beta == 0. Sizes and leading dimensions must fit in int.
template <>
struct impl<cuda_t, op::gemm> {
  /// \tparam T float (cublasSgemm) or double (cublasDgemm).
  /// Throws value_error on an out-of-range size, backend_error on a CUDA/cuBLAS failure
  /// (e.g. CUBLAS_STATUS_INVALID_VALUE for a leading dimension smaller than a row).
  template <class T>
  static void run(bool trans_a, bool trans_b, long m, long n, long k, T alpha, const T* a, long lda,
                  const T* b, long ldb, T beta, T* c, long ldc) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                  "ghnq: backend::impl<cuda_t, op::gemm> supports float and double");
    for (long v : {m, n, k, lda, ldb, ldc})
      GHNQ_CHECK(v >= 0 && v <= INT_MAX, value_error, "cuda gemm: size or leading dimension ", v,
                 " outside [0, INT_MAX] (m=", m, ", n=", n, ", k=", k, ", lda=", lda, ", ldb=", ldb, ", ldc=", ldc,
                 ")");
    if (m == 0 || n == 0) return;
    cublasHandle_t h = ::ghnq::cuda::cublas_handle();
    if (k == 0) {
      scale_rows(h, m, n, beta, c, ldc);
      return;
    }
    const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const int M = static_cast<int>(m), N = static_cast<int>(n), K = static_cast<int>(k);
    const int LDA = static_cast<int>(lda), LDB = static_cast<int>(ldb), LDC = static_cast<int>(ldc);
    if constexpr (std::is_same_v<T, float>) {
      GHNQ_CUBLAS_CHECK(cublasSgemm(h, op_b, op_a, N, M, K, &alpha, b, LDB, a, LDA, &beta, c, LDC));
    } else {
      GHNQ_CUBLAS_CHECK(cublasDgemm(h, op_b, op_a, N, M, K, &alpha, b, LDB, a, LDA, &beta, c, LDC));
    }
  }

 private:
  /// k == 0: C = beta * C (zeroed when beta == 0, C unread), row by row when C is padded.
  template <class T>
  static void scale_rows(cublasHandle_t h, long m, long n, T beta, T* c, long ldc) {
    if (beta == T(0)) {
      GHNQ_CUDA_CHECK(cudaMemset2D(c, static_cast<std::size_t>(ldc) * sizeof(T), 0,
                                   static_cast<std::size_t>(n) * sizeof(T), static_cast<std::size_t>(m)));
      return;
    }
    if (beta == T(1)) return;
    const bool packed = ldc == n && m * n <= INT_MAX;
    const long rows = packed ? 1 : m;
    const int len = static_cast<int>(packed ? m * n : n);
    for (long r = 0; r < rows; ++r) {
      if constexpr (std::is_same_v<T, float>) {
        GHNQ_CUBLAS_CHECK(cublasSscal(h, len, &beta, c + r * ldc, 1));
      } else {
        GHNQ_CUBLAS_CHECK(cublasDscal(h, len, &beta, c + r * ldc, 1));
      }
    }
  }
};

}  // namespace ghnq::backend

#endif  // GHNQ_HAS_CUDA
