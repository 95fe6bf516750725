/// \file
/// \brief Google Benchmark: the overhead of a quantization-aware GHN training step over the float
/// step (issue 5 target: <= 25 %). One step is trainer::step's work on a fixed meta-batch: graphs,
/// predict_quant on a recording tape, the m = 8 networks forward + backward in parallel (with fake
/// quantization of every conv / linear weight and input under QAT), the 1/m gradient scaling,
/// backward into the GHN, gradient clipping at 5 and Adam.
///
/// Setup: the CLI's GHN (ghn2q_config: GHN-2, H = 32, plus the bit-width embedding and quant
/// head), Fashion-MNIST-shaped inputs (batch 64 of 1x28x28, random values, random labels), the
/// m = 8 training architectures of trainer step `group` (ghn::training_architectures with seed
/// 1111 and the §7.4 width rule: exactly what the trainer samples at that step), groups 0..2.
/// Variants (the quant_config of ghn::quant_at, first / last layer at 8 bits as in training):
///   fp          float training (no plans, no quantizers)
///   qat_w4a4    QAT W4A4, uniform min-max weights (per channel) and inputs (per tensor)
///   qat_lsq_pact QAT W4A4, LSQ weights with predicted step factors, PACT inputs (LSQ for signed ones)
///   qat_mixed   QAT-mixed: b drawn per step from {8, 4, 2} exactly as the trainer does
/// Each benchmark runs one untimed warm-up step (the allocator cache reaches the steady state of
/// a training loop) and then 2 timed steps; use --benchmark_repetitions for more.
/// Counters: step_ms (wall time of one step), cpu_ms (CPU time of the whole process per step: on a
/// shared machine the fairer measure), overhead_pct / cpu_overhead_pct (100 (t / t_fp - 1), t_fp
/// the fastest float step of the same group measured earlier in the process; fp runs first by
/// registration order), sys_allocs (blocks the CPU allocator took from the system per timed step:
/// 0 in the steady state; each costs page faults on fresh memory), pool_GB (bytes the pool holds,
/// in use + cached, after the run), threads. A summary (min and median wall time, min CPU time and the
/// overheads from them, the load average before and after) goes to stderr at exit.
///
/// Threads: GHNQ_THREADS (default 2). Built into bench_quant by benchmarks/CMakeLists.txt, where
/// bench_quant.cpp's own limit (GHNQ_THREADS, default 1) also applies: set GHNQ_THREADS=2 there.
/// \code
/// g++ -std=c++17 -O3 -march=native -DNDEBUG -Iinclude -I/usr/include/eigen3 benchmarks/quant/bench_qat_step.cpp
///     -lbenchmark_main -lbenchmark -lpthread -ltbb -lz -o /tmp/bench_qat_step
/// GHNQ_THREADS=2 /tmp/bench_qat_step --benchmark_repetitions=5
/// GHNQ_THREADS=2 build-test/benchmarks/bench_quant --benchmark_filter=qat_step --benchmark_repetitions=5
/// \endcode
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <time.h>

#include "ghnq/backend/cpu/memory.hpp"
#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/exec/meta_batch.hpp"
#include "ghnq/ghn/hypernet.hpp"
#include "ghnq/ghn/trainer.hpp"
#include "ghnq/train/clip.hpp"
#include "ghnq/train/optimizer.hpp"

namespace {

using namespace ghnq;
using qat_cfg = ghn2q_config<>;

int qat_threads() {
  const char* s = std::getenv("GHNQ_THREADS");
  const int n = s ? std::atoi(s) : 2;
  return n >= 1 ? n : 2;
}
const thread_limit g_qat_limit(qat_threads());

std::string load_average() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  if (!(f >> a >> b >> c)) return "n/a";
  return a + " " + b + " " + c;
}

/// CPU time of the whole process (every thread), in ms.
double process_cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return 1e3 * static_cast<double>(ts.tv_sec) + 1e-6 * static_cast<double>(ts.tv_nsec);
}

constexpr int kWarmup = 1;  ///< untimed steps before a benchmark's timed ones

enum class variant { fp, qat_w4a4, qat_lsq_pact, qat_mixed };
const char* name_of(variant v) {
  switch (v) {
    case variant::fp: return "fp";
    case variant::qat_w4a4: return "qat_w4a4";
    case variant::qat_lsq_pact: return "qat_lsq_pact";
    case variant::qat_mixed: return "qat_mixed";
  }
  return "?";
}

/// Training options of a variant: its strategy and quant_config, as `ghnq train-ghn` sets them.
ghn::train_options options_of(variant v) {
  ghn::train_options o;
  o.seed = 1111;
  o.meta_batch = 8;
  o.batch_size = 64;
  o.quant.w_bits = o.quant.a_bits = 4;
  o.quant.first_last_bits = 8;
  switch (v) {
    case variant::fp: o.strat = ghn::strategy::fp; break;
    case variant::qat_w4a4: o.strat = ghn::strategy::qat; break;
    case variant::qat_lsq_pact:
      o.strat = ghn::strategy::qat;
      o.quant.wq = exec::weight_quantizer::lsq;
      o.quant.aq = exec::act_quantizer::pact;
      break;
    case variant::qat_mixed: o.strat = ghn::strategy::qat_mixed; break;
  }
  return o;
}

/// Timed steps per (variant, group), for the summary.
struct step_log {
  std::map<std::pair<int, int>, std::vector<double>> ms, cpu;  ///< wall / process CPU ms per step
  std::string load_before = load_average();
  ~step_log();
};
step_log g_log;

double fastest(const std::vector<double>& v) { return v.empty() ? 0.0 : *std::min_element(v.begin(), v.end()); }
double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void bm_qat_step(benchmark::State& state, variant v) {
  const int group = static_cast<int>(state.range(0));
  const auto opt = options_of(v);
  const auto nets = ghn::training_architectures(opt, group, 1, 28, 28, qat_cfg::kClasses);
  std::vector<std::unique_ptr<exec::executor<>>> ex;
  std::vector<exec::executor<>*> exp;
  std::vector<const arch::network*> np;
  for (const auto& n : nets) {
    ex.push_back(std::make_unique<exec::executor<>>(n));
    exp.push_back(ex.back().get());
    np.push_back(&ex.back()->network());
  }
  rng g(1111);
  hypernet<qat_cfg> ghn(g);
  const auto params = ghn.parameters();
  train::adam_options ao;
  ao.weight_decay = 1e-5;
  train::adam<float> adam(params, ao);
  tensor<float> xt({64, 1, 28, 28});
  for (std::int64_t i = 0; i < xt.numel(); ++i) xt.data()[i] = static_cast<float>(g.uniform(-1, 2));
  const autograd::var<float> x(xt);
  std::vector<std::int32_t> labels(64);
  for (auto& l : labels) l = static_cast<std::int32_t>(g.below(10));

  std::int64_t step = 0;
  auto one_step = [&] {
    const exec::quant_config qc = ghn::quant_at(opt, step);
    graph::graph_batch gb;
    for (const auto* n : np) gb.add(hypernet<qat_cfg>::graph_of(*n));
    adam.zero_grad();
    autograd::tape<float> tp;
    std::vector<std::vector<exec::op_quant>> plans;
    if (qc.enabled())
      for (const auto* n : np) plans.push_back(exec::plan_quantization(*n, qc));
    auto pred = ghn.predict_quant(tp, np, gb, qc.enabled() ? &plans : nullptr);
    exec::run_options ro;
    ro.dropout = true;
    ro.dropout_seed = static_cast<std::uint64_t>(step) + 1;
    if (qc.enabled()) ro.quant = &qc;
    const auto res = exec::forward_backward(exp, pred.params, x, labels, ro, 0.0, true,
                                            qc.enabled() ? &pred.factors : nullptr);
    benchmark::DoNotOptimize(res.data());
    auto scale = [](const autograd::var<float>& p) {
      if (!p.defined() || !p.requires_grad() || !p.has_grad()) return;
      float* d = p.grad().data();
      for (std::int64_t i = 0, n = p.grad().numel(); i < n; ++i) d[i] *= 0.125f;
    };
    for (const auto& ps : pred.params)
      for (const auto& p : ps) scale(p);
    for (const auto& f : pred.factors) {
      for (const auto& p : f.weight) scale(p);
      for (const auto& p : f.input) scale(p);
    }
    tp.backward_accumulated();
    benchmark::DoNotOptimize(train::clip_grad_norm(params, 5.0));
    adam.step();
    ++step;
  };
  // Warm-up (untimed): the allocator cache reaches its steady state, as in a training loop.
  for (int w = 0; w < kWarmup; ++w) one_step();
  auto& times = g_log.ms[{static_cast<int>(v), group}];
  auto& cpu = g_log.cpu[{static_cast<int>(v), group}];
  const auto m0 = memory_stats();
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = process_cpu_ms();
    one_step();
    cpu.push_back(process_cpu_ms() - c0);
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  // This run's mean step (wall: the quantity Google Benchmark reports as real time; CPU: all threads
  // of the process) against the fastest float step of the group measured so far.
  const auto n = std::min(static_cast<std::size_t>(state.iterations()), times.size());
  auto tail_mean = [n](const std::vector<double>& t) {
    double sum = 0;
    for (std::size_t i = t.size() - n; i < t.size(); ++i) sum += t[i];
    return n > 0 ? sum / static_cast<double>(n) : 0.0;
  };
  const double mean = tail_mean(times), cpu_mean = tail_mean(cpu);
  state.counters["step_ms"] = mean;
  const auto m1 = memory_stats();
  state.counters["sys_allocs"] =  // allocator blocks taken from the system per timed step
      static_cast<double>(m1.system_allocations - m0.system_allocations) / static_cast<double>(std::max<std::size_t>(n, 1));
  state.counters["pool_GB"] = static_cast<double>(m1.bytes_in_use + m1.bytes_cached) / 1e9;  // held by the pool
  state.counters["cpu_ms"] = cpu_mean;
  const auto key = std::make_pair(static_cast<int>(variant::fp), group);
  if (g_log.ms.count(key) && v != variant::fp) {
    state.counters["overhead_pct"] = 100.0 * (mean / fastest(g_log.ms.at(key)) - 1.0);
    state.counters["cpu_overhead_pct"] = 100.0 * (cpu_mean / fastest(g_log.cpu.at(key)) - 1.0);
  }
  state.counters["threads"] = max_threads();
  state.SetLabel("m=8 b=64 1x28x28, train step " + std::to_string(group));
}

step_log::~step_log() {
  if (ms.empty()) return;
  std::fprintf(stderr, "\n== QAT step overhead over the float step (threads %d; load average before: %s, after: %s) ==\n",
               max_threads(), load_before.c_str(), load_average().c_str());
  std::fprintf(stderr, "%-13s %5s %5s %9s %9s %9s %9s %9s %9s  %s\n", "variant", "group", "steps", "min ms",
               "med ms", "cpu min", "ovh min%", "ovh med%", "ovh cpu%", "target <= 25% (min)");
  for (const auto& [key, t] : ms) {
    const auto fp_key = std::make_pair(static_cast<int>(variant::fp), key.second);
    const bool have_fp = ms.count(fp_key) != 0 && key.first != static_cast<int>(variant::fp);
    const auto& c = cpu.at(key);
    const double omin = have_fp ? 100.0 * (fastest(t) / fastest(ms.at(fp_key)) - 1.0) : 0.0;
    const double omed = have_fp ? 100.0 * (median(t) / median(ms.at(fp_key)) - 1.0) : 0.0;
    const double ocpu = have_fp ? 100.0 * (fastest(c) / fastest(cpu.at(fp_key)) - 1.0) : 0.0;
    std::fprintf(stderr, "%-13s %5d %5zu %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f  %s\n",
                 name_of(static_cast<variant>(key.first)), key.second, t.size(), fastest(t), median(t), fastest(c),
                 omin, omed, ocpu, have_fp ? (omin <= 25.0 ? "met" : "MISSED") : "");
  }
}

const bool g_qat_registered = [] {
  benchmark::AddCustomContext("qat_step_threads", std::to_string(qat_threads()));
  for (variant v : {variant::fp, variant::qat_w4a4, variant::qat_lsq_pact, variant::qat_mixed}) {
    benchmark::RegisterBenchmark((std::string("qat_step/") + name_of(v)).c_str(),
                                 [v](benchmark::State& s) { bm_qat_step(s, v); })
        ->DenseRange(0, 2)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->Iterations(2);
  }
  return true;
}();

}  // namespace
