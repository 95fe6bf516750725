/// \file
/// \brief Google Benchmark: one GHN-2 training step (trainer::step's work: graphs, prediction on a
/// recording tape, the m = 8 networks forward + backward in parallel, backward into the GHN,
/// gradient clipping, Adam) for the networks of deepnets_conv.json in consecutive groups of 8 at
/// their `train` widths, batch 64 of 3x32x32, against the machine's two-core sgemm rate measured
/// in the same process.
///
/// Counters: GFLOPs (rate counter over arch::training_flops of the 8 target networks, i.e. 3 x
/// their forward conv/linear FLOPs; the GHN's own work is not counted), pct_sgemm (that rate in
/// percent of two concurrent single-threaded 1024^3 Eigen sgemms), step_GFLOP (the work of one
/// step). Target (issue): >= 50 % of the two-core sgemm rate.
/// \code
/// build-test/benchmarks/bench_ghn --benchmark_filter=train_step --benchmark_repetitions=3
/// \endcode
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "ghnq/arch/deepnets.hpp"
#include "ghnq/arch/flops.hpp"
#include "ghnq/backend/cpu/gemm.hpp"
#include "ghnq/exec/meta_batch.hpp"
#include "ghnq/ghn/hypernet.hpp"
#include "ghnq/train/clip.hpp"
#include "ghnq/train/optimizer.hpp"

#ifndef GHNQ_SOURCE_DIR
#define GHNQ_SOURCE_DIR "."
#endif

namespace {

using namespace ghnq;
using cfg = ghn2_config<>;

std::vector<arch::network> train_width_nets() {
  const char* env = std::getenv("GHNQ_BENCH_FILE");
  const std::string path = env ? env : std::string(GHNQ_SOURCE_DIR) + "/../shared/bench/deepnets_conv.json";
  std::ifstream f(path);
  if (!f) throw io_error(path, "cannot open the benchmark architecture file");
  const auto j = nlohmann::json::parse(f);
  std::vector<arch::network> nets;
  for (const auto& e : j.at("nets")) {
    auto a = arch::net_args_from_json(e.at("net_args"));
    a.C = e.at("train").at("C").get<int>();
    a.fc_dim = e.at("train").at("fc_dim").get<int>();
    nets.push_back(arch::deepnets_network(a));
  }
  return nets;
}

/// Two concurrent single-threaded 1024^3 Eigen sgemms: the machine's two-core GEMM rate (GFLOP/s),
/// measured once per process (best of 5 after a warm-up).
double sgemm_two_core_gflops() {
  static const double rate = [] {
    const long n = 1024;
    const std::size_t sz = static_cast<std::size_t>(n * n);
    std::vector<float> a(sz, 0.5f), b(sz, 0.25f), c0(sz), c1(sz);
    using gemm = backend::impl<backend::cpu_t, backend::op::gemm>;
    auto one = [&](std::vector<float>& c) {
      gemm::run(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    };
    double best = 0;
    for (int rep = 0; rep < 6; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      std::thread t([&] { one(c1); });
      one(c0);
      t.join();
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (rep > 0) best = std::max(best, 2.0 * 2.0 * static_cast<double>(n) * n * n / s / 1e9);
    }
    return best;
  }();
  return rate;
}

void bm_train_step(benchmark::State& state) {
  static const auto nets = train_width_nets();
  const auto group = static_cast<std::size_t>(state.range(0));
  if (nets.size() < 8 * (group + 1)) {
    state.SkipWithError("not enough networks in the benchmark file");
    return;
  }
  std::vector<const arch::network*> np;
  std::vector<std::unique_ptr<exec::executor<>>> ex;
  std::vector<exec::executor<>*> exp;
  double flops = 0;
  for (std::size_t k = 8 * group; k < 8 * (group + 1); ++k) {
    ex.push_back(std::make_unique<exec::executor<>>(nets[k]));
    exp.push_back(ex.back().get());
    np.push_back(&ex.back()->network());
    flops += static_cast<double>(arch::training_flops(nets[k], 64));
  }
  rng g(1111);
  hypernet<cfg> ghn(g);
  const auto params = ghn.parameters();
  train::adam_options ao;
  ao.weight_decay = 1e-5;
  train::adam<float> opt(params, ao);
  tensor<float> xt({64, 3, 32, 32});
  for (std::int64_t i = 0; i < xt.numel(); ++i) xt.data()[i] = static_cast<float>(g.uniform(-1, 1));
  const autograd::var<float> x(xt);
  std::vector<std::int32_t> labels(64);
  for (auto& l : labels) l = static_cast<std::int32_t>(g.below(10));
  const double sgemm = sgemm_two_core_gflops();
  for (auto _ : state) {
    graph::graph_batch gb;
    for (const auto* n : np) gb.add(hypernet<cfg>::graph_of(*n));
    opt.zero_grad();
    autograd::tape<float> tp;
    auto preds = ghn.predict(tp, np, gb);
    exec::run_options ro;
    ro.dropout = true;
    exec::forward_backward(exp, preds, x, labels, ro);
    for (auto& ps : preds)
      for (auto& p : ps)
        if (p.requires_grad() && p.has_grad()) {
          float* d = p.grad().data();
          for (std::int64_t i = 0, n = p.grad().numel(); i < n; ++i) d[i] *= 0.125f;
        }
    tp.backward_accumulated();
    benchmark::DoNotOptimize(train::clip_grad_norm(params, 5.0));
    opt.step();
  }
  state.counters["GFLOPs"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["pct_sgemm"] =
      benchmark::Counter(100.0 * flops / 1e9 / sgemm, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["step_GFLOP"] = flops / 1e9;
  state.counters["sgemm_GFLOPs"] = sgemm;
  state.SetLabel("nets " + std::to_string(8 * group) + "-" + std::to_string(8 * group + 7));
}

}  // namespace

BENCHMARK(bm_train_step)->Name("train_step_m8_b64")->DenseRange(0, 2)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);
