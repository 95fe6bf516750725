// ghnq command-line driver: `ghnq finetune`, quantization-aware fine-tuning of one architecture
// from GHN-predicted parameters versus the standard random initialization. Included by main.cpp
// after experiment.hpp (it uses load_architecture, input_spec, cli::load_data, cli::svg_escape).
//
// Every (init x quant) combination runs on the same architecture with the same data order.
// Outputs DIR/finetune.csv (one row per curve point), DIR/finetune.jsonl (config, points, run
// summaries), DIR/finetune_<QUANT>.svg (top-1 vs steps, one line per init) and a summary table.
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ghnq/train/finetune.hpp>

namespace cli {

const char* kFinetuneUsage =
    "usage: ghnq finetune (--arch FILE [--index i] [--input CxHxW] | --test-index i [--split test|val])\n"
    "                     --init ghn:CKPT|random [--init ...] --quant W4A4 [--quant W2A2 ...] --out DIR\n"
    "                     [--steps 200] [--eval-every 20] [--test-limit 1000] [--batch 64]\n"
    "                     [--optimizer sgd|adam] [--lr LR] [--min-lr 0] [--warmup 0] [--momentum 0.9]\n"
    "                     [--nesterov] [--wd 5e-4] [--clip 5] [--factor-lr 0.01] [--freeze-factors]\n"
    "                     [--calib-batches 8] [--eval-bn both|running|batch] [--wq uniform|lsq|binary|ternary]\n"
    "                     [--aq uniform|lsq|pact] [--first-last-bits B] [--seed 1]\n"
    "                     [--dataset fashion-mnist|cifar10] [--data DIR] [--threads T]\n"
    "Quantization-aware fine-tuning of one architecture (a file, or DeepNets-1M held-out architecture i, the\n"
    "ones eval-ghn reports as test-i) from each --init: a GHN checkpoint's prediction (parameters and, for\n"
    "LSQ / PACT, the predicted quantizer log-factors) or the standard random initialization. --init and\n"
    "--quant repeat or take comma lists. The quantizers (--wq, --aq, --first-last-bits) default to the\n"
    "first QAT checkpoint's training quantizers, else uniform / uniform / 8. lr defaults to 0.01 (sgd) or\n"
    "1e-3 (adam), cosine to --min-lr. top1: BN with running statistics (calibrated on --calib-batches\n"
    "training batches before step 0); top1_batch: BN with test-batch statistics (GHN-2's protocol, equal\n"
    "to eval-ghn at step 0). Writes DIR/finetune.csv, DIR/finetune.jsonl, DIR/finetune_<QUANT>.svg.\n";

/// One initialization of the comparison.
struct ft_init {
  std::string label;       // "random", "ghn:<dir>"
  std::string checkpoint;  // empty for random
  std::string ghn_desc;    // "fp", "qat W4A4 lsq/pact", ...
  bool qat = false;        // trained with quantization in the loop
  ghnq::exec::quant_config ghn_quant;
  std::unique_ptr<ghn_t> ghn;
};

/// One curve with its labels.
struct ft_run {
  std::string init, quant;
  std::vector<ghnq::train::curve_point> curve;
  double predict_ms = 0.0, train_ms = 0.0, eval_ms = 0.0;
  std::int64_t skipped = 0;
};

inline std::string ft_num(double v, const char* fmt = "%.4f") {
  if (!std::isfinite(v)) return "";
  char b[64];
  std::snprintf(b, sizeof b, fmt, v);
  return b;
}

/// Top-1 (running statistics: solid; test-batch statistics: dashed) versus steps, one colour per init.
inline void write_finetune_svg(const std::string& path, const std::string& title, const std::vector<const ft_run*>& runs) {
  const double W = 720, H = 420, L = 60, R = 190, T = 34, Bm = 50;
  std::int64_t max_step = 1;
  double lo = 100.0, hi = 0.0;
  for (const auto* r : runs)
    for (const auto& p : r->curve) {
      max_step = std::max(max_step, p.step);
      for (double v : {p.top1, p.top1_batch})
        if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
    }
  if (hi < lo) lo = 0, hi = 100;
  lo = std::max(0.0, std::floor(lo / 10.0) * 10.0);
  hi = std::min(100.0, std::max(lo + 10.0, std::ceil(hi / 10.0) * 10.0));
  auto px = [&](double s) { return L + (W - L - R) * s / static_cast<double>(max_step); };
  auto py = [&](double a) { return T + (H - T - Bm) * (1.0 - (a - lo) / (hi - lo)); };
  const char* colors[] = {"#888888", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"};
  std::string out;
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
                "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n<text x=\"%.0f\" y=\"20\">%s</text>\n",
                W, H, L, svg_escape(title).c_str());
  out += buf;
  for (double a = lo; a <= hi + 1e-9; a += 10.0) {
    std::snprintf(buf, sizeof buf,
                  "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/><text x=\"%.1f\" y=\"%.1f\" "
                  "text-anchor=\"end\">%.0f%%</text>\n",
                  L, W - R, py(a), py(a), L - 6, py(a) + 4, a);
    out += buf;
  }
  for (int k = 0; k <= 4; ++k) {
    const double s = static_cast<double>(max_step) * k / 4.0;
    std::snprintf(buf, sizeof buf, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.0f</text>\n", px(s), H - Bm + 18, s);
    out += buf;
  }
  std::snprintf(buf, sizeof buf, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">steps</text>\n", px(max_step / 2.0), H - 12);
  out += buf;
  int row = 0, coloured = 0;
  for (std::size_t r = 0; r < runs.size(); ++r) {
    const char* col = runs[r]->init == "random" ? colors[0] : colors[1 + coloured++ % 7];  // random: grey
    for (const bool running : {true, false}) {
      std::string pts;
      for (const auto& p : runs[r]->curve) {
        const double v = running ? p.top1 : p.top1_batch;
        if (!std::isfinite(v)) continue;
        std::snprintf(buf, sizeof buf, "%.1f,%.1f ", px(static_cast<double>(p.step)), py(v));
        pts += buf;
      }
      if (pts.empty()) continue;
      out += "<polyline fill=\"none\" stroke=\"" + std::string(col) + "\" stroke-width=\"" + (running ? "2" : "1.5") +
             "\"" + (running ? "" : " stroke-dasharray=\"5,4\"") + " points=\"" + pts + "\"/>\n";
      std::snprintf(buf, sizeof buf, "<text x=\"%.1f\" y=\"%.1f\" fill=\"%s\">%s%s</text>\n", W - R + 10,
                    T + 16.0 * (row + 1), col, svg_escape(runs[r]->init).c_str(), running ? "" : " (BN batch)");
      out += buf;
      ++row;
    }
  }
  out += "</svg>\n";
  ghnq::io::write_file_atomic(path, out);
}

inline std::string ft_csv(const std::vector<ft_run>& runs) {
  std::string s = "init,quant,step,loss,top1,top1_batch,test_loss,lr,ms\n";
  for (const auto& r : runs)
    for (const auto& p : r.curve)
      s += r.init + "," + r.quant + "," + std::to_string(p.step) + "," + ft_num(p.loss) + "," + ft_num(p.top1, "%.2f") +
           "," + ft_num(p.top1_batch, "%.2f") + "," + ft_num(p.test_loss) + "," + ft_num(p.lr, "%.6g") + "," +
           ft_num(p.ms, "%.1f") + "\n";
  return s;
}

/// Label of a checkpoint: its folder's name for ".../NAME/ghn.safetensors", else the file's stem.
inline std::string ckpt_label(const std::string& path) {
  const std::filesystem::path p(path);
  if (p.filename() == "ghn.safetensors" && p.has_parent_path() && !p.parent_path().filename().empty())
    return p.parent_path().filename().string();
  return p.stem().string();
}

inline int finetune_command(int argc, char** argv) {
  const args a(argc, argv, {"--nesterov", "--freeze-factors"}, kFinetuneUsage, {"--init", "--quant"});
  a.allow({"--nesterov", "--freeze-factors", "--init", "--quant", "--arch", "--index", "--input", "--test-index",
           "--split", "--steps", "--eval-every", "--test-limit", "--batch", "--optimizer", "--lr", "--min-lr",
           "--warmup", "--momentum", "--wd", "--clip", "--factor-lr", "--calib-batches", "--eval-bn", "--wq", "--aq",
           "--first-last-bits", "--seed", "--dataset", "--data", "--threads", "--out"});
  const long long threads = a.integer("--threads", 0);
  if (threads < 0) throw ghnq::value_error("--threads must be >= 0");
  std::unique_ptr<ghnq::thread_limit> limit;
  if (threads > 0) limit = std::make_unique<ghnq::thread_limit>(static_cast<int>(threads));
  const std::string dir = a.required("--out");
  const auto inits_req = a.list("--init");
  const auto quants_req = a.list("--quant");
  if (inits_req.empty()) throw ghnq::value_error(std::string("missing required option --init\n") + kFinetuneUsage);
  if (quants_req.empty()) throw ghnq::value_error(std::string("missing required option --quant\n") + kFinetuneUsage);
  if (a.has("--arch") == a.has("--test-index"))
    throw ghnq::value_error(std::string("give exactly one of --arch FILE and --test-index i\n") + kFinetuneUsage);
  const auto data = load_data(a.str("--dataset", "fashion-mnist"), a.str("--data"), true);

  // The architecture.
  ghnq::arch::network net;
  if (a.has("--arch")) {
    input_spec in;
    if (a.has("--input")) in = parse_input(a.str("--input"));
    else in = {data.test.channels(), data.test.height(), data.test.width(), false};
    net = load_architecture(a.str("--arch"), static_cast<long>(a.integer("--index", 0)), in, config::kClasses);
    if (net.name.empty()) net.name = std::filesystem::path(a.str("--arch")).stem().string();
  } else {
    const long long i = a.integer("--test-index", 0);
    const std::string sp = a.str("--split", "test");
    if (sp != "test" && sp != "val") throw ghnq::value_error("--split: test or val, got '" + sp + "'");
    if (i < 0 || i > 100000) throw ghnq::value_error("--test-index must be in [0, 100000]");
    auto archs = ghnq::ghn::held_out_architectures(
        ghnq::arch::variant::in_distribution, static_cast<int>(i + 1), 0, data.test.channels(), data.test.height(),
        data.test.width(), config::kClasses, sp == "val" ? ghnq::arch::split::val : ghnq::arch::split::test);
    net = std::move(archs.back().net);
    net.name = sp + "-" + std::to_string(i);
  }

  // The initializations (GHNs loaded once).
  std::vector<ft_init> inits;
  for (const auto& s : inits_req) {
    ft_init fi;
    if (s == "random") {
      fi.label = "random";
    } else if (s.rfind("ghn:", 0) == 0 && s.size() > 4) {
      fi.checkpoint = s.substr(4);
      fi.label = "ghn:" + ckpt_label(fi.checkpoint);
      ghnq::rng g(0);
      fi.ghn = std::make_unique<ghn_t>(g);
      const auto info = ghnq::ghn::load_checkpoint(fi.checkpoint, *fi.ghn);
      if (info.resumable) {
        fi.qat = info.options.strat != ghnq::ghn::strategy::fp;
        fi.ghn_quant = info.options.quant;
        fi.ghn_desc = std::string(ghnq::ghn::to_string(info.options.strat)) + " (step " + std::to_string(info.step) + ")";
        if (fi.qat)
          fi.ghn_desc += " " + info.options.quant.name() + " " + ghnq::exec::to_string(info.options.quant.wq) + "/" +
                         ghnq::exec::to_string(info.options.quant.aq);
      } else {
        fi.ghn_desc = "no training metadata: taken as FP";
      }
    } else {
      throw ghnq::value_error("--init: expected ghn:CHECKPOINT or random, got '" + s + "'");
    }
    int dup = 1;
    for (const auto& o : inits)
      if (o.label == fi.label || o.label.rfind(fi.label + "#", 0) == 0) ++dup;
    if (dup > 1) fi.label += "#" + std::to_string(dup);
    inits.push_back(std::move(fi));
  }

  // Quantizer kinds: the options, else the first QAT GHN's, else uniform / uniform / 8.
  ghnq::exec::quant_config base;
  std::string kinds_from = "defaults";
  for (const auto& fi : inits)
    if (fi.qat) {
      base.wq = fi.ghn_quant.wq;
      base.aq = fi.ghn_quant.aq;
      base.first_last_bits = fi.ghn_quant.first_last_bits;
      kinds_from = fi.label;
      for (const auto& o : inits)
        if (o.qat && (o.ghn_quant.wq != base.wq || o.ghn_quant.aq != base.aq ||
                      o.ghn_quant.first_last_bits != base.first_last_bits))
          std::fprintf(stderr, "ghnq finetune: warning: %s was trained with other quantizers than %s; using %s's\n",
                       o.label.c_str(), fi.label.c_str(), fi.label.c_str());
      break;
    }
  if (a.has("--wq")) base.wq = ghnq::exec::parse_weight_quantizer(a.str("--wq")), kinds_from = "options";
  if (a.has("--aq")) base.aq = ghnq::exec::parse_act_quantizer(a.str("--aq")), kinds_from = "options";
  if (a.has("--first-last-bits")) base.first_last_bits = static_cast<int>(a.integer("--first-last-bits", 8));
  std::vector<ghnq::exec::quant_config> quants;
  for (const auto& q : quants_req) quants.push_back(ghnq::exec::parse_quant_name(q, base));

  ghnq::train::finetune_options fo;
  fo.steps = a.integer("--steps", 200);
  fo.eval_every = a.integer("--eval-every", 20);
  fo.test_limit = a.integer("--test-limit", 1000);
  fo.batch_size = a.integer("--batch", 64);
  fo.optimizer = ghnq::train::parse_finetune_optimizer(a.str("--optimizer", "sgd"));
  fo.lr = a.real("--lr", fo.optimizer == ghnq::train::finetune_optimizer::sgd ? 0.01 : 1e-3);
  fo.min_lr = a.real("--min-lr", 0.0);
  fo.warmup = a.integer("--warmup", 0);
  fo.momentum = a.real("--momentum", 0.9);
  fo.nesterov = a.has("--nesterov");
  fo.weight_decay = a.real("--wd", 5e-4);
  fo.grad_clip = a.real("--clip", 5.0);
  fo.factor_lr = a.real("--factor-lr", 1e-2);
  fo.learn_factors = !a.has("--freeze-factors");
  fo.calib_batches = static_cast<int>(a.integer("--calib-batches", 8));
  const std::string ebn = a.str("--eval-bn", "both");
  if (ebn == "both") fo.eval = ghnq::train::finetune_eval::both;
  else if (ebn == "running") fo.eval = ghnq::train::finetune_eval::running;
  else if (ebn == "batch") fo.eval = ghnq::train::finetune_eval::batch;
  else throw ghnq::value_error("--eval-bn: both, running or batch, got '" + ebn + "'");
  fo.seed = static_cast<std::uint64_t>(a.integer("--seed", 1));
  fo.norm = data.norm;
  fo.quant = quants[0];
  ghnq::train::detail::check_finetune_options(fo);  // fail before any work

  std::filesystem::create_directories(dir);
  const dir_lock lock(dir);  // one process per output directory
  const std::string jsonl = dir + "/finetune.jsonl";
  std::filesystem::remove(jsonl);
  ghnq::ghn::detail::jsonl_log log(jsonl);
  const auto test_n = data.test.head(fo.test_limit).size();
  std::printf("ghnq %s | finetune %s: %zu ops, %lld parameters | %s, %lld train / %lld test images | inits: ",
              ghnq::version_string, net.name.c_str(), net.ops.size(),
              static_cast<long long>(ghnq::arch::num_params(net)), data.train.name.c_str(),
              static_cast<long long>(data.train.size()), static_cast<long long>(test_n));
  for (const auto& fi : inits) std::printf("%s%s ", fi.label.c_str(), fi.ghn ? (" [" + fi.ghn_desc + "]").c_str() : "");
  std::printf("| quantizers %s/%s, first/last %d bits (from %s) | %s lr %g, %lld steps, batch %lld | %d threads\n",
              ghnq::exec::to_string(base.wq), ghnq::exec::to_string(base.aq), base.first_last_bits, kinds_from.c_str(),
              ghnq::train::to_string(fo.optimizer), fo.lr, static_cast<long long>(fo.steps),
              static_cast<long long>(fo.batch_size), ghnq::max_threads());
  std::fflush(stdout);
  nlohmann::json cfg{{"event", "config"},
                     {"arch", net.name},
                     {"num_params", ghnq::arch::num_params(net)},
                     {"wq", ghnq::exec::to_string(base.wq)},
                     {"aq", ghnq::exec::to_string(base.aq)},
                     {"first_last_bits", base.first_last_bits},
                     {"quantizers_from", kinds_from},
                     {"steps", fo.steps},
                     {"eval_every", fo.eval_every},
                     {"test_images", test_n},
                     {"batch", fo.batch_size},
                     {"optimizer", ghnq::train::to_string(fo.optimizer)},
                     {"lr", fo.lr},
                     {"min_lr", fo.min_lr},
                     {"warmup", fo.warmup},
                     {"momentum", fo.momentum},
                     {"weight_decay", fo.weight_decay},
                     {"grad_clip", fo.grad_clip},
                     {"factor_lr", fo.learn_factors ? fo.factor_lr : 0.0},
                     {"calib_batches", fo.calib_batches},
                     {"eval_bn", ebn},
                     {"seed", fo.seed},
                     {"threads", ghnq::max_threads()}};
  for (const auto& fi : inits) cfg["inits"].push_back({{"label", fi.label}, {"checkpoint", fi.checkpoint}, {"ghn", fi.ghn_desc}});
  log.write(cfg);

  std::vector<ft_run> runs;
  const auto t_all = std::chrono::steady_clock::now();
  for (const auto& qc : quants) {
    for (const auto& fi : inits) {
      ft_run run;
      run.init = fi.label;
      run.quant = qc.name();
      auto o = fo;
      o.quant = qc;
      ghnq::train::initial_state<float, ghnq::backend::cpu_t> init;
      const auto t0 = std::chrono::steady_clock::now();
      if (fi.ghn) init = ghnq::train::predict_init(*fi.ghn, net, qc);
      else init.params = ghnq::train::random_init<float>(net, fo.seed);
      run.predict_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      std::printf("== %s | init %s\n", run.quant.c_str(), run.init.c_str());
      std::fflush(stdout);
      const auto r = ghnq::train::finetune(net, init.params, fi.ghn ? &init.factors : nullptr, data.train, data.test, o,
                                           [&](const ghnq::train::curve_point& p) {
                                             std::printf("  step %5lld  loss %7s  top1 %6s  top1(BN batch) %6s  %8.1f s\n",
                                                         static_cast<long long>(p.step), ft_num(p.loss).c_str(),
                                                         ft_num(p.top1, "%.2f").c_str(),
                                                         ft_num(p.top1_batch, "%.2f").c_str(), p.ms / 1000.0);
                                             std::fflush(stdout);
                                             log.write({{"event", "point"}, {"init", run.init}, {"quant", run.quant},
                                                        {"step", p.step}, {"loss", p.loss}, {"top1", p.top1},
                                                        {"top1_batch", p.top1_batch}, {"test_loss", p.test_loss},
                                                        {"lr", p.lr}, {"ms", p.ms}});
                                           });
      run.curve = r.curve;
      run.train_ms = r.train_ms;
      run.eval_ms = r.eval_ms;
      run.skipped = r.skipped;
      double best = -1;
      for (const auto& p : r.curve) best = std::max(best, std::isfinite(p.top1) ? p.top1 : p.top1_batch);
      log.write({{"event", "run"}, {"init", run.init}, {"quant", run.quant}, {"predict_ms", run.predict_ms},
                 {"train_ms", run.train_ms}, {"eval_ms", run.eval_ms}, {"skipped", run.skipped},
                 {"top1_0", r.curve.front().top1}, {"top1_batch_0", r.curve.front().top1_batch},
                 {"top1_final", r.curve.back().top1}, {"top1_batch_final", r.curve.back().top1_batch},
                 {"best", best}});
      runs.push_back(std::move(run));
      ghnq::io::write_file_atomic(dir + "/finetune.csv", ft_csv(runs));  // partial results survive an interruption
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_all).count();

  // Plots and the summary table.
  const bool running = fo.eval != ghnq::train::finetune_eval::batch;
  auto main_of = [&](const ghnq::train::curve_point& p) { return running ? p.top1 : p.top1_batch; };
  std::printf("\n%s (%lld parameters), %lld steps, top-1 %% on %lld test images (BN %s)\n"
              "%-8s %-22s %15s %15s %15s %8s %9s %8s %8s\n",
              net.name.c_str(), static_cast<long long>(ghnq::arch::num_params(net)), static_cast<long long>(fo.steps),
              static_cast<long long>(test_n),
              !running ? "test-batch statistics"
                       : fo.eval == ghnq::train::finetune_eval::both ? "running statistics; in brackets: test-batch statistics"
                                                                     : "running statistics",
              "quant", "init",
              "step 0", "middle", "final", "best", "reach*", "loss", "train s");
  for (const auto& qc : quants) {
    std::vector<const ft_run*> rs;
    for (const auto& r : runs)
      if (r.quant == qc.name()) rs.push_back(&r);
    write_finetune_svg(dir + "/finetune_" + qc.name() + ".svg",
                       net.name + ", " + qc.name() + " (" + ghnq::exec::to_string(base.wq) + "/" +
                           ghnq::exec::to_string(base.aq) + "): test top-1 vs fine-tuning steps",
                       rs);
    double random_final = std::numeric_limits<double>::quiet_NaN();
    for (const auto* r : rs)
      if (r->init == "random") random_final = main_of(r->curve.back());
    for (const auto* r : rs) {
      const auto& c = r->curve;
      const auto& mid = c[c.size() / 2];
      auto cell = [&](const ghnq::train::curve_point& p) {
        return ft_num(main_of(p), "%.1f") + (running && std::isfinite(p.top1_batch) ? " (" + ft_num(p.top1_batch, "%.1f") + ")" : "");
      };
      double best = -1;
      for (const auto& p : c) best = std::max(best, main_of(p));
      std::string reach = "-";
      if (std::isfinite(random_final))
        for (const auto& p : c)
          if (main_of(p) >= random_final) {
            reach = std::to_string(p.step);
            break;
          }
      std::printf("%-8s %-22s %15s %15s %15s %8.1f %9s %8s %8.1f\n", r->quant.c_str(), r->init.c_str(),
                  cell(c.front()).c_str(), (cell(mid) + "@" + std::to_string(mid.step)).c_str(), cell(c.back()).c_str(),
                  best, reach.c_str(), ft_num(c.back().loss, "%.3f").c_str(), r->train_ms / 1000.0);
    }
  }
  std::printf("* reach: first evaluated step whose top-1 >= the random initialization's final top-1\n"
              "finished in %.1f min -> %s/finetune.csv, finetune.jsonl, finetune_<QUANT>.svg\n",
              secs / 60.0, dir.c_str());
  return 0;
}

}  // namespace cli
