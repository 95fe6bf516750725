/// \file
/// \brief Evaluating a GHN on unseen architectures (spec §7.6): predict every parameter of each
/// architecture, run it on the whole test set with batch-statistics BatchNorm (test batch 64),
/// and report top-1 per architecture and mean ± standard error, max and min per group.
///
/// Architecture sets: `held_out_architectures` draws n architectures of a sampler variant from a
/// split (default: the test split, disjoint from training by construction); `family_architectures`
/// gives the hand-written families (ResNet-20/18, VGG-11, MobileNet-v2) for the dataset's input.
/// \code
/// auto archs = ghnq::ghn::held_out_architectures(ghnq::arch::variant::in_distribution, 100, 0, 1, 28, 28, 10);
/// auto rows = ghnq::ghn::evaluate(ghn, archs, test_set, eopt);
/// auto s = ghnq::ghn::summarize(rows, "test");      // s.mean, s.se, s.max
/// \endcode
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <tbb/parallel_for.h>

#include "ghnq/arch/families.hpp"
#include "ghnq/arch/sampler.hpp"
#include "ghnq/data/dataset.hpp"
#include "ghnq/data/loader.hpp"
#include "ghnq/exec/executor.hpp"
#include "ghnq/io/atomic_file.hpp"
#include "ghnq/exec/quant_plan.hpp"
#include "ghnq/exec/quantize.hpp"
#include "ghnq/ghn/hypernet.hpp"
#include "ghnq/ghn/trainer.hpp"
#include "ghnq/nn/loss.hpp"

namespace ghnq::ghn {

/// One architecture to evaluate; `group` names the set it belongs to ("test", "deep", ...).
struct eval_architecture {
  std::string name;
  std::string group;
  arch::network net;
  std::optional<arch::net_args> args;  ///< the DeepNets-1M description, when sampled
};

/// Name of a sampler variant's evaluation group: "test" (in-distribution), "deep", "dense",
/// "wide", "bn-free".
inline std::string group_name(arch::variant v) {
  return v == arch::variant::in_distribution ? std::string("test") : std::string(arch::to_string(v));
}

/// n architectures of variant `v` from split `s` (deterministic in seed), built for the given
/// input and class count; named "<group>-<i>".
inline std::vector<eval_architecture> held_out_architectures(arch::variant v, int n, std::uint64_t seed, int channels,
                                                             int height, int width, int classes,
                                                             arch::split s = arch::split::test) {
  GHNQ_CHECK(n >= 0, value_error, "held_out_architectures: n = ", n, " < 0");
  arch::sampler_options so;
  so.v = v;
  so.in_channels = channels;
  so.in_h = height;
  so.in_w = width;
  so.num_classes = classes;
  arch::sampler smp(so, seed);
  std::vector<eval_architecture> out;
  out.reserve(static_cast<std::size_t>(n));
  const std::string g = group_name(v);
  for (int i = 0; i < n; ++i) {
    const auto a = smp.next(s);
    auto net = smp.build(a);
    net.name = g + "-" + std::to_string(i);
    out.push_back({net.name, g, std::move(net), a});
  }
  return out;
}

/// The hand-written families (resnet20, resnet18, vgg11, mobilenet_v2), group "families".
inline std::vector<eval_architecture> family_architectures(int channels, int height, int width, int classes) {
  std::vector<eval_architecture> out;
  for (const char* f : {"resnet20", "resnet18", "vgg11", "mobilenet_v2"}) {
    auto net = arch::family(f, channels, height, width, classes);
    net.name = f;
    out.push_back({f, "families", std::move(net), std::nullopt});
  }
  return out;
}

/// How BatchNorm normalizes during evaluation.
enum class eval_bn : std::uint8_t {
  batch_stats,     ///< statistics of each test batch (GHN-2's protocol)
  calibrate_fold,  ///< running statistics from `calib_batches` training batches (in float, or through
                   ///< the quantized network with eval_options::calib_quantized), BN folded into the
                   ///< preceding conv before its weights are quantized
};

/// Options of an evaluation.
struct eval_options {
  std::int64_t batch_size = 64;   ///< test batch (the reference's 64: BN uses its statistics)
  std::int64_t max_images = 0;    ///< evaluate on the first n test images (0: all)
  data::normalization norm;       ///< as in training
  bool parallel = true;           ///< evaluate architectures as parallel tasks
  exec::quant_config quant;       ///< quantization of the predicted networks (default: float)
  /// Per-architecture quantization (e.g. a mixed-precision policy's per-op bit-widths, which are
  /// per network): one entry per architecture, used instead of `quant`; empty: `quant` for all.
  std::vector<exec::quant_config> per_arch_quant;
  eval_bn bn = eval_bn::batch_stats;
  int calib_batches = 8;          ///< calibrate_fold: training batches for the running statistics
  /// calibrate_fold: run the calibration batches through the fake-quantized network (statistics of
  /// the quantized activations) instead of the float one. No effect without quantization.
  bool calib_quantized = false;
  const data::dataset* calib_data = nullptr;  ///< calibrate_fold: the training set
};

/// Result for one architecture.
struct arch_eval {
  std::string name, group;
  std::int64_t num_params = 0;
  double top1 = 0.0;        ///< percent
  double loss = 0.0;        ///< mean cross-entropy over the test images
  double predict_ms = 0.0;  ///< GHN prediction time (graph construction included)
  /// false: the network's forward pass was not finite on some test batch (NaN / infinite logits, or
  /// a quantizer observing non-finite activations, whose logits then count as NaN). NaN logit rows
  /// are scored by count_correct's first-maximum rule (class 0), as an argmax over NaN would be.
  bool finite = true;
};

/// Aggregate over the architectures of one group.
struct eval_summary {
  std::string group;
  std::size_t n = 0;
  double mean = 0.0, se = 0.0, max = 0.0, min = 0.0;  ///< top-1 percent; se = sd / sqrt(n)
  std::string best;                                   ///< name of the best architecture
  std::size_t nonfinite = 0;                          ///< architectures whose forward pass was not finite
};

/// Summary of the rows of `group` (all rows when group is empty).
inline eval_summary summarize(const std::vector<arch_eval>& rows, const std::string& group = "") {
  eval_summary s;
  s.group = group.empty() ? std::string("all") : group;
  double sum = 0.0, sq = 0.0;
  for (const auto& r : rows) {
    if (!group.empty() && r.group != group) continue;
    if (s.n == 0 || r.top1 > s.max) {
      s.max = r.top1;
      s.best = r.name;
    }
    if (s.n == 0 || r.top1 < s.min) s.min = r.top1;
    sum += r.top1;
    s.nonfinite += r.finite ? 0 : 1;
    ++s.n;
  }
  if (s.n == 0) return s;
  s.mean = sum / static_cast<double>(s.n);
  for (const auto& r : rows)
    if (group.empty() || r.group == group) sq += (r.top1 - s.mean) * (r.top1 - s.mean);
  s.se = s.n > 1 ? std::sqrt(sq / static_cast<double>(s.n - 1)) / std::sqrt(static_cast<double>(s.n)) : 0.0;
  return s;
}

/// The groups of `rows`, in first-appearance order.
inline std::vector<std::string> groups_of(const std::vector<arch_eval>& rows) {
  std::vector<std::string> g;
  for (const auto& r : rows)
    if (std::find(g.begin(), g.end(), r.group) == g.end()) g.push_back(r.group);
  return g;
}

/// Write the per-architecture rows as CSV (name,group,num_params,top1,loss,predict_ms,finite),
/// atomically (temporary file + rename). io_error naming the file on failure.
inline void write_csv(const std::string& path, const std::vector<arch_eval>& rows) {
  std::string text = "name,group,num_params,top1,loss,predict_ms,finite\n";
  char line[512];
  for (const auto& r : rows) {
    std::snprintf(line, sizeof line, "%s,%s,%lld,%.4f,%.6f,%.3f,%d\n", r.name.c_str(), r.group.c_str(),
                  static_cast<long long>(r.num_params), r.top1, r.loss, r.predict_ms, r.finite ? 1 : 0);
    text += line;
  }
  io::write_file_atomic(path, text);
}

namespace detail {

/// Runs every architecture on the test set with the given parameters / log-factors and fills
/// rows[i].top1 and rows[i].loss (see evaluate). `params[i]` is released after architecture i.
template <class T, class B>
void run_evaluation(const std::vector<eval_architecture>& archs, std::vector<std::vector<autograd::var<T, B>>>& params,
                    const std::vector<exec::quant_factors<T, B>>& factors, std::vector<arch_eval>& rows,
                    const data::dataset& test, const eval_options& opt,
                    const std::function<void(std::size_t, const arch_eval&)>& on_done) {
  using var_t = autograd::var<T, B>;
  const data::dataset ds = test.head(opt.max_images);
  data::loader_options lo;
  lo.batch_size = opt.batch_size;
  lo.shuffle = false;
  lo.norm = opt.norm;
  data::loader ld(ds, lo);
  std::vector<var_t> xs;
  std::vector<std::vector<std::int32_t>> ys;
  data::batch b;
  while (ld.next(b)) {
    xs.push_back(images_as<T, B>(b.images.clone()));
    ys.push_back(b.labels);
  }
  std::vector<var_t> calib;  // calibrate_fold: the float batches for the running statistics
  if (opt.bn == eval_bn::calibrate_fold) {
    data::loader_options co;
    co.batch_size = opt.batch_size;
    co.shuffle = true;
    co.drop_last = true;
    co.seed = 12345;
    co.norm = opt.norm;
    data::loader cl(*opt.calib_data, co);
    data::batch cb;
    for (int k = 0; k < opt.calib_batches && cl.next(cb); ++k) calib.push_back(images_as<T, B>(cb.images.clone()));
  }
  auto run = [&](std::size_t i) {
    exec::executor<B, T> ex(archs[i].net);
    autograd::tape<T, B> tp;
    autograd::no_grad<autograd::tape<T, B>> ng(tp);
    exec::run_options ro;
    ro.bn = exec::bn_mode::batch_stats;
    const exec::quant_config& q = opt.per_arch_quant.empty() ? opt.quant : opt.per_arch_quant[i];
    const bool quantized = q.enabled();
    if (quantized) ro.quant = &q;
    const exec::quant_factors<T, B>* f = quantized && i < factors.size() ? &factors[i] : nullptr;
    bool calib_failed = false;  // a quantizer saw non-finite values during calibration: scored as NaN
    if (opt.bn == eval_bn::calibrate_fold) {
      try {
        ex.calibrate(params[i], calib, opt.calib_quantized ? &q : nullptr, f);  // float when q is disabled
      } catch (const numeric_error&) {
        calib_failed = true;
      }
      ro.bn = exec::bn_mode::running_stats;
      ro.fold_bn = true;
    }
    std::int64_t correct = 0, n = 0;
    double loss = 0.0;
    for (std::size_t k = 0; k < xs.size(); ++k) {
      const auto nb = static_cast<std::int64_t>(ys[k].size());
      try {
        if (calib_failed) throw numeric_error("evaluate: calibration was not finite");  // scored below
        const auto logits = ex.forward(tp, xs[k], params[i], ro, f);
        const auto l = nn::cross_entropy(tp, logits, ys[k]);
        const double lk = static_cast<double>(l.value().to_vector()[0]);
        if (!std::isfinite(lk)) rows[i].finite = false;
        loss += lk * static_cast<double>(nb);
        correct += nn::count_correct(logits.value(), ys[k]);
      } catch (const numeric_error&) {  // scored as NaN logits (see arch_eval::finite)
        rows[i].finite = false;
        const std::int64_t classes = archs[i].net.num_classes;
        const auto nan = tensor<T>::full({nb, classes}, std::numeric_limits<T>::quiet_NaN());
        loss = std::numeric_limits<double>::quiet_NaN();
        correct += nn::count_correct(nan, ys[k]);
      }
      n += nb;
    }
    rows[i].top1 = 100.0 * static_cast<double>(correct) / static_cast<double>(n);
    rows[i].loss = loss / static_cast<double>(n);
    params[i].clear();
    if (on_done) on_done(i, rows[i]);
  };
  if (opt.parallel && archs.size() > 1) {
    tbb::parallel_for(std::size_t(0), archs.size(), [&](std::size_t i) { run(i); });
  } else {
    for (std::size_t i = 0; i < archs.size(); ++i) run(i);
  }
}

/// Checks shared by evaluate and evaluate_parameters (value_error naming the field).
inline void check_eval_options(const eval_options& opt, const data::dataset& test, std::size_t n_archs) {
  GHNQ_CHECK(opt.batch_size >= 1, value_error, "eval_options.batch_size = ", opt.batch_size, " < 1");
  GHNQ_CHECK(test.size() > 0, value_error, "evaluate: test set '", test.name, "' is empty");
  GHNQ_CHECK(opt.bn != eval_bn::calibrate_fold || (opt.calib_data != nullptr && opt.calib_batches >= 1), value_error,
             "evaluate: calibrate_fold needs calib_data and calib_batches >= 1");
  GHNQ_CHECK(opt.per_arch_quant.empty() || opt.per_arch_quant.size() == n_archs, value_error,
             "eval_options.per_arch_quant holds ", opt.per_arch_quant.size(), " entries for ", n_archs,
             " architectures");
}

inline arch_eval row_of(const eval_architecture& a) {
  arch_eval r;
  r.name = a.name;
  r.group = a.group;
  r.num_params = arch::num_params(a.net);
  return r;
}

}  // namespace detail

/// Predict every architecture's parameters with `ghn` and measure top-1 on `test` with BatchNorm
/// in batch-statistics mode (or calibrate-then-fold, `opt.bn`). Quantization: `opt.quant` (or `opt.per_arch_quant[i]`) gives the plan whose bit-widths a
/// quantization-aware GHN sees and the fake quantization of the run; predicted log-factors are used.
/// `on_done(i, row)` (optional) is called after each architecture, from the thread that evaluated it.
template <class Config>
std::vector<arch_eval> evaluate(const hypernet<Config>& ghn, const std::vector<eval_architecture>& archs,
                                const data::dataset& test, const eval_options& opt,
                                const std::function<void(std::size_t, const arch_eval&)>& on_done = {}) {
  using B = typename Config::backend;
  using T = typename Config::scalar;
  using var_t = autograd::var<T, B>;
  detail::check_eval_options(opt, test, archs.size());
  // Prediction: one architecture at a time (the GHN's own ops use every thread).
  std::vector<std::vector<var_t>> params(archs.size());
  std::vector<exec::quant_factors<T, B>> factors(archs.size());
  std::vector<arch_eval> rows(archs.size());
  for (std::size_t i = 0; i < archs.size(); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    autograd::tape<T, B> tp;
    autograd::no_grad<autograd::tape<T, B>> ng(tp);
    const exec::quant_config& q = opt.per_arch_quant.empty() ? opt.quant : opt.per_arch_quant[i];
    std::vector<std::vector<exec::op_quant>> one;
    if (q.enabled()) one.push_back(exec::plan_quantization(archs[i].net, q));
    graph::graph_batch gb;
    gb.add(hypernet<Config>::graph_of(archs[i].net));
    auto pred = ghn.predict_quant(tp, {&archs[i].net}, gb, q.enabled() ? &one : nullptr);
    params[i] = std::move(pred.params[0]);
    factors[i] = std::move(pred.factors[0]);
    rows[i] = detail::row_of(archs[i]);
    rows[i].predict_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }
  detail::run_evaluation(archs, params, factors, rows, test, opt, on_done);
  return rows;
}

/// Evaluate given parameters (e.g. a network trained from scratch, or fine-tuned): `params[i]`
/// holds one tensor per arch::parameters(archs[i].net) entry; `factors` (empty, or one per
/// architecture) gives quantizer log-factors. The same protocol, BN modes and quantization as
/// evaluate; predict_ms is 0. Throws shape_error for parameters that do not fit.
template <class T, class B>
std::vector<arch_eval> evaluate_parameters(const std::vector<eval_architecture>& archs,
                                           std::vector<std::vector<autograd::var<T, B>>> params,
                                           const std::vector<exec::quant_factors<T, B>>& factors,
                                           const data::dataset& test, const eval_options& opt,
                                           const std::function<void(std::size_t, const arch_eval&)>& on_done = {}) {
  detail::check_eval_options(opt, test, archs.size());
  GHNQ_CHECK(params.size() == archs.size() && (factors.empty() || factors.size() == archs.size()), shape_error,
             "evaluate_parameters: ", params.size(), " parameter sets and ", factors.size(), " factor sets for ",
             archs.size(), " architectures");
  std::vector<arch_eval> rows;
  for (std::size_t i = 0; i < archs.size(); ++i) {
    const auto infos = arch::parameters(archs[i].net);
    GHNQ_CHECK(params[i].size() == infos.size(), shape_error, "evaluate_parameters: ", archs[i].name, " has ",
               infos.size(), " parameters, ", params[i].size(), " given");
    for (std::size_t p = 0; p < infos.size(); ++p)
      GHNQ_CHECK(params[i][p].defined() && params[i][p].shape() == infos[p].shape, shape_error,
                 "evaluate_parameters: ", archs[i].name, " parameter ", infos[p].name, " has shape ",
                 params[i][p].defined() ? params[i][p].shape() : ghnq::shape{}, ", expected ", infos[p].shape);
    rows.push_back(detail::row_of(archs[i]));
  }
  detail::run_evaluation(archs, params, factors, rows, test, opt, on_done);
  return rows;
}

}  // namespace ghnq::ghn
