/// \file
/// \brief Google Benchmark: executor training-step throughput (forward, cross-entropy, tape
/// backward, zero grads; no optimizer) on DeepNets-1M networks, against a 2-thread sgemm.
///
/// Networks: those of deepnets_conv.json (GHNQ_BENCH_FILE, or GHNQ_SOURCE_DIR
/// "/../shared/bench/deepnets_conv.json") at their `train` widths (C = train.C, fc_dim =
/// train.fc_dim), batch 64 of 3x32x32 inputs, batch-norm batch statistics (GHN-2's protocol).
/// The executor's kernels use every oneTBB thread (GHNQ_THREADS limits them; default: all).
///
/// Two kinds of benchmarks:
///   train_step/deepnets#i  one network at a time (the first 8 of the file), its ops splitting
///                          their work over the threads;
///   meta8/nets<a>-<b>      the executor part of one GHN training step: exec::forward_backward
///                          of 8 consecutive networks of the file as parallel oneTBB tasks on one
///                          shared batch, then zero grads (3 timed steps; the summary keeps the
///                          fastest). Target: the aggregate over all groups >= 50 % of the sgemm
///                          reference.
///
/// Counters of each network benchmark:
///   items_per_second  images per second,
///   GFLOPs            rate counter, GFLOP/s of arch::training_flops (3 x forward conv/linear FLOPs),
///   pct_sgemm         that rate in percent of the sgemm reference of the same process,
///   live_MB           bytes held by the allocator after the forward pass (activations kept for backward),
///   other_cores       average number of cores other processes kept busy meanwhile (/proc/stat;
///                     above ~0.1 the timing is disturbed: rerun),
///   own_cores         average number of cores this process kept busy (2 = both threads always busy;
///                     oneTBB workers spin briefly when idle, so this is an upper bound),
///   sys_allocs        system allocations per step in the steady state (0 = the allocator cache suffices;
///                     the cache is emptied when the benchmark switches networks; its size is
///                     GHNQ_CPU_CACHE_MB, default 1024).
/// The sgemm reference `sgemm_2x1thread_1024` runs two independent single-threaded Eigen 1024^3
/// sgemms concurrently on two std::threads and reports their total GFLOP/s (the machine's 2-core
/// GEMM rate), after a 1.5 s warm-up; it runs first and again last (`..._again`), and the summary
/// uses the faster of the two (the conservative ratio). A summary table (best run of each network; aggregate = total FLOPs / total time of
/// one step of every network, target >= 35 % of the sgemm reference; then every meta-batch and
/// their aggregate, target >= 50 %) goes to stderr.
/// \code
/// g++ -std=c++17 -O3 -march=native -DGHNQ_SOURCE_DIR=\"$PWD\" -Iinclude -I/usr/include/eigen3
///     benchmarks/exec/bench_executor.cpp -lbenchmark -lpthread -ltbb -lz -o /tmp/bench_exec
/// /tmp/bench_exec                                   # add --benchmark_repetitions=3 when noisy
/// GHNQ_BENCH_FILE=/path/deepnets_conv.json /tmp/bench_exec --benchmark_filter='deepnets#0'
/// /tmp/bench_exec --benchmark_filter='sgemm|meta'    # the meta-batch target only
/// \endcode
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <sys/resource.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "ghnq/arch/deepnets.hpp"
#include "ghnq/arch/flops.hpp"
#include "ghnq/backend/cpu/gemm.hpp"
#include "ghnq/backend/cpu/memory.hpp"
#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/core/rng.hpp"
#include "ghnq/exec/executor.hpp"
#include "ghnq/exec/meta_batch.hpp"
#include "ghnq/nn/loss.hpp"

#ifndef GHNQ_SOURCE_DIR
#define GHNQ_SOURCE_DIR "."
#endif

namespace {

using namespace ghnq;
using gemm = backend::impl<backend::cpu_t, backend::op::gemm>;

constexpr std::int64_t kBatch = 64;
constexpr int kNets = 8;
constexpr long kGemmSize = 1024;
constexpr int kMetaSteps = 3;  // timed steps of each meta-batch benchmark (the summary keeps the fastest)

std::unique_ptr<thread_limit> g_limit;  // set from GHNQ_THREADS in main

std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  if (!(f >> a >> b >> c)) return "n/a";
  return a + " " + b + " " + c;
}

/// Machine-wide busy CPU seconds (/proc/stat) and this process's CPU seconds (getrusage): their
/// difference over an interval is the CPU time other processes took while we ran.
struct cpu_clock {
  double busy = 0.0, own = 0.0;
  static cpu_clock now() {
    cpu_clock c;
    std::ifstream f("/proc/stat");
    std::string cpu;
    double v[8] = {};
    if (f >> cpu)
      for (double& x : v) f >> x;
    const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
    c.busy = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / tick;  // user nice system irq softirq steal
    rusage r{};
    getrusage(RUSAGE_SELF, &r);
    c.own = static_cast<double>(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
            1e-6 * static_cast<double>(r.ru_utime.tv_usec + r.ru_stime.tv_usec);
    return c;
  }
  /// Average number of cores other processes kept busy between `a` and `b` (wall seconds `secs`).
  static double others(const cpu_clock& a, const cpu_clock& b, double secs) {
    return secs > 0 ? std::max(0.0, (b.busy - a.busy) - (b.own - a.own)) / secs : 0.0;
  }
};

/// Best (shortest) seconds per iteration of each benchmark over its timed runs of at least 0.2 s
/// ("best of" keeps the summary stable on a shared machine, e.g. with --benchmark_repetitions=3).
struct best_times {
  std::vector<std::string> names;
  std::vector<double> secs, others;  // best seconds per iteration; other_cores during that run
  std::size_t index(const std::string& name) {
    for (std::size_t i = 0; i < names.size(); ++i)
      if (names[i] == name) return i;
    names.push_back(name);
    secs.push_back(0.0);
    others.push_back(0.0);
    return names.size() - 1;
  }
  void put(const std::string& name, double s, double other_cores) {
    const std::size_t i = index(name);
    if (secs[i] == 0.0 || s < secs[i]) {
      secs[i] = s;
      others[i] = other_cores;
    }
  }
};
best_times g_best;
double g_sgemm_gflops = 0.0;  // best sgemm reference rate so far

// ---------------------------------------------------------------------------------------------
// sgemm reference: two single-threaded Eigen GEMMs at once
// ---------------------------------------------------------------------------------------------

std::vector<float> random_vector(std::size_t n, std::uint64_t seed) {
  rng g(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(g.uniform(-1.0, 1.0));
  return v;
}

void bm_sgemm_pair(benchmark::State& state, const std::string& name) {
  const long n = kGemmSize;
  const std::size_t sz = static_cast<std::size_t>(n * n);
  struct job {
    std::vector<float> a, b, c;
  };
  job jobs[2] = {{random_vector(sz, 1), random_vector(sz, 2), std::vector<float>(sz)},
                 {random_vector(sz, 3), random_vector(sz, 4), std::vector<float>(sz)}};
  auto run = [n](job& j) { gemm::run<float>(false, false, n, n, n, 1.f, j.a.data(), n, j.b.data(), n, 0.f, j.c.data(), n); };
  auto pair = [&] {
    std::thread other([&] { run(jobs[1]); });
    run(jobs[0]);
    other.join();
  };
  // Warm-up of about a second: on this VM the first second of GEMM runs ~30 % slower.
  static bool warmed = false;
  for (auto w0 = std::chrono::steady_clock::now();
       !warmed && std::chrono::steady_clock::now() - w0 < std::chrono::milliseconds(1500);)
    pair();
  warmed = true;
  const double flops = 2.0 * 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n);
  const auto c0 = cpu_clock::now();
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    pair();
    benchmark::ClobberMemory();
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  state.counters["GFLOPs"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  const double other = cpu_clock::others(c0, cpu_clock::now(), secs);
  state.counters["other_cores"] = other;
  if (secs >= 0.2 && state.iterations() > 0) {
    g_best.put(name, secs / static_cast<double>(state.iterations()), other);
    g_sgemm_gflops = std::max(g_sgemm_gflops, flops * static_cast<double>(state.iterations()) / secs * 1e-9);
  }
}

// ---------------------------------------------------------------------------------------------
// executor training steps
// ---------------------------------------------------------------------------------------------

/// One benchmarked network with its (lazily built, reused) executor state.
struct net_case {
  std::string name;  // "deepnets#<index>"
  arch::network net;
  std::int64_t flops = 0;  // training FLOPs of one step at kBatch
  int C = 0, fc_dim = 0;
  std::int64_t num_params = 0;

  struct state_t {
    exec::executor<backend::cpu_t, float> ex;
    std::vector<autograd::var<float>> params;
    autograd::var<float> x;
    std::vector<std::int32_t> labels;
    explicit state_t(const arch::network& n) : ex(n) {}
  };
  std::unique_ptr<state_t> st;
  double live_mb = 0.0;

  state_t& state() {
    if (!st) {
      st = std::make_unique<state_t>(net);
      rng g(1234);
      st->params = st->ex.init_parameters(g);
      tensor<float> x({kBatch, net.in_channels, net.in_h, net.in_w});
      for (std::int64_t i = 0; i < x.numel(); ++i) x.flat(i) = static_cast<float>(g.normal());
      st->x = autograd::var<float>(std::move(x));
      st->labels.resize(static_cast<std::size_t>(kBatch));
      for (auto& l : st->labels) l = static_cast<std::int32_t>(g.below(static_cast<std::uint64_t>(net.num_classes)));
      step();  // warm-up: first-touch allocations, caches
      step();
    }
    return *st;
  }

  /// One training step without optimizer: forward, cross-entropy, tape backward, zero grads.
  void step() {
    autograd::tape<float> tp;
    auto logits = st->ex.forward(tp, st->x, st->params, exec::run_options{});
    auto loss = nn::cross_entropy(tp, logits, st->labels);
    live_mb = static_cast<double>(memory_stats().bytes_in_use) / (1024.0 * 1024.0);
    tp.backward(loss);
    for (auto& p : st->params) p.zero_grad();
  }
};
std::vector<net_case> g_cases;

/// Reads every network of the bench file (at least kNets); throws std::runtime_error with a clear message.
std::vector<net_case> load_cases(const std::string& path) {
  std::ifstream f(path);
  if (!f)
    throw std::runtime_error("cannot open the DeepNets-1M bench file '" + path +
                             "'; set GHNQ_BENCH_FILE to the path of deepnets_conv.json, or compile with GHNQ_SOURCE_DIR defined "
                             "as the repository path (the default is GHNQ_SOURCE_DIR/../shared/bench/deepnets_conv.json)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    throw std::runtime_error("bench file '" + path + "' is not valid JSON: " + e.what());
  }
  if (!j.contains("nets") || !j["nets"].is_array() || j["nets"].size() < static_cast<std::size_t>(kNets))
    throw std::runtime_error("bench file '" + path + "' has no \"nets\" array with at least " +
                             std::to_string(kNets) + " entries");
  std::vector<net_case> out;
  const int total = static_cast<int>(j["nets"].size());
  for (int i = 0; i < total; ++i) {
    const auto& e = j["nets"][static_cast<std::size_t>(i)];
    auto a = arch::net_args_from_json(e.at("net_args"));
    a.C = e.at("train").at("C").get<int>();
    a.fc_dim = e.at("train").at("fc_dim").get<int>();
    net_case c;
    c.name = "deepnets#" + std::to_string(e.value("index", i));
    c.net = arch::deepnets_network(a);
    c.net.name = c.name;
    c.flops = arch::training_flops(c.net, kBatch);
    c.C = a.C;
    c.fc_dim = a.fc_dim;
    c.num_params = arch::num_params(c.net);
    out.push_back(std::move(c));
  }
  return out;
}

const void* g_last_case = nullptr;  // the network (or group) whose blocks fill the allocator cache

/// One meta-batch of kNets consecutive networks of the bench file: the executor part of one GHN
/// training step (exec::forward_backward runs the networks as parallel oneTBB tasks on one
/// shared image batch; then the parameter gradients are zeroed).
struct group_case {
  std::string name;  // "meta8/nets<first>-<last>"
  std::vector<const net_case*> nets;
  std::int64_t flops = 0;  // training FLOPs of one step of every network at kBatch

  struct state_t {
    std::vector<std::unique_ptr<exec::executor<backend::cpu_t, float>>> ex;
    std::vector<exec::executor<backend::cpu_t, float>*> ptrs;
    std::vector<std::vector<autograd::var<float>>> params;
    autograd::var<float> x;
    std::vector<std::int32_t> labels;
  };
  std::unique_ptr<state_t> st;

  state_t& state() {
    if (!st) {
      st = std::make_unique<state_t>();
      rng g(4321);
      const arch::network& n0 = nets.front()->net;
      for (const net_case* c : nets) {
        if (c->net.in_channels != n0.in_channels || c->net.in_h != n0.in_h || c->net.in_w != n0.in_w ||
            c->net.num_classes != n0.num_classes)
          throw std::runtime_error(name + ": networks of one meta-batch must share input and class count");
        st->ex.push_back(std::make_unique<exec::executor<backend::cpu_t, float>>(c->net));
        st->ptrs.push_back(st->ex.back().get());
        st->params.push_back(st->ex.back()->init_parameters(g));
      }
      tensor<float> x({kBatch, n0.in_channels, n0.in_h, n0.in_w});
      for (std::int64_t i = 0; i < x.numel(); ++i) x.flat(i) = static_cast<float>(g.normal());
      st->x = autograd::var<float>(std::move(x));
      st->labels.resize(static_cast<std::size_t>(kBatch));
      for (auto& l : st->labels) l = static_cast<std::int32_t>(g.below(static_cast<std::uint64_t>(n0.num_classes)));
      step();  // warm-up
      step();
    }
    return *st;
  }

  void step() {
    exec::forward_backward(st->ptrs, st->params, st->x, st->labels, exec::run_options{});
    for (auto& ps : st->params)
      for (auto& p : ps) p.zero_grad();
  }
};
std::vector<group_case> g_groups;

/// Consecutive groups of kNets networks (a last, incomplete group is left out).
std::vector<group_case> make_groups(const std::vector<net_case>& cases) {
  std::vector<group_case> out;
  for (std::size_t first = 0; first + kNets <= cases.size(); first += kNets) {
    group_case gc;
    gc.name = "meta" + std::to_string(kNets) + "/nets" + std::to_string(first) + "-" + std::to_string(first + kNets - 1);
    for (std::size_t i = first; i < first + kNets; ++i) {
      gc.nets.push_back(&cases[i]);
      gc.flops += cases[i].flops;
    }
    out.push_back(std::move(gc));
  }
  return out;
}

void bm_meta_step(benchmark::State& state, group_case& gc, const std::string& name) {
  if (g_last_case != &gc) {
    release_cached_memory();
    g_last_case = &gc;
    if (gc.st) gc.step();
  }
  gc.state();
  const auto m0 = memory_stats();
  const auto c0 = cpu_clock::now();
  const auto t0 = std::chrono::steady_clock::now();
  double best = 0.0;  // fastest single step (a step takes seconds: best of the run's steps)
  for (auto _ : state) {
    const auto s0 = std::chrono::steady_clock::now();
    gc.step();
    benchmark::ClobberMemory();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count();
    if (best == 0.0 || s < best) best = s;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto c1 = cpu_clock::now();
  const double other = cpu_clock::others(c0, c1, secs);
  const double iters = static_cast<double>(state.iterations());
  state.counters["other_cores"] = other;
  state.counters["own_cores"] = secs > 0 ? (c1.own - c0.own) / secs : 0.0;
  state.counters["sys_allocs"] = static_cast<double>(memory_stats().system_allocations - m0.system_allocations) / iters;
  state.counters["GFLOPs"] =
      benchmark::Counter(static_cast<double>(gc.flops) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  if (g_sgemm_gflops > 0)
    state.counters["pct_sgemm"] = 100.0 * static_cast<double>(gc.flops) * iters / secs * 1e-9 / g_sgemm_gflops;
  if (secs >= 0.2) g_best.put(name, best, other);
}

void bm_train_step(benchmark::State& state, net_case& c, const std::string& name) {
  if (g_last_case != &c) {
    // The caching allocator still holds the blocks of the previous network (sized for its
    // shapes): give them back so that this network reaches its own steady state.
    release_cached_memory();
    g_last_case = &c;
    if (c.st) c.step();
  }
  c.state();  // build and warm up outside the timed loop
  const auto m0 = memory_stats();
  const auto c0 = cpu_clock::now();
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    c.step();
    benchmark::ClobberMemory();
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto m1 = memory_stats();
  const auto c1 = cpu_clock::now();
  const double other = cpu_clock::others(c0, c1, secs);
  state.counters["other_cores"] = other;
  state.counters["own_cores"] = secs > 0 ? (c1.own - c0.own) / secs : 0.0;
  const double iters = static_cast<double>(state.iterations());
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.counters["GFLOPs"] =
      benchmark::Counter(static_cast<double>(c.flops) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["live_MB"] = c.live_mb;
  state.counters["sys_allocs"] = static_cast<double>(m1.system_allocations - m0.system_allocations) / iters;
  if (g_sgemm_gflops > 0)
    state.counters["pct_sgemm"] = 100.0 * static_cast<double>(c.flops) * iters / secs * 1e-9 / g_sgemm_gflops;
  if (secs >= 0.2) g_best.put(name, secs / iters, other);
}

void print_summary(const std::string& load_before, double run_other_cores) {
  if (g_best.names.empty()) return;  // nothing timed (e.g. --benchmark_list_tests)
  auto lookup = [](const std::string& name, double& secs, double& other) {
    secs = other = 0.0;
    for (std::size_t i = 0; i < g_best.names.size(); ++i)
      if (g_best.names[i] == name) {
        secs = g_best.secs[i];
        other = g_best.others[i];
      }
  };
  std::fprintf(stderr, "\n== executor training-step throughput (batch %lld, 3x32x32, threads %d) ==\n",
               static_cast<long long>(kBatch), max_threads());
  std::fprintf(stderr, "load average: before %s, after %s; other processes kept %.2f cores busy on average\n",
               load_before.c_str(), loadavg().c_str(), run_other_cores);
  double sg_secs, sg_other;
  lookup("sgemm_2x1thread_1024", sg_secs, sg_other);
  std::fprintf(stderr, "sgemm reference (2 x single-threaded Eigen %ld^3, concurrent): %.1f GFLOP/s (other cores %.2f)\n",
               kGemmSize, g_sgemm_gflops, sg_other);
  std::fprintf(stderr, "%-13s %4s %6s %9s %10s %9s %10s %9s %8s %7s\n", "network", "C", "fc_dim", "params",
               "GFLOP/step", "ms/step", "images/s", "GFLOP/s", "% sgemm", "others");
  double total_flops = 0, total_secs = 0;
  int counted = 0;
  for (const auto& c : g_cases) {
    double s, other;
    lookup(c.name, s, other);
    if (s <= 0.0) continue;  // filtered out or too short to time
    const double gf = static_cast<double>(c.flops) / s * 1e-9;
    std::fprintf(stderr, "%-13s %4d %6d %9lld %10.2f %9.1f %10.1f %9.1f %8.1f %7.2f\n", c.name.c_str(), c.C, c.fc_dim,
                 static_cast<long long>(c.num_params), static_cast<double>(c.flops) * 1e-9, s * 1e3,
                 static_cast<double>(kBatch) / s, gf, g_sgemm_gflops > 0 ? 100.0 * gf / g_sgemm_gflops : 0.0, other);
    total_flops += static_cast<double>(c.flops);
    total_secs += s;
    ++counted;
  }
  if (counted > 0) {
    const double agg = total_flops / total_secs * 1e-9;
    const double pct = g_sgemm_gflops > 0 ? 100.0 * agg / g_sgemm_gflops : 0.0;
    std::fprintf(stderr, "%-13s %4s %6s %9s %10.2f %9.1f %10.1f %9.1f %8.1f  target >= 35%%: %s\n", "aggregate", "",
                 "", "", total_flops * 1e-9, total_secs * 1e3, static_cast<double>(kBatch) * counted / total_secs,
                 agg, pct, g_sgemm_gflops <= 0 ? "no sgemm reference" : (pct >= 35.0 ? "met" : "MISSED"));
    if (counted < kNets) std::fprintf(stderr, "(aggregate over %d of %d networks)\n", counted, kNets);
  }
  // Meta-batches: the executor part of one GHN training step (kNets networks in parallel).
  double g_flops = 0, g_secs = 0;
  int g_counted = 0;
  for (const auto& gc : g_groups) {
    double s, other;
    lookup(gc.name, s, other);
    if (s <= 0.0) continue;
    if (g_counted == 0)
      std::fprintf(stderr, "\n%-22s %10s %9s %9s %8s %7s   (exec::forward_backward, %d networks as parallel tasks)\n",
                   "meta-batch", "GFLOP/step", "ms/step", "GFLOP/s", "% sgemm", "others", kNets);
    const double gf = static_cast<double>(gc.flops) / s * 1e-9;
    std::fprintf(stderr, "%-22s %10.2f %9.1f %9.1f %8.1f %7.2f\n", gc.name.c_str(), static_cast<double>(gc.flops) * 1e-9,
                 s * 1e3, gf, g_sgemm_gflops > 0 ? 100.0 * gf / g_sgemm_gflops : 0.0, other);
    g_flops += static_cast<double>(gc.flops);
    g_secs += s;
    ++g_counted;
  }
  if (g_counted > 0) {
    const double agg = g_flops / g_secs * 1e-9;
    const double pct = g_sgemm_gflops > 0 ? 100.0 * agg / g_sgemm_gflops : 0.0;
    std::fprintf(stderr, "%-22s %10.2f %9.1f %9.1f %8.1f          target >= 50%%: %s\n", "meta aggregate", g_flops * 1e-9,
                 g_secs * 1e3, agg, pct, g_sgemm_gflops <= 0 ? "no sgemm reference" : (pct >= 50.0 ? "met" : "MISSED"));
  }
  std::fprintf(stderr, "(others: cores kept busy by other processes during the best run; > 0.1 means a disturbed timing)\n");
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (const char* s = std::getenv("GHNQ_THREADS")) g_limit = std::make_unique<thread_limit>(std::max(1, std::atoi(s)));
  const char* env = std::getenv("GHNQ_BENCH_FILE");
  const std::string path = env && *env ? env : GHNQ_SOURCE_DIR "/../shared/bench/deepnets_conv.json";
  try {
    g_cases = load_cases(path);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_exec: error: %s\n", e.what());
    return 1;
  }
  const std::string load_before = loadavg();
  const auto run_c0 = cpu_clock::now();
  const auto run_t0 = std::chrono::steady_clock::now();
  benchmark::AddCustomContext("ghnq_threads", std::to_string(max_threads()));
  benchmark::AddCustomContext("bench_file", path);
  benchmark::AddCustomContext("loadavg_before", load_before);
  // The sgemm reference runs first (the per-benchmark ratios need it) and again last; the
  // summary uses the best of both (a conservative ratio on a machine whose speed drifts).
  const std::string sg = "sgemm_2x1thread_1024";
  auto reg_sgemm = [&sg](const std::string& label) {
    benchmark::RegisterBenchmark(label.c_str(), [sg](benchmark::State& s) { bm_sgemm_pair(s, sg); })
        ->UseRealTime()
        ->MinTime(1.0)
        ->Unit(benchmark::kMillisecond);
  };
  reg_sgemm(sg);
  g_groups = make_groups(g_cases);
  for (int i = 0; i < kNets; ++i) {
    net_case& c = g_cases[static_cast<std::size_t>(i)];
    net_case* p = &c;
    const std::string name = c.name;
    benchmark::RegisterBenchmark(("train_step/" + name).c_str(), [p, name](benchmark::State& s) {
      bm_train_step(s, *p, name);
    })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  for (auto& gc : g_groups) {
    group_case* p = &gc;
    const std::string name = gc.name;
    benchmark::RegisterBenchmark(name.c_str(), [p, name](benchmark::State& s) { bm_meta_step(s, *p, name); })
        ->UseRealTime()
        ->Iterations(kMetaSteps)
        ->Unit(benchmark::kMillisecond);
  }
  reg_sgemm(sg + "_again");
  benchmark::RunSpecifiedBenchmarks();
  const double run_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - run_t0).count();
  print_summary(load_before, cpu_clock::others(run_c0, cpu_clock::now(), run_secs));
  benchmark::Shutdown();
  return 0;
}
