/// \file
/// \brief Google Benchmark for the CUDA backend (built only with -DGHNQ_WITH_CUDA=ON): GEMM
/// through `backend::impl<cuda_t, op::gemm>` (cuBLAS) in TFLOP/s, and host <-> device copy
/// bandwidth through `impl<cuda_t, op::memory>` in GB/s.
///
/// Counters: `TFLOPs` (rate, 2 m n k per call; device synchronized before the clock stops),
/// `GBs` (rate, bytes moved per call). Without a device every benchmark reports
/// "no CUDA device" through SkipWithError and the program exits 0.
/// \code
/// cmake -S . -B build-gpu -DGHNQ_WITH_CUDA=ON -DGHNQ_BUILD_BENCHMARKS=ON && cmake --build build-gpu --target bench_cuda
/// build-gpu/benchmarks/bench_cuda --benchmark_min_time=0.2
/// \endcode
#include <benchmark/benchmark.h>

#include <cuda_runtime.h>

#include <cstddef>
#include <vector>

#include "ghnq/backend/cuda.hpp"
#include "ghnq/core/rng.hpp"

namespace {

using ghnq::backend::cuda_t;
using mem = ghnq::backend::impl<cuda_t, ghnq::backend::op::memory>;
using gemm = ghnq::backend::impl<cuda_t, ghnq::backend::op::gemm>;

template <class T>
ghnq::cuda::device_buffer<T> random_device(std::size_t n, std::uint64_t seed) {
  ghnq::rng g(seed);
  std::vector<T> h(n);
  for (auto& x : h) x = static_cast<T>(g.uniform(-1.0, 1.0));
  ghnq::cuda::device_buffer<T> d(n);
  mem::copy_from_host(d.data(), h.data(), n * sizeof(T));
  return d;
}

/// C(n x n) = A(n x n) B(n x n), square, no transposes.
template <class T>
void BM_gemm(benchmark::State& state) {
  if (!ghnq::cuda::available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const long n = state.range(0);
  const auto nn = static_cast<std::size_t>(n * n);
  auto a = random_device<T>(nn, 1), b = random_device<T>(nn, 2), c = random_device<T>(nn, 3);
  gemm::run<T>(false, false, n, n, n, T(1), a.data(), n, b.data(), n, T(0), c.data(), n);  // warm-up (handle)
  GHNQ_CUDA_CHECK(cudaDeviceSynchronize());
  for (auto _ : state) {
    gemm::run<T>(false, false, n, n, n, T(1), a.data(), n, b.data(), n, T(0), c.data(), n);
    GHNQ_CUDA_CHECK(cudaDeviceSynchronize());
  }
  state.counters["TFLOPs"] = benchmark::Counter(2.0 * static_cast<double>(n) * n * n * 1e-12,
                                                benchmark::Counter::kIsIterationInvariantRate);
}

/// The im2col-shaped GEMM of a 3x3 conv with 64 -> 64 channels on a batch of 64 32x32 maps:
/// (64 x 576) x (576 x 65536).
void BM_gemm_conv_shape(benchmark::State& state) {
  if (!ghnq::cuda::available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const long m = 64, k = 576, n = 64L * 32 * 32;
  auto a = random_device<float>(static_cast<std::size_t>(m * k), 4);
  auto b = random_device<float>(static_cast<std::size_t>(k * n), 5);
  auto c = random_device<float>(static_cast<std::size_t>(m * n), 6);
  gemm::run<float>(false, false, m, n, k, 1.f, a.data(), k, b.data(), n, 0.f, c.data(), n);
  GHNQ_CUDA_CHECK(cudaDeviceSynchronize());
  for (auto _ : state) {
    gemm::run<float>(false, false, m, n, k, 1.f, a.data(), k, b.data(), n, 0.f, c.data(), n);
    GHNQ_CUDA_CHECK(cudaDeviceSynchronize());
  }
  state.counters["TFLOPs"] =
      benchmark::Counter(2.0 * m * n * k * 1e-12, benchmark::Counter::kIsIterationInvariantRate);
}

/// Pageable host -> device (arg 0) or device -> host (arg 1) copy of `range(1)` MiB.
void BM_copy(benchmark::State& state) {
  if (!ghnq::cuda::available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const bool to_host = state.range(0) == 1;
  const auto bytes = static_cast<std::size_t>(state.range(1)) << 20;
  std::vector<float> h(bytes / sizeof(float), 1.f);
  ghnq::cuda::device_buffer<float> d(h.size());
  for (auto _ : state) {
    if (to_host)
      mem::copy_to_host(h.data(), d.data(), bytes);
    else
      mem::copy_from_host(d.data(), h.data(), bytes);
  }
  state.counters["GBs"] = benchmark::Counter(static_cast<double>(bytes) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK_TEMPLATE(BM_gemm, float)->Arg(512)->Arg(1024)->Arg(2048)->Arg(4096)->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_gemm, double)->Arg(1024)->Arg(4096)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_gemm_conv_shape)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_copy)->Args({0, 64})->Args({1, 64})->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
