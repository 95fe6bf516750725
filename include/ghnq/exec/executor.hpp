/// \file
/// \brief `exec::executor<Backend, T>`: runs a network IR on a given parameter set, forward and
/// backward (through the autograd tape), with GHN-2's batch-norm protocols.
///
/// Contract:
///  - The parameter set is one `var` per entry of `arch::parameters(net)`, in that order (the
///    order the GHN writes them). Shapes are checked; a mismatch names the parameter.
///  - `forward(tp, x, params, opt)` returns the logits [N, num_classes]. With a recording tape,
///    `tp.backward(loss)` then fills the gradients of every parameter var that requires one, and
///    of `x` if it requires one.
///  - Batch norm modes (`bn_mode`): `batch_stats` normalizes with the statistics of the current
///    batch (GHN-2's protocol, training and evaluation); `running_stats` uses the running
///    statistics kept by the executor; `calibrate(...)` fills them from K batches
///    (cumulative average) so that `running_stats` can be used afterwards (calibrate-then-use).
///  - Ops that do not reach the output are not run (their parameters receive no gradient).
///  - Intermediate values are released as soon as no later op reads them (memory is reused by
///    the caching CPU allocator across steps); the tape keeps what backward needs.
///  - An executor may be used by one thread at a time; independent executors run in parallel.
/// \code
/// ghnq::exec::executor<ghnq::backend::cpu_t> ex(net);
/// auto params = ex.init_parameters(g);
/// auto logits = ex.forward(tp, x, params, {});
/// \endcode
#pragma once
#include "ghnq/exec/plain_ops.hpp"
#include "ghnq/exec/quant_plan.hpp"
#include "ghnq/exec/quantize.hpp"
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "ghnq/arch/network.hpp"
#include "ghnq/arch/params.hpp"
#include "ghnq/arch/shape_inference.hpp"
#include "ghnq/autograd/tape.hpp"
#include "ghnq/core/rng.hpp"
#include "ghnq/nn.hpp"

namespace ghnq::exec {

/// How batch-norm layers normalize.
enum class bn_mode : std::uint8_t {
  batch_stats,    ///< statistics of the current batch (GHN-2 protocol)
  running_stats,  ///< the executor's running statistics (after training or calibrate())
};

/// Options of one forward pass.
struct run_options {
  bn_mode bn = bn_mode::batch_stats;
  bool update_running_stats = false;  ///< with batch_stats: also update the running statistics
  double bn_momentum = 0.1;           ///< running = (1 - m) running + m batch
  bool dropout = false;               ///< apply dropout (training); off = identity (evaluation)
  std::uint64_t dropout_seed = 0;     ///< seed of the dropout masks of this pass
  /// Fake quantization of conv / linear weights and inputs (exec/quant_plan.hpp, exec/quantize.hpp);
  /// null: float. The config must outlive the pass (backward closures do not refer to it).
  const quant_config* quant = nullptr;
  std::uint64_t noise_seed = 0;       ///< seed of the pseudo-quantization noise (quant->noise)
  /// Fold every BatchNorm that is the only reader of a conv into that conv (weights scaled by
  /// gamma / sqrt(running_var + eps), bias (b - running_mean) * that + beta) before the weight is
  /// quantized. Needs bn = running_stats and a tape that does not record (evaluation only).
  bool fold_bn = false;
};

/// \tparam Backend backend tag the tensors live on.
/// \tparam T       scalar type (float; double for gradient checks).
template <class Backend = backend::cpu_t, class T = float>
class executor {
 public:
  using var_t = autograd::var<T, Backend>;
  using tape_t = autograd::tape<T, Backend>;
  using tensor_t = tensor<T, Backend>;

  explicit executor(arch::network net) : net_(std::move(net)) {
    arch::infer_shapes(net_);
    params_ = arch::parameters(net_);
    weight_.assign(net_.ops.size(), -1);
    bias_.assign(net_.ops.size(), -1);
    for (std::size_t i = 0; i < params_.size(); ++i) {
      auto& slot = params_[i].role == arch::param_role::weight ? weight_ : bias_;
      slot[static_cast<std::size_t>(params_[i].op)] = static_cast<int>(i);
    }
    bn_index_.assign(net_.ops.size(), -1);
    for (std::size_t i = 0; i < net_.ops.size(); ++i)
      if (net_.ops[i].type == arch::op_type::batch_norm) {
        bn_index_[i] = static_cast<int>(bn_.size());
        bn_.push_back(nn::batch_norm_state<T, Backend>::init(net_.ops[i].c));
      }
    plan();
  }

  const arch::network& network() const noexcept { return net_; }
  /// Parameter descriptions (name, shape, op, role) in parameter-set order.
  const std::vector<arch::param_info>& params() const noexcept { return params_; }
  /// Running statistics, one per batch-norm op in op order.
  std::vector<nn::batch_norm_state<T, Backend>>& bn_states() noexcept { return bn_; }
  void reset_running_stats() {
    for (auto& s : bn_) s = nn::batch_norm_state<T, Backend>::init(s.running_mean.numel());
  }

  /// A freshly initialized parameter set (He-normal conv/linear weights, PyTorch-default biases,
  /// BN weight 1 and bias 0), every var requiring a gradient.
  std::vector<var_t> init_parameters(rng& g) const {
    static_assert(!Backend::is_device, "init_parameters: initialize on the CPU and copy");
    std::vector<var_t> out;
    out.reserve(params_.size());
    for (const auto& p : params_) {
      const auto& o = net_.ops[static_cast<std::size_t>(p.op)];
      tensor_t t(p.shape);
      if (o.type == arch::op_type::batch_norm) {
        t.fill(p.role == arch::param_role::weight ? T(1) : T(0));
      } else {
        const std::int64_t fan = weight_fan_in(p.op);
        if (p.role == arch::param_role::weight) nn::init::kaiming_normal(t, g, fan);
        else nn::init::uniform_fan_in(t, g, fan);
      }
      out.push_back(autograd::parameter(std::move(t), p.name));
    }
    return out;
  }

  /// Check a parameter set against the network (count and shapes); throws shape_error.
  void check_parameters(const std::vector<var_t>& ps) const {
    GHNQ_CHECK(ps.size() == params_.size(), shape_error, "executor", where(), ": ", ps.size(),
               " parameter tensors given, the network has ", params_.size());
    for (std::size_t i = 0; i < ps.size(); ++i) {
      GHNQ_CHECK(ps[i].defined(), value_error, "executor", where(), ": parameter ", i, " (", params_[i].name,
                 ") is undefined");
      GHNQ_CHECK(ps[i].shape() == params_[i].shape, shape_error, "executor", where(), ": parameter ", i, " (",
                 params_[i].name, ") has shape ", ps[i].shape(), ", expected ", params_[i].shape);
    }
  }

  /// Logits [N, num_classes] of input x [N, in_channels, in_h, in_w].
  /// With opt.quant, conv / linear weights and inputs are fake-quantized by the plan of
  /// plan_quantization(network(), *opt.quant); `qf` (optional) holds predicted log-factors of the
  /// learned steps / clips per op (quant_factors).
  var_t forward(tape_t& tp, const var_t& x, const std::vector<var_t>& ps, const run_options& opt = {},
                const quant_factors<T, Backend>* qf = nullptr) {
    check_parameters(ps);
    pass_ = pass_state{};
    if (opt.quant != nullptr && opt.quant->enabled()) {
      pass_.plan = plan_quantization(net_, *opt.quant);
      pass_.quant = opt.quant;
      pass_.factors = qf;
      pass_.noise = rng(opt.noise_seed);
      if (qf != nullptr)
        GHNQ_CHECK((qf->weight.empty() || qf->weight.size() == net_.ops.size()) &&
                       (qf->input.empty() || qf->input.size() == net_.ops.size()),
                   shape_error, "executor", where(), ": quant_factors must hold one entry per op (", net_.ops.size(),
                   ")");
    }
    if (opt.fold_bn) fold_batch_norms(tp, ps, opt);
    const auto& xs = x.shape();
    GHNQ_CHECK(xs.rank() == 4 && xs[1] == net_.in_channels && xs[2] == net_.in_h && xs[3] == net_.in_w,
               shape_error, "executor", where(), ": input ", xs, " does not match the network's input [N, ",
               net_.in_channels, ", ", net_.in_h, ", ", net_.in_w, "]");
    rng drop(opt.dropout_seed);
    std::vector<var_t> v(net_.ops.size());
    for (std::size_t i = 0; i < net_.ops.size(); ++i) {
      if (!live_[i]) continue;
      const int fused = fused_relu_[i];
      if (!pass_.folded_into.empty() && pass_.folded_into[i] >= 0) {  // BN folded into its conv: identity
        const var_t& in = v[static_cast<std::size_t>(inputs_[i][0])];
        if (fused >= 0) v[static_cast<std::size_t>(fused)] = nn::relu(tp, in);
        else v[i] = in;
      } else if (fused >= 0) v[static_cast<std::size_t>(fused)] = run_batch_norm(tp, i, v, ps, opt, true);
      else if (!produced_early_[i]) v[i] = run_op(tp, i, x, v, ps, opt, drop);
      for (int in : inputs_[i])  // release values nobody reads any more
        if (last_use_[static_cast<std::size_t>(in)] == static_cast<int>(i)) v[static_cast<std::size_t>(in)] = var_t();
    }
    return v[static_cast<std::size_t>(canon_[static_cast<std::size_t>(net_.output)])];
  }

  /// Calibrate-then-use: reset the running statistics and set them to the cumulative average of
  /// the batch statistics over the given batches (no gradients); afterwards evaluate with
  /// bn_mode::running_stats. `quant` (with its predicted `factors`) runs the calibration batches
  /// through the fake-quantized network, so that the statistics are those of the quantized
  /// network's activations; nullptr: in float. Per-channel symmetric weight quantization commutes
  /// with BN folding's per-channel scaling, so statistics taken this way hold for the folded,
  /// quantized network too.
  template <class Batches>
  void calibrate(const std::vector<var_t>& ps, const Batches& batches, const quant_config* quant = nullptr,
                 const quant_factors<T, Backend>* factors = nullptr) {
    reset_running_stats();
    tape_t tp;
    autograd::no_grad<tape_t> ng(tp);
    std::int64_t k = 0;
    for (const auto& xb : batches) {
      run_options o;
      o.bn = bn_mode::batch_stats;
      o.update_running_stats = true;
      o.bn_momentum = 1.0 / static_cast<double>(k + 1);  // cumulative moving average
      if (quant != nullptr && quant->enabled()) o.quant = quant;
      forward(tp, xb, ps, o, factors);
      ++k;
    }
  }

 private:
  std::string where() const { return net_.name.empty() ? std::string() : " (" + net_.name + ")"; }

  std::int64_t weight_fan_in(int op) const {
    const auto& o = net_.ops[static_cast<std::size_t>(op)];
    const auto& in = net_.ops[static_cast<std::size_t>(o.inputs.at(0))];
    if (o.type == arch::op_type::linear) return in.c;
    return static_cast<std::int64_t>(in.c / o.groups) * o.kh * o.kw;
  }

  /// State of the current forward pass: the quantization plan and factors, the noise stream, and
  /// folded conv parameters.
  struct pass_state {
    std::vector<op_quant> plan;
    const quant_config* quant = nullptr;
    const quant_factors<T, Backend>* factors = nullptr;
    rng noise{0};
    std::vector<int> folded_into;         ///< BN op -> the conv it is folded into (-1: none)
    std::vector<var_t> folded_w, folded_b;  ///< per conv op (undefined: not folded)
  };
  pass_state pass_;

  var_t factor_of(const std::vector<var_t>* fs, std::size_t i) const {
    return fs != nullptr && !fs->empty() ? (*fs)[i] : var_t();
  }
  var_t quant_w(tape_t& tp, std::size_t i, const var_t& w) {
    if (pass_.quant == nullptr || pass_.plan[i].w_bits == 0) return w;
    return quantize_weight(tp, w, pass_.plan[i], *pass_.quant,
                           factor_of(pass_.factors ? &pass_.factors->weight : nullptr, i), &pass_.noise);
  }
  var_t quant_in(tape_t& tp, std::size_t i, const var_t& x) {
    if (pass_.quant == nullptr || pass_.plan[i].a_bits == 0) return x;
    return quantize_input(tp, x, pass_.plan[i], *pass_.quant,
                          factor_of(pass_.factors ? &pass_.factors->input : nullptr, i), &pass_.noise);
  }

  /// BN folding for this pass (see run_options::fold_bn).
  void fold_batch_norms(const tape_t& tp, const std::vector<var_t>& ps, const run_options& opt) {
    GHNQ_CHECK(opt.bn == bn_mode::running_stats, value_error, "executor", where(),
               ": fold_bn needs bn = running_stats (run calibrate() first)");
    GHNQ_CHECK(!tp.recording(), value_error, "executor", where(), ": fold_bn is for evaluation (use a no_grad tape)");
    const std::size_t n = net_.ops.size();
    std::vector<int> readers(n, 0);
    for (std::size_t i = 0; i < n; ++i)
      if (live_[i])
        for (int in : inputs_[i]) ++readers[static_cast<std::size_t>(in)];
    pass_.folded_into.assign(n, -1);
    pass_.folded_w.assign(n, var_t());
    pass_.folded_b.assign(n, var_t());
    constexpr double eps = nn::batch_norm_options{}.eps;
    for (std::size_t j = 0; j < n; ++j) {
      if (!live_[j] || net_.ops[j].type != arch::op_type::batch_norm) continue;
      const auto c = static_cast<std::size_t>(inputs_[j][0]);
      if (net_.ops[c].type != arch::op_type::conv || readers[c] != 1) continue;
      const auto& st = bn_[static_cast<std::size_t>(bn_index_[j])];
      const auto w = to_backend<backend::cpu_t>(param(ps, weight_, c).value().contiguous());
      const var_t bv = param(ps, bias_, c), gv = param(ps, weight_, j), betav = param(ps, bias_, j);
      const auto mean = to_backend<backend::cpu_t>(st.running_mean), var = to_backend<backend::cpu_t>(st.running_var);
      const std::int64_t oc = w.dim(0), per = w.numel() / oc;
      auto host = [](const var_t& v, std::int64_t count, double fill) {
        if (!v.defined()) return std::vector<double>(static_cast<std::size_t>(count), fill);
        const auto h = to_backend<backend::cpu_t>(v.value().contiguous()).to_vector();
        return std::vector<double>(h.begin(), h.end());
      };
      const auto g = host(gv, oc, 1.0), b0 = host(bv, oc, 0.0), beta = host(betav, oc, 0.0);
      tensor<T> fw(w.shape()), fb({oc});
      for (std::int64_t k = 0; k < oc; ++k) {
        const auto kk = static_cast<std::size_t>(k);
        const double sc = g[kk] / std::sqrt(static_cast<double>(var.data()[k]) + eps);
        for (std::int64_t e = 0; e < per; ++e) fw.data()[k * per + e] = static_cast<T>(w.data()[k * per + e] * sc);
        fb.data()[k] = static_cast<T>((b0[kk] - static_cast<double>(mean.data()[k])) * sc + beta[kk]);
      }
      pass_.folded_w[c] = var_t(to_backend<Backend>(fw), false);
      pass_.folded_b[c] = var_t(to_backend<Backend>(fb), false);
      pass_.folded_into[j] = static_cast<int>(c);
    }
  }

  var_t param(const std::vector<var_t>& ps, const std::vector<int>& slot, std::size_t i) const {
    const int k = slot[i];
    return k < 0 ? var_t() : ps[static_cast<std::size_t>(k)];
  }

  /// Execution plan (performance only; results equal running every op of the IR as written):
  ///  - a ReLU of a value that an earlier ReLU already rectifies reuses that ReLU's output
  ///    (canon_: the op whose value stands for op i; readers read through it);
  ///  - a batch norm whose only reader is a ReLU is computed together with it (fused_relu_[b] =
  ///    the ReLU, computed at the batch norm's step; produced_early_ marks that ReLU), so the
  ///    normalized value is never stored and the ReLU's backward folds into the batch norm's;
  ///  - ops that cannot reach the output are skipped (e.g. modules fed only by "none" edges);
  ///  - every value is released after its last reader (last_use_).
  void plan() {
    const std::size_t n = net_.ops.size();
    using arch::op_type;
    canon_.resize(n);
    inputs_.assign(n, {});
    std::vector<int> relu_of(n, -1);  // canonical value -> the first ReLU of it
    for (std::size_t i = 0; i < n; ++i) {
      canon_[i] = static_cast<int>(i);
      for (int in : net_.ops[i].inputs) inputs_[i].push_back(canon_[static_cast<std::size_t>(in)]);
      if (net_.ops[i].type == op_type::relu && inputs_[i].size() == 1) {
        int& first = relu_of[static_cast<std::size_t>(inputs_[i][0])];
        if (first >= 0) canon_[i] = first;
        else first = static_cast<int>(i);
      }
    }
    const std::size_t out = static_cast<std::size_t>(canon_[static_cast<std::size_t>(net_.output)]);
    live_.assign(n, false);
    live_[out] = true;
    for (std::size_t i = n; i-- > 0;)
      if (live_[i] && canon_[i] == static_cast<int>(i))
        for (int in : inputs_[i]) live_[static_cast<std::size_t>(in)] = true;
    for (std::size_t i = 0; i < n; ++i)
      if (canon_[i] != static_cast<int>(i)) live_[i] = false;  // stands for an earlier op
    // readers of every value among the ops that run
    std::vector<int> readers(n, 0), reader(n, -1);
    for (std::size_t i = 0; i < n; ++i)
      if (live_[i])
        for (int in : inputs_[i]) {
          ++readers[static_cast<std::size_t>(in)];
          reader[static_cast<std::size_t>(in)] = static_cast<int>(i);
        }
    fused_relu_.assign(n, -1);
    produced_early_.assign(n, false);
    if constexpr (std::is_same_v<Backend, backend::cpu_t>) {
      for (std::size_t b = 0; b < n; ++b) {
        if (!live_[b] || net_.ops[b].type != op_type::batch_norm || b == out || readers[b] != 1) continue;
        const int r = reader[b];
        if (net_.ops[static_cast<std::size_t>(r)].type != op_type::relu) continue;
        fused_relu_[b] = r;
        produced_early_[static_cast<std::size_t>(r)] = true;
      }
    }
    last_use_.assign(n, -1);
    for (std::size_t i = 0; i < n; ++i)
      if (live_[i])
        for (int in : inputs_[i]) last_use_[static_cast<std::size_t>(in)] = static_cast<int>(i);
    last_use_[out] = static_cast<int>(n);
  }

  /// Batch norm of op i (GHN-2's modes, as nn::batch_norm2d), followed by a ReLU when `relu`:
  /// statistics and normalization in one sweep per channel, and one backward for both.
  var_t run_batch_norm(tape_t& tp, std::size_t i, const std::vector<var_t>& v, const std::vector<var_t>& ps,
                       const run_options& opt, bool relu) {
    const arch::op& o = net_.ops[i];
    const var_t& x = v[static_cast<std::size_t>(inputs_[i][0])];
    const var_t gamma = param(ps, weight_, i), beta = param(ps, bias_, i);
    auto* state = &bn_[static_cast<std::size_t>(bn_index_[i])];
    const bool batch_stats = opt.bn == bn_mode::batch_stats;
    if constexpr (!std::is_same_v<Backend, backend::cpu_t>) {
      nn::batch_norm_options bo;
      bo.training = batch_stats;
      bo.update_running = opt.update_running_stats;
      bo.momentum = opt.bn_momentum;
      auto y = nn::batch_norm2d(tp, x, gamma, beta, state, bo);
      return relu ? nn::relu(tp, y) : y;
    } else {
      const auto& xs = x.shape();
      const int rank = xs.rank();
      GHNQ_CHECK(x.value().is_contiguous() && (rank == 2 || rank == 4) && xs[1] == o.c, shape_error, "executor",
                 where(), ": batch norm op ", i, " (", o.name, ") got input ", xs);
      GHNQ_CHECK((!gamma.defined() || gamma.value().is_contiguous()) && (!beta.defined() || beta.value().is_contiguous()),
                 shape_error, "executor", where(), ": batch norm op ", i, " (", o.name, ") parameters must be contiguous");
      GHNQ_CHECK(opt.bn_momentum >= 0.0 && opt.bn_momentum <= 1.0, value_error, "executor", where(),
                 ": bn_momentum must be in [0, 1], got ", opt.bn_momentum);
      const std::int64_t n = xs[0], c = xs[1], s = rank == 4 ? xs[2] * xs[3] : 1;
      using K = backend::impl<Backend, backend::op::batch_norm>;
      constexpr double eps = nn::batch_norm_options{}.eps;
      tensor_t mean({c}), invstd({c}), y(xs);
      const T* g = gamma.defined() ? gamma.value().data() : nullptr;
      const T* b = beta.defined() ? beta.value().data() : nullptr;
      if (batch_stats) {
        GHNQ_CHECK(n * s > 1, value_error, "executor", where(), ": batch norm op ", i, " (", o.name,
                   ") needs more than one value per channel with batch statistics, got input ", xs);
        tensor_t var_b({c});
        K::forward_batch(x.value().data(), n, c, s, eps, g, b, relu, y.data(), mean.data(), var_b.data(),
                         invstd.data());
        if (opt.update_running_stats) {
          K::update_running(c, n * s, opt.bn_momentum, mean.data(), var_b.data(), state->running_mean.data(),
                            state->running_var.data());
          ++state->num_batches_tracked;
        }
      } else {
        mean = state->running_mean.clone();  // constants of this pass, even if the state changes later
        K::invstd_of(state->running_var.data(), c, eps, invstd.data());
        K::normalize_act(x.value().data(), n, c, s, mean.data(), invstd.data(), g, b, relu, y.data());
      }
      const bool tracked = tp.needs(x, gamma, beta);
      auto out = tp.make_output(y, tracked);
      if (tracked) {
        tp.record([x, gamma, beta, out, mean, invstd, n, c, s, batch_stats, relu]() {
          if (!out.has_grad()) return;
          bool first = false;
          if (x.requires_grad()) x.grad_for_write(first);
          K::backward_masked(x.value().data(), relu ? out.value().data() : nullptr, out.grad().data(), n, c, s,
                             mean.data(), invstd.data(), gamma.defined() ? gamma.value().data() : nullptr,
                             batch_stats, x.requires_grad() ? x.grad().data() : nullptr,
                             gamma.requires_grad() ? gamma.grad().data() : nullptr,
                             beta.requires_grad() ? beta.grad().data() : nullptr, first);
        });
      }
      return out;
    }
  }

  var_t run_op(tape_t& tp, std::size_t i, const var_t& x, const std::vector<var_t>& v, const std::vector<var_t>& ps,
               const run_options& opt, rng& drop) {
    const arch::op& o = net_.ops[i];
    auto in = [&](std::size_t k) -> const var_t& { return v[static_cast<std::size_t>(inputs_[i][k])]; };
    using arch::op_type;
    switch (o.type) {
      case op_type::input:
        return x;
      case op_type::conv: {
        const nn::conv2d_params cp = detail::conv_params_of(o);
        var_t w = param(ps, weight_, i), b = param(ps, bias_, i);
        if (!pass_.folded_w.empty() && pass_.folded_w[i].defined()) {
          w = pass_.folded_w[i];
          b = pass_.folded_b[i];
        }
        return nn::conv2d(tp, quant_in(tp, i, in(0)), quant_w(tp, i, w), b, cp);
      }
      case op_type::linear:
        return nn::linear(tp, quant_in(tp, i, in(0)), quant_w(tp, i, param(ps, weight_, i)), param(ps, bias_, i));
      case op_type::batch_norm:
        return run_batch_norm(tp, i, v, ps, opt, false);
      case op_type::dropout:
        return nn::dropout(tp, in(0), o.p, drop, opt.dropout);
      default:  // parameter-free: the shared dispatch (whose switch lists every op type)
        return detail::run_plain_op(tp, o, x.shape()[0], in);
    }
  }

  arch::network net_;
  std::vector<arch::param_info> params_;
  std::vector<int> weight_, bias_, last_use_, bn_index_;
  std::vector<int> canon_;               // op whose value stands for op i (== i unless a duplicate ReLU)
  std::vector<std::vector<int>> inputs_;  // inputs of op i, through canon_
  std::vector<int> fused_relu_;          // batch norm -> the ReLU computed with it (-1: none)
  std::vector<bool> live_, produced_early_;
  std::vector<nn::batch_norm_state<T, Backend>> bn_;
};

}  // namespace ghnq::exec
