/// \file
/// \brief Google Benchmark: CPU conv2d forward / backward GFLOP/s against an Eigen sgemm reference.
///
/// Threads: environment variable GHNQ_THREADS (default 1) limits oneTBB, hence ghnq's kernels
/// and the (column-split) sgemm reference. Every conv benchmark reports
///   GFLOPs     rate counter, GFLOP/s (forward: 2 N Cout Ho Wo Cin/groups kh kw; backward with
///              both dx and dw: twice that; dx or dw alone: the forward count),
///   pct_sgemm  its GFLOP/s in percent of the 1024^3 sgemm measured in the same process,
/// and a summary table (best run of each benchmark, against the best sgemm run) with the targets
/// (dense 3x3: forward >= 50 %, backward >= 35 % of sgemm) is printed to stderr at exit.
/// \code
/// g++ -std=c++17 -O3 -march=native -Iinclude -I/usr/include/eigen3 benchmarks/nn/bench_conv.cpp
///     -lbenchmark -lpthread -ltbb -o /tmp/bench_conv
/// GHNQ_THREADS=1 /tmp/bench_conv      # or GHNQ_THREADS=2; add --benchmark_repetitions=3 when noisy
/// \endcode
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ghnq/backend/cpu/conv2d.hpp"
#include "ghnq/backend/cpu/gemm.hpp"
#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/core/rng.hpp"

namespace {

using conv = ghnq::backend::impl<ghnq::backend::cpu_t, ghnq::backend::op::conv2d>;
using gemm = ghnq::backend::impl<ghnq::backend::cpu_t, ghnq::backend::op::gemm>;

int threads_from_env() {
  const char* s = std::getenv("GHNQ_THREADS");
  const int n = s ? std::atoi(s) : 1;
  return n >= 1 ? n : 1;
}

const int g_threads = threads_from_env();
const ghnq::thread_limit g_limit(g_threads);

/// Results of this process: name -> best GFLOP/s over its timed runs of at least 0.1 s (own
/// wall-clock timing; "best of" keeps the summary stable on a shared machine, e.g. with
/// --benchmark_repetitions=3).
struct results {
  std::map<std::string, double> gflops;
  std::vector<std::string> order;
  double sgemm = 0.0;
  void put(const std::string& name, double g) {
    if (!gflops.count(name)) order.push_back(name);
    gflops[name] = std::max(gflops[name], g);
  }
  ~results();
};
results g_results;

std::vector<float> random_vector(std::size_t n, std::uint64_t seed) {
  ghnq::rng g(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(g.uniform(-1.0, 1.0));
  return v;
}

/// C[m x n] = A[m x k] B[k x n], columns of C split over the threads (one Eigen GEMM each).
void parallel_sgemm(long m, long n, long k, const float* a, const float* b, float* c) {
  const long parts = ghnq::max_threads();
  ghnq::parallel_for(0, parts, 1, [&](std::int64_t p0, std::int64_t p1) {
    for (std::int64_t p = p0; p < p1; ++p) {
      const long j0 = n * p / parts, j1 = n * (p + 1) / parts;
      gemm::run<float>(false, false, m, j1 - j0, k, 1.f, a, k, b + j0, n, 0.f, c + j0, n);
    }
  });
}

/// Runs `body` under the benchmark loop and sets the GFLOPs / pct_sgemm counters.
template <class F>
void timed(benchmark::State& state, const std::string& name, double flops, F&& body) {
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    body();
    benchmark::ClobberMemory();
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double gf = flops * static_cast<double>(state.iterations()) / secs * 1e-9;
  state.counters["GFLOPs"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  if (secs >= 0.1) {
    g_results.put(name, gf);
    if (name.rfind("sgemm_1024", 0) == 0) g_results.sgemm = g_results.gflops[name];
  }
  if (g_results.sgemm > 0) state.counters["pct_sgemm"] = 100.0 * gf / g_results.sgemm;
}

void bm_sgemm(benchmark::State& state, long m, long n, long k, const std::string& name) {
  const auto a = random_vector(static_cast<std::size_t>(m * k), 1), b = random_vector(static_cast<std::size_t>(k * n), 2);
  std::vector<float> c(static_cast<std::size_t>(m * n));
  const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  timed(state, name, flops, [&] { parallel_sgemm(m, n, k, a.data(), b.data(), c.data()); });
}

struct conv_config {
  const char* name;
  std::int64_t n, cin, h, w, cout, k, pad, groups;
  ghnq::backend::conv2d_geometry geometry() const {
    ghnq::backend::conv2d_geometry g;
    g.n = n;
    g.cin = cin;
    g.h = h;
    g.w = w;
    g.cout = cout;
    g.kh = g.kw = k;
    g.pad_h = g.pad_w = pad;
    g.groups = groups;
    g.ho = h + 2 * pad - k + 1;
    g.wo = w + 2 * pad - k + 1;
    return g;
  }
};

enum class pass { forward, backward, backward_data, backward_weight };

void bm_conv(benchmark::State& state, conv_config cfg, pass ps, const std::string& name) {
  const auto g = cfg.geometry();
  const auto x = random_vector(static_cast<std::size_t>(g.n * g.cin * g.h * g.w), 3);
  const auto w = random_vector(static_cast<std::size_t>(g.cout * g.cin_g() * g.kh * g.kw), 4);
  const auto dy = random_vector(static_cast<std::size_t>(g.n * g.cout * g.ho * g.wo), 5);
  std::vector<float> y(dy.size()), dx(x.size()), dw(w.size());
  const double f = g.flops();
  switch (ps) {
    case pass::forward:
      timed(state, name, f, [&] { conv::forward<float>(g, x.data(), w.data(), nullptr, y.data()); });
      break;
    case pass::backward:
      timed(state, name, 2 * f,
            [&] { conv::backward<float>(g, x.data(), w.data(), dy.data(), dx.data(), dw.data(), nullptr); });
      break;
    case pass::backward_data:
      timed(state, name, f, [&] { conv::backward<float>(g, x.data(), w.data(), dy.data(), dx.data(), nullptr, nullptr); });
      break;
    case pass::backward_weight:
      timed(state, name, f, [&] { conv::backward<float>(g, x.data(), w.data(), dy.data(), nullptr, dw.data(), nullptr); });
      break;
  }
}

const conv_config kConfigs[] = {
    {"N64_32to32_28x28_3x3", 64, 32, 28, 28, 32, 3, 1, 1},
    {"N64_64to64_14x14_3x3", 64, 64, 14, 14, 64, 3, 1, 1},
    {"N64_64to128_14x14_1x1", 64, 64, 14, 14, 128, 1, 0, 1},
    {"N64_dw64_14x14_3x3", 64, 64, 14, 14, 64, 3, 1, 64},
};

/// Registers everything in a fixed order: sgemm references first (the ratio needs them).
const bool g_registered = [] {
  benchmark::AddCustomContext("ghnq_threads", std::to_string(g_threads));
  auto reg = [](const std::string& name, auto fn) {
    benchmark::RegisterBenchmark(name.c_str(), [fn, name](benchmark::State& s) { fn(s, name); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  };
  reg("sgemm_1024x1024x1024", [](benchmark::State& s, const std::string& n) { bm_sgemm(s, 1024, 1024, 1024, n); });
  // the forward GEMM of the first conv config: [32 x 288] * [288 x 784]
  reg("sgemm_convlike_32x784x288", [](benchmark::State& s, const std::string& n) { bm_sgemm(s, 32, 784, 288, n); });
  const std::pair<pass, const char*> passes[] = {{pass::forward, "fwd"},
                                                 {pass::backward, "bwd"},
                                                 {pass::backward_data, "bwd_data"},
                                                 {pass::backward_weight, "bwd_weight"}};
  for (const auto& c : kConfigs)
    for (const auto& [ps, pname] : passes) {
      const conv_config cfg = c;
      const pass p = ps;
      reg(std::string("conv_") + pname + "/" + c.name,
          [cfg, p](benchmark::State& s, const std::string& n) { bm_conv(s, cfg, p, n); });
    }
  return true;
}();

results::~results() {
  if (order.empty()) return;
  std::fprintf(stderr, "\n== conv2d summary (GHNQ_THREADS=%d) ==\n", g_threads);
  std::fprintf(stderr, "%-40s %10s %10s  %s\n", "benchmark", "GFLOP/s", "% sgemm", "target");
  for (const auto& name : order) {
    const double gf = gflops[name];
    const double pct = sgemm > 0 ? 100.0 * gf / sgemm : 0.0;
    std::string target;
    const bool dense3 = name.find("_3x3") != std::string::npos && name.find("_dw") == std::string::npos;
    if (dense3 && name.rfind("conv_fwd/", 0) == 0) target = pct >= 50 ? ">= 50%: met" : ">= 50%: MISSED";
    if (dense3 && name.rfind("conv_bwd/", 0) == 0) target = pct >= 35 ? ">= 35%: met" : ">= 35%: MISSED";
    std::fprintf(stderr, "%-40s %10.1f %10.1f  %s\n", name.c_str(), gf, pct, target.c_str());
  }
}

}  // namespace

#ifndef GHNQ_BENCH_NO_MAIN
BENCHMARK_MAIN();
#endif
