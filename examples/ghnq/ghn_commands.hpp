// ghnq command-line driver: the GHN commands (train-ghn, eval-ghn, predict, ghn info).
// Included by main.cpp after load_architecture / input_spec.
#pragma once
#include <ghnq/ghn.hpp>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../common/cli_args.hpp"
#include "../common/dir_lock.hpp"

namespace cli {

// The GHN the commands train and use: "ghn2q-cifar10", GHN-2's CIFAR-10 configuration (H = 32,
// max_shape 64x64x11x11, 10 classes) plus the bit-width embedding and quant head. The hidden size is
// a compile-time choice: build with -DGHNQ_CLI_HIDDEN=64 for the wider GHN (checkpoints record H, and
// a checkpoint of another H is refused on load).
#ifndef GHNQ_CLI_HIDDEN
#define GHNQ_CLI_HIDDEN 32
#endif
using config = ghnq::ghn2q_config<ghnq::backend::cpu_t, float, GHNQ_CLI_HIDDEN>;
using ghn_t = ghnq::hypernet<config>;

/// Training / test data of a named dataset.
struct dataset_pair {
  ghnq::data::dataset train, test;
  ghnq::data::normalization norm;
};
inline dataset_pair load_data(const std::string& name, const std::string& dir, bool need_train) {
  dataset_pair d;
  if (name == "fashion-mnist") {
    if (need_train) d.train = ghnq::data::load_fashion_mnist(ghnq::data::split::train, dir);
    d.test = ghnq::data::load_fashion_mnist(ghnq::data::split::test, dir);
    d.norm = ghnq::data::fashion_mnist_normalization();
  } else if (name == "cifar10") {
    if (dir.empty()) throw ghnq::value_error("--dataset cifar10 needs --data DIR (the cifar-10-batches-bin folder)");
    if (need_train) d.train = ghnq::data::load_cifar10(ghnq::data::split::train, dir);
    d.test = ghnq::data::load_cifar10(ghnq::data::split::test, dir);
    d.norm = ghnq::data::cifar10_normalization();
  } else {
    throw ghnq::value_error("--dataset: unknown '" + name + "' (fashion-mnist, cifar10)");
  }
  return d;
}

/// Evaluation architecture groups from a comma list: test, val, deep, dense, wide, bn-free, families.
inline std::vector<ghnq::ghn::eval_architecture> eval_set(const std::string& groups, int n, std::uint64_t seed, int c,
                                                          int h, int w) {
  std::vector<ghnq::ghn::eval_architecture> out;
  std::stringstream ss(groups);
  std::string g;
  const int k = config::kClasses;
  while (std::getline(ss, g, ',')) {
    std::vector<ghnq::ghn::eval_architecture> part;
    using V = ghnq::arch::variant;
    if (g == "test") part = ghnq::ghn::held_out_architectures(V::in_distribution, n, seed, c, h, w, k);
    else if (g == "val") {
      part = ghnq::ghn::held_out_architectures(V::in_distribution, n, seed, c, h, w, k, ghnq::arch::split::val);
      for (auto& a : part) a.group = "val";
    } else if (g == "deep") part = ghnq::ghn::held_out_architectures(V::deep, n, seed, c, h, w, k);
    else if (g == "dense") part = ghnq::ghn::held_out_architectures(V::dense, n, seed, c, h, w, k);
    else if (g == "wide") part = ghnq::ghn::held_out_architectures(V::wide, n, seed, c, h, w, k);
    else if (g == "bn-free") part = ghnq::ghn::held_out_architectures(V::bn_free, n, seed, c, h, w, k);
    else if (g == "families") part = ghnq::ghn::family_architectures(c, h, w, k);
    else throw ghnq::value_error("--groups: unknown group '" + g + "' (test, val, deep, dense, wide, bn-free, families)");
    out.insert(out.end(), part.begin(), part.end());
  }
  return out;
}

/// eval_set for the input shape of dataset `ds`.
inline std::vector<ghnq::ghn::eval_architecture> eval_set(const std::string& groups, int n, std::uint64_t seed,
                                                          const ghnq::data::dataset& ds) {
  return eval_set(groups, n, seed, ds.channels(), ds.height(), ds.width());
}

inline void print_table(std::FILE* out, const std::string& title, const std::vector<ghnq::ghn::arch_eval>& rows) {
  std::fprintf(out, "%s\n  %-10s %5s %17s %8s %8s  %s\n", title.c_str(), "group", "n", "top-1 mean ± SE", "max",
               "min", "best");
  for (const auto& g : ghnq::ghn::groups_of(rows)) {
    const auto s = ghnq::ghn::summarize(rows, g);
    std::fprintf(out, "  %-10s %5zu %9.2f ± %5.2f %8.2f %8.2f  %s", g.c_str(), s.n, s.mean, s.se, s.max, s.min,
                 s.best.c_str());
    if (s.nonfinite > 0) std::fprintf(out, "  (%zu not finite)", s.nonfinite);
    std::fprintf(out, "\n");
  }
}

inline std::unique_ptr<ghnq::thread_limit> threads_from(const args& a) {
  const long long t = a.integer("--threads", 0);
  if (t < 0) throw ghnq::value_error("--threads must be >= 0");
  return t > 0 ? std::make_unique<ghnq::thread_limit>(static_cast<int>(t)) : nullptr;
}

/// Evaluate and report: table on stdout, optional CSV and a JSON line per group in `log`.
/// Evaluation with a progress bar, a printed table, an optional per-architecture CSV and JSON-lines
/// summary: `fn(eval_options, on_done)` runs the evaluation (a GHN's predictions or given parameters).
template <class EvalFn>
std::vector<ghnq::ghn::arch_eval> run_eval_with(EvalFn&& fn, std::size_t n_archs, const ghnq::data::dataset& test,
                                                const ghnq::data::normalization& norm, long long test_limit,
                                                const std::string& title, const std::string& csv,
                                                const std::string& log_path, const ghnq::exec::quant_config& quant,
                                                const ghnq::data::dataset* calib, int calib_batches,
                                                bool calib_quantized = false) {
  ghnq::ghn::eval_options eo;
  eo.norm = norm;
  eo.quant = quant;
  if (calib != nullptr) {
    eo.bn = ghnq::ghn::eval_bn::calibrate_fold;
    eo.calib_data = calib;
    eo.calib_batches = calib_batches;
    eo.calib_quantized = calib_quantized;
  }
  eo.max_images = test_limit;
  const auto t0 = std::chrono::steady_clock::now();
  ghnq::io::progress bar("eval", static_cast<std::int64_t>(n_archs), "arch");
  std::atomic<std::int64_t> done{0};
  std::mutex mu;
  // One line per architecture as it finishes, so that a long evaluation cut short keeps what it measured.
  ghnq::ghn::detail::jsonl_log log(log_path);
  const std::string quant_name = quant.name(),
                    bn_name = calib ? (calib_quantized ? "calibrate-quant-fold" : "calibrate-fold") : "batch";
  const std::vector<ghnq::ghn::arch_eval> rows = fn(eo, [&](std::size_t, const ghnq::ghn::arch_eval& r) {
    std::lock_guard<std::mutex> lk(mu);
    log.write({{"event", "arch"}, {"title", title}, {"quant", quant_name}, {"bn", bn_name}, {"name", r.name},
               {"group", r.group}, {"num_params", r.num_params}, {"top1", r.top1}, {"loss", r.loss},
               {"finite", r.finite}});
    bar.update(++done);
  });
  bar.finish();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  print_table(stdout, title + " (" + std::to_string(test.head(test_limit).size()) + " test images, " +
                          std::to_string(static_cast<int>(secs + 0.5)) + " s)", rows);
  std::fflush(stdout);
  if (!csv.empty()) ghnq::ghn::write_csv(csv, rows);
  if (!log_path.empty()) {
    for (const auto& g : ghnq::ghn::groups_of(rows)) {
      const auto s = ghnq::ghn::summarize(rows, g);
      log.write({{"event", "final_eval"}, {"title", title}, {"quant", quant_name},
                 {"bn", bn_name}, {"group", g}, {"n", s.n}, {"mean", s.mean},
                 {"se", s.se}, {"max", s.max}, {"min", s.min}, {"best", s.best}, {"seconds", secs}});
    }
  }
  return rows;
}

/// run_eval_with for a GHN's predictions.
inline std::vector<ghnq::ghn::arch_eval> run_eval(const ghn_t& ghn, const std::vector<ghnq::ghn::eval_architecture>& archs,
                                                  const ghnq::data::dataset& test, const ghnq::data::normalization& norm,
                                                  long long test_limit, const std::string& title,
                                                  const std::string& csv, const std::string& log_path,
                                                  const ghnq::exec::quant_config& quant = {},
                                                  const ghnq::data::dataset* calib = nullptr, int calib_batches = 8,
                                                  bool calib_quantized = false) {
  return run_eval_with(
      [&](const ghnq::ghn::eval_options& eo, const std::function<void(std::size_t, const ghnq::ghn::arch_eval&)>& cb) {
        return ghnq::ghn::evaluate(ghn, archs, test, eo, cb);
      },
      archs.size(), test, norm, test_limit, title, csv, log_path, quant, calib, calib_batches, calib_quantized);
}

const char* kTrainUsage =
    "usage: ghnq train-ghn --out DIR [--steps N] [--meta-batch M] [--batch B] [--lr LR] [--wd WD]\n"
    "                      [--optimizer adam|adamw] [--schedule multistep|cosine|warmup-cosine|constant]\n"
    "                      [--warmup N] [--clip C] [--net-clip C] [--fixed-width] [--seed S]\n"
    "                      [--dataset fashion-mnist|cifar10] [--data DIR] [--threads T] [--save-every N]\n"
    "                      [--eval-every N] [--eval-archs N] [--eval-groups G1,G2] [--eval-test-limit N]\n"
    "                      [--resume] [--no-progress]\n"
    "                      [--strategy fp|qat|qat-mixed|noise] [--bits B | --wbits B --abits B]\n"
    "                      [--wq uniform|lsq|binary|ternary] [--aq uniform|lsq|pact] [--first-last-bits B]\n"
    "                      [--mixed-bits 8,4,2] [--init CHECKPOINT] [--eval-quant FP32,W8A8,...]\n"
    "Trains this build's GHN (`ghnq ghn info --config cli`: ghn2q-cifar10, H = GHNQ_CLI_HIDDEN) on meta-batches\n"
    "of DeepNets-1M train-split architectures. Writes DIR/ghn.safetensors (resumable checkpoint), DIR/train.jsonl\n"
    "(log) and DIR/eval_<QUANT>.csv (final evaluation, one file per --eval-quant entry).\n"
    "--resume continues DIR/ghn.safetensors with the options stored in it. --init starts from another\n"
    "checkpoint's GHN weights (e.g. QAT fine-tuned from a float GHN) with a fresh optimizer.\n"
    "--net-clip C caps each network's gradient norm at its predicted tensors (0: off, the reference).\n";

inline int train_ghn(int argc, char** argv) {
  const args a(argc, argv, {"--fixed-width", "--resume", "--no-progress"}, kTrainUsage);
  a.allow({"--out", "--steps", "--meta-batch", "--batch", "--lr", "--wd", "--optimizer", "--schedule", "--warmup",
           "--clip", "--net-clip", "--fixed-width", "--seed", "--dataset", "--data", "--threads", "--save-every", "--eval-every",
           "--eval-archs", "--eval-groups", "--eval-test-limit", "--resume", "--no-progress", "--strategy", "--bits",
           "--wbits", "--abits", "--wq", "--aq", "--first-last-bits", "--mixed-bits", "--init", "--eval-quant"});
  const auto limit = threads_from(a);
  const std::string dir = a.required("--out");
  std::filesystem::create_directories(dir);
  const dir_lock lock(dir);  // one process per output directory
  const std::string ckpt = dir + "/ghn.safetensors", log = dir + "/train.jsonl";
  const auto data = load_data(a.str("--dataset", "fashion-mnist"), a.str("--data"), true);

  ghnq::ghn::train_options o;
  if (a.has("--resume")) {
    // The training options travel with the checkpoint (that is what makes resume exact): giving
    // one again would be silently ignored, so it is an error.
    for (const char* k : {"--steps", "--meta-batch", "--batch", "--lr", "--wd", "--optimizer", "--schedule", "--warmup",
                          "--clip", "--net-clip", "--fixed-width", "--seed", "--strategy", "--bits", "--wbits", "--abits", "--wq",
                          "--aq", "--first-last-bits", "--mixed-bits", "--init"})
      if (a.has(k))
        throw ghnq::value_error(std::string(k) + " cannot be combined with --resume: the run continues with the training "
                                "options stored in " + ckpt + " (see `ghnq ghn info --checkpoint " + ckpt + "`)");
    o = ghnq::ghn::read_checkpoint_info(ckpt).options;
  } else {
    o.steps = a.integer("--steps", 2000);
    o.meta_batch = static_cast<int>(a.integer("--meta-batch", 8));
    o.batch_size = a.integer("--batch", 64);
    o.lr = a.real("--lr", 1e-3);
    o.weight_decay = a.real("--wd", 1e-5);
    const auto opt = a.str("--optimizer", "adam");
    if (opt != "adam" && opt != "adamw") throw ghnq::value_error("--optimizer: adam or adamw, got '" + opt + "'");
    o.adamw = opt == "adamw";
    o.schedule = ghnq::ghn::parse_schedule(a.str("--schedule", "multistep"));
    o.warmup = a.integer("--warmup", 0);
    o.grad_clip = a.real("--clip", 5.0);
    o.net_grad_clip = a.real("--net-clip", 0.0);
    o.sample_widths = !a.has("--fixed-width");
    o.seed = static_cast<std::uint64_t>(a.integer("--seed", 1111));
    o.norm = data.norm;
    o.strat = ghnq::ghn::parse_strategy(a.str("--strategy", "fp"));
    const int bits = static_cast<int>(a.integer("--bits", 4));
    o.quant.w_bits = static_cast<int>(a.integer("--wbits", bits));
    o.quant.a_bits = static_cast<int>(a.integer("--abits", bits));
    o.quant.first_last_bits = static_cast<int>(a.integer("--first-last-bits", 8));
    o.quant.wq = ghnq::exec::parse_weight_quantizer(a.str("--wq", "uniform"));
    o.quant.aq = ghnq::exec::parse_act_quantizer(a.str("--aq", "uniform"));
    if (a.has("--mixed-bits")) o.mixed_bits = parse_int_list(a.str("--mixed-bits"));
  }
  ghnq::rng g(o.seed);
  ghn_t ghn(g);
  ghnq::ghn::trainer<config> tr(ghn, data.train, o);
  if (a.has("--resume")) ghnq::ghn::load_checkpoint(ckpt, ghn, &tr);
  else if (a.has("--init")) ghnq::ghn::load_checkpoint(a.str("--init"), ghn);
  std::printf("ghnq %s | train-ghn: GHN-2 H=%d (%lld parameters), strategy %s%s | %s %lld images | m=%d, batch %lld, "
              "%lld steps (from %lld) | %d threads\n",
              ghnq::version_string, config::kHidden, static_cast<long long>(ghn.num_params()),
              ghnq::ghn::to_string(o.strat), o.strat == ghnq::ghn::strategy::fp ? "" : (" " + o.quant.name()).c_str(),
              data.train.name.c_str(), static_cast<long long>(data.train.size()), o.meta_batch,
              static_cast<long long>(o.batch_size), static_cast<long long>(o.steps),
              static_cast<long long>(tr.step_count()), ghnq::max_threads());
  std::fflush(stdout);

  const int n_eval = static_cast<int>(a.integer("--eval-archs", 100));
  const auto groups = a.str("--eval-groups", "test");
  const long long test_limit = a.integer("--eval-test-limit", 0);
  // Accuracy versus steps: a small fixed set of unseen architectures on part of the test set.
  const auto curve_archs = eval_set("test", std::min(n_eval, 20), 0, data.test);
  const auto curve_data = data.test.head(std::min<long long>(test_limit > 0 ? test_limit : 2000, 2000));
  ghnq::ghn::fit_options fo;
  fo.log_path = log;
  fo.checkpoint_path = ckpt;
  fo.save_every = a.integer("--save-every", 200);
  fo.eval_every = a.integer("--eval-every", 0);
  fo.progress = !a.has("--no-progress");
  if (fo.eval_every > 0) {
    fo.eval_archs = &curve_archs;
    fo.eval_data = &curve_data;
    fo.eval.norm = data.norm;
  }
  const auto t0 = std::chrono::steady_clock::now();
  const auto steps = ghnq::ghn::fit(tr, fo);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double step_s = 0;
  for (const auto& r : steps) step_s += r.seconds;
  std::printf("trained %zu steps in %.1f s (%.2f s/step, %lld skipped) -> %s\n", steps.size(), secs,
              steps.empty() ? 0.0 : step_s / static_cast<double>(steps.size()), static_cast<long long>(tr.skipped()),
              ckpt.c_str());
  std::fflush(stdout);
  if (n_eval > 0) {
    const auto archs = eval_set(groups, n_eval, 0, data.test);
    for (const auto& qn : split_list(a.str("--eval-quant", "FP32"))) {
      const auto qc = ghnq::exec::parse_quant_name(qn, o.quant);
      run_eval(ghn, archs, data.test, data.norm, test_limit, "trained GHN, unseen architectures, " + qc.name(),
               dir + "/eval_" + qc.name() + ".csv", log, qc);
    }
  }
  return 0;
}

const char* kEvalUsage =
    "usage: ghnq eval-ghn (--checkpoint FILE | --untrained) [--archs N] [--groups test,deep,wide,bn-free,dense,families]\n"
    "                     [--dataset fashion-mnist|cifar10] [--data DIR] [--test-limit N] [--seed S] [--csv FILE]\n"
    "                     [--log FILE.jsonl] [--threads T] [--quant FP32,W8A8,W4A4,W2A2,W4A8,W2A8]\n"
    "                     [--wq uniform|lsq|binary|ternary] [--aq uniform|lsq|pact] [--first-last-bits B]\n"
    "                     [--bn batch|fold] [--calib-batches K] [--calib float|quant]\n"
    "Predicts the parameters of unseen architectures (test split and out-of-distribution groups) and reports\n"
    "top-1 (BatchNorm with test-batch statistics, batch 64): mean ± standard error, max, min per group.\n"
    "--bn fold: running statistics from K training batches, BN folded into the conv before its weights are\n"
    "quantized; --calib quant takes those statistics through the quantized network instead of in float.\n";

/// The GHN an evaluating command works on: --checkpoint FILE, or --untrained (drawn from --seed,
/// default 1111), exactly one of them; `title` names it in reports.
struct chosen_ghn {
  std::unique_ptr<ghn_t> ghn;
  std::string title;
};

inline chosen_ghn ghn_from_args(const args& a, const char* usage) {
  if (a.has("--checkpoint") == a.has("--untrained"))
    throw ghnq::value_error(std::string("give exactly one of --checkpoint FILE and --untrained\n") + usage);
  ghnq::rng g(static_cast<std::uint64_t>(a.integer("--seed", 1111)));
  chosen_ghn c{std::make_unique<ghn_t>(g), "untrained GHN (seed " + a.str("--seed", "1111") + ")"};
  if (a.has("--checkpoint")) {
    const auto info = ghnq::ghn::load_checkpoint(a.str("--checkpoint"), *c.ghn);
    c.title = "GHN " + a.str("--checkpoint") + (info.resumable ? " (step " + std::to_string(info.step) + ")" : "");
  }
  return c;
}

inline int eval_ghn(int argc, char** argv) {
  const args a(argc, argv, {"--untrained"}, kEvalUsage);
  a.allow({"--checkpoint", "--untrained", "--archs", "--groups", "--dataset", "--data", "--test-limit", "--seed",
           "--csv", "--log", "--threads", "--quant", "--wq", "--aq", "--first-last-bits", "--bn", "--calib-batches",
           "--calib"});
  const auto limit = threads_from(a);
  const std::string bn = a.str("--bn", "batch");
  if (bn != "batch" && bn != "fold") throw ghnq::value_error("--bn: batch or fold, got '" + bn + "'");
  const std::string calib = a.str("--calib", "float");
  if (calib != "float" && calib != "quant") throw ghnq::value_error("--calib: float or quant, got '" + calib + "'");
  if (a.has("--calib") && bn != "fold") throw ghnq::value_error("--calib applies to --bn fold only");
  const auto chosen = ghn_from_args(a, kEvalUsage);
  ghn_t& ghn = *chosen.ghn;
  const std::string& title = chosen.title;
  const auto data = load_data(a.str("--dataset", "fashion-mnist"), a.str("--data"), bn == "fold");
  const auto archs = eval_set(a.str("--groups", "test"), static_cast<int>(a.integer("--archs", 100)), 0, data.test);
  ghnq::exec::quant_config base;
  base.first_last_bits = static_cast<int>(a.integer("--first-last-bits", 8));
  base.wq = ghnq::exec::parse_weight_quantizer(a.str("--wq", "uniform"));
  base.aq = ghnq::exec::parse_act_quantizer(a.str("--aq", "uniform"));
  const auto quants = split_list(a.str("--quant", "FP32"));
  for (const auto& qn : quants) {
    const auto qc = ghnq::exec::parse_quant_name(qn, base);
    std::string csv = a.str("--csv");
    if (!csv.empty() && quants.size() > 1) csv += "." + qc.name() + ".csv";
    const bool calib_quant = calib == "quant" && qc.enabled();
    run_eval(ghn, archs, data.test, data.norm, a.integer("--test-limit", 0),
             title + ", " + qc.name() + ", BN " + bn + (calib_quant ? " (quantized calibration)" : ""), csv,
             a.str("--log"), qc, bn == "fold" ? &data.train : nullptr, static_cast<int>(a.integer("--calib-batches", 8)),
             calib_quant);
  }
  return 0;
}

const char* kPredictUsage =
    "usage: ghnq predict --checkpoint FILE --arch FILE [--index i] [--input CxHxW] [--classes K]\n"
    "                    --out PARAMS.safetensors\n"
    "Predicts every parameter of the architecture (ghnq JSON or DeepNets-1M net_args) and writes them,\n"
    "named as the architecture names them, with the architecture JSON in the metadata.\n";

inline int predict(int argc, char** argv) {
  const args a(argc, argv, {}, kPredictUsage);
  a.allow({"--checkpoint", "--arch", "--index", "--input", "--classes", "--out"});
  input_spec in;
  if (a.has("--input")) in = parse_input(a.str("--input"));
  const auto net = load_architecture(a.required("--arch"), static_cast<long>(a.integer("--index", 0)), in,
                                     static_cast<int>(a.integer("--classes", 10)));
  ghnq::rng g(0);
  ghn_t ghn(g);
  const auto ckpt = a.required("--checkpoint");
  ghnq::ghn::load_checkpoint(ckpt, ghn);
  const auto out = a.required("--out");
  const auto t0 = std::chrono::steady_clock::now();
  ghnq::autograd::tape<float> tp;
  ghnq::autograd::no_grad<ghnq::autograd::tape<float>> ng(tp);
  const auto params = ghn.predict(tp, net);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const auto infos = ghnq::arch::parameters(net);
  ghnq::io::safetensors_writer w;
  for (std::size_t i = 0; i < infos.size(); ++i) w.add(infos[i].name, params[i].value());
  w.set_metadata("format", "ghnq-params/1");
  w.set_metadata("architecture", ghnq::arch::to_json_text(net));
  w.set_metadata("ghn_checkpoint", ckpt);
  w.save(out);
  std::printf("{\"out\": \"%s\", \"tensors\": %zu, \"num_params\": %lld, \"predict_ms\": %.2f}\n", out.c_str(),
              infos.size(), static_cast<long long>(ghnq::arch::num_params(net)), ms);
  return 0;
}

const char* kInfoUsage =
    "usage: ghnq ghn info [--config ghn2-cifar10 | ghn2q-cifar10 | cli | --checkpoint FILE]\n"
    "cli: the GHN this build's commands train and load (ghn2q-cifar10 with H = GHNQ_CLI_HIDDEN).\n";

inline int ghn_info(int argc, char** argv) {
  const args a(argc, argv, {}, kInfoUsage);
  a.allow({"--config", "--checkpoint"});
  nlohmann::json out;
  if (a.has("--checkpoint")) {
    ghnq::rng g(0);
    ghn_t ghn(g);
    const auto path = a.str("--checkpoint");
    const auto info = ghnq::ghn::load_checkpoint(path, ghn);
    out["checkpoint"] = path;
    out["config"] = info.config;
    out["resumable"] = info.resumable;
    if (info.resumable) {
      out["step"] = info.step;
      out["skipped"] = info.skipped;
      out["training"] = ghnq::ghn::to_json(info.options);
    }
    out["num_params"] = ghn.num_params();
  } else {
    const auto name = a.str("--config", "ghn2-cifar10");
    ghnq::rng g(0);
    if (name == "ghn2-cifar10") {
      ghnq::hypernet<ghnq::ghn2_config<>> ghn(g);
      out["config"] = ghnq::ghn::config_json<ghnq::ghn2_config<>>();
      out["num_params"] = ghn.num_params();
    } else if (name == "ghn2q-cifar10") {
      ghnq::hypernet<ghnq::ghn2q_config<>> ghn(g);
      out["config"] = ghnq::ghn::config_json<ghnq::ghn2q_config<>>();
      out["num_params"] = ghn.num_params();
    } else if (name == "cli") {
      ghn_t ghn(g);
      out["config"] = ghnq::ghn::config_json<config>();
      out["num_params"] = ghn.num_params();
    } else {
      throw ghnq::value_error("--config: unknown '" + name + "' (ghn2-cifar10, ghn2q-cifar10, cli)");
    }
    out["name"] = name;
  }
  std::cout << out.dump(2) << "\n";
  return 0;
}

const char* kStatsUsage =
    "usage: ghnq ghn stats (--checkpoint FILE | --untrained) [--groups test,deep,wide,bn-free,dense,families]\n"
    "                      [--archs N] [--input CxHxW] [--csv FILE] [--seed S (untrained)]\n"
    "Statistics of the predicted parameters of unseen architectures (the eval-ghn sets; input 1x28x28 unless\n"
    "--input): for every conv / linear weight its gain std(W) / sqrt(2 / fan_in), 1 being He initialization,\n"
    "summarized per architecture (geometric mean, min, max over its weights) and per group. All-constant\n"
    "tensors are left out: they are the zeros given to ops absent from the graph, which the executor skips.\n"
    "Without BatchNorm, a network scales its signal by roughly the gain at every layer; with it, the gain\n"
    "cancels.\n";

/// Gain of one predicted weight tensor relative to He initialization (0 for an all-constant tensor).
inline double he_gain(const ghnq::tensor<float>& t) {
  const std::int64_t n = t.numel();
  if (n == 0 || t.shape().empty() || t.shape()[0] == 0) return 0.0;
  double m = 0, q = 0;
  for (std::int64_t i = 0; i < n; ++i) m += t.data()[i];
  m /= static_cast<double>(n);
  for (std::int64_t i = 0; i < n; ++i) q += (t.data()[i] - m) * (t.data()[i] - m);
  const double sd = std::sqrt(q / static_cast<double>(n));
  const double fan_in = static_cast<double>(n / t.shape()[0]);
  return sd * std::sqrt(fan_in / 2.0);
}

inline int ghn_stats(int argc, char** argv) {
  const args a(argc, argv, {"--untrained"}, kStatsUsage);
  a.allow({"--checkpoint", "--untrained", "--groups", "--archs", "--input", "--csv", "--seed"});
  input_spec in{1, 28, 28, false};
  if (a.has("--input")) in = parse_input(a.str("--input"));
  const auto chosen = ghn_from_args(a, kStatsUsage);
  ghn_t& ghn = *chosen.ghn;
  const long long n = a.integer("--archs", 20);
  if (n < 1) throw ghnq::value_error("--archs must be >= 1");
  const auto archs = eval_set(a.str("--groups", "test"), static_cast<int>(n), 0, in.c, in.h, in.w);
  std::printf("%s: gain std(W) / sqrt(2 / fan_in) of the predicted conv and linear weights\n", chosen.title.c_str());
  std::printf("  %-16s %-4s %7s %9s %7s %7s\n", "architecture", "BN", "weights", "geo-mean", "min", "max");
  std::string csv = "name,group,batch_norm,weights,gain_geomean,gain_min,gain_max\n";
  std::map<std::string, std::vector<double>> by_group;  // geo-mean gains, BN-free / with BN separately
  std::vector<std::string> order;
  for (const auto& e : archs) {
    ghnq::autograd::tape<float> tp;
    ghnq::autograd::no_grad<ghnq::autograd::tape<float>> ng(tp);
    const auto params = ghn.predict(tp, e.net);
    const auto infos = ghnq::arch::parameters(e.net);
    double logsum = 0, lo = 0, hi = 0;
    int count = 0;
    for (std::size_t i = 0; i < infos.size(); ++i) {
      if (infos[i].role != ghnq::arch::param_role::weight || infos[i].shape.size() < 2) continue;
      const double gain = he_gain(params[i].value());
      if (!(gain > 0.0)) continue;  // all-constant: the zeros of an op pruned from the graph (not run)
      logsum += std::log(gain);
      lo = count == 0 ? gain : std::min(lo, gain);
      hi = count == 0 ? gain : std::max(hi, gain);
      ++count;
    }
    const bool bn = std::any_of(e.net.ops.begin(), e.net.ops.end(),
                                [](const ghnq::arch::op& o) { return o.type == ghnq::arch::op_type::batch_norm; });
    const double geo = count > 0 ? std::exp(logsum / count) : 0.0;
    std::printf("  %-16s %-4s %7d %9.3f %7.3f %7.3f\n", e.name.c_str(), bn ? "yes" : "no", count, geo, lo, hi);
    char line[256];
    std::snprintf(line, sizeof line, "%s,%s,%d,%d,%.6f,%.6f,%.6f\n", e.name.c_str(), e.group.c_str(), bn ? 1 : 0, count,
                  geo, lo, hi);
    csv += line;
    const std::string key = e.group + (bn ? " (BN)" : " (no BN)");
    if (!by_group.count(key)) order.push_back(key);
    by_group[key].push_back(geo);
  }
  std::printf("  %-22s %5s %9s\n", "group", "n", "mean gain");
  for (const auto& k : order) {
    const auto& v = by_group[k];
    double m = 0;
    for (double x : v) m += x;
    std::printf("  %-22s %5zu %9.3f\n", k.c_str(), v.size(), m / static_cast<double>(v.size()));
  }
  if (a.has("--csv")) ghnq::io::write_file_atomic(a.str("--csv"), csv);
  return 0;
}

}  // namespace cli
