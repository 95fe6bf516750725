/// \file
/// \brief CUDA backend memory: `backend::impl<cuda_t, op::memory>` over the CUDA runtime, device
/// queries (`ghnq::cuda::device_count`, `available`), the RAII `ghnq::cuda::device_buffer<T>` and
/// the error check `GHNQ_CUDA_CHECK`.
///
/// Host API only (cuda_runtime_api.h): this header is compiled by the ordinary C++ compiler and
/// contains no device code. Without CUDA (GHNQ_HAS_CUDA == 0) it only declares `device_count()`
/// (always 0) and `available()` (always false), so host code can ask without an #if.
///
/// Ordering: every call uses the legacy default stream; `copy_to_host` returns when the data is
/// on the host, so results of earlier kernels (e.g. cuBLAS GEMM) are complete when read.
#pragma once
#include <cstddef>
#include <string>

#include "ghnq/backend/ops.hpp"
#include "ghnq/backend/tags.hpp"
#include "ghnq/core/config.hpp"
#include "ghnq/core/error.hpp"

#if GHNQ_HAS_CUDA
#include <cuda_runtime_api.h>

#include <atomic>
#include <type_traits>
#include <utility>
#include <vector>

namespace ghnq::cuda {

namespace detail {
/// Throws backend_error naming the CUDA error, the failed call and its call site; clears the
/// runtime's last-error state so a later unrelated check does not report it again.
inline void check(cudaError_t e, const char* call, const char* file, int line) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();
  throw backend_error(::ghnq::detail::concat("CUDA error ", cudaGetErrorName(e), " (", cudaGetErrorString(e),
                                             ") in ", call, " at ", file, ":", line));
}

/// Last error reported by a `deallocate` (which must not throw); cudaSuccess when none.
inline std::atomic<int>& deallocate_error_slot() noexcept {
  static std::atomic<int> e{static_cast<int>(cudaSuccess)};
  return e;
}
}  // namespace detail

}  // namespace ghnq::cuda

/// Checks a CUDA runtime call: throws ghnq::backend_error("CUDA error <name> (<text>) in <call> at
/// <file>:<line>") unless it returns cudaSuccess.
/// \code GHNQ_CUDA_CHECK(cudaDeviceSynchronize()); \endcode
#define GHNQ_CUDA_CHECK(call) ::ghnq::cuda::detail::check((call), #call, __FILE__, __LINE__)

namespace ghnq::cuda {

/// Number of CUDA devices usable by this process; 0 (never throws) when there is no device, no
/// driver, or the driver is too old for the runtime.
inline int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

/// True when at least one CUDA device can be used.
inline bool available() noexcept { return device_count() > 0; }

/// One line describing the devices, or why there is none (for logs and test skip messages).
/// \code std::cout << ghnq::cuda::device_summary() << '\n';  // "1 CUDA device(s), device 0: NVIDIA H100 ..." \endcode
inline std::string device_summary() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return ::ghnq::detail::concat("no CUDA device (", cudaGetErrorName(e), ": ", cudaGetErrorString(e), ")");
  }
  if (n == 0) return "no CUDA device";
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) {
    (void)cudaGetLastError();
    return ::ghnq::detail::concat(n, " CUDA device(s)");
  }
  return ::ghnq::detail::concat(n, " CUDA device(s), device 0: ", p.name, " (sm_", p.major, p.minor, ", ",
                                p.totalGlobalMem >> 20, " MiB)");
}

}  // namespace ghnq::cuda

namespace ghnq::backend {

/// Device memory through cudaMalloc / cudaFree / cudaMemcpy / cudaMemset (see op::memory).
/// Every function except `deallocate` throws ghnq::backend_error on a CUDA failure.
template <>
struct impl<cuda_t, op::memory> {
  /// Device allocation of at least `bytes` (a zero-byte request still returns a unique pointer).
  static void* allocate(std::size_t bytes) {
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes == 0 ? 1 : bytes);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      throw backend_error(::ghnq::detail::concat("CUDA error ", cudaGetErrorName(e), " (", cudaGetErrorString(e),
                                                 ") in cudaMalloc of ", bytes, " bytes at ", __FILE__, ":",
                                                 __LINE__));
    }
    return p;
  }
  /// Frees `p` (nullptr is a no-op). Never throws: a failure (e.g. during process teardown) is
  /// recorded and readable through `last_deallocate_error()`.
  static void deallocate(void* p) noexcept {
    if (!p) return;
    const cudaError_t e = cudaFree(p);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      ::ghnq::cuda::detail::deallocate_error_slot().store(static_cast<int>(e), std::memory_order_relaxed);
    }
  }
  /// The last error a `deallocate` swallowed (cudaSuccess when none).
  static cudaError_t last_deallocate_error() noexcept {
    return static_cast<cudaError_t>(::ghnq::cuda::detail::deallocate_error_slot().load(std::memory_order_relaxed));
  }
  /// Device -> host; returns when the bytes are on the host.
  static void copy_to_host(void* host_dst, const void* src, std::size_t bytes) {
    if (bytes == 0) return;
    GHNQ_CUDA_CHECK(cudaMemcpy(host_dst, src, bytes, cudaMemcpyDeviceToHost));
  }
  /// Host -> device.
  static void copy_from_host(void* dst, const void* host_src, std::size_t bytes) {
    if (bytes == 0) return;
    GHNQ_CUDA_CHECK(cudaMemcpy(dst, host_src, bytes, cudaMemcpyHostToDevice));
  }
  /// Device -> device.
  static void copy(void* dst, const void* src, std::size_t bytes) {
    if (bytes == 0) return;
    GHNQ_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
  }
  /// Sets `bytes` bytes at `p` to zero (all-zero bits: 0 for integers, +0.0 for float/double).
  static void zero(void* p, std::size_t bytes) {
    if (bytes == 0) return;
    GHNQ_CUDA_CHECK(cudaMemset(p, 0, bytes));
  }
};

}  // namespace ghnq::backend

namespace ghnq::cuda {

/// Owning, move-only array of `n` elements of `T` in device memory (uninitialized).
/// \tparam T a trivially copyable element type.
/// \code
/// ghnq::cuda::device_buffer<float> d(1024);
/// d.upload(host.data(), host.size());
/// std::vector<float> back = d.to_vector();
/// \endcode
template <class T>
class device_buffer {
  static_assert(std::is_trivially_copyable_v<T>, "ghnq::cuda::device_buffer: T must be trivially copyable");
  using memory = backend::impl<backend::cuda_t, backend::op::memory>;

 public:
  device_buffer() = default;
  explicit device_buffer(std::size_t n) : data_(static_cast<T*>(memory::allocate(n * sizeof(T)))), size_(n) {}
  ~device_buffer() { memory::deallocate(data_); }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  device_buffer(device_buffer&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  device_buffer& operator=(device_buffer&& o) noexcept {
    if (this != &o) {
      memory::deallocate(data_);
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }

  /// Device pointer (nullptr for a default-constructed or moved-from buffer).
  T* data() noexcept { return data_; }
  const T* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  std::size_t bytes() const noexcept { return size_ * sizeof(T); }

  /// Copies `n` host elements to the start of the buffer; throws value_error when n > size().
  void upload(const T* host, std::size_t n) {
    GHNQ_CHECK(n <= size_, value_error, "cuda::device_buffer::upload: ", n, " elements into a buffer of ", size_);
    memory::copy_from_host(data_, host, n * sizeof(T));
  }
  /// Copies the first `n` elements to the host; throws value_error when n > size().
  void download(T* host, std::size_t n) const {
    GHNQ_CHECK(n <= size_, value_error, "cuda::device_buffer::download: ", n, " elements from a buffer of ", size_);
    memory::copy_to_host(host, data_, n * sizeof(T));
  }
  /// The whole buffer as a host vector.
  std::vector<T> to_vector() const {
    std::vector<T> v(size_);
    download(v.data(), size_);
    return v;
  }
  /// Sets every byte to zero.
  void zero() { memory::zero(data_, bytes()); }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace ghnq::cuda

#else  // !GHNQ_HAS_CUDA

namespace ghnq::cuda {
/// This build has no CUDA backend (configure with -DGHNQ_WITH_CUDA=ON): always 0.
inline int device_count() noexcept { return 0; }
/// This build has no CUDA backend: always false.
inline bool available() noexcept { return false; }
/// Says that this build has no CUDA backend.
inline std::string device_summary() { return "CUDA backend not built (configure with -DGHNQ_WITH_CUDA=ON)"; }
}  // namespace ghnq::cuda

#endif  // GHNQ_HAS_CUDA
