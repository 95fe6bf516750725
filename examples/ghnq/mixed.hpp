// ghnq command-line driver: `ghnq experiment mixed`, the mixed-precision study of issue 5. Included
// by main.cpp after ghn_commands.hpp (it uses cli::args, load_data, eval_set, threads_from).
//
// For every GHN checkpoint (the QAT-mixed GHN first, others to compare) and every per-layer
// bit-width policy (exec/mixed_precision.hpp: uniform-8/4/3/2, k3x3-2_1x1-4, depth, size, or any
// spec), predicts the parameters of N unseen test-split architectures with the policy's per-layer
// bit-widths given to the GHN (its bit-width embedding sees each layer's bits), fake-quantizes
// them at those bit-widths and measures top-1. Reports mean ± SE, max and min top-1 against the
// mean model size (conv / linear weights, float layers at 32 bits) in bits, MB and bits per weight,
// and the share of weights a policy left in float.
// Outputs DIR/mixed.csv (one row per GHN x policy x BN mode), DIR/mixed.jsonl (the same as JSON
// lines), DIR/mixed_arch.csv (one row per architecture) and DIR/accuracy_vs_bits_per_weight.svg
// (_fold.svg for BN folding).
//
// A policy's per-op overrides are per network: ghn::evaluate gets one quant_config per architecture
// (eval_options::per_arch_quant) and evaluates the architectures as parallel tasks.
#pragma once
#include <ghnq/exec/mixed_precision.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace cli {

const char* kMixedUsage =
    "usage: ghnq experiment mixed --checkpoint [LABEL=]QAT_MIXED_GHN [--checkpoint [LABEL=]OTHER_GHN ...] --out DIR\n"
    "                             [--archs N] [--test-limit N] [--policy SPEC ...] [--bn batch|fold|batch,fold]\n"
    "                             [--wq uniform|lsq|binary|ternary] [--aq uniform|lsq|pact] [--calib-batches K]\n"
    "                             [--groups test,...] [--seed S] [--dataset fashion-mnist|cifar10] [--data DIR]\n"
    "                             [--threads T]\n"
    "Accuracy versus model size of per-layer bit-width policies on N unseen architectures (default 20), for\n"
    "each GHN. --policy is repeatable (default: fp32, uniform-8, uniform-4, uniform-3, uniform-2, k3x3-2_1x1-4,\n"
    "depth, size); a SPEC is a named policy or key:bits items, e.g. '3x3:2,1x1:4,linear:8,first_last:8'\n"
    "(keys: default, first, last, first_last, dw, <kh>x<kw>, kxk, conv, linear, depth:b/b/.., size:b/b/.., act).\n"
    "Quantizers default to the ones the checkpoint trained with (uniform otherwise).\n"
    "Writes DIR/mixed.csv, DIR/mixed.jsonl, DIR/mixed_arch.csv, DIR/accuracy_vs_bits_per_weight*.svg.\n";

/// One GHN of the study.
struct mixed_ghn {
  std::string label, path;
};

/// One cell: a GHN under a policy in a BN mode.
struct mixed_cell {
  std::string ghn, policy, spec, bn;
  ghnq::ghn::eval_summary s;
  double mean_bits = 0, mean_mb = 0, mean_bits_per_weight = 0;
  double mean_float_pct = 0;  // weights no rule quantized (the policy's default is float), in percent
};

inline std::string mixed_svg_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

inline std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string o = "\"";
  for (char c : s) o += c == '"' ? std::string("\"\"") : std::string(1, c);
  return o + "\"";
}

/// Mean top-1 (± SE) versus mean bits per weight (log2 axis, 1.5 to 32), one series per GHN,
/// points labelled with their policy.
inline std::string mixed_svg(const std::vector<mixed_cell>& cells, const std::vector<mixed_ghn>& ghns,
                             const std::string& bn, std::size_t n_archs) {
  const double W = 760, H = 460, L = 60, R = 190, T = 40, Bm = 50;
  const double x_lo = std::log2(1.5), x_hi = std::log2(34.0);
  auto px = [&](double bits) { return L + (W - L - R) * (std::log2(std::max(bits, 1.5)) - x_lo) / (x_hi - x_lo); };
  auto py = [&](double acc) { return T + (H - T - Bm) * (1.0 - std::min(std::max(acc, 0.0), 100.0) / 100.0); };
  const char* colors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"};
  std::string out;
  char buf[640];
  std::snprintf(buf, sizeof buf,
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
                "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
                W, H);
  out += buf;
  std::snprintf(buf, sizeof buf,
                "<text x=\"%.0f\" y=\"20\">Mean top-1 (± SE) on %zu unseen architectures vs mean bits per weight "
                "(BN %s)</text>\n",
                L, n_archs, mixed_svg_escape(bn).c_str());
  out += buf;
  for (int a = 0; a <= 100; a += 20) {
    std::snprintf(buf, sizeof buf,
                  "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/><text x=\"%.1f\" y=\"%.1f\" "
                  "text-anchor=\"end\">%d%%</text>\n",
                  L, W - R, py(a), py(a), L - 6, py(a) + 4, a);
    out += buf;
  }
  for (int b : {2, 3, 4, 6, 8, 16, 32}) {
    std::snprintf(buf, sizeof buf,
                  "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/><text x=\"%.1f\" y=\"%.1f\" "
                  "text-anchor=\"middle\">%d</text>\n",
                  px(b), px(b), T, H - Bm, px(b), H - Bm + 16, b);
    out += buf;
  }
  std::snprintf(buf, sizeof buf, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">bits per weight (log scale)</text>\n",
                (L + W - R) / 2, H - 12);
  out += buf;
  for (std::size_t g = 0; g < ghns.size(); ++g) {
    const char* col = colors[g % 8];
    std::vector<const mixed_cell*> pts;
    for (const auto& c : cells)
      if (c.ghn == ghns[g].label && c.bn == bn && c.s.n > 0) pts.push_back(&c);
    if (pts.empty()) continue;
    std::sort(pts.begin(), pts.end(),
              [](const mixed_cell* a, const mixed_cell* b) { return a->mean_bits_per_weight < b->mean_bits_per_weight; });
    std::string line;
    for (const auto* c : pts) {
      const double x = px(c->mean_bits_per_weight), y = py(c->s.mean);
      std::snprintf(buf, sizeof buf, "%.1f,%.1f ", x, y);
      line += buf;
      std::snprintf(buf, sizeof buf,
                    "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/><circle cx=\"%.1f\" "
                    "cy=\"%.1f\" r=\"3.5\" fill=\"%s\"><title>%s: %s, %.2f bits/weight, %.2f ± %.2f %%</title></circle>\n"
                    "<text x=\"%.1f\" y=\"%.1f\" font-size=\"9\" fill=\"%s\">%s</text>\n",
                    x, x, py(c->s.mean - c->s.se), py(c->s.mean + c->s.se), col, x, y, col,
                    mixed_svg_escape(c->ghn).c_str(), mixed_svg_escape(c->policy).c_str(), c->mean_bits_per_weight,
                    c->s.mean, c->s.se, x + 5, y - 5 - 10.0 * static_cast<double>(g), col,
                    mixed_svg_escape(c->policy).c_str());
      out += buf;
    }
    out += "<polyline fill=\"none\" stroke=\"" + std::string(col) + "\" stroke-width=\"1.5\" points=\"" + line + "\"/>\n";
    std::snprintf(buf, sizeof buf, "<text x=\"%.1f\" y=\"%.1f\" fill=\"%s\">%s</text>\n", W - R + 12,
                  T + 16.0 * static_cast<double>(g + 1), col, mixed_svg_escape(ghns[g].label).c_str());
    out += buf;
  }
  out += "</svg>\n";
  return out;
}

inline int experiment_mixed(int argc, char** argv) {
  // --checkpoint and --policy repeat; everything else goes through the usual parser.
  std::vector<mixed_ghn> ghns;
  std::vector<std::string> policy_specs;
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--checkpoint" || a == "--policy") {
      if (i + 1 >= argc) throw ghnq::value_error("missing value after " + a + "\n" + kMixedUsage);
      const std::string v = argv[++i];
      if (a == "--policy") {
        policy_specs.push_back(v);
        continue;
      }
      mixed_ghn g;
      const auto eq = v.find('=');
      g.path = eq == std::string::npos ? v : v.substr(eq + 1);
      if (eq != std::string::npos) g.label = v.substr(0, eq);
      if (g.path.empty()) throw ghnq::value_error("--checkpoint '" + v + "': empty path");
      ghns.push_back(g);
    } else {
      rest.push_back(argv[i]);
    }
  }
  const args a(static_cast<int>(rest.size()), rest.data(), {}, kMixedUsage);
  a.allow({"--out", "--archs", "--test-limit", "--bn", "--wq", "--aq", "--calib-batches", "--groups", "--seed",
           "--dataset", "--data", "--threads"});
  if (ghns.empty()) throw ghnq::value_error(std::string("missing required option --checkpoint\n") + kMixedUsage);
  const auto limit = threads_from(a);
  const std::string dir = a.required("--out");
  // Labels: given (LABEL=PATH), else the checkpoint's folder name (its file name when it has no folder);
  // a repeated label gets "#<index>".
  for (auto& g : ghns) {
    if (!g.label.empty()) continue;
    const std::filesystem::path p(g.path);
    g.label = p.parent_path().filename().string();
    if (g.label.empty() || g.label == "." || g.label == "..") g.label = p.stem().string();
  }
  for (std::size_t i = 0; i < ghns.size(); ++i)
    for (std::size_t j = 0; j < i; ++j)
      if (ghns[i].label == ghns[j].label) ghns[i].label += "#" + std::to_string(i);
  if (policy_specs.empty()) policy_specs = ghnq::exec::default_policies();
  std::vector<ghnq::exec::bit_policy> policies;
  for (const auto& s : policy_specs) policies.push_back(ghnq::exec::parse_policy(s));  // value_error on a bad spec
  const auto bns = split_list(a.str("--bn", "batch"));
  for (const auto& bn : bns)
    if (bn != "batch" && bn != "fold") throw ghnq::value_error("--bn: batch or fold (or batch,fold), got '" + bn + "'");
  if (bns.empty()) throw ghnq::value_error("--bn: empty list");
  // Validate every checkpoint before the data is loaded and the (long) evaluation starts.
  for (const auto& g : ghns) ghnq::ghn::read_checkpoint_info(g.path);
  const bool need_train = std::find(bns.begin(), bns.end(), "fold") != bns.end();
  const auto data = load_data(a.str("--dataset", "fashion-mnist"), a.str("--data"), need_train);
  const long long n_archs = a.integer("--archs", 20);
  if (n_archs < 1) throw ghnq::value_error("--archs must be >= 1");
  const long long test_limit = a.integer("--test-limit", 0);
  if (test_limit < 0) throw ghnq::value_error("--test-limit must be >= 0 (0: the whole test set)");
  const long long calib_batches = a.integer("--calib-batches", 8);
  if (calib_batches < 1) throw ghnq::value_error("--calib-batches must be >= 1");
  const auto archs = eval_set(a.str("--groups", "test"), static_cast<int>(n_archs),
                              static_cast<std::uint64_t>(a.integer("--seed", 0)), data.test);

  std::filesystem::create_directories(dir);
  const dir_lock lock(dir);  // one process per output directory
  std::filesystem::remove(dir + "/mixed.jsonl");
  ghnq::ghn::detail::jsonl_log log(dir + "/mixed.jsonl");
  std::printf("ghnq %s | experiment mixed: %zu GHNs x %zu policies x %zu BN modes | %zu unseen architectures, "
              "%lld test images | %d threads\n",
              ghnq::version_string, ghns.size(), policies.size(), bns.size(), archs.size(),
              static_cast<long long>(data.test.head(test_limit).size()), ghnq::max_threads());
  std::fflush(stdout);
  const auto t_start = std::chrono::steady_clock::now();
  std::vector<mixed_cell> cells;
  std::string arch_csv = "ghn,policy,bn,arch,group,top1,loss,weights,weight_bits,bits_per_weight\n";
  char line[512];
  for (const auto& gspec : ghns) {
    ghnq::rng g(0);
    ghn_t ghn(g);
    const auto info = ghnq::ghn::load_checkpoint(gspec.path, ghn);
    ghnq::exec::quant_config base;
    if (info.resumable) {  // the quantizers the GHN trained with
      base.wq = info.options.quant.wq;
      base.aq = info.options.quant.aq;
    }
    if (a.has("--wq")) base.wq = ghnq::exec::parse_weight_quantizer(a.str("--wq"));
    if (a.has("--aq")) base.aq = ghnq::exec::parse_act_quantizer(a.str("--aq"));
    std::printf("== %s (%s%s): weights %s, inputs %s\n", gspec.label.c_str(), gspec.path.c_str(),
                info.resumable ? (", strategy " + std::string(ghnq::ghn::to_string(info.options.strat)) + ", step " +
                                  std::to_string(info.step))
                                     .c_str()
                               : "",
                ghnq::exec::to_string(base.wq), ghnq::exec::to_string(base.aq));
    std::fflush(stdout);
    for (const auto& bn : bns) {
      for (const auto& pol : policies) {
        ghnq::ghn::eval_options eo;
        eo.norm = data.norm;
        eo.max_images = test_limit;
        if (bn == "fold") {
          eo.bn = ghnq::ghn::eval_bn::calibrate_fold;
          eo.calib_data = &data.train;
          eo.calib_batches = static_cast<int>(calib_batches);
        }
        std::vector<ghnq::ghn::arch_eval> rows;
        double bits = 0, bpw = 0, float_pct = 0;
        const auto t0 = std::chrono::steady_clock::now();
        ghnq::io::progress bar(gspec.label + " | " + pol.name + " | BN " + bn, static_cast<std::int64_t>(archs.size()),
                               "arch");
        for (const auto& ar : archs) eo.per_arch_quant.push_back(ghnq::exec::apply_policy(ar.net, pol, base));
        std::mutex bar_mu;
        std::int64_t finished = 0;
        rows = ghnq::ghn::evaluate(ghn, archs, data.test, eo, [&](std::size_t, const ghnq::ghn::arch_eval&) {
          const std::lock_guard<std::mutex> lk(bar_mu);
          bar.update(++finished);
        });
        for (std::size_t i = 0; i < archs.size(); ++i) {
          const auto sz = ghnq::exec::size_of(archs[i].net, eo.per_arch_quant[i]);
          bits += static_cast<double>(sz.bits);
          bpw += sz.bits_per_weight();
          float_pct += sz.weights > 0 ? 100.0 * static_cast<double>(sz.float_weights) / static_cast<double>(sz.weights) : 0.0;
          std::snprintf(line, sizeof line, ",%s,%s,%.4f,%.6f,%lld,%lld,%.4f\n", archs[i].name.c_str(),
                        archs[i].group.c_str(), rows[i].top1, rows[i].loss, static_cast<long long>(sz.weights),
                        static_cast<long long>(sz.bits), sz.bits_per_weight());
          arch_csv += csv_field(gspec.label) + "," + csv_field(pol.name) + "," + bn + line;
        }
        bar.finish();
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        mixed_cell c;
        c.ghn = gspec.label;
        c.policy = pol.name;
        c.spec = pol.spec();
        c.bn = bn;
        c.s = ghnq::ghn::summarize(rows);
        const double n = static_cast<double>(rows.size());
        c.mean_bits = bits / n;
        c.mean_mb = c.mean_bits / 8e6;
        c.mean_bits_per_weight = bpw / n;
        c.mean_float_pct = float_pct / n;
        std::printf("  %-16s BN %-5s top-1 %6.2f ± %5.2f (max %6.2f)  %9.0f bits = %7.4f MB, %5.2f bits/weight  (%.0f s)\n",
                    c.policy.c_str(), bn.c_str(), c.s.mean, c.s.se, c.s.max, c.mean_bits, c.mean_mb,
                    c.mean_bits_per_weight, secs);
        if (c.mean_float_pct > 0 && pol.default_bits == 32 && c.mean_float_pct < 100)
          std::printf("  note: %.1f%% of the weights matched no rule of '%s' and stay float (add default:<bits>)\n",
                      c.mean_float_pct, c.policy.c_str());
        std::fflush(stdout);
        log.write({{"ghn", c.ghn}, {"checkpoint", gspec.path}, {"policy", c.policy}, {"spec", c.spec}, {"bn", c.bn},
                   {"wq", ghnq::exec::to_string(base.wq)}, {"aq", ghnq::exec::to_string(base.aq)}, {"n", c.s.n},
                   {"mean", c.s.mean}, {"se", c.s.se}, {"max", c.s.max}, {"min", c.s.min}, {"best", c.s.best},
                   {"mean_bits", c.mean_bits}, {"mean_mb", c.mean_mb}, {"mean_bits_per_weight", c.mean_bits_per_weight},
                   {"mean_float_weight_pct", c.mean_float_pct},
                   {"test_images", data.test.head(test_limit).size()}, {"seconds", secs}});
        cells.push_back(c);
      }
    }
  }
  std::string csv = "ghn,policy,spec,bn,n,mean,se,max,min,mean_bits,mean_mb,mean_bits_per_weight,mean_float_weight_pct\n";
  for (const auto& c : cells) {
    std::snprintf(line, sizeof line, ",%zu,%.3f,%.3f,%.3f,%.3f,%.0f,%.6f,%.4f,%.2f\n", c.s.n, c.s.mean, c.s.se, c.s.max,
                  c.s.min, c.mean_bits, c.mean_mb, c.mean_bits_per_weight, c.mean_float_pct);
    csv += csv_field(c.ghn) + "," + csv_field(c.policy) + "," + csv_field(c.spec) + "," + c.bn + line;
  }
  ghnq::io::write_file_atomic(dir + "/mixed.csv", csv);
  ghnq::io::write_file_atomic(dir + "/mixed_arch.csv", arch_csv);
  for (const auto& bn : bns)
    ghnq::io::write_file_atomic(dir + "/accuracy_vs_bits_per_weight" + (bn == "batch" ? std::string() : "_" + bn) + ".svg",
                          mixed_svg(cells, ghns, bn, archs.size()));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  std::printf("\nmixed-precision study finished in %.1f min -> %s/mixed.csv, mixed.jsonl, mixed_arch.csv, "
              "accuracy_vs_bits_per_weight*.svg\n",
              secs / 60.0, dir.c_str());
  return 0;
}

}  // namespace cli
