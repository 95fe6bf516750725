/// \file
/// \brief Google Benchmark: fake-quantization forward + backward throughput per quantizer and
///        bit-width (compile-time variants), in GB/s and relative to std::memcpy of the same tensor.
///
/// Threads: environment variable GHNQ_THREADS (default 1) limits oneTBB, hence ghnq's kernels.
/// Tensor: GHNQ_QUANT_N floats (default 4M = 16 MiB, beyond the caches of most machines).
/// Traffic model (bytes actually streamed, in units of one tensor of n floats):
///   memcpy                       read x, write y                                   2
///   forward                      read x, write y                                   2
///   backward                     read x, dy, dx, write dx (dx +=)                  4
///   forward + backward           6   (noise: forward 2; backward dx += dy 3 and dstep 1 = 4)
/// Every benchmark reports
///   GBps        its bytes (model above) per second,
///   pct_memcpy  GBps in percent of the memcpy GB/s measured in the same process (best run),
/// and a summary table (best run of each, against the best memcpy run) with the target
/// (per-tensor uniform fake quantization forward + backward >= 50 % of memcpy) goes to stderr.
/// The kernels are called directly (backend::impl<cpu_t, op::...>) on preallocated buffers; the
/// "op_" rows go through the autograd op (allocation of y and of the zeroed gradient included).
/// \code
/// g++ -std=c++17 -O3 -march=native -Iinclude -I/usr/include/eigen3 benchmarks/quant/bench_quant.cpp
///     -lbenchmark -lpthread -ltbb -o /tmp/bench_quant
/// GHNQ_THREADS=1 /tmp/bench_quant      # or GHNQ_THREADS=2; add --benchmark_repetitions=3 when noisy
/// \endcode
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/backend/cpu/quant.hpp"
#include "ghnq/core/rng.hpp"
#include "ghnq/quant.hpp"

namespace {

using ghnq::backend::cpu_t;
using ghnq::backend::impl;
namespace op = ghnq::backend::op;
namespace q = ghnq::quant;

int int_from_env(const char* name, int fallback) {
  const char* s = std::getenv(name);
  const int n = s ? std::atoi(s) : fallback;
  return n >= 1 ? n : fallback;
}

const int g_threads = int_from_env("GHNQ_THREADS", 1);
const ghnq::thread_limit g_limit(g_threads);
const std::int64_t g_n = int_from_env("GHNQ_QUANT_N", 1 << 22);

/// name -> best GB/s over timed runs of at least 0.1 s; memcpy is the reference.
struct results {
  std::map<std::string, double> gbps;
  std::vector<std::string> order;
  double memcpy_gbps = 0.0;
  void put(const std::string& name, double g) {
    if (!gbps.count(name)) order.push_back(name);
    gbps[name] = std::max(gbps[name], g);
  }
  ~results();
};
results g_results;

struct buffers {
  std::vector<float> x, y, dy, dx;
  explicit buffers(std::int64_t n) : x(static_cast<std::size_t>(n)), y(x.size()), dy(x.size()), dx(x.size()) {
    ghnq::rng g(1);
    for (auto& v : x) v = static_cast<float>(g.uniform(-1.0, 1.0));
    for (auto& v : dy) v = static_cast<float>(g.uniform(-1.0, 1.0));
    // touch every page once so the first timed iteration does not pay for page faults
    std::fill(y.begin(), y.end(), 0.f);
    std::fill(dx.begin(), dx.end(), 0.f);
  }
};
buffers& bufs() {
  static buffers b(g_n);
  return b;
}

/// Runs `body` under the benchmark loop; `bytes` per iteration; sets GBps and pct_memcpy.
template <class F>
void timed(benchmark::State& state, const std::string& name, double bytes, F&& body) {
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    body();
    benchmark::ClobberMemory();
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double gbps = bytes * static_cast<double>(state.iterations()) / secs * 1e-9;
  state.counters["GBps"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  if (secs >= 0.1) {
    g_results.put(name, gbps);
    if (name.rfind("memcpy", 0) == 0) g_results.memcpy_gbps = std::max(g_results.memcpy_gbps, g_results.gbps[name]);
  }
  if (g_results.memcpy_gbps > 0) state.counters["pct_memcpy"] = 100.0 * gbps / g_results.memcpy_gbps;
}

const double kTensorBytes = static_cast<double>(g_n) * sizeof(float);

void bm_memcpy(benchmark::State& s, const std::string& name) {
  auto& b = bufs();
  timed(s, name, 2 * kTensorBytes, [&] { std::memcpy(b.y.data(), b.x.data(), b.x.size() * sizeof(float)); });
}

/// Uniform fake quantization with the observer parameters of a symmetric / affine quantizer type.
template <class Q>
void bm_uniform(benchmark::State& s, const std::string& name, std::int64_t channels, bool backward, bool forward) {
  auto& b = bufs();
  std::vector<double> lo(static_cast<std::size_t>(channels), -0.8), hi(lo.size(), 0.8);  // some values clip
  const auto p = q::make_uniform_params<float>(lo, hi, Q::kQMin, Q::kQMax,
                                               Q::kSigned ? q::mode::symmetric : q::mode::asymmetric);
  using K = impl<cpu_t, op::fake_quant>;
  const std::int64_t inner = g_n / channels;
  const double bytes = ((forward ? 2 : 0) + (backward ? 4 : 0)) * kTensorBytes;
  timed(s, name, bytes, [&] {
    if (forward)
      K::forward(b.x.data(), b.y.data(), channels, inner, p.scale.data(), p.zero_point.data(), float(p.q_min),
                 float(p.q_max));
    if (backward)
      K::backward(b.x.data(), b.dy.data(), b.dx.data(), channels, inner, p.scale.data(), p.zero_point.data(),
                  float(p.q_min), float(p.q_max));
  });
}

/// The same through the autograd op (allocates y and the zeroed gradient of x every iteration).
template <class Q>
void bm_uniform_op(benchmark::State& s, const std::string& name) {
  auto& b = bufs();
  auto x = ghnq::autograd::parameter(ghnq::tensor<float>::from(ghnq::shape{g_n}, b.x));
  const auto dy = ghnq::tensor<float>::from(ghnq::shape{g_n}, b.dy);
  const auto p = q::make_uniform_params<float>({-0.8}, {0.8}, Q::kQMin, Q::kQMax, q::mode::symmetric);
  timed(s, name, 6 * kTensorBytes, [&] {
    x.reset_grad();
    ghnq::autograd::tape<float> tp;
    auto y = q::fake_quant(tp, x, p);
    tp.backward(y, dy);
  });
}

template <class Q>
void bm_lsq(benchmark::State& s, const std::string& name) {
  auto& b = bufs();
  const float step = 0.8f / static_cast<float>(Q::kQP), qn = float(Q::kQN), qp = float(Q::kQP);
  using K = impl<cpu_t, op::lsq_quant>;
  timed(s, name, 6 * kTensorBytes, [&] {
    double ds = 0;
    K::forward(b.x.data(), b.y.data(), 1, g_n, &step, qn, qp);
    K::backward(b.x.data(), b.dy.data(), b.dx.data(), &ds, 1, g_n, &step, qn, qp);
    benchmark::DoNotOptimize(ds);
  });
}

template <class Q>
void bm_pact(benchmark::State& s, const std::string& name) {
  auto& b = bufs();
  const float alpha = 0.8f, levels = float(Q::kLevels);
  using K = impl<cpu_t, op::pact_quant>;
  timed(s, name, 6 * kTensorBytes, [&] {
    double da = 0;
    K::forward(b.x.data(), b.y.data(), g_n, alpha, levels);
    K::backward(b.x.data(), b.dy.data(), b.dx.data(), &da, g_n, alpha, levels);
    benchmark::DoNotOptimize(da);
  });
}

void bm_binary(benchmark::State& s, const std::string& name) {
  auto& b = bufs();
  const float step = 0.5f;
  using K = impl<cpu_t, op::binary_quant>;
  timed(s, name, 6 * kTensorBytes, [&] {
    double ds = 0;
    K::forward(b.x.data(), b.y.data(), 1, g_n, &step);
    K::backward(b.x.data(), b.dy.data(), b.dx.data(), &ds, 1, g_n, &step);
    benchmark::DoNotOptimize(ds);
  });
}

void bm_noise(benchmark::State& s, const std::string& name) {
  auto& b = bufs();
  const float step = 0.1f;
  using K = impl<cpu_t, op::quant_noise>;
  using A = impl<cpu_t, op::axpy>;
  std::uint64_t seed = 1;
  timed(s, name, 6 * kTensorBytes, [&] {
    double ds = 0;
    K::forward(b.x.data(), b.y.data(), 1, g_n, &step, seed);
    A::run(1.f, b.dy.data(), b.dx.data(), g_n);  // dx += dy (identity gradient)
    K::backward_step(b.dy.data(), &ds, 1, g_n, seed);
    ++seed;
    benchmark::DoNotOptimize(ds);
  });
}

template <int tBits>
void register_bits() {
  auto reg = [](const std::string& name, auto fn) {
    benchmark::RegisterBenchmark(name.c_str(), [fn, name](benchmark::State& s) { fn(s, name); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  };
  const std::string b = std::to_string(tBits);
  if constexpr (q::valid_bits_v<tBits, true>) {
    using U = q::uniform<tBits, true>;
    reg("uniform_fwd_bwd/per_tensor/signed/" + b,
        [](benchmark::State& s, const std::string& n) { bm_uniform<U>(s, n, 1, true, true); });
    reg("uniform_fwd_bwd/per_channel256/signed/" + b,
        [](benchmark::State& s, const std::string& n) { bm_uniform<U>(s, n, 256, true, true); });
    reg("lsq_fwd_bwd/per_tensor/signed/" + b,
        [](benchmark::State& s, const std::string& n) { bm_lsq<q::lsq<tBits, true>>(s, n); });
  }
  reg("uniform_fwd_bwd/per_tensor/unsigned/" + b,
      [](benchmark::State& s, const std::string& n) { bm_uniform<q::uniform<tBits, false>>(s, n, 1, true, true); });
  reg("pact_fwd_bwd/" + b, [](benchmark::State& s, const std::string& n) { bm_pact<q::pact<tBits>>(s, n); });
}

const bool g_registered = [] {
  benchmark::AddCustomContext("ghnq_threads", std::to_string(g_threads));
  benchmark::AddCustomContext("ghnq_quant_n", std::to_string(g_n));
  auto reg = [](const std::string& name, auto fn) {
    benchmark::RegisterBenchmark(name.c_str(), [fn, name](benchmark::State& s) { fn(s, name); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  };
  reg("memcpy", [](benchmark::State& s, const std::string& n) { bm_memcpy(s, n); });
  reg("uniform_fwd/per_tensor/signed/8",
      [](benchmark::State& s, const std::string& n) { bm_uniform<q::uniform<8>>(s, n, 1, false, true); });
  reg("uniform_bwd/per_tensor/signed/8",
      [](benchmark::State& s, const std::string& n) { bm_uniform<q::uniform<8>>(s, n, 1, true, false); });
  register_bits<1>();
  register_bits<2>();
  register_bits<4>();
  register_bits<8>();
  reg("binary_fwd_bwd/per_tensor", [](benchmark::State& s, const std::string& n) { bm_binary(s, n); });
  reg("noise_fwd_bwd/per_tensor", [](benchmark::State& s, const std::string& n) { bm_noise(s, n); });
  reg("op_uniform_fwd_bwd/per_tensor/signed/8",
      [](benchmark::State& s, const std::string& n) { bm_uniform_op<q::uniform<8>>(s, n); });
  reg("memcpy_again", [](benchmark::State& s, const std::string& n) { bm_memcpy(s, n); });
  return true;
}();

results::~results() {
  if (order.empty()) return;
  std::fprintf(stderr, "\n== quantizer summary (GHNQ_THREADS=%d, n=%lld floats) ==\n", g_threads,
               static_cast<long long>(g_n));
  std::fprintf(stderr, "%-44s %8s %10s  %s\n", "benchmark", "GB/s", "% memcpy", "target");
  for (const auto& name : order) {
    const double g = gbps[name];
    const double pct = memcpy_gbps > 0 ? 100.0 * g / memcpy_gbps : 0.0;
    std::string target;
    if (name.rfind("uniform_fwd_bwd/per_tensor/", 0) == 0) target = pct >= 50 ? ">= 50%: met" : ">= 50%: MISSED";
    std::fprintf(stderr, "%-44s %8.1f %10.1f  %s\n", name.c_str(), g, pct, target.c_str());
  }
}

}  // namespace

#ifndef GHNQ_BENCH_NO_MAIN
BENCHMARK_MAIN();
#endif
