// ghnq command-line driver: `ghnq experiment qat`, the GHN-QAT study. Included by main.cpp after
// ghn_commands.hpp.
//
// Rows (strategies): random-init GHN, FP (float training, quantized only at test), FP (lsq) (the
// same GHN quantized at test time with LSQ's initial steps, the baseline of the LSQ rows), QAT-b fine-tuned
// from the FP GHN at fixed W b / A b (GHN-QAT's protocol), QAT-mixed (b drawn per step from
// {8, 4, 2}), noise (pseudo-quantization noise at 4 bits), QAT-4 / QAT-2 / QAT-mixed with LSQ and
// QAT-4 / QAT-2 with PACT, and the context row "scratch": the first --scratch-archs architectures trained from their
// standard random initialization for --scratch-steps SGD steps (default one epoch) in float
// (train::finetune's defaults: SGD momentum 0.9, lr 0.01 cosine, weight decay 5e-4, gradient norm
// clipped at 5, dropout on, batch 64), then quantized at test time like FP.
// Columns: FP32, W8A8, W4A4, W2A2, W4A8, W2A8 (evaluated with the quantizers the row trained
// with). Cells: mean ± SE, max and min top-1 over unseen test-split architectures, for each BN mode.
// Outputs DIR/results.csv, DIR/results.md (the tables in Markdown), DIR/results.jsonl,
// DIR/accuracy_vs_bits.svg and DIR/<row>/ checkpoints.
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <ghnq/train/finetune.hpp>
#include <string>
#include <vector>

namespace cli {

struct study_row {
  std::string name;         // "FP", "QAT-4", "QAT-2 (lsq)", ...
  ghnq::ghn::strategy strat = ghnq::ghn::strategy::fp;
  int bits = 32;
  ghnq::exec::weight_quantizer wq = ghnq::exec::weight_quantizer::uniform;
  ghnq::exec::act_quantizer aq = ghnq::exec::act_quantizer::uniform;
  bool trained = true;      // false: the random-initialization row
  bool from_fp = false;     // fine-tuned from the FP GHN for --ft-steps (QAT rows; "FP+ft", the equal-budget control)
  bool scratch = false;     // no GHN: the first --scratch-archs architectures trained from scratch (context row)
  bool reuse_fp = false;    // the FP GHN itself, evaluated with this row's quantizers (no training)
};

struct study_cell {
  std::string row, column, bn;
  ghnq::ghn::eval_summary s;
};

inline std::string svg_escape(const std::string& s) {
  std::string o;
  for (char c : s) o += c == '<' ? std::string("&lt;") : c == '>' ? std::string("&gt;") : c == '&' ? std::string("&amp;") : std::string(1, c);
  return o;
}

/// Accuracy versus bit-width (columns FP32 / W8A8 / W4A4 / W2A2) per row, BN mode `bn`.
inline void write_svg(const std::string& path, const std::vector<study_cell>& cells, const std::vector<study_row>& rows,
                      const std::string& bn) {
  const std::vector<std::pair<std::string, int>> xs = {{"FP32", 32}, {"W8A8", 8}, {"W4A4", 4}, {"W2A2", 2}};
  const double W = 640, H = 400, L = 60, R = 170, T = 30, Bm = 50;
  auto px = [&](std::size_t i) { return L + (W - L - R) * static_cast<double>(i) / static_cast<double>(xs.size() - 1); };
  double top = 10;  // y axis from 0 to the best plotted mean rounded up to the next 10 (at most 100)
  for (const auto& c : cells)
    if (c.bn == bn && c.s.n > 0 && std::isfinite(c.s.mean)) top = std::max(top, c.s.mean);
  top = std::min(100.0, 10.0 * std::ceil(top / 10.0 + 0.05));
  auto py = [&](double acc) { return T + (H - T - Bm) * (1.0 - acc / top); };
  const char* colors[] = {"#888888", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"};
  std::string out;
  char buf[512];
  std::snprintf(buf, sizeof buf, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
  out += buf;
  out += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  std::snprintf(buf, sizeof buf, "<text x=\"%.0f\" y=\"18\">Mean top-1 on unseen architectures vs bit-width (BN %s)</text>\n", L, bn.c_str());
  out += buf;
  for (int a = 0; a <= static_cast<int>(top); a += 10) {
    std::snprintf(buf, sizeof buf, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/><text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%d%%</text>\n",
                  L, W - R, py(a), py(a), L - 6, py(a) + 4, a);
    out += buf;
  }
  for (std::size_t i = 0; i < xs.size(); ++i) {
    std::snprintf(buf, sizeof buf, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", px(i), H - Bm + 20, xs[i].first.c_str());
    out += buf;
  }
  // One colour per strategy (the row name before " ("), one dash pattern per quantizer family, so
  // "QAT-4", "QAT-4 (lsq)" and "QAT-4 (pact)" read as one strategy with three quantizers.
  std::vector<std::string> bases;
  for (const auto& row : rows) {
    const std::string base = row.name.substr(0, row.name.find(" ("));
    if (std::find(bases.begin(), bases.end(), base) == bases.end()) bases.push_back(base);
  }
  for (std::size_t r = 0; r < rows.size(); ++r) {
    std::string pts;
    const std::string base = rows[r].name.substr(0, rows[r].name.find(" ("));
    const auto b = static_cast<std::size_t>(std::find(bases.begin(), bases.end(), base) - bases.begin());
    const char* col = colors[b % 10];
    const bool lsq = rows[r].wq == ghnq::exec::weight_quantizer::lsq || rows[r].aq == ghnq::exec::act_quantizer::lsq;
    const bool pact = rows[r].aq == ghnq::exec::act_quantizer::pact;
    const std::string dash = pact ? " stroke-dasharray=\"2,3\"" : lsq ? " stroke-dasharray=\"7,4\"" : "";
    for (std::size_t i = 0; i < xs.size(); ++i)
      for (const auto& c : cells)
        if (c.row == rows[r].name && c.column == xs[i].first && c.bn == bn && c.s.n > 0) {
          std::snprintf(buf, sizeof buf, "%.1f,%.1f ", px(i), py(c.s.mean));
          pts += buf;
          std::snprintf(buf, sizeof buf, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", px(i), py(c.s.mean), col);
          out += buf;
        }
    if (!pts.empty()) {
      out += "<polyline fill=\"none\" stroke=\"" + std::string(col) + "\" stroke-width=\"2\"" + dash + " points=\"" + pts + "\"/>\n";
      const double ly = T + 16.0 * static_cast<double>(r + 1);
      std::snprintf(buf, sizeof buf, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"%s/>\n", W - R + 8, W - R + 32,
                    ly - 4, ly - 4, col, dash.c_str());
      out += buf;
      std::snprintf(buf, sizeof buf, "<text x=\"%.1f\" y=\"%.1f\" fill=\"%s\">%s</text>\n", W - R + 38, ly, col, svg_escape(rows[r].name).c_str());
      out += buf;
    }
  }
  out += "</svg>\n";
  ghnq::io::write_file_atomic(path, out);
}

/// Every (BN mode, column) cell of `row`: read back from `done` (a resumed study) or measured by
/// `eval(quant, bn, title)` (the column's quantization with the row's quantizers) and logged.
template <class EvalFn>
void row_cells(const study_row& row, const std::vector<std::string>& columns, const std::vector<std::string>& bns,
               const std::map<std::string, ghnq::ghn::eval_summary>& done, std::vector<study_cell>& cells,
               ghnq::ghn::detail::jsonl_log& log, EvalFn&& eval) {
  for (const auto& bn : bns) {
    for (const auto& col : columns) {
      const auto hit = done.find(row.name + "|" + col + "|" + bn);
      if (hit != done.end()) {
        cells.push_back({row.name, col, bn, hit->second});
        continue;
      }
      ghnq::exec::quant_config q;
      q.wq = row.wq;
      q.aq = row.aq;
      q = ghnq::exec::parse_quant_name(col, q);
      const auto t0 = std::chrono::steady_clock::now();
      const auto rs = eval(q, bn, row.name + " | " + col + " | BN " + bn);
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      study_cell c{row.name, col, bn, ghnq::ghn::summarize(rs, "test")};
      log.write({{"row", c.row}, {"column", c.column}, {"bn", c.bn}, {"n", c.s.n}, {"mean", c.s.mean},
                 {"se", c.s.se}, {"max", c.s.max}, {"min", c.s.min}, {"nonfinite", c.s.nonfinite},
                 {"seconds", seconds}});
      cells.push_back(c);
    }
  }
}

/// The "scratch" context row: train (or, with --resume, read back) the first `n` architectures from
/// their random initialization in float, then evaluate the trained weights at every column / BN mode.
inline void scratch_row(const study_row& row, const std::string& dir, bool resume,
                        const std::vector<ghnq::ghn::eval_architecture>& archs, std::size_t n, long long steps,
                        std::uint64_t seed, long long test_limit, const std::vector<std::string>& columns,
                        const std::vector<std::string>& bns, const dataset_pair& data,
                        const std::map<std::string, ghnq::ghn::eval_summary>& done, std::vector<study_cell>& cells,
                        ghnq::ghn::detail::jsonl_log& log) {
  using var_t = ghnq::autograd::var<float>;
  const std::vector<ghnq::ghn::eval_architecture> sa(archs.begin(), archs.begin() + static_cast<std::ptrdiff_t>(std::min(n, archs.size())));
  bool all_done = true;
  for (const auto& bn : bns)
    for (const auto& col : columns) all_done = all_done && done.count(row.name + "|" + col + "|" + bn) != 0;
  std::vector<std::vector<var_t>> trained(sa.size());
  const std::string sdir = dir + "/scratch";
  std::filesystem::create_directories(sdir);
  ghnq::train::finetune_options fo;
  fo.steps = steps;
  fo.eval_every = fo.steps;
  fo.test_limit = test_limit;
  fo.eval = ghnq::train::finetune_eval::batch;
  fo.calib_batches = 0;
  fo.norm = data.norm;
  fo.seed = seed;
  std::printf("== %s: %zu architectures, %lld SGD steps each (batch 64)\n", row.name.c_str(), sa.size(), steps);
  std::fflush(stdout);
  for (std::size_t i = 0; i < sa.size() && !all_done; ++i) {
    const auto infos = ghnq::arch::parameters(sa[i].net);
    const std::string path = sdir + "/" + sa[i].name + ".safetensors";
    if (resume && std::filesystem::exists(path)) {
      const auto f = ghnq::io::safetensors_file::load(path);
      if (!f.has_metadata("architecture") || f.metadata("architecture") != ghnq::arch::to_json_text(sa[i].net))
        throw ghnq::io_error(path, "holds the weights of another architecture than " + sa[i].name +
                                       " (a study with other options wrote it?)");
      for (const auto& pi : infos) trained[i].push_back(var_t(f.get<float>(pi.name, pi.shape)));
      std::printf("   %s: read back %s\n", sa[i].name.c_str(), path.c_str());
      continue;
    }
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = ghnq::train::finetune<float, ghnq::backend::cpu_t>(
        sa[i].net, ghnq::train::random_init<float>(sa[i].net, seed + i), nullptr, data.train, data.test, fo);
    ghnq::io::safetensors_writer w;
    for (std::size_t p = 0; p < infos.size(); ++p) {
      w.add(infos[p].name, r.params[p].value());
      trained[i].push_back(var_t(r.params[p].value()));
    }
    w.set_metadata("format", "ghnq-params/1");
    w.set_metadata("architecture", ghnq::arch::to_json_text(sa[i].net));
    w.save(path);
    std::printf("   %s: %lld steps in %.0f s, top-1 %.2f%% (BN batch, float)\n", sa[i].name.c_str(),
                static_cast<long long>(fo.steps),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                r.curve.empty() ? 0.0 : r.curve.back().top1_batch);
    std::fflush(stdout);
  }
  row_cells(row, columns, bns, done, cells, log, [&](const ghnq::exec::quant_config& q, const std::string& bn,
                                                          const std::string& title) {
    return run_eval_with(
        [&](const ghnq::ghn::eval_options& eo, const std::function<void(std::size_t, const ghnq::ghn::arch_eval&)>& cb) {
          return ghnq::ghn::evaluate_parameters(
              sa, trained, std::vector<ghnq::exec::quant_factors<float, ghnq::backend::cpu_t>>{}, data.test, eo, cb);
        },
        sa.size(), data.test, data.norm, test_limit, title, "", "", q, bn == "fold" ? &data.train : nullptr, 8);
  });
}

const char* kExperimentUsage =
    "usage: ghnq experiment qat --out DIR [--steps N] [--ft-steps N] [--meta-batch M] [--batch B] [--eval-archs N]\n"
    "                           [--test-limit N] [--rows fp,fp-lsq,fp-ft,qat8,qat4,qat2,qat-mixed,noise,lsq,pact,scratch]\n"
    "                           [--columns FP32,W8A8,W4A4,W2A2,W4A8,W2A8] [--bn batch,fold] [--reduced]\n"
    "                           [--fixed-width] [--seed S] [--threads T] [--data DIR] [--fp-init FP_GHN] [--resume]\n"
    "                           [--scratch-archs N] [--scratch-steps N]\n"
    "The GHN-QAT study: an FP GHN trained for --steps (fp-lsq: the same GHN with LSQ quantizers at test\n"
    "time), QAT rows fine-tuned from it for --ft-steps (fp-ft: the same fine-tuning in float, the\n"
    "equal-budget control), every row evaluated on the same unseen test-split architectures at every\n"
    "column. --reduced: rows fp,qat4,qat2 and\n"
    "columns FP32,W8A8,W4A4,W2A2 with BN batch statistics only. --fp-init uses a trained FP GHN checkpoint\n"
    "(e.g. the standard run's) as the FP row and the QAT rows' starting point instead of training one.\n"
    "scratch: the first --scratch-archs (10) architectures trained from random initialization for\n"
    "--scratch-steps (one epoch) in float, quantized at test time (context; weights kept in DIR/scratch/).\n"
    "--resume continues a study in DIR (same options): finished cells are read back from DIR/results.jsonl,\n"
    "interrupted rows resume from their checkpoints (saved every 50 steps).\n";

inline int experiment_qat(int argc, char** argv) {
  const args a(argc, argv, {"--reduced", "--fixed-width", "--resume"}, kExperimentUsage);
  a.allow({"--out", "--steps", "--ft-steps", "--meta-batch", "--batch", "--eval-archs", "--test-limit", "--rows",
           "--columns", "--bn", "--reduced", "--fixed-width", "--seed", "--threads", "--data", "--fp-init",
           "--resume", "--scratch-archs", "--scratch-steps"});
  const auto limit = threads_from(a);
  const bool reduced = a.has("--reduced");
  const std::string dir = a.required("--out");
  std::filesystem::create_directories(dir);
  const dir_lock lock(dir);  // one process per output directory
  const auto data = load_data("fashion-mnist", a.str("--data"), true);
  const auto rows_req = split_list(a.str("--rows", reduced ? "fp,qat4,qat2" : "fp,fp-lsq,fp-ft,qat8,qat4,qat2,qat-mixed,noise,lsq,pact,scratch"));
  const auto columns = split_list(a.str("--columns", reduced ? "FP32,W8A8,W4A4,W2A2" : "FP32,W8A8,W4A4,W2A2,W4A8,W2A8"));
  const auto bns = split_list(a.str("--bn", reduced ? "batch" : "batch,fold"));
  const long long test_limit = a.integer("--test-limit", 0);
  const auto archs = eval_set("test", static_cast<int>(a.integer("--eval-archs", 100)), 0, data.test);

  ghnq::ghn::train_options base;
  base.steps = a.integer("--steps", 1000);
  base.meta_batch = static_cast<int>(a.integer("--meta-batch", 8));
  base.batch_size = a.integer("--batch", 64);
  base.schedule = ghnq::ghn::schedule_kind::cosine;
  base.sample_widths = !a.has("--fixed-width");
  base.seed = static_cast<std::uint64_t>(a.integer("--seed", 1111));
  base.norm = data.norm;
  const std::int64_t ft_steps = a.integer("--ft-steps", std::max<long long>(1, base.steps / 2));

  std::vector<study_row> rows{{"random init", ghnq::ghn::strategy::fp, 32, {}, {}, false}};
  using WQ = ghnq::exec::weight_quantizer;
  using AQ = ghnq::exec::act_quantizer;
  for (const auto& r : rows_req) {
    if (r == "fp") rows.push_back({"FP", ghnq::ghn::strategy::fp, 32, WQ::uniform, AQ::uniform});
    else if (r == "fp-lsq") {
      study_row fr{"FP (lsq)", ghnq::ghn::strategy::fp, 32, WQ::lsq, AQ::lsq};
      fr.reuse_fp = true;
      rows.push_back(fr);
    } else if (r == "fp-ft") rows.push_back({"FP+ft", ghnq::ghn::strategy::fp, 32, WQ::uniform, AQ::uniform, true, true});
    else if (r == "qat8") rows.push_back({"QAT-8", ghnq::ghn::strategy::qat, 8, WQ::uniform, AQ::uniform});
    else if (r == "qat4") rows.push_back({"QAT-4", ghnq::ghn::strategy::qat, 4, WQ::uniform, AQ::uniform});
    else if (r == "qat2") rows.push_back({"QAT-2", ghnq::ghn::strategy::qat, 2, WQ::uniform, AQ::uniform});
    else if (r == "qat-mixed") rows.push_back({"QAT-mixed", ghnq::ghn::strategy::qat_mixed, 0, WQ::uniform, AQ::uniform});
    else if (r == "noise") rows.push_back({"noise-4", ghnq::ghn::strategy::noise, 4, WQ::uniform, AQ::uniform});
    else if (r == "lsq") {
      rows.push_back({"QAT-4 (lsq)", ghnq::ghn::strategy::qat, 4, WQ::lsq, AQ::lsq});
      rows.push_back({"QAT-2 (lsq)", ghnq::ghn::strategy::qat, 2, WQ::lsq, AQ::lsq});
      rows.push_back({"QAT-mixed (lsq)", ghnq::ghn::strategy::qat_mixed, 0, WQ::lsq, AQ::lsq});
    } else if (r == "pact") {
      rows.push_back({"QAT-4 (pact)", ghnq::ghn::strategy::qat, 4, WQ::uniform, AQ::pact});
      rows.push_back({"QAT-2 (pact)", ghnq::ghn::strategy::qat, 2, WQ::uniform, AQ::pact});
    } else if (r == "scratch") {
      study_row sr{"scratch", ghnq::ghn::strategy::fp, 32, WQ::uniform, AQ::uniform, false};
      sr.scratch = true;
      rows.push_back(sr);
    } else {
      throw ghnq::value_error("--rows: unknown row '" + r +
                              "' (fp, fp-lsq, fp-ft, qat8, qat4, qat2, qat-mixed, noise, lsq, pact, scratch)");
    }
  }
  for (auto& row : rows) row.from_fp = row.from_fp || (row.trained && row.strat != ghnq::ghn::strategy::fp);
  const bool need_fp = std::any_of(rows.begin(), rows.end(), [](const study_row& r) { return r.trained; });
  const bool has_scratch = std::any_of(rows.begin(), rows.end(), [](const study_row& r) { return r.scratch; });
  const long long scratch_archs = has_scratch ? a.integer("--scratch-archs", 10) : 0;
  const long long scratch_steps = has_scratch ? a.integer("--scratch-steps", data.train.size() / 64) : 0;  // one epoch
  if (has_scratch && (scratch_archs < 1 || scratch_steps < 1))
    throw ghnq::value_error("--scratch-archs and --scratch-steps must be >= 1");
  // Every row that starts from the FP GHN needs it: --fp-init, or the fp row listed before it.
  const std::string fp_init = a.str("--fp-init");
  nlohmann::json fp_id = nullptr;  // what identifies the given FP GHN (a file can be rewritten)
  if (!fp_init.empty()) {
    const auto info = ghnq::ghn::read_checkpoint_info(fp_init);  // a bad file fails before any work
    fp_id = {{"path", std::filesystem::weakly_canonical(fp_init).string()}, {"step", info.step},
             {"bytes", std::filesystem::file_size(fp_init)}};
  }
  bool fp_ready = !fp_init.empty();
  for (const auto& row : rows) {
    if ((row.from_fp || row.reuse_fp) && !fp_ready)
      throw ghnq::value_error("row '" + row.name + "' starts from the FP GHN: list the fp row before it, or give --fp-init");
    if (row.trained && !row.from_fp && !row.reuse_fp) fp_ready = true;
  }
  std::printf("ghnq %s | experiment qat: %zu rows x %zu columns x %zu BN modes | FP %lld steps, fine-tuning %lld steps, "
              "m=%d | %zu unseen architectures, %lld test images | %d threads\n",
              ghnq::version_string, rows.size(), columns.size(), bns.size(), static_cast<long long>(base.steps),
              static_cast<long long>(ft_steps), base.meta_batch, archs.size(),
              static_cast<long long>(data.test.head(test_limit).size()), ghnq::max_threads());
  std::fflush(stdout);

  // The study's identity: a resumed study must be the same one (cells and checkpoints are reused).
  const bool resume = a.has("--resume");
  const nlohmann::json study = {{"steps", base.steps}, {"ft_steps", ft_steps}, {"meta_batch", base.meta_batch},
                                {"batch", base.batch_size}, {"sample_widths", base.sample_widths},
                                {"seed", base.seed}, {"eval_archs", archs.size()}, {"test_limit", test_limit},
                                {"fp_init", fp_id}, {"scratch_archs", scratch_archs},
                                {"scratch_steps", scratch_steps}};
  const std::string study_path = dir + "/study.json";
  std::map<std::string, ghnq::ghn::eval_summary> done;  // "row|column|bn" -> finished cell
  if (resume) {
    std::ifstream sf(study_path);
    if (!sf) throw ghnq::io_error(study_path, "--resume: no study to continue in " + dir);
    nlohmann::json prev;
    try {
      sf >> prev;
    } catch (const nlohmann::json::exception& e) {
      throw ghnq::io_error(study_path, std::string("not valid JSON: ") + e.what());
    }
    for (auto it = study.begin(); it != study.end(); ++it) {
      // The scratch options concern the scratch row only: a resume without it does not depend on them.
      if (!has_scratch && it.key().rfind("scratch_", 0) == 0) continue;
      if (!prev.contains(it.key()) || prev.at(it.key()) != it.value())
        throw ghnq::value_error("--resume: option '" + it.key() + "' is " + it.value().dump() + ", the study in " + dir +
                                " used " + (prev.contains(it.key()) ? prev.at(it.key()).dump() : std::string("nothing")));
    }
    std::ifstream rf(dir + "/results.jsonl");
    std::vector<std::string> lines;
    for (std::string line; std::getline(rf, line);) lines.push_back(line);
    bool dropped_last = false;
    for (std::size_t ln = 1; ln <= lines.size(); ++ln) {
      const std::string& line = lines[ln - 1];
      if (line.empty()) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
        ghnq::ghn::eval_summary s;
        s.group = "test";
        s.n = j.at("n").get<std::size_t>();
        s.mean = j.at("mean").get<double>();
        s.se = j.at("se").get<double>();
        s.nonfinite = j.value("nonfinite", std::size_t{0});  // absent in logs written before the field
        s.max = j.at("max").get<double>();
        s.min = j.at("min").get<double>();
        done[j.at("row").get<std::string>() + "|" + j.at("column").get<std::string>() + "|" +
             j.at("bn").get<std::string>()] = s;
      } catch (const nlohmann::json::exception& e) {
        if (ln == lines.size()) {  // a write cut short by the interruption: that cell is recomputed
          std::printf("note: ignoring the incomplete last line of %s/results.jsonl\n", dir.c_str());
          dropped_last = true;
          break;
        }
        throw ghnq::io_error(dir + "/results.jsonl", "line " + std::to_string(ln) + ": " + e.what());
      }
    }
    // Rewrite the log as its complete lines, so that appending continues on a fresh line.
    std::string kept;
    for (std::size_t ln = 0; ln < lines.size(); ++ln)
      if (!lines[ln].empty() && !(ln + 1 == lines.size() && dropped_last)) kept += lines[ln] + "\n";
    ghnq::io::write_file_atomic(dir + "/results.jsonl", kept);
    std::printf("resuming: %zu finished cells read back\n", done.size());
  } else {
    if (std::filesystem::exists(study_path) || std::filesystem::exists(dir + "/results.jsonl"))
      throw ghnq::value_error(dir + " already holds a study: pass --resume to continue it, or choose a new --out");
    ghnq::io::write_file_atomic(study_path, study.dump(2) + "\n");
  }

  const auto t_start = std::chrono::steady_clock::now();
  std::vector<study_cell> cells;
  ghnq::ghn::detail::jsonl_log log(dir + "/results.jsonl");
  const std::string fp_ckpt = fp_init.empty() ? dir + "/FP/ghn.safetensors" : fp_init;
  for (const auto& row : rows) {
    if (row.scratch) {
      scratch_row(row, dir, resume, archs, static_cast<std::size_t>(scratch_archs), scratch_steps, base.seed,
                  test_limit, columns, bns, data, done, cells, log);
      continue;
    }
    ghnq::rng g(base.seed);
    ghn_t ghn(g);
    std::string row_dir = dir + "/" + row.name;
    for (auto& c : row_dir)
      if (c == ' ' || c == '(' || c == ')') c = '_';
    if (row.reuse_fp) {
      ghnq::ghn::load_checkpoint(fp_ckpt, ghn);
      std::printf("== %s: %s\n", row.name.c_str(), fp_ckpt.c_str());
    } else if (row.trained && !row.from_fp && !fp_init.empty()) {
      ghnq::ghn::load_checkpoint(fp_init, ghn);
      std::printf("== %s: %s\n", row.name.c_str(), fp_init.c_str());
    } else if (row.trained) {
      std::filesystem::create_directories(row_dir);
      auto o = base;
      o.strat = row.strat;
      o.quant.w_bits = o.quant.a_bits = row.bits > 0 ? row.bits : 4;
      o.quant.wq = row.wq;
      o.quant.aq = row.aq;
      const bool from_fp = row.from_fp;
      if (from_fp) {
        ghnq::ghn::load_checkpoint(fp_ckpt, ghn);
        o.steps = ft_steps;
        o.lr = base.lr * 0.5;  // fine-tuning
      }
      std::printf("== %s: %s%lld steps\n", row.name.c_str(), from_fp ? "fine-tuning the FP GHN, " : "",
                  static_cast<long long>(o.steps));
      std::fflush(stdout);
      ghnq::ghn::trainer<config> tr(ghn, data.train, o);
      ghnq::ghn::fit_options fo;
      fo.log_path = row_dir + "/train.jsonl";
      fo.checkpoint_path = from_fp ? row_dir + "/ghn.safetensors" : fp_ckpt;
      fo.save_every = 50;
      if (resume && std::filesystem::exists(fo.checkpoint_path)) {
        ghnq::ghn::load_checkpoint(fo.checkpoint_path, ghn, &tr);
        std::printf("   resumed at step %lld\n", static_cast<long long>(tr.step_count()));
      }
      if (tr.step_count() < o.steps) ghnq::ghn::fit(tr, fo);
    } else if (need_fp) {
      std::printf("== %s\n", row.name.c_str());
    }
    row_cells(row, columns, bns, done, cells, log,
              [&](const ghnq::exec::quant_config& q, const std::string& bn, const std::string& title) {
                return run_eval(ghn, archs, data.test, data.norm, test_limit, title, "", "", q,
                                bn == "fold" ? &data.train : nullptr, 8);
              });
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  // Table, CSV, plot.
  std::string csv = "row,column,bn,n,mean,se,max,min,nonfinite\n";
  char line[256];
  for (const auto& c : cells) {
    std::snprintf(line, sizeof line, "%s,%s,%s,%zu,%.3f,%.3f,%.3f,%.3f,%zu\n", c.row.c_str(), c.column.c_str(),
                  c.bn.c_str(), c.s.n, c.s.mean, c.s.se, c.s.max, c.s.min, c.s.nonfinite);
    csv += line;
  }
  ghnq::io::write_file_atomic(dir + "/results.csv", csv);
  std::string md;  // the same tables in Markdown, for a README or a paper's notes
  for (const auto& bn : bns) {
    md += "Mean top-1 % ± SE (max) over " + std::to_string(archs.size()) + " unseen test-split architectures" +
          (test_limit > 0 ? ", " + std::to_string(data.test.head(test_limit).size()) + " test images" : std::string()) +
          ", BatchNorm " + (bn == "batch" ? std::string("with test-batch statistics") : std::string("calibrated and folded")) +
          ":\n\n| GHN |";
    for (const auto& col : columns) md += " " + col + " |";
    md += "\n| --- |";
    for (std::size_t k = 0; k < columns.size(); ++k) md += " --- |";
    md += "\n";
    bool marked = false;
    for (const auto& r : rows) {
      md += "| " + r.name + " |";
      for (const auto& col : columns)
        for (const auto& c : cells)
          if (c.row == r.name && c.column == col && c.bn == bn) {
            std::snprintf(line, sizeof line, " %.1f ± %.1f (%.1f)", c.s.mean, c.s.se, c.s.max);
            md += line;
            if (c.s.n != archs.size()) md += " [n=" + std::to_string(c.s.n) + "]";
            if (c.s.nonfinite > 0) {
              md += " [" + std::to_string(c.s.nonfinite) + " not finite]";
              marked = true;
            }
            md += " |";
          }
      md += "\n";
    }
    md += marked ? "\n[k not finite]: that many architectures' forward pass was not finite (scored as NaN logits).\n\n"
                 : "\n";
    std::printf("\nmean top-1 %% ± SE (max) over %zu unseen architectures, BN %s\n%-14s", archs.size(), bn.c_str(), "row");
    for (const auto& col : columns) std::printf(" %20s", col.c_str());
    std::printf("\n");
    for (const auto& r : rows) {
      std::printf("%-14s", r.name.c_str());
      for (const auto& col : columns)
        for (const auto& c : cells)
          if (c.row == r.name && c.column == col && c.bn == bn) {
            std::snprintf(line, sizeof line, "%.1f±%.1f (%.1f)%s", c.s.mean, c.s.se, c.s.max, c.s.nonfinite > 0 ? "*" : "");
            std::printf(" %20s", line);
          }
      std::printf("\n");
    }
    if (std::any_of(cells.begin(), cells.end(), [&](const study_cell& c) { return c.bn == bn && c.s.nonfinite > 0; }))
      std::printf("* some architectures' forward pass was not finite (count: results.csv, column nonfinite)\n");
    write_svg(dir + "/accuracy_vs_bits" + (bn == "batch" ? std::string() : "_" + bn) + ".svg", cells, rows, bn);
  }
  ghnq::io::write_file_atomic(dir + "/results.md", md);
  std::printf("\nstudy finished in %.1f min -> %s/results.csv, results.md, results.jsonl, accuracy_vs_bits*.svg\n", secs / 60.0,
              dir.c_str());
  return 0;
}

}  // namespace cli
