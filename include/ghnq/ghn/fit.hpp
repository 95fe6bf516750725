/// \file
/// \brief `ghn::fit`: the training loop around a trainer — progress display (loss, accuracy,
/// architectures/s, ETA), a JSON-lines log of every step, periodic atomic checkpoints and
/// periodic evaluation on a fixed set of unseen architectures (accuracy versus steps).
///
/// Log lines (one JSON object per line, appended, so a resumed run continues its log):
///   {"event":"step","step":s,"loss":..,"acc":..,"lr":..,"grad_norm":..,"net_grad_max":..,"nets_clipped":k,"nets_dropped":k,"skipped":b,"seconds":..,"elapsed":..}
///   {"event":"eval","step":s,"group":g,"n":..,"mean":..,"se":..,"max":..,"min":..}
///   {"event":"checkpoint","step":s,"path":..}
/// \code
/// ghnq::ghn::fit_options fo;
/// fo.log_path = "run/train.jsonl";  fo.checkpoint_path = "run/ghn.safetensors";  fo.save_every = 500;
/// ghnq::ghn::fit(trainer, fo);
/// \endcode
#pragma once
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ghnq/ghn/checkpoint.hpp"
#include "ghnq/ghn/evaluate.hpp"
#include "ghnq/ghn/trainer.hpp"
#include "ghnq/io/progress.hpp"

namespace ghnq::ghn {

/// Options of fit().
struct fit_options {
  std::string log_path;          ///< JSON-lines log (appended); empty: none
  std::string checkpoint_path;   ///< resumable checkpoint; empty: none
  std::int64_t save_every = 0;   ///< checkpoint every n steps (0: only at the end)
  bool progress = true;          ///< progress display on stderr
  std::int64_t eval_every = 0;   ///< evaluate every n steps (and at the end) when eval_archs is set
  const std::vector<eval_architecture>* eval_archs = nullptr;
  const data::dataset* eval_data = nullptr;
  eval_options eval;
  std::function<void(const step_result&)> on_step;  ///< called after every step
};

namespace detail {
struct jsonl_log {
  std::FILE* f = nullptr;
  std::string path;
  explicit jsonl_log(const std::string& p) : path(p) {
    if (p.empty()) return;
    f = std::fopen(p.c_str(), "a");
    if (f == nullptr) throw io_error(p, "cannot open the log for appending");
  }
  ~jsonl_log() {
    if (f != nullptr) std::fclose(f);
  }
  jsonl_log(const jsonl_log&) = delete;
  jsonl_log& operator=(const jsonl_log&) = delete;
  void write(const nlohmann::json& j) {
    if (f == nullptr) return;
    const std::string s = j.dump() + "\n";
    if (std::fwrite(s.data(), 1, s.size(), f) != s.size() || std::fflush(f) != 0)
      throw io_error(path, "write to the log failed");
  }
};
}  // namespace detail

/// Run `tr` until tr.options().steps (see the file comment). Returns the results of the steps run.
template <class Config>
std::vector<step_result> fit(trainer<Config>& tr, const fit_options& fo) {
  GHNQ_CHECK(fo.save_every >= 0 && fo.eval_every >= 0, value_error, "fit_options: save_every / eval_every < 0");
  GHNQ_CHECK(fo.eval_archs == nullptr || fo.eval_data != nullptr, value_error,
             "fit_options: eval_archs given without eval_data");
  detail::jsonl_log log(fo.log_path);
  const std::int64_t total = tr.options().steps, first = tr.step_count();
  std::vector<step_result> out;
  std::unique_ptr<io::progress> bar;
  if (fo.progress)
    bar = std::make_unique<io::progress>("train", total, "arch", static_cast<double>(tr.options().meta_batch));
  const auto t0 = std::chrono::steady_clock::now();
  double loss = 0.0, acc = 0.0;
  auto evaluate_now = [&]() {
    if (fo.eval_archs == nullptr) return;
    const auto rows = evaluate(tr.ghn(), *fo.eval_archs, *fo.eval_data, fo.eval);
    for (const auto& g : groups_of(rows)) {
      const auto s = summarize(rows, g);
      log.write({{"event", "eval"}, {"step", tr.step_count()}, {"group", g}, {"n", s.n}, {"mean", s.mean},
                 {"se", s.se}, {"max", s.max}, {"min", s.min}});
    }
  };
  auto checkpoint_now = [&]() {
    if (fo.checkpoint_path.empty()) return;
    save_checkpoint(fo.checkpoint_path, tr.ghn(), &tr);
    log.write({{"event", "checkpoint"}, {"step", tr.step_count()}, {"path", fo.checkpoint_path}});
  };
  while (tr.step_count() < total) {
    const auto r = tr.step();
    out.push_back(r);
    const bool start = out.size() == 1;
    if (!r.skipped) {
      loss = start ? r.loss : 0.95 * loss + 0.05 * r.loss;
      acc = start ? r.accuracy : 0.95 * acc + 0.05 * r.accuracy;
    }
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    log.write({{"event", "step"}, {"step", r.step}, {"loss", r.loss}, {"acc", r.accuracy}, {"lr", r.lr},
               {"grad_norm", r.grad_norm}, {"net_grad_max", r.net_grad_max}, {"nets_clipped", r.nets_clipped},
               {"nets_dropped", r.nets_dropped},
               {"skipped", r.skipped}, {"seconds", r.seconds}, {"elapsed", elapsed}});
    if (bar) {
      char extra[96];
      std::snprintf(extra, sizeof extra, "loss %.3f acc %.1f%%", loss, 100.0 * acc);
      bar->update(r.step + 1 - first, extra);
    }
    if (fo.on_step) fo.on_step(r);
    const std::int64_t done = tr.step_count();
    if (fo.save_every > 0 && done % fo.save_every == 0 && done < total) checkpoint_now();
    if (fo.eval_every > 0 && done % fo.eval_every == 0 && done < total) evaluate_now();
  }
  if (bar) bar->finish();
  checkpoint_now();
  if (fo.eval_every > 0) evaluate_now();
  return out;
}

}  // namespace ghnq::ghn
