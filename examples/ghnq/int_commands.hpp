// ghnq command-line driver: integer export of a GHN-predicted, quantized network and its
// evaluation with the integer-only executor.
//
//   ghnq export-int --checkpoint GHN.safetensors (--arch FILE [--index i] [--input CxHxW] [--classes K]
//                   | --test-index i) --quant W8A8 [--wq Q] [--aq Q] [--first-last-bits B]
//                   [--calib-batches K] [--calib-rule min_max|mean] [--dataset D] [--data DIR]
//                   [--threads T] --out MODEL.safetensors
//   ghnq eval-int --model MODEL.safetensors [--test-limit N] [--batch B] [--per-batch] [--dataset D]
//                 [--data DIR] [--threads T]
//
// Included by main.cpp after ghn_commands.hpp (uses cli::args, load_data, eval_set, config and
// load_architecture / input_spec from main.cpp).
#pragma once
#include <ghnq/exec/int_executor.hpp>
#include <ghnq/ghn.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace cli {

const char* kExportIntUsage =
    "usage: ghnq export-int --checkpoint GHN.safetensors (--arch FILE [--index i] [--input CxHxW] [--classes K]\n"
    "                       | --test-index i) --quant W8A8 [--wq uniform|lsq|binary|ternary] [--aq uniform|lsq|pact]\n"
    "                       [--first-last-bits B] [--calib-batches K] [--calib-rule min_max|mean]\n"
    "                       [--max-bias-shift S] [--dataset fashion-mnist|cifar10] [--data DIR] [--threads T]\n"
    "                       --out MODEL.safetensors\n"
    "Predicts the parameters of the architecture (a file, or the i-th test-split architecture of eval-ghn),\n"
    "calibrates BatchNorm and the activation ranges on K training batches of 64 (default 8), folds BN, and\n"
    "writes the integer model (int8 / packed int4 / int2 weights, scales, zero points, int32 biases).\n"
    "Biases get up to S (default 16) fraction bits below the accumulator's step; --max-bias-shift 0 keeps\n"
    "TFLite's convention (bias at the accumulator's step), which costs agreement at 4 bits and below.\n";

const char* kEvalIntUsage =
    "usage: ghnq eval-int --model MODEL.safetensors [--test-limit N] [--batch B] [--per-batch] [--noise-floor]\n"
    "                     [--dataset fashion-mnist|cifar10] [--data DIR] [--threads T]\n"
    "Top-1 of the integer-only executor and of fake-quant evaluation with the same fixed scales, and their\n"
    "difference. --per-batch also reports fake quantization with per-batch activation ranges (the executor's rule).\n"
    "--noise-floor also reports how often fake quantization changes its prediction when every activation scale\n"
    "moves by 2 float ulps (about 2^-22, the integer glue's precision): the agreement float rounding alone allows.\n";

/// Normalized test / calibration images of a loader as float tensors.
inline std::vector<ghnq::data::batch> int_batches(const ghnq::data::dataset& ds, const ghnq::data::normalization& norm,
                                                  std::int64_t batch, bool shuffle, int max_batches) {
  ghnq::data::loader_options lo;
  lo.batch_size = batch;
  lo.shuffle = shuffle;
  lo.drop_last = shuffle;
  lo.seed = 12345;  // as ghn::evaluate's calibration batches
  lo.norm = norm;
  ghnq::data::loader ld(ds, lo);
  std::vector<ghnq::data::batch> out;
  ghnq::data::batch b;
  while ((max_batches <= 0 || static_cast<int>(out.size()) < max_batches) && ld.next(b)) {
    b.images = b.images.clone();
    out.push_back(b);
  }
  return out;
}

inline int export_int(int argc, char** argv) {
  const args a(argc, argv, {}, kExportIntUsage);
  a.allow({"--checkpoint", "--arch", "--index", "--input", "--classes", "--test-index", "--quant", "--wq", "--aq",
           "--first-last-bits", "--calib-batches", "--calib-rule", "--max-bias-shift", "--dataset", "--data", "--threads",
           "--out"});
  const auto limit = threads_from(a);
  if (a.has("--arch") == a.has("--test-index"))
    throw ghnq::value_error(std::string("give exactly one of --arch FILE and --test-index i\n") + kExportIntUsage);
  const std::string dataset = a.str("--dataset", "fashion-mnist");
  const auto data = load_data(dataset, a.str("--data"), true);
  ghnq::arch::network net;
  std::string source;
  if (a.has("--arch")) {
    input_spec in;
    if (a.has("--input")) in = parse_input(a.str("--input"));
    net = load_architecture(a.str("--arch"), static_cast<long>(a.integer("--index", 0)), in,
                            static_cast<int>(a.integer("--classes", 10)));
    source = a.str("--arch") + "#" + a.str("--index", "0");
  } else {
    const long long i = a.integer("--test-index", 0);
    if (i < 0 || i > 100000) throw ghnq::value_error("--test-index must be in [0, 100000]");
    auto archs = eval_set("test", static_cast<int>(i + 1), 0, data.test);
    net = archs.back().net;
    source = "test-" + std::to_string(i);
  }
  ghnq::exec::quant_config base;
  base.first_last_bits = static_cast<int>(a.integer("--first-last-bits", 8));
  base.wq = ghnq::exec::parse_weight_quantizer(a.str("--wq", "uniform"));
  base.aq = ghnq::exec::parse_act_quantizer(a.str("--aq", "uniform"));
  const auto q = ghnq::exec::parse_quant_name(a.str("--quant", "W8A8"), base);
  const int k = static_cast<int>(a.integer("--calib-batches", 8));
  if (k < 1) throw ghnq::value_error("--calib-batches must be >= 1");
  ghnq::exec::export_options eo;
  eo.rule = ghnq::exec::parse_calib_rule(a.str("--calib-rule", "min_max"));
  eo.max_bias_shift = static_cast<int>(a.integer("--max-bias-shift", ghnq::exec::kMaxBiasShift));
  if (eo.max_bias_shift < 0 || eo.max_bias_shift > ghnq::exec::kMaxBiasShift)
    throw ghnq::value_error("--max-bias-shift must be in [0, " + std::to_string(ghnq::exec::kMaxBiasShift) + "]");
  const std::string out = a.required("--out");
  const std::string ckpt = a.required("--checkpoint");

  ghnq::rng g(0);
  ghn_t ghn(g);
  ghnq::ghn::load_checkpoint(ckpt, ghn);
  const auto t0 = std::chrono::steady_clock::now();
  ghnq::autograd::tape<float> tp;
  ghnq::autograd::no_grad<ghnq::autograd::tape<float>> ng(tp);
  ghnq::graph::graph_batch gb;
  gb.add(ghn_t::graph_of(net));
  const std::vector<std::vector<ghnq::exec::op_quant>> plans{ghnq::exec::plan_quantization(net, q)};
  auto pred = ghn.predict_quant(tp, {&net}, gb, &plans);
  std::vector<ghnq::tensor<float>> calib;
  for (auto& b : int_batches(data.train, data.norm, 64, true, k)) calib.push_back(b.images);
  auto m = ghnq::exec::make_int_model(net, pred.params[0], q, calib, &pred.factors[0], eo);
  nlohmann::json norm = {{"mean", data.norm.mean}, {"std", data.norm.std}};
  m.info["dataset"] = dataset;
  m.info["data_dir"] = a.str("--data");
  m.info["normalization"] = norm.dump();
  m.info["checkpoint"] = ckpt;
  m.info["architecture"] = source;
  ghnq::exec::save_int_model(out, m);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::int64_t weight_bytes = 0;
  for (const auto& l : m.layers) weight_bytes += ghnq::exec::packed_bytes(l.w_shape.numel(), l.w_bits);
  nlohmann::json o;
  o["out"] = out;
  o["architecture"] = source;
  o["quant"] = q.name();
  o["layers"] = m.layers.size();
  o["folded_bn"] = m.folded_bn.size();
  o["unfolded_bn"] = m.norms.size();
  o["num_params"] = ghnq::arch::num_params(net);
  o["weight_bytes"] = weight_bytes;
  o["file_bytes"] = std::filesystem::file_size(out);
  o["calibration"] = {{"batches", k}, {"rule", ghnq::exec::to_string(eo.rule)}};
  int shift_lo = ghnq::exec::kMaxBiasShift, shift_hi = 0;
  for (const auto& l : m.layers) {
    shift_lo = std::min(shift_lo, l.bias_shift);
    shift_hi = std::max(shift_hi, l.bias_shift);
  }
  o["bias_shift"] = {{"min", shift_lo}, {"max", shift_hi}};
  o["seconds"] = secs;
  std::printf("%s\n", o.dump().c_str());
  return 0;
}

/// Result of evaluating one integer model.
struct int_eval_result {
  std::int64_t n = 0, int_correct = 0, ref_correct = 0, dyn_correct = 0, agree = 0, floor_agree = 0;
  double max_logit_diff = 0.0, max_logit = 0.0, int_seconds = 0.0, ref_seconds = 0.0;
  double int_top1() const { return 100.0 * static_cast<double>(int_correct) / static_cast<double>(n); }
  double ref_top1() const { return 100.0 * static_cast<double>(ref_correct) / static_cast<double>(n); }
  double dyn_top1() const { return 100.0 * static_cast<double>(dyn_correct) / static_cast<double>(n); }
};

/// Runs the integer executor and the fake-quant reference (same fixed scales; optionally also
/// per-batch scales) on `batches`.
inline int_eval_result eval_int_model(const ghnq::exec::int_model& m, const std::vector<ghnq::data::batch>& batches,
                                      bool per_batch, bool noise_floor = false) {
  const ghnq::exec::int_executor ie(m);
  const ghnq::exec::fake_quant_reference ref(m);
  ghnq::exec::int_model moved = noise_floor ? m : ghnq::exec::int_model{};  // every activation scale + 2 ulp
  for (auto& l : moved.layers) l.a_scale = std::nextafter(std::nextafter(l.a_scale, 2.0f * l.a_scale), 2.0f * l.a_scale);
  std::unique_ptr<ghnq::exec::fake_quant_reference> ref_moved;
  if (noise_floor) ref_moved = std::make_unique<ghnq::exec::fake_quant_reference>(moved);
  int_eval_result r;
  auto argmax = [](const ghnq::tensor<float>& t, std::int64_t i) {
    std::int64_t b = 0;
    for (std::int64_t c = 1; c < t.dim(1); ++c)
      if (t(i, c) > t(i, b)) b = c;
    return b;
  };
  for (const auto& b : batches) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto yi = ie.forward(b.images);
    const auto t1 = std::chrono::steady_clock::now();
    const auto yr = ref.forward(b.images);
    const auto t2 = std::chrono::steady_clock::now();
    r.int_seconds += std::chrono::duration<double>(t1 - t0).count();
    r.ref_seconds += std::chrono::duration<double>(t2 - t1).count();
    r.int_correct += ghnq::nn::count_correct(yi, b.labels);
    r.ref_correct += ghnq::nn::count_correct(yr, b.labels);
    if (per_batch) r.dyn_correct += ghnq::nn::count_correct(ref.forward(b.images, ghnq::exec::act_scales::per_batch), b.labels);
    for (std::int64_t i = 0; i < yi.dim(0); ++i) r.agree += argmax(yi, i) == argmax(yr, i);
    if (noise_floor) {
      const auto ym = ref_moved->forward(b.images);
      for (std::int64_t i = 0; i < yi.dim(0); ++i) r.floor_agree += argmax(ym, i) == argmax(yr, i);
    }
    for (std::int64_t k = 0; k < yi.numel(); ++k) {
      r.max_logit_diff = std::max(r.max_logit_diff, static_cast<double>(std::abs(yi.data()[k] - yr.data()[k])));
      r.max_logit = std::max(r.max_logit, static_cast<double>(std::abs(yr.data()[k])));
    }
    r.n += b.size();
  }
  return r;
}

inline int eval_int(int argc, char** argv) {
  const args a(argc, argv, {"--per-batch", "--noise-floor"}, kEvalIntUsage);
  a.allow({"--model", "--test-limit", "--batch", "--per-batch", "--noise-floor", "--dataset", "--data", "--threads"});
  const auto limit = threads_from(a);
  const std::string path = a.required("--model");
  const auto m = ghnq::exec::load_int_model(path);
  auto info = [&](const std::string& k, const std::string& def) {
    auto it = m.info.find(k);
    return it == m.info.end() ? def : it->second;
  };
  const std::string dataset = a.str("--dataset", info("dataset", "fashion-mnist"));
  const auto data = load_data(dataset, a.str("--data", info("data_dir", "")), false);
  ghnq::data::normalization norm = data.norm;
  if (m.info.count("normalization") != 0) {
    try {
      const auto j = nlohmann::json::parse(m.info.at("normalization"));
      norm.mean = j.at("mean").get<std::vector<float>>();
      norm.std = j.at("std").get<std::vector<float>>();
    } catch (const nlohmann::json::exception& e) {
      throw ghnq::io_error(path, std::string("metadata 'info.normalization': ") + e.what());
    }
  }
  const long long batch = a.integer("--batch", 64);
  if (batch < 1) throw ghnq::value_error("--batch must be >= 1");
  const auto test = data.test.head(a.integer("--test-limit", 0));
  const auto batches = int_batches(test, norm, batch, false, 0);
  const bool per_batch = a.has("--per-batch");
  const bool noise_floor = a.has("--noise-floor");
  const auto r = eval_int_model(m, batches, per_batch, noise_floor);
  std::printf("%s: %s, %s, %zu layers, %lld test images (%s), %d threads\n", path.c_str(), info("architecture", "?").c_str(),
              m.quant.name().c_str(), m.layers.size(), static_cast<long long>(r.n), dataset.c_str(),
              ghnq::max_threads());
  std::printf("  integer executor top-1:           %7.2f %%  (%.1f s)\n", r.int_top1(), r.int_seconds);
  std::printf("  fake-quant, same scales top-1:    %7.2f %%  (%.1f s)\n", r.ref_top1(), r.ref_seconds);
  std::printf("  difference (integer - fake-quant): %+.2f points; argmax agreement %.2f %%; max |logit diff| %.4g (max |logit| %.4g)\n",
              r.int_top1() - r.ref_top1(), 100.0 * static_cast<double>(r.agree) / static_cast<double>(r.n), r.max_logit_diff,
              r.max_logit);
  if (per_batch) std::printf("  fake-quant, per-batch ranges top-1: %7.2f %%\n", r.dyn_top1());
  if (noise_floor)
    std::printf("  noise floor: fake-quant vs itself with activation scales + 2 ulp: argmax agreement %.2f %%\n",
                100.0 * static_cast<double>(r.floor_agree) / static_cast<double>(r.n));
  return 0;
}

}  // namespace cli
