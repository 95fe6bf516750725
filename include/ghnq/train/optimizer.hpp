/// \file
/// \brief First-order optimizers with PyTorch's exact update rules: SGD (momentum, dampening,
/// Nesterov, L2 weight decay), Adam (L2 weight decay) and AdamW (decoupled weight decay).
///
/// Contract:
///  - An optimizer holds handles (`autograd::var`) to its parameters; `step()` reads each
///    parameter's `grad()` and updates its `value()` in place. A parameter without a gradient
///    buffer (`!has_grad()`) is skipped: its value and its optimizer state stay unchanged.
///  - `zero_grad()` zeroes the gradient buffers (PyTorch's zero_grad(set_to_none=False));
///    `zero_grad(true)` drops them (PyTorch's default), so parameters that the next backward
///    does not reach are skipped by the next step.
///  - The state (moment buffers and step counts) is exposed by `state()` / `load_state()` as
///    named tensors and named counters, for checkpoints. Tensors are named
///    "<buffer>.<parameter index>"; a buffer not yet created is absent.
///  - The element updates run in `backend::impl<B, op::sgd_update>` / `op::adam_update`
///    (CPU specializations below; a device backend specializes the same tags).
#pragma once
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "ghnq/autograd/variable.hpp"
#include "ghnq/backend/cpu/optim.hpp"
#include "ghnq/backend/tags.hpp"
#include "ghnq/core/error.hpp"
#include "ghnq/tensor/tensor.hpp"



namespace ghnq::train {

/// Optimizer state for checkpoints: named counters and named tensors.
/// \tparam T scalar type of the parameters. \tparam B their backend.
template <class T, class B = backend::cpu_t>
struct optimizer_state {
  std::map<std::string, std::int64_t> counters;  ///< "step" = number of step() calls (+ per-optimizer)
  std::map<std::string, tensor<T, B>> tensors;   ///< "<buffer>.<parameter index>"
};

namespace detail {

inline void check_finite_nonneg(double v, const char* who, const char* what) {
  GHNQ_CHECK(std::isfinite(v) && v >= 0.0, value_error, who, ": ", what, " = ", v, " must be finite and >= 0");
}

/// Parse "<prefix>.<index>" with index in [0, n); returns -1 when the prefix does not match.
inline long parse_state_name(const std::string& name, const std::string& prefix, std::size_t n, const char* who) {
  if (name.size() <= prefix.size() + 1 || name.compare(0, prefix.size(), prefix) != 0 ||
      name[prefix.size()] != '.') {
    return -1;
  }
  const std::string tail = name.substr(prefix.size() + 1);
  std::size_t idx = 0;
  for (char ch : tail) {
    GHNQ_CHECK(ch >= '0' && ch <= '9' && idx < (std::size_t(1) << 40), value_error, who, "::load_state: bad entry '",
               name, "'");
    idx = idx * 10 + static_cast<std::size_t>(ch - '0');
  }
  GHNQ_CHECK(idx < n, value_error, who, "::load_state: entry '", name, "' refers to parameter ", idx, " but there are ",
             n, " parameters");
  return static_cast<long>(idx);
}

/// What every optimizer shares: the parameter list, the learning rate and the step count.
template <class T, class B>
class optimizer_base {
 public:
  using var_type = autograd::var<T, B>;
  using tensor_type = tensor<T, B>;
  using state_type = optimizer_state<T, B>;

  /// Zero every gradient buffer (set_to_none = false) or drop the buffers (set_to_none = true).
  void zero_grad(bool set_to_none = false) {
    for (const auto& p : params_) {
      if (set_to_none) {
        p.reset_grad();
      } else {
        p.zero_grad();
      }
    }
  }
  /// Learning rate of the next step() (>= 0).
  void set_lr(double lr) {
    check_finite_nonneg(lr, who_, "lr");
    lr_ = lr;
  }
  double lr() const noexcept { return lr_; }
  const std::vector<var_type>& params() const noexcept { return params_; }
  /// Number of step() calls so far (restored by load_state).
  std::int64_t step_count() const noexcept { return steps_; }

 protected:
  optimizer_base(std::vector<var_type> params, double lr, const char* who)
      : params_(std::move(params)), lr_(lr), who_(who) {
    check_finite_nonneg(lr, who, "lr");
    std::unordered_set<const void*> seen;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      GHNQ_CHECK(params_[i].defined(), value_error, who, ": parameter ", i, " is an undefined var");
      GHNQ_CHECK(seen.insert(params_[i].id()).second, value_error, who, ": parameter ", i, " ('",
                 params_[i].name(), "') appears more than once");
    }
  }

  /// Buffer for parameter i shaped like it; zero-initialised when `zero`.
  tensor_type new_buffer(std::size_t i, bool zero) const {
    return zero ? tensor_type::zeros(params_[i].shape()) : tensor_type(params_[i].shape());
  }
  /// True when parameter i takes part in this step (has a contiguous gradient of its shape).
  bool has_usable_grad(std::size_t i) const {
    const auto& p = params_[i];
    if (!p.has_grad()) return false;
    GHNQ_CHECK(p.grad().shape() == p.shape(), shape_error, who_, ": gradient of parameter ", i, " ('", p.name(),
               "') has shape ", p.grad().shape(), " but the parameter has ", p.shape());
    GHNQ_CHECK(p.grad().is_contiguous() && p.value().is_contiguous(), shape_error, who_, ": parameter ", i,
               " or its gradient is not contiguous");
    return true;
  }
  /// Checked copy of a state tensor into a fresh buffer for parameter i.
  tensor_type load_buffer(const std::string& name, std::size_t i, const tensor_type& t) const {
    GHNQ_CHECK(t.defined() && t.shape() == params_[i].shape(), shape_error, who_, "::load_state: '", name,
               "' has shape ", t.shape(), " but parameter ", i, " has ", params_[i].shape());
    return t.clone();
  }
  void load_step_counter(const state_type& s) {
    auto it = s.counters.find("step");
    GHNQ_CHECK(it != s.counters.end(), value_error, who_, "::load_state: missing counter 'step'");
    GHNQ_CHECK(it->second >= 0, value_error, who_, "::load_state: negative step count ", it->second);
    steps_ = it->second;
  }

  std::vector<var_type> params_;
  double lr_;
  std::int64_t steps_ = 0;
  const char* who_;
};

}  // namespace detail

/// SGD options (PyTorch defaults except lr).
struct sgd_options {
  double lr = 0.1, momentum = 0.0, dampening = 0.0, weight_decay = 0.0;
  bool nesterov = false;
};

/// Stochastic gradient descent, exactly torch.optim.SGD. For each parameter p with gradient g:
/// \code
/// d = g + weight_decay * p
/// if momentum != 0:
///   buf = (first step of p) ? d : momentum * buf + (1 - dampening) * d
///   d   = nesterov ? d + momentum * buf : buf
/// p -= lr * d
/// \endcode
/// Nesterov needs momentum > 0 and dampening == 0. State: "momentum_buffer.<i>".
/// \tparam T scalar type; \tparam B backend.
/// \code
/// ghnq::train::sgd<float> opt(params, {/*lr*/ 0.1, /*momentum*/ 0.9, 0.0, /*weight_decay*/ 5e-4});
/// opt.zero_grad(); /* forward + backward */ opt.step();
/// \endcode
template <class T, class B = backend::cpu_t>
class sgd : public detail::optimizer_base<T, B> {
  using base = detail::optimizer_base<T, B>;

 public:
  using typename base::state_type;
  using typename base::tensor_type;
  using typename base::var_type;

  explicit sgd(std::vector<var_type> params, sgd_options opt = {})
      : base(std::move(params), opt.lr, "sgd"), opt_(opt), buf_(this->params_.size()) {
    detail::check_finite_nonneg(opt.momentum, "sgd", "momentum");
    detail::check_finite_nonneg(opt.dampening, "sgd", "dampening");
    detail::check_finite_nonneg(opt.weight_decay, "sgd", "weight_decay");
    GHNQ_CHECK(!opt.nesterov || (opt.momentum > 0.0 && opt.dampening == 0.0), value_error,
               "sgd: nesterov momentum requires momentum > 0 and dampening == 0 (got momentum ", opt.momentum,
               ", dampening ", opt.dampening, ")");
  }

  /// One update of every parameter that has a gradient buffer.
  void step() {
    for (std::size_t i = 0; i < this->params_.size(); ++i) {
      if (!this->has_usable_grad(i)) continue;
      const auto& p = this->params_[i];
      bool first = false;
      if (opt_.momentum != 0.0 && !buf_[i].defined()) {
        buf_[i] = this->new_buffer(i, false);
        first = true;
      }
      backend::impl<B, backend::op::sgd_update>::run(
          p.value().data(), static_cast<const T*>(p.grad().data()), opt_.momentum != 0.0 ? buf_[i].data() : nullptr,
          p.value().numel(), T(this->lr_), T(opt_.momentum), T(1.0 - opt_.dampening), T(opt_.weight_decay),
          opt_.nesterov, first);
    }
    ++this->steps_;
  }

  /// Options as constructed (the current learning rate is lr()).
  const sgd_options& options() const noexcept { return opt_; }

  /// Deep copy of the state: counter "step", tensors "momentum_buffer.<i>" (when created).
  state_type state() const {
    state_type s;
    s.counters["step"] = this->steps_;
    for (std::size_t i = 0; i < buf_.size(); ++i) {
      if (buf_[i].defined()) s.tensors["momentum_buffer." + std::to_string(i)] = buf_[i].clone();
    }
    return s;
  }
  /// Replace the state by (copies of) `s`; throws value_error / shape_error on unknown names,
  /// out-of-range indices or shapes that do not match the parameters.
  void load_state(const state_type& s) {
    std::vector<tensor_type> nb(this->params_.size());
    for (const auto& [name, t] : s.tensors) {
      const long i = detail::parse_state_name(name, "momentum_buffer", nb.size(), "sgd");
      GHNQ_CHECK(i >= 0, value_error, "sgd::load_state: unknown tensor '", name, "'");
      nb[static_cast<std::size_t>(i)] = this->load_buffer(name, static_cast<std::size_t>(i), t);
    }
    for (const auto& [name, v] : s.counters) {
      GHNQ_CHECK(name == "step", value_error, "sgd::load_state: unknown counter '", name, "' (", v, ")");
    }
    this->load_step_counter(s);
    buf_ = std::move(nb);
  }

 private:
  sgd_options opt_;
  std::vector<tensor_type> buf_;
};

/// Adam options (PyTorch defaults). weight_decay is L2: added to the gradient.
struct adam_options {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};
/// AdamW options (PyTorch defaults). weight_decay is decoupled: p *= 1 - lr * weight_decay.
struct adamw_options {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 1e-2;
};

namespace detail {

/// Adam and AdamW (PyTorch's single-tensor algorithm, amsgrad off). Per parameter, with its own
/// step count t (incremented only when the parameter has a gradient):
/// \code
/// AdamW: p *= 1 - lr * weight_decay          Adam: g += weight_decay * p
/// m = m + (1 - beta1) * (g - m)              (m, v start at zero)
/// v = beta2 * v + (1 - beta2) * g * g
/// p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
/// \endcode
template <class T, class B, bool Decoupled>
class adam_base : public optimizer_base<T, B> {
  using base = optimizer_base<T, B>;

 public:
  using typename base::state_type;
  using typename base::tensor_type;
  using typename base::var_type;

  void step() {
    for (std::size_t i = 0; i < this->params_.size(); ++i) {
      if (!this->has_usable_grad(i)) continue;
      const auto& p = this->params_[i];
      if (!m_[i].defined()) {
        m_[i] = this->new_buffer(i, true);
        v_[i] = this->new_buffer(i, true);
      }
      const std::int64_t t = ++t_[i];
      const double bc1 = 1.0 - std::pow(beta1_, static_cast<double>(t));
      const double bc2 = 1.0 - std::pow(beta2_, static_cast<double>(t));
      const double step_size = this->lr_ / bc1;
      backend::impl<B, backend::op::adam_update>::run(
          p.value().data(), static_cast<const T*>(p.grad().data()), m_[i].data(), v_[i].data(), p.value().numel(),
          T(1.0 - beta1_), T(beta2_), T(1.0 - beta2_), T(eps_), T(weight_decay_), T(1.0 - this->lr_ * weight_decay_),
          Decoupled, T(step_size), T(std::sqrt(bc2)));
    }
    ++this->steps_;
  }

  /// Deep copy of the state: counters "step" and "step.<i>" (updates of parameter i), tensors
  /// "exp_avg.<i>" and "exp_avg_sq.<i>" (once parameter i has been updated).
  state_type state() const {
    state_type s;
    s.counters["step"] = this->steps_;
    for (std::size_t i = 0; i < m_.size(); ++i) {
      if (!m_[i].defined()) continue;
      const std::string k = std::to_string(i);
      s.counters["step." + k] = t_[i];
      s.tensors["exp_avg." + k] = m_[i].clone();
      s.tensors["exp_avg_sq." + k] = v_[i].clone();
    }
    return s;
  }
  /// Replace the state by (copies of) `s`; throws value_error / shape_error on unknown names,
  /// out-of-range indices, shapes that do not match, or a parameter with only part of its state.
  void load_state(const state_type& s) {
    const std::size_t n = this->params_.size();
    std::vector<tensor_type> nm(n), nv(n);
    std::vector<std::int64_t> nt(n, 0);
    for (const auto& [name, t] : s.tensors) {
      long i = parse_state_name(name, "exp_avg", n, this->who_);
      if (i >= 0) {
        nm[static_cast<std::size_t>(i)] = this->load_buffer(name, static_cast<std::size_t>(i), t);
        continue;
      }
      i = parse_state_name(name, "exp_avg_sq", n, this->who_);
      GHNQ_CHECK(i >= 0, value_error, this->who_, "::load_state: unknown tensor '", name, "'");
      nv[static_cast<std::size_t>(i)] = this->load_buffer(name, static_cast<std::size_t>(i), t);
    }
    for (const auto& [name, v] : s.counters) {
      if (name == "step") continue;
      const long i = parse_state_name(name, "step", n, this->who_);
      GHNQ_CHECK(i >= 0, value_error, this->who_, "::load_state: unknown counter '", name, "'");
      nt[static_cast<std::size_t>(i)] = v;
    }
    for (std::size_t i = 0; i < n; ++i) {
      const bool any = nm[i].defined() || nv[i].defined() || nt[i] != 0;
      const bool all = nm[i].defined() && nv[i].defined() && nt[i] > 0;
      GHNQ_CHECK(any == all, value_error, this->who_, "::load_state: parameter ", i,
                 " needs all of exp_avg, exp_avg_sq and a positive step count, or none");
    }
    this->load_step_counter(s);
    m_ = std::move(nm);
    v_ = std::move(nv);
    t_ = std::move(nt);
  }

 protected:
  template <class Options>
  adam_base(std::vector<var_type> params, const Options& opt, const char* who)
      : base(std::move(params), opt.lr, who), beta1_(opt.beta1), beta2_(opt.beta2), eps_(opt.eps),
        weight_decay_(opt.weight_decay), m_(this->params_.size()), v_(this->params_.size()),
        t_(this->params_.size(), 0) {
    GHNQ_CHECK(opt.beta1 >= 0.0 && opt.beta1 < 1.0, value_error, who, ": beta1 = ", opt.beta1, " not in [0, 1)");
    GHNQ_CHECK(opt.beta2 >= 0.0 && opt.beta2 < 1.0, value_error, who, ": beta2 = ", opt.beta2, " not in [0, 1)");
    check_finite_nonneg(opt.eps, who, "eps");
    check_finite_nonneg(opt.weight_decay, who, "weight_decay");
  }

  double beta1_, beta2_, eps_, weight_decay_;
  std::vector<tensor_type> m_, v_;
  std::vector<std::int64_t> t_;
};

}  // namespace detail

/// Adam with L2 weight decay added to the gradient, exactly torch.optim.Adam (amsgrad off).
/// See detail::adam_base for the formula. State: "step.<i>", "exp_avg.<i>", "exp_avg_sq.<i>".
/// \code
/// ghnq::train::adam<float> opt(params, {/*lr*/ 1e-3});
/// \endcode
template <class T, class B = backend::cpu_t>
class adam : public detail::adam_base<T, B, false> {
 public:
  using var_type = autograd::var<T, B>;
  explicit adam(std::vector<var_type> params, adam_options opt = {})
      : detail::adam_base<T, B, false>(std::move(params), opt, "adam"), opt_(opt) {}
  const adam_options& options() const noexcept { return opt_; }

 private:
  adam_options opt_;
};

/// AdamW: Adam with decoupled weight decay p *= 1 - lr * weight_decay before the Adam update,
/// exactly torch.optim.AdamW (default weight_decay 1e-2).
/// \code
/// ghnq::train::adamw<float> opt(params, {/*lr*/ 1e-3, 0.9, 0.999, 1e-8, /*weight_decay*/ 1e-2});
/// \endcode
template <class T, class B = backend::cpu_t>
class adamw : public detail::adam_base<T, B, true> {
 public:
  using var_type = autograd::var<T, B>;
  explicit adamw(std::vector<var_type> params, adamw_options opt = {})
      : detail::adam_base<T, B, true>(std::move(params), opt, "adamw"), opt_(opt) {}
  const adamw_options& options() const noexcept { return opt_; }

 private:
  adamw_options opt_;
};

}  // namespace ghnq::train
