/// \file
/// \brief Quantization-aware fine-tuning of one network from given initial parameters (a GHN's
/// prediction or the standard random initialization): `finetune(net, init, factors, train, test,
/// options)` trains the parameters, and the learned quantizer log-factors, with fake quantization
/// in the loop and returns a test-accuracy-versus-steps curve.
///
/// Contract:
///  - `init` holds one tensor per entry of `arch::parameters(net)`, in that order (what
///    hypernet::predict returns and executor::init_parameters creates). Shapes are checked.
///  - The forward pass is the executor's (exec/executor.hpp) with `run_options.quant =
///    &options.quant`: conv / linear weights and inputs are fake-quantized by
///    plan_quantization(net, quant); gradients pass straight through (clipped STE) or, for LSQ /
///    PACT, into the learned step / clip.
///  - Learned quantizer factors: with `quant.wq == lsq` every quantized op gets a weight
///    log-factor f_w, with `quant.aq == lsq | pact` every quantized input gets f_a (step or clip =
///    exp(f) x statistic, exec/quantize.hpp). Their initial values come from `init_factors` (e.g.
///    hypernet::predict_quant) where defined, else 0 (factor 1: the LSQ / max initialization).
///    They are trainable leaves updated by Adam (scale-free in log space) with `factor_lr` on
///    the same warm-up + cosine shape; `learn_factors = false` keeps them fixed. Uniform,
///    binary and ternary quantizers have nothing to learn.
///  - Training step s = 1..steps: batch s of a shuffled loader (seed `seed`, full batches), BN in
///    training mode (batch statistics) updating the running statistics with `bn_momentum`,
///    dropout on (seeded per step), cross-entropy, global-norm clipping of the network gradients
///    when `grad_clip > 0`, then SGD (momentum, L2 weight decay) or Adam on the network
///    parameters with lr = warmup_cosine_lr(lr, warmup, steps, min_lr).lr_at(s - 1). A step with
///    a non-finite loss or gradient norm is skipped (no update; counted in `skipped`).
///  - Evaluation (step 0, every `eval_every` steps and the last step) on the first `test_limit`
///    test images in batches of `eval_batch`, no shuffling:
///      top1       BN with the running statistics (the deployable network). Before step 0 they
///                 are calibrated as the cumulative average over `calib_batches` quantized
///                 training batches of a separate loader (0: PyTorch's init, mean 0 / var 1);
///                 training then updates them by the exponential moving average.
///      top1_batch BN with each test batch's statistics (GHN-2's protocol): at step 0 this is
///                 exactly ghn::evaluate's top-1 of the same parameters and quantization.
///    `eval` selects which are computed (the other stays NaN).
///  - Determinism: the data order, the dropout / noise seeds and the calibration batches depend
///    only on `seed`; every kernel reduces in a fixed order, so two runs give identical curves
///    (and the thread count does not change them). `ms` is wall time and varies.
/// \code
/// ghnq::train::finetune_options o;
/// o.quant = ghnq::exec::parse_quant_name("W4A4", {});
/// o.steps = 200;  o.eval_every = 20;  o.norm = ghnq::data::fashion_mnist_normalization();
/// auto init = ghnq::train::predict_init(ghn, net, o.quant);          // or random_init<float>(net, 1)
/// auto r = ghnq::train::finetune(net, init.params, &init.factors, train, test, o);
/// for (const auto& p : r.curve) std::printf("%lld %.2f\n", (long long)p.step, p.top1);
/// \endcode
#pragma once
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "ghnq/arch/network.hpp"
#include "ghnq/arch/params.hpp"
#include "ghnq/autograd/tape.hpp"
#include "ghnq/autograd/variable.hpp"
#include "ghnq/core/error.hpp"
#include "ghnq/core/rng.hpp"
#include "ghnq/data/dataset.hpp"
#include "ghnq/data/loader.hpp"
#include "ghnq/exec/executor.hpp"
#include "ghnq/exec/quant_plan.hpp"
#include "ghnq/exec/quantize.hpp"
#include "ghnq/graph/batch.hpp"
#include "ghnq/nn/loss.hpp"
#include "ghnq/train/clip.hpp"
#include "ghnq/train/optimizer.hpp"
#include "ghnq/train/schedule.hpp"

namespace ghnq::train {

/// Optimizer of the network parameters during fine-tuning.
enum class finetune_optimizer : std::uint8_t {
  sgd,   ///< SGD with momentum (torch.optim.SGD), L2 weight decay
  adam,  ///< Adam (torch.optim.Adam), L2 weight decay
};
inline const char* to_string(finetune_optimizer o) { return o == finetune_optimizer::sgd ? "sgd" : "adam"; }
/// Parse "sgd" | "adam" (value_error otherwise).
inline finetune_optimizer parse_finetune_optimizer(const std::string& s) {
  if (s == "sgd") return finetune_optimizer::sgd;
  if (s == "adam") return finetune_optimizer::adam;
  throw value_error("unknown fine-tuning optimizer '" + s + "' (sgd, adam)");
}

/// Which BatchNorm modes the test evaluations use (see the file comment).
enum class finetune_eval : std::uint8_t {
  running,  ///< running statistics only (top1)
  batch,    ///< test-batch statistics only (top1_batch)
  both,     ///< both
};

/// Options of finetune(). Defaults: SGD momentum 0.9, lr 0.01 cosine to 0 without warm-up,
/// weight decay 5e-4, batch 64, gradient clipping at norm 5, log-factors by Adam at 1e-2.
struct finetune_options {
  exec::quant_config quant;          ///< fake quantization in the loop (default float)
  std::int64_t steps = 200;          ///< optimizer steps (>= 0; 0 only evaluates the initial network)
  std::int64_t batch_size = 64;      ///< training images per step (full batches only)
  finetune_optimizer optimizer = finetune_optimizer::sgd;
  double lr = 0.01;                  ///< peak learning rate of the network parameters
  double min_lr = 0.0;               ///< end of the cosine
  std::int64_t warmup = 0;           ///< linear warm-up steps (< steps)
  double momentum = 0.9;             ///< SGD momentum (Adam: beta1 stays 0.9)
  bool nesterov = false;             ///< SGD Nesterov momentum
  double weight_decay = 5e-4;        ///< L2 weight decay of the network parameters (not of the factors)
  double grad_clip = 5.0;            ///< global L2 norm of the network gradients; 0 disables
  bool learn_factors = true;         ///< train the LSQ / PACT log-factors
  double factor_lr = 1e-2;           ///< Adam learning rate of the log-factors (same schedule shape)
  double bn_momentum = 0.1;          ///< running = (1 - m) running + m batch, during training
  int calib_batches = 8;             ///< running statistics before step 0 (see the file comment)
  bool dropout = true;               ///< dropout ops active during training
  std::int64_t eval_every = 50;      ///< steps between evaluations (>= 1)
  std::int64_t test_limit = 0;       ///< evaluate on the first n test images (0: all)
  std::int64_t eval_batch = 64;      ///< test batch (GHN-2's protocol uses 64)
  finetune_eval eval = finetune_eval::both;
  data::normalization norm;          ///< image normalization (training and test)
  data::augmentation aug;            ///< training augmentation (off by default)
  std::uint64_t seed = 1;            ///< data order, dropout, calibration batches, noise
};

/// One point of the accuracy-versus-steps curve.
struct curve_point {
  std::int64_t step = 0;  ///< optimizer steps taken
  double loss = std::numeric_limits<double>::quiet_NaN();  ///< mean training cross-entropy since the
                          ///< previous point (step 0: the initial network on the first training batch)
  double top1 = std::numeric_limits<double>::quiet_NaN();        ///< test top-1 %, BN running statistics
  double top1_batch = std::numeric_limits<double>::quiet_NaN();  ///< test top-1 %, BN test-batch statistics
  double test_loss = std::numeric_limits<double>::quiet_NaN();   ///< test cross-entropy (running; batch
                                                                 ///< statistics when only those are evaluated)
  double lr = 0.0;        ///< learning rate of the last step (0 at step 0)
  double ms = 0.0;        ///< cumulative wall time of the training steps (evaluations excluded)
};

/// What finetune() returns.
/// \tparam T scalar type. \tparam B backend.
template <class T, class B>
struct finetune_result {
  std::vector<curve_point> curve;
  std::vector<autograd::var<T, B>> params;          ///< fine-tuned parameters (arch::parameters order)
  exec::quant_factors<T, B> factors;                ///< learned log-factors (undefined where none is used)
  std::vector<nn::batch_norm_state<T, B>> bn;       ///< running statistics, one per batch-norm op
  std::int64_t skipped = 0;                         ///< steps skipped for a non-finite loss / gradient
  double train_ms = 0.0, eval_ms = 0.0;             ///< wall time of training steps / of evaluations
};

/// Initial parameters (and predicted quantizer log-factors) of a network.
template <class T, class B>
struct initial_state {
  std::vector<tensor<T, B>> params;   ///< arch::parameters order
  exec::quant_factors<T, B> factors;  ///< empty: none predicted (factor 1)
};

/// The standard from-scratch initialization of `net`, exactly executor::init_parameters with
/// rng(seed) (He-normal conv / linear weights, PyTorch-default biases, BN weight 1 and bias 0).
/// \code auto init = ghnq::train::random_init<float>(net, 1); \endcode
template <class T = float, class B = backend::cpu_t>
std::vector<tensor<T, B>> random_init(const arch::network& net, std::uint64_t seed) {
  exec::executor<B, T> ex(net);
  rng g(seed);
  std::vector<tensor<T, B>> out;
  for (auto& v : ex.init_parameters(g)) out.push_back(v.value());
  return out;
}

/// The parameters and quantizer log-factors `ghn` (a hypernet) predicts for `net` quantized by
/// `quant` (the plan's bit-widths enter a quantization-aware GHN's node embeddings, as in
/// ghn::evaluate), computed without a gradient tape and copied out.
/// \code auto init = ghnq::train::predict_init(ghn, net, q); \endcode
template <class Ghn>
initial_state<typename Ghn::T, typename Ghn::B> predict_init(const Ghn& ghn, const arch::network& net,
                                                             const exec::quant_config& quant) {
  using T = typename Ghn::T;
  using B = typename Ghn::B;
  autograd::tape<T, B> tp;
  autograd::no_grad<autograd::tape<T, B>> ng(tp);
  graph::graph_batch gb;
  gb.add(Ghn::graph_of(net));
  std::vector<std::vector<exec::op_quant>> plans;
  if (quant.enabled()) plans.push_back(exec::plan_quantization(net, quant));
  auto pred = ghn.predict_quant(tp, {&net}, gb, quant.enabled() ? &plans : nullptr);
  initial_state<T, B> out;
  for (auto& p : pred.params[0]) out.params.push_back(p.value().clone());
  auto copy = [](const std::vector<autograd::var<T, B>>& in, std::vector<autograd::var<T, B>>& dst) {
    dst.clear();
    for (const auto& f : in) dst.push_back(f.defined() ? autograd::var<T, B>(f.value().clone()) : autograd::var<T, B>());
  };
  copy(pred.factors[0].weight, out.factors.weight);
  copy(pred.factors[0].input, out.factors.input);
  return out;
}

namespace detail {

/// Validate finetune_options (value_error naming the field).
inline void check_finetune_options(const finetune_options& o) {
  auto finite_nonneg = [](double v, const char* what) {
    GHNQ_CHECK(std::isfinite(v) && v >= 0.0, value_error, "finetune_options.", what, " = ", v,
               " must be finite and >= 0");
  };
  GHNQ_CHECK(o.steps >= 0, value_error, "finetune_options.steps = ", o.steps, " < 0");
  GHNQ_CHECK(o.batch_size >= 2, value_error, "finetune_options.batch_size = ", o.batch_size,
             " must be >= 2 (BatchNorm trains with batch statistics)");
  finite_nonneg(o.lr, "lr");
  finite_nonneg(o.min_lr, "min_lr");
  GHNQ_CHECK(o.min_lr <= o.lr, value_error, "finetune_options.min_lr = ", o.min_lr, " exceeds lr = ", o.lr);
  GHNQ_CHECK(o.warmup >= 0 && (o.steps == 0 || o.warmup < o.steps), value_error, "finetune_options.warmup = ",
             o.warmup, " must be in [0, steps = ", o.steps, ")");
  GHNQ_CHECK(std::isfinite(o.momentum) && o.momentum >= 0.0 && o.momentum < 1.0, value_error,
             "finetune_options.momentum = ", o.momentum, " must be in [0, 1)");
  GHNQ_CHECK(!o.nesterov || (o.optimizer == finetune_optimizer::sgd && o.momentum > 0.0), value_error,
             "finetune_options.nesterov needs the sgd optimizer and momentum > 0");
  finite_nonneg(o.weight_decay, "weight_decay");
  finite_nonneg(o.grad_clip, "grad_clip");
  finite_nonneg(o.factor_lr, "factor_lr");
  GHNQ_CHECK(std::isfinite(o.bn_momentum) && o.bn_momentum >= 0.0 && o.bn_momentum <= 1.0, value_error,
             "finetune_options.bn_momentum = ", o.bn_momentum, " must be in [0, 1]");
  GHNQ_CHECK(o.calib_batches >= 0, value_error, "finetune_options.calib_batches = ", o.calib_batches, " < 0");
  GHNQ_CHECK(o.eval_every >= 1, value_error, "finetune_options.eval_every = ", o.eval_every, " < 1");
  GHNQ_CHECK(o.test_limit >= 0, value_error, "finetune_options.test_limit = ", o.test_limit, " < 0");
  GHNQ_CHECK(o.eval_batch >= 1, value_error, "finetune_options.eval_batch = ", o.eval_batch, " < 1");
  for (const auto& [what, b] : {std::pair<const char*, int>{"w_bits", o.quant.w_bits}, {"a_bits", o.quant.a_bits},
                                 {"first_last_bits", o.quant.first_last_bits}})
    GHNQ_CHECK(b >= 0 && b <= 32, value_error, "finetune_options.quant.", what, " = ", b,
               " must be in [0, 32] (0 or 32: float)");
}

/// A dataset fits a network: non-empty, [N, C, H, W] of the network's input, labels < classes.
inline void check_dataset(const data::dataset& d, const arch::network& net, const char* which) {
  GHNQ_CHECK(d.size() > 0, value_error, "finetune: ", which, " set '", d.name, "' is empty");
  GHNQ_CHECK(d.images.rank() == 4 && d.channels() == net.in_channels && d.height() == net.in_h &&
                 d.width() == net.in_w,
             shape_error, "finetune: ", which, " set '", d.name, "' has images ", d.images.shape(),
             " but the network takes [N, ", net.in_channels, ", ", net.in_h, ", ", net.in_w, "]");
  GHNQ_CHECK(d.num_classes <= net.num_classes, value_error, "finetune: ", which, " set '", d.name, "' has ",
             d.num_classes, " classes but the network predicts ", net.num_classes);
}

/// Images of a batch as a var of scalar type T on backend B (a copy).
template <class T, class B>
autograd::var<T, B> images_var(const tensor<float>& x) {
  if constexpr (std::is_same_v<T, float> && std::is_same_v<B, backend::cpu_t>) {
    return autograd::var<T, B>(x.clone());
  } else {
    auto v = x.to_vector();
    std::vector<T> c(v.begin(), v.end());
    return autograd::var<T, B>(to_backend<B>(tensor<T>::from(x.shape(), c)));
  }
}

/// Loss value of a one-element var as double.
template <class T, class B>
double scalar_of(const autograd::var<T, B>& v) {
  return static_cast<double>(to_backend<backend::cpu_t>(v.value()).to_vector()[0]);
}

}  // namespace detail

/// Fine-tune `net` from `init` with quantization in the loop (see the file comment). `init_factors`
/// (optional; entries may be undefined, vectors may be empty) gives initial log-factors per op:
/// weight factors [1] or [out_channels], input factors [1]. `on_point` (optional) is called with
/// every curve point as soon as it is measured. Throws value_error / shape_error for invalid
/// options, parameters, factors or datasets.
/// \tparam T scalar type. \tparam B backend.
template <class T, class B>
finetune_result<T, B> finetune(const arch::network& net, const std::vector<tensor<T, B>>& init,
                               const exec::quant_factors<T, B>* init_factors, const data::dataset& train,
                               const data::dataset& test, const finetune_options& opt,
                               const std::function<void(const curve_point&)>& on_point = {}) {
  using var_t = autograd::var<T, B>;
  using tape_t = autograd::tape<T, B>;
  using clock = std::chrono::steady_clock;
  auto ms_since = [](clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(clock::now() - t0).count();
  };
  detail::check_finetune_options(opt);
  exec::executor<B, T> ex(net);
  const auto& infos = ex.params();
  const std::string who = "finetune" + (net.name.empty() ? std::string() : " (" + net.name + ")");
  GHNQ_CHECK(init.size() == infos.size(), shape_error, who, ": ", init.size(), " initial tensors given, the network has ",
             infos.size(), " parameters");
  finetune_result<T, B> res;
  for (std::size_t i = 0; i < init.size(); ++i) {
    GHNQ_CHECK(init[i].defined() && init[i].shape() == infos[i].shape, shape_error, who, ": initial tensor ", i, " (",
               infos[i].name, ") has shape ", init[i].defined() ? init[i].shape() : ghnq::shape{}, ", expected ",
               infos[i].shape);
    res.params.push_back(autograd::parameter(init[i].clone().contiguous(), infos[i].name));
  }
  detail::check_dataset(train, net, "training");
  detail::check_dataset(test, net, "test");
  GHNQ_CHECK(opt.steps == 0 || train.size() >= opt.batch_size, value_error, who, ": the training set has ",
             train.size(), " images, fewer than one batch of ", opt.batch_size);

  // Quantizer log-factors: trainable leaves where the quantizers use them.
  const std::size_t n_ops = net.ops.size();
  const auto plan = exec::plan_quantization(net, opt.quant);  // validates per-op overrides
  const bool quantized = opt.quant.enabled();
  std::vector<var_t> factor_leaves;
  res.factors.weight.assign(n_ops, var_t());
  res.factors.input.assign(n_ops, var_t());
  if (init_factors != nullptr) {
    GHNQ_CHECK((init_factors->weight.empty() || init_factors->weight.size() == n_ops) &&
                   (init_factors->input.empty() || init_factors->input.size() == n_ops),
               shape_error, who, ": initial quant factors must hold one entry per op (", n_ops, ") or none, got ",
               init_factors->weight.size(), " weight and ", init_factors->input.size(), " input entries");
  }
  if (quantized) {
    const bool w_learned = opt.quant.wq == exec::weight_quantizer::lsq;
    const bool a_learned = opt.quant.aq == exec::act_quantizer::lsq || opt.quant.aq == exec::act_quantizer::pact;
    auto given = [&](bool weight, std::size_t i) -> var_t {
      if (init_factors == nullptr) return var_t();
      const auto& v = weight ? init_factors->weight : init_factors->input;
      return v.empty() ? var_t() : v[i];
    };
    for (std::size_t i = 0; i < n_ops; ++i) {
      for (const bool weight : {true, false}) {
        const int bits = weight ? plan[i].w_bits : plan[i].a_bits;
        if (bits == 0 || !(weight ? w_learned : a_learned)) continue;
        const var_t g0 = given(weight, i);
        tensor<T, B> v;
        if (g0.defined()) {
          const std::int64_t n = g0.value().numel(), oc = net.ops[i].out_channels;
          GHNQ_CHECK(g0.value().rank() == 1 && (n == 1 || (weight && n == oc)), shape_error, who, ": initial ",
                     weight ? "weight" : "input", " factor of op ", i, " (", net.ops[i].name, ") has shape ",
                     g0.shape(), ", expected [1]", weight ? " or [out_channels]" : "");
          v = g0.value().clone().contiguous();
        } else {
          v = tensor<T, B>::zeros({1});
        }
        const std::string name = net.ops[i].name + (weight ? ".quant_w" : ".quant_a");
        var_t leaf(std::move(v), opt.learn_factors, name);
        (weight ? res.factors.weight : res.factors.input)[i] = leaf;
        if (opt.learn_factors) factor_leaves.push_back(leaf);
      }
    }
  }
  const exec::quant_factors<T, B>* qf = quantized ? &res.factors : nullptr;

  // Test batches (as ghn::evaluate builds them).
  const data::dataset test_ds = test.head(opt.test_limit);
  std::vector<var_t> test_x;
  std::vector<std::vector<std::int32_t>> test_y;
  {
    data::loader_options lo;
    lo.batch_size = opt.eval_batch;
    lo.shuffle = false;
    lo.norm = opt.norm;
    data::loader ld(test_ds, lo);
    data::batch b;
    while (ld.next(b)) {
      test_x.push_back(detail::images_var<T, B>(b.images));
      test_y.push_back(b.labels);
    }
  }
  const bool eval_running = opt.eval != finetune_eval::batch;
  const bool eval_batch = opt.eval != finetune_eval::running;

  tape_t tp;
  auto evaluate = [&](curve_point& pt) {
    const auto t0 = clock::now();
    autograd::no_grad<tape_t> ng(tp);
    for (const bool running : {true, false}) {
      if (running ? !eval_running : !eval_batch) continue;
      exec::run_options ro;
      ro.bn = running ? exec::bn_mode::running_stats : exec::bn_mode::batch_stats;
      ro.quant = quantized ? &opt.quant : nullptr;
      std::int64_t correct = 0, n = 0;
      double loss = 0.0;
      for (std::size_t k = 0; k < test_x.size(); ++k) {
        const auto logits = ex.forward(tp, test_x[k], res.params, ro, qf);
        const auto nb = static_cast<std::int64_t>(test_y[k].size());
        loss += detail::scalar_of(nn::cross_entropy(tp, logits, test_y[k])) * static_cast<double>(nb);
        correct += nn::count_correct(to_backend<backend::cpu_t>(logits.value()), test_y[k]);
        n += nb;
      }
      const double top1 = 100.0 * static_cast<double>(correct) / static_cast<double>(n);
      (running ? pt.top1 : pt.top1_batch) = top1;
      if (running || !eval_running) pt.test_loss = loss / static_cast<double>(n);
    }
    res.eval_ms += ms_since(t0);
  };

  // Running statistics of the initial network: cumulative average over calibration batches.
  ex.reset_running_stats();
  if (eval_running && opt.calib_batches > 0 && train.size() >= opt.batch_size) {
    const auto t0 = clock::now();
    data::loader_options co;
    co.batch_size = opt.batch_size;
    co.drop_last = true;
    co.seed = data::detail::derive_seed(opt.seed, 0xca1bULL, 0);
    co.norm = opt.norm;
    data::loader cl(train, co);
    data::batch cb;
    autograd::no_grad<tape_t> ng(tp);
    for (int k = 0; k < opt.calib_batches; ++k) {
      if (!cl.next(cb)) {
        cl.start_epoch(cl.epoch() + 1);
        cl.next(cb);
      }
      exec::run_options ro;
      ro.bn = exec::bn_mode::batch_stats;
      ro.update_running_stats = true;
      ro.bn_momentum = 1.0 / static_cast<double>(k + 1);
      ro.quant = quantized ? &opt.quant : nullptr;
      ex.forward(tp, detail::images_var<T, B>(cb.images), res.params, ro, qf);
    }
    res.eval_ms += ms_since(t0);
  }

  // Training data: full batches of a loader seeded by opt.seed, epoch after epoch.
  data::loader_options lo;
  lo.batch_size = opt.batch_size;
  lo.drop_last = true;
  lo.seed = opt.seed;
  lo.norm = opt.norm;
  lo.aug = opt.aug;
  data::loader ld(train, lo);
  data::batch b;
  bool pending = false;  // b holds the next step's batch already
  auto next_batch = [&]() {
    if (pending) {
      pending = false;
      return;
    }
    if (!ld.next(b)) {
      ld.start_epoch(ld.epoch() + 1);
      ld.next(b);
    }
  };

  curve_point p0;
  if (opt.steps > 0) {  // step-0 training loss: the initial network on the first batch
    next_batch();
    pending = true;
    autograd::no_grad<tape_t> ng(tp);
    exec::run_options ro;
    ro.quant = quantized ? &opt.quant : nullptr;
    p0.loss = detail::scalar_of(
        nn::cross_entropy(tp, ex.forward(tp, detail::images_var<T, B>(b.images), res.params, ro, qf), b.labels));
  }
  evaluate(p0);
  res.curve.push_back(p0);
  if (on_point) on_point(p0);
  if (opt.steps == 0) {
    res.bn = ex.bn_states();
    return res;
  }

  // Optimizers and schedules.
  std::unique_ptr<sgd<T, B>> opt_sgd;
  std::unique_ptr<adam<T, B>> opt_adam, opt_factors;
  if (opt.optimizer == finetune_optimizer::sgd) {
    sgd_options so;
    so.lr = opt.lr;
    so.momentum = opt.momentum;
    so.nesterov = opt.nesterov;
    so.weight_decay = opt.weight_decay;
    opt_sgd = std::make_unique<sgd<T, B>>(res.params, so);
  } else {
    adam_options ao;
    ao.lr = opt.lr;
    ao.beta1 = opt.momentum;
    ao.weight_decay = opt.weight_decay;
    opt_adam = std::make_unique<adam<T, B>>(res.params, ao);
  }
  if (!factor_leaves.empty()) {
    adam_options ao;
    ao.lr = opt.factor_lr;
    opt_factors = std::make_unique<adam<T, B>>(factor_leaves, ao);
  }
  const warmup_cosine_lr sched(opt.lr, opt.warmup, opt.steps, opt.min_lr);
  const warmup_cosine_lr fsched(opt.factor_lr, opt.warmup, opt.steps, opt.min_lr * (opt.lr > 0 ? opt.factor_lr / opt.lr : 0.0));

  double loss_sum = 0.0;
  std::int64_t loss_n = 0;
  for (std::int64_t s = 1; s <= opt.steps; ++s) {
    const auto t0 = clock::now();
    next_batch();
    const double lr = sched.lr_at(s - 1);
    if (opt_sgd) opt_sgd->set_lr(lr);
    else opt_adam->set_lr(lr);
    if (opt_factors) opt_factors->set_lr(fsched.lr_at(s - 1));
    exec::run_options ro;
    ro.bn = exec::bn_mode::batch_stats;
    ro.update_running_stats = true;
    ro.bn_momentum = opt.bn_momentum;
    ro.dropout = opt.dropout;
    ro.dropout_seed = data::detail::derive_seed(opt.seed, 0xd50ULL, static_cast<std::uint64_t>(s));
    ro.quant = quantized ? &opt.quant : nullptr;
    ro.noise_seed = data::detail::derive_seed(opt.seed, 0x401ceULL, static_cast<std::uint64_t>(s));
    const auto loss = nn::cross_entropy(tp, ex.forward(tp, detail::images_var<T, B>(b.images), res.params, ro, qf),
                                        b.labels);
    const double l = detail::scalar_of(loss);
    for (const auto& p : res.params) p.reset_grad();
    for (const auto& f : factor_leaves) f.reset_grad();
    bool ok = std::isfinite(l);
    if (ok) {
      tp.backward(loss);
      const double norm = opt.grad_clip > 0 ? clip_grad_norm(res.params, opt.grad_clip) : grad_norm(res.params);
      ok = std::isfinite(norm) && std::isfinite(grad_norm(factor_leaves));
    } else {
      tp.clear();
    }
    if (ok) {
      if (opt_sgd) opt_sgd->step();
      else opt_adam->step();
      if (opt_factors) opt_factors->step();
      loss_sum += l;
      ++loss_n;
    } else {
      ++res.skipped;
    }
    res.train_ms += ms_since(t0);
    if (s % opt.eval_every == 0 || s == opt.steps) {
      curve_point pt;
      pt.step = s;
      pt.loss = loss_n > 0 ? loss_sum / static_cast<double>(loss_n) : std::numeric_limits<double>::quiet_NaN();
      pt.lr = lr;
      pt.ms = res.train_ms;
      loss_sum = 0.0;
      loss_n = 0;
      evaluate(pt);
      res.curve.push_back(pt);
      if (on_point) on_point(pt);
    }
  }
  for (const auto& p : res.params) p.reset_grad();
  for (const auto& f : factor_leaves) f.reset_grad();
  res.bn = ex.bn_states();
  return res;
}

}  // namespace ghnq::train
