/// \file
/// \brief GHN training (spec §6.1): each step predicts the parameters of a meta-batch of m
/// architectures from the sampler's train split, runs all m networks on the same image batch,
/// and updates the GHN on the mean cross-entropy (Adam / AdamW, global gradient clipping, a
/// learning-rate schedule).
///
/// Contract:
///  - Every random stream of step t is derived from (seed, t): the architectures (a sampler
///    seeded with mix(seed, t), then the §7.4 width rule), the image batch (batch t mod n of
///    epoch t / n, n = batches per epoch, order from (seed, epoch)) and the dropout masks. A
///    run resumed at step t from a checkpoint therefore takes exactly the step an uninterrupted
///    run takes (the optimizer state travels with the checkpoint, see ghn/checkpoint.hpp).
///  - The m networks run forward + backward as parallel tasks, each on its own tape; their
///    gradients land in the predicted tensors, are scaled by 1/m (the mean over networks) and
///    flow through the GHN's tape into its parameters. With `net_grad_clip` > 0, a network whose
///    gradient at its predicted tensors (and log-factors) has a larger L2 norm is scaled to that
///    norm first, and one whose norm is not finite is left out.
///  - A step whose loss or gradient norm is not finite, or whose networks were all left out, is
///    skipped (no update, counted in `skipped()`), as the reference skips NaN batches; the step
///    counter still advances.
/// \code
/// ghnq::rng g(1111);
/// ghnq::hypernet<ghnq::ghn2_config<>> ghn(g);
/// ghnq::ghn::train_options opt;   opt.steps = 1000;
/// ghnq::ghn::trainer<ghnq::ghn2_config<>> tr(ghn, train_set, opt);
/// while (tr.step_count() < opt.steps) auto r = tr.step();
/// \endcode
#pragma once
#include <chrono>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "ghnq/arch/deepnets.hpp"
#include "ghnq/arch/sampler.hpp"
#include "ghnq/data/dataset.hpp"
#include "ghnq/data/loader.hpp"
#include "ghnq/exec/executor.hpp"
#include "ghnq/exec/meta_batch.hpp"
#include "ghnq/exec/quant_plan.hpp"
#include "ghnq/ghn/hypernet.hpp"
#include "ghnq/train/clip.hpp"
#include "ghnq/train/optimizer.hpp"
#include "ghnq/train/schedule.hpp"

namespace ghnq::ghn {

/// Learning-rate schedules a trainer can use.
enum class schedule_kind : std::uint8_t {
  constant,       ///< lr throughout
  multi_step,     ///< lr * gamma^k after each milestone (the reference: 200 and 250 of 300 epochs)
  cosine,         ///< cosine annealing to 0 over `steps`
  warmup_cosine,  ///< linear warm-up over `warmup` steps, then cosine to 0
};
inline const char* to_string(schedule_kind s) {
  switch (s) {
    case schedule_kind::constant: return "constant";
    case schedule_kind::multi_step: return "multistep";
    case schedule_kind::cosine: return "cosine";
    case schedule_kind::warmup_cosine: return "warmup-cosine";
  }
  return "?";
}
/// Parse "constant" | "multistep" | "cosine" | "warmup-cosine" (value_error otherwise).
inline schedule_kind parse_schedule(const std::string& s) {
  if (s == "constant") return schedule_kind::constant;
  if (s == "multistep" || s == "multi-step") return schedule_kind::multi_step;
  if (s == "cosine") return schedule_kind::cosine;
  if (s == "warmup-cosine" || s == "cosine-warmup") return schedule_kind::warmup_cosine;
  throw value_error("unknown schedule '" + s + "' (constant, multistep, cosine, warmup-cosine)");
}

/// How quantization enters GHN training (spec quantization.md, "Training strategies").
enum class strategy : std::uint8_t {
  fp,         ///< float training; quantize only at test time (the GHN-Q baseline)
  qat,        ///< fixed W b / A b fake quantization in the loop (GHN-QAT), `quant` gives b
  qat_mixed,  ///< b drawn per step from `mixed_bits` (W = A = b), given to the GHN per node
  noise,      ///< pseudo-quantization noise instead of rounding, at `quant`'s bit-widths
};
inline const char* to_string(strategy s) {
  switch (s) {
    case strategy::fp: return "fp";
    case strategy::qat: return "qat";
    case strategy::qat_mixed: return "qat-mixed";
    case strategy::noise: return "noise";
  }
  return "?";
}
/// Parse "fp" | "qat" | "qat-mixed" | "noise" (value_error otherwise).
inline strategy parse_strategy(const std::string& s) {
  if (s == "fp") return strategy::fp;
  if (s == "qat") return strategy::qat;
  if (s == "qat-mixed" || s == "mixed") return strategy::qat_mixed;
  if (s == "noise") return strategy::noise;
  throw value_error("unknown strategy '" + s + "' (fp, qat, qat-mixed, noise)");
}

/// Options of GHN training. Defaults follow the GHN-2 recipe (§6.1, §10).
struct train_options {
  std::int64_t steps = 1000;        ///< total optimizer steps (the schedule's horizon)
  int meta_batch = 8;               ///< m architectures per step
  std::int64_t batch_size = 64;     ///< images per step (shared by the m networks)
  bool adamw = false;               ///< AdamW (decoupled decay) instead of Adam (coupled L2)
  double lr = 1e-3;
  double weight_decay = 1e-5;
  double grad_clip = 5.0;           ///< global L2 norm; <= 0 disables clipping
  /// Per-network cap on the L2 norm of the loss gradient reaching one network's predicted tensors
  /// (and quantizer log-factors), applied before the mean over networks; a network whose gradient
  /// is not finite contributes nothing. <= 0 disables it (GHN-2's reference: only `grad_clip`).
  double net_grad_clip = 0.0;
  schedule_kind schedule = schedule_kind::multi_step;
  std::vector<double> milestones = {2.0 / 3.0, 5.0 / 6.0};  ///< fractions of `steps` (200/300, 250/300)
  double gamma = 0.1;
  std::int64_t warmup = 0;          ///< warm-up steps of warmup_cosine
  double label_smoothing = 0.0;
  std::uint64_t seed = 1111;
  arch::sampler_options space;      ///< design space; input size and classes are taken from the dataset
  bool sample_widths = true;        ///< the §7.4 training-time width rule (else C = 32, fc_dim = 256)
  bool parallel = true;             ///< run the m networks as parallel tasks
  data::normalization norm;         ///< image normalization (see data::fashion_mnist_normalization())
  data::augmentation aug;           ///< training augmentation (off by default)
  strategy strat = strategy::fp;    ///< quantization in the loop
  exec::quant_config quant;         ///< bit-widths and quantizers of qat / noise (and qat_mixed's kinds)
  std::vector<int> mixed_bits = {8, 4, 2};  ///< qat_mixed: the bit-widths drawn from
  /// The reference's meta-batch filter: a step's m architectures are redrawn (the sampler's next m)
  /// while their graphs hold more than this many nodes in total; <= 0 disables it.
  int max_nodes_batch = graph::kMaxNodesBatch;
};



/// What one step did.
struct step_result {
  std::int64_t step = 0;       ///< index of this step (0-based)
  double loss = 0.0;           ///< mean cross-entropy over the m networks
  double accuracy = 0.0;       ///< top-1 over the m x batch predictions
  double grad_norm = 0.0;      ///< global GHN gradient norm before clipping
  double lr = 0.0;             ///< learning rate used
  bool skipped = false;        ///< non-finite loss or gradient: no update
  double seconds = 0.0;        ///< wall time of the step
  std::int64_t target_params = 0;  ///< parameters predicted (sum over the m networks)
  int w_bits = 32, a_bits = 32;    ///< global bit-widths of this step (32: float)
  double net_grad_max = 0.0;       ///< largest per-network gradient norm at the predicted tensors
  int nets_clipped = 0;            ///< networks whose gradient net_grad_clip scaled down
  int nets_dropped = 0;            ///< networks left out by net_grad_clip (gradient not finite)
};

/// Derive an independent 64-bit seed for stream `stream` of step `step`.
inline std::uint64_t step_seed(std::uint64_t seed, std::uint64_t stream, std::int64_t step) {
  return data::detail::derive_seed(seed, 0x9e3779b9ULL + stream, static_cast<std::uint64_t>(step));
}

/// The quantization of step `step` under the options' strategy (deterministic in (seed, step)).
inline exec::quant_config quant_at(const train_options& o, std::int64_t step) {
  exec::quant_config q = o.quant;
  switch (o.strat) {
    case strategy::fp: return exec::quant_config{};
    case strategy::qat: q.noise = false; return q;
    case strategy::noise: q.noise = true; return q;
    case strategy::qat_mixed: {
      GHNQ_CHECK(!o.mixed_bits.empty(), value_error, "train_options.mixed_bits is empty");
      rng g(step_seed(o.seed, 3, step));
      const int b = o.mixed_bits[g.below(o.mixed_bits.size())];
      q.w_bits = q.a_bits = b;
      q.noise = false;
      return q;
    }
  }
  return q;
}

/// The m architectures of step `step` (deterministic in (opt.seed, step)), built for an input
/// of `in` channels / size and `classes` classes. Names are "train-<step>-<k>". A draw whose
/// graphs hold more than opt.max_nodes_batch nodes in total is discarded and the next m are drawn
/// (value_error after 1000 draws).
inline std::vector<arch::network> training_architectures(const train_options& opt, std::int64_t step, int channels,
                                                         int height, int width, int classes) {
  arch::sampler_options so = opt.space;
  so.in_channels = channels;
  so.in_h = height;
  so.in_w = width;
  so.num_classes = classes;
  arch::sampler s(so, step_seed(opt.seed, 0, step));
  rng gw(step_seed(opt.seed, 1, step));
  std::vector<arch::network> nets;
  nets.reserve(static_cast<std::size_t>(opt.meta_batch));
  constexpr int kMaxDraws = 1000;
  for (int draw = 0;; ++draw) {
    nets.clear();
    int nodes = 0;
    for (int k = 0; k < opt.meta_batch; ++k) {
      auto a = s.next(arch::split::train);
      if (opt.sample_widths) a = arch::sample_width(a, s.last_num_params(), gw);
      auto net = s.build(a);
      net.name = "train-" + std::to_string(step) + "-" + std::to_string(k);
      if (opt.max_nodes_batch > 0) nodes += graph::build(net, 1).n_nodes();
      nets.push_back(std::move(net));
    }
    if (opt.max_nodes_batch <= 0 || nodes <= opt.max_nodes_batch) break;
    GHNQ_CHECK(draw + 1 < kMaxDraws, value_error, "training_architectures: no draw of ", opt.meta_batch,
               " architectures in ", kMaxDraws, " fits train_options.max_nodes_batch = ", opt.max_nodes_batch, " nodes");
  }
  return nets;
}

namespace detail {
/// Images of a batch as a var of scalar type T (a copy only when T is not float).
template <class T, class B>
autograd::var<T, B> images_as(const tensor<float>& x) {
  if constexpr (std::is_same_v<T, float> && std::is_same_v<B, backend::cpu_t>) {
    return autograd::var<T, B>(x);
  } else {
    auto v = x.to_vector();
    std::vector<T> c(v.begin(), v.end());
    return autograd::var<T, B>(to_backend<B>(tensor<T>::from(x.shape(), c)));
  }
}
}  // namespace detail

/// Trains a hypernet<Config> (held by reference) on a dataset (held by reference).
template <class Config>
class trainer {
 public:
  using ghn_type = hypernet<Config>;
  using B = typename Config::backend;
  using T = typename Config::scalar;
  using var_t = autograd::var<T, B>;
  using optimizer_type = train::optimizer_state<T, B>;

  trainer(ghn_type& ghn, const data::dataset& train_set, train_options opt)
      : ghn_(ghn), data_(train_set), opt_(std::move(opt)), params_(ghn.parameters()),
        loader_(train_set, loader_options_of(opt_, train_set)) {
    GHNQ_CHECK(opt_.steps >= 1, value_error, "train_options.steps = ", opt_.steps, " must be >= 1");
    GHNQ_CHECK(opt_.meta_batch >= 1, value_error, "train_options.meta_batch = ", opt_.meta_batch, " must be >= 1");
    GHNQ_CHECK(opt_.batch_size >= 1 && opt_.batch_size <= train_set.size(), value_error,
               "train_options.batch_size = ", opt_.batch_size, " must be in [1, ", train_set.size(), "] (dataset '",
               train_set.name, "')");
    GHNQ_CHECK(std::isfinite(opt_.lr) && opt_.lr > 0, value_error, "train_options.lr = ", opt_.lr, " must be > 0");
    GHNQ_CHECK(opt_.label_smoothing >= 0 && opt_.label_smoothing < 1, value_error,
               "train_options.label_smoothing = ", opt_.label_smoothing, " must be in [0, 1)");
    GHNQ_CHECK(train_set.num_classes <= Config::kClasses, value_error, "trainer: dataset '", train_set.name,
               "' has ", train_set.num_classes, " classes but the GHN predicts ", Config::kClasses);
    if (opt_.adamw) {
      train::adamw_options a;
      a.lr = opt_.lr;
      a.weight_decay = opt_.weight_decay;
      adamw_ = std::make_unique<train::adamw<T, B>>(params_, a);
    } else {
      train::adam_options a;
      a.lr = opt_.lr;
      a.weight_decay = opt_.weight_decay;
      adam_ = std::make_unique<train::adam<T, B>>(params_, a);
    }
    std::vector<std::int64_t> ms;
    for (double f : opt_.milestones) {
      const auto m = static_cast<std::int64_t>(std::llround(f * static_cast<double>(opt_.steps)));
      if (m >= 1 && (ms.empty() || m > ms.back())) ms.push_back(m);
    }
    milestones_ = std::move(ms);
    lr_at(0);  // validates the schedule options
  }

  const train_options& options() const noexcept { return opt_; }
  ghn_type& ghn() noexcept { return ghn_; }
  /// Steps taken so far (the index of the next step).
  std::int64_t step_count() const noexcept { return step_; }
  /// Steps skipped for a non-finite loss or gradient.
  std::int64_t skipped() const noexcept { return skipped_; }

  /// Learning rate of step t under the configured schedule.
  double lr_at(std::int64_t t) const {
    switch (opt_.schedule) {
      case schedule_kind::constant: return train::constant_lr(opt_.lr).lr_at(t);
      case schedule_kind::multi_step: return train::multi_step_lr(opt_.lr, milestones_, opt_.gamma).lr_at(t);
      case schedule_kind::cosine: return train::cosine_lr(opt_.lr, opt_.steps).lr_at(t);
      case schedule_kind::warmup_cosine:
        return train::warmup_cosine_lr(opt_.lr, opt_.warmup, std::max(opt_.steps, opt_.warmup + 1)).lr_at(t);
    }
    return opt_.lr;
  }

  /// One training step (see the file comment).
  step_result step() {
    const auto t0 = std::chrono::steady_clock::now();
    step_result r;
    r.step = step_;
    r.lr = lr_at(step_);

    // The image batch of this step.
    const std::int64_t per_epoch = loader_.batches_per_epoch();
    loader_.seek(step_ / per_epoch, step_ % per_epoch);
    GHNQ_CHECK(loader_.next(batch_), value_error, "trainer: no batch at step ", step_);
    const auto x = detail::images_as<T, B>(batch_.images);

    // The architectures and their predicted parameters.
    const auto nets = training_architectures(opt_, step_, data_.channels(), data_.height(), data_.width(),
                                             Config::kClasses);
    std::vector<std::unique_ptr<exec::executor<B, T>>> ex;
    std::vector<exec::executor<B, T>*> exp;
    std::vector<const arch::network*> np;
    graph::graph_batch gb;
    for (const auto& n : nets) {
      ex.push_back(std::make_unique<exec::executor<B, T>>(n));
      exp.push_back(ex.back().get());
      np.push_back(&ex.back()->network());
      gb.add(ghn_type::graph_of(n));
      r.target_params += arch::num_params(n);
    }
    zero_grad();
    autograd::tape<T, B> tp;
    const exec::quant_config qc = quant_at(opt_, step_);
    r.w_bits = qc.w_bits;
    r.a_bits = qc.a_bits;
    std::vector<std::vector<exec::op_quant>> plans;
    if (qc.enabled())
      for (const auto& n : nets) plans.push_back(exec::plan_quantization(n, qc));
    auto pred = ghn_.predict_quant(tp, np, gb, qc.enabled() ? &plans : nullptr);
    auto& preds = pred.params;

    exec::run_options ro;
    ro.bn = exec::bn_mode::batch_stats;
    ro.dropout = true;
    ro.dropout_seed = step_seed(opt_.seed, 2, step_);
    if (qc.enabled()) {
      ro.quant = &qc;
      ro.noise_seed = step_seed(opt_.seed, 4, step_);
    }
    const auto res = exec::forward_backward(exp, preds, x, batch_.labels, ro, opt_.label_smoothing, opt_.parallel,
                                            qc.enabled() ? &pred.factors : nullptr);

    double loss = 0.0;
    std::int64_t correct = 0;
    for (const auto& o : res) {
      loss += o.loss;
      correct += o.correct;
    }
    const double m = static_cast<double>(nets.size());
    r.loss = loss / m;
    r.accuracy = static_cast<double>(correct) / (m * static_cast<double>(batch_.size()));
    if (!std::isfinite(r.loss)) {
      tp.clear();
      return finish_skipped(r, t0);
    }
    // Mean over networks: every predicted tensor (and log-factor) belongs to exactly one network
    // and appears once in its lists (hypernet::predict_quant makes one var per network and op).
    auto for_each_grad = [&](std::size_t k, auto&& fn) {
      auto visit = [&](const var_t& p) {
        if (p.defined() && p.requires_grad() && p.has_grad()) fn(p.grad().data(), p.grad().numel());
      };
      for (const auto& p : preds[k]) visit(p);
      if (k < pred.factors.size()) {
        for (const auto& p : pred.factors[k].weight) visit(p);
        for (const auto& p : pred.factors[k].input) visit(p);
      }
    };
    for (std::size_t k = 0; k < preds.size(); ++k) {
      double sq = 0.0;
      for_each_grad(k, [&](const T* d, std::int64_t n) {
        for (std::int64_t i = 0; i < n; ++i) sq += static_cast<double>(d[i]) * static_cast<double>(d[i]);
      });
      const double norm = std::sqrt(sq);
      r.net_grad_max = std::isfinite(norm) ? std::max(r.net_grad_max, norm) : norm;
      double c = 1.0;
      if (opt_.net_grad_clip > 0 && !(norm <= opt_.net_grad_clip)) {
        if (std::isfinite(norm)) {
          c = opt_.net_grad_clip / norm;
          ++r.nets_clipped;
        } else {
          c = 0.0;
          ++r.nets_dropped;
        }
      }
      if (c == 1.0) {
        const T inv_m = T(1.0 / m);
        for_each_grad(k, [inv_m](T* d, std::int64_t n) {
          for (std::int64_t i = 0; i < n; ++i) d[i] *= inv_m;
        });
      } else if (c == 0.0) {
        for_each_grad(k, [](T* d, std::int64_t n) { std::fill(d, d + n, T(0)); });
      } else {  // in double: c / m may be below T's normal range
        const double f = c / m;
        for_each_grad(k, [f](T* d, std::int64_t n) {
          for (std::int64_t i = 0; i < n; ++i) d[i] = static_cast<T>(static_cast<double>(d[i]) * f);
        });
      }
    }
    if (r.nets_dropped == static_cast<int>(preds.size())) {  // no network left: nothing to learn from
      tp.clear();
      return finish_skipped(r, t0);
    }
    tp.backward_accumulated();
    r.grad_norm = opt_.grad_clip > 0 ? train::clip_grad_norm(params_, opt_.grad_clip) : train::grad_norm(params_);
    if (!std::isfinite(r.grad_norm)) return finish_skipped(r, t0);
    if (adam_) {
      adam_->set_lr(r.lr);
      adam_->step();
    } else {
      adamw_->set_lr(r.lr);
      adamw_->step();
    }
    ++step_;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
  }

  /// Optimizer state (for checkpoints) and restoring it together with the step counter.
  train::optimizer_state<T, B> optimizer_state() const { return adam_ ? adam_->state() : adamw_->state(); }
  void restore(std::int64_t step, std::int64_t skipped, const train::optimizer_state<T, B>& st) {
    GHNQ_CHECK(step >= 0 && skipped >= 0 && skipped <= step, value_error, "trainer::restore: step ", step,
               ", skipped ", skipped);
    if (adam_) adam_->load_state(st);
    else adamw_->load_state(st);
    step_ = step;
    skipped_ = skipped;
  }

 private:
  static data::loader_options loader_options_of(const train_options& o, const data::dataset&) {
    data::loader_options lo;
    lo.batch_size = o.batch_size;
    lo.shuffle = true;
    lo.drop_last = true;
    lo.seed = o.seed;
    lo.norm = o.norm;
    lo.aug = o.aug;
    return lo;
  }
  void zero_grad() {
    if (adam_) adam_->zero_grad();
    else adamw_->zero_grad();
  }
  step_result finish_skipped(step_result& r, std::chrono::steady_clock::time_point t0) {
    zero_grad();
    r.skipped = true;
    ++skipped_;
    ++step_;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
  }

  ghn_type& ghn_;
  const data::dataset& data_;
  train_options opt_;
  std::vector<var_t> params_;
  data::loader loader_;
  data::batch batch_;
  std::unique_ptr<train::adam<T, B>> adam_;
  std::unique_ptr<train::adamw<T, B>> adamw_;
  std::vector<std::int64_t> milestones_;
  std::int64_t step_ = 0, skipped_ = 0;
};

}  // namespace ghnq::ghn
