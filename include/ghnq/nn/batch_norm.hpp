/// \file
/// \brief 2-D batch normalization (PyTorch semantics): batch statistics in training, running
/// statistics in eval mode, and the running-statistics update.
#pragma once
#include <cstdint>
#include <vector>

#include "ghnq/backend/cpu/norm.hpp"
#include "ghnq/nn/common.hpp"

namespace ghnq::nn {

/// Running statistics of one batch-norm layer.
/// running = (1 - momentum) * running + momentum * batch_stat, with the unbiased batch variance
/// for running_var (PyTorch). `init(c)` starts at mean 0, variance 1.
/// \tparam T element type; \tparam B backend tag of the tensors.
template <class T, class B = backend::cpu_t>
struct batch_norm_state {
  tensor<T, B> running_mean, running_var;  ///< [C] each
  std::int64_t num_batches_tracked = 0;    ///< training steps that updated the statistics

  /// Mean 0, variance 1 for `channels` channels.
  static batch_norm_state init(std::int64_t channels) {
    GHNQ_CHECK(channels >= 0, value_error, "batch_norm_state::init: negative channel count ", channels);
    batch_norm_state s;
    s.running_mean = tensor<T, B>::zeros({channels});
    s.running_var = tensor<T, B>::from({channels}, std::vector<T>(static_cast<std::size_t>(channels), T(1)));
    return s;
  }
};

/// Options of batch_norm2d.
struct batch_norm_options {
  bool training = true;         ///< batch statistics (true) or running statistics (false)
  double momentum = 0.1;        ///< weight of the batch statistic in the running update, in [0, 1]
  double eps = 1e-5;            ///< added to the variance, > 0
  bool update_running = true;   ///< in training, update the state's running statistics (when a state is given)
};

namespace detail {
template <class U>
struct non_deduced {
  using type = U;
};
/// Keeps a parameter out of template argument deduction (so `nullptr` can be passed).
template <class U>
using non_deduced_t = typename non_deduced<U>::type;

template <class T, class B>
void check_channel_param(const var<T, B>& p, std::int64_t c, const char* op, const char* arg,
                         const ghnq::shape& xs) {
  if (!p.defined()) return;
  require_contiguous(p, op, arg);
  GHNQ_CHECK(p.shape() == ghnq::shape({c}), shape_error, op, ": '", arg, "' of shape ", p.shape(),
             " does not match ", c, " channels of x ", xs);
}
}  // namespace detail

/// Batch normalization over the channel dimension of x [N, C, H, W] or [N, C].
///
/// y = (x - mean_c) / sqrt(var_c + eps) * gamma_c + beta_c. In training the statistics are the
/// batch mean and biased variance over N*H*W values per channel, and the gradient flows through
/// them; when `state` is given and `opt.update_running`, the running statistics are updated and
/// `num_batches_tracked` is incremented. In eval mode (`opt.training == false`) the running
/// statistics are used as constants and `state` is required (value_error if null).
/// gamma / beta are [C] or undefined vars (no scale / no shift).
/// \code
/// auto st = ghnq::nn::batch_norm_state<float>::init(16);
/// auto y = ghnq::nn::batch_norm2d(tp, x, gamma, beta, &st);                 // training
/// auto z = ghnq::nn::batch_norm2d(tp, x, gamma, beta, &st, {false});        // eval
/// auto u = ghnq::nn::batch_norm2d(tp, x, {}, {}, nullptr);                  // no affine, no tracking
/// \endcode
template <class T, class B>
var<T, B> batch_norm2d(tape<T, B>& tp, const var<T, B>& x, const var<T, B>& gamma, const var<T, B>& beta,
                       detail::non_deduced_t<batch_norm_state<T, B>>* state, const batch_norm_options& opt = {}) {
  constexpr const char* kOp = "batch_norm2d";
  detail::require_contiguous(x, kOp, "x");
  const int rank = x.value().rank();
  GHNQ_CHECK(rank == 2 || rank == 4, shape_error, kOp, ": x must be [N, C, H, W] or [N, C], got ", x.shape());
  const std::int64_t n = x.shape()[0], c = x.shape()[1];
  const std::int64_t s = rank == 4 ? x.shape()[2] * x.shape()[3] : 1;
  detail::check_channel_param(gamma, c, kOp, "gamma", x.shape());
  detail::check_channel_param(beta, c, kOp, "beta", x.shape());
  GHNQ_CHECK(opt.eps > 0.0, value_error, kOp, ": eps must be > 0, got ", opt.eps);
  GHNQ_CHECK(opt.momentum >= 0.0 && opt.momentum <= 1.0, value_error, kOp, ": momentum must be in [0, 1], got ",
             opt.momentum);
  if (state) {
    GHNQ_CHECK(state->running_mean.shape() == ghnq::shape({c}) && state->running_var.shape() == ghnq::shape({c}),
               shape_error, kOp, ": running statistics of shapes ", state->running_mean.shape(), " and ",
               state->running_var.shape(), " for ", c, " channels of x ", x.shape());
  }

  using K = backend::impl<B, backend::op::batch_norm>;
  tensor<T, B> mean({c}), invstd({c});
  const bool batch_stats = opt.training;
  if (batch_stats) {
    GHNQ_CHECK(n * s > 1, value_error, kOp, ": training needs more than one value per channel, got x ", x.shape());
    tensor<T, B> var_b({c});
    K::batch_stats(x.value().data(), n, c, s, opt.eps, mean.data(), var_b.data(), invstd.data());
    if (state && opt.update_running) {
      K::update_running(c, n * s, opt.momentum, mean.data(), var_b.data(), state->running_mean.data(),
                        state->running_var.data());
      ++state->num_batches_tracked;
    }
  } else {
    GHNQ_CHECK(state != nullptr, value_error, kOp,
               ": eval mode (training = false) needs running statistics, but state is null");
    mean = state->running_mean.clone();  // constants of this forward pass, even if the state changes later
    K::invstd_of(state->running_var.data(), c, opt.eps, invstd.data());
  }
  const T* g = gamma.defined() ? gamma.value().data() : nullptr;
  const T* b = beta.defined() ? beta.value().data() : nullptr;
  tensor<T, B> y(x.shape());
  K::normalize(x.value().data(), n, c, s, mean.data(), invstd.data(), g, b, y.data());

  const bool tracked = tp.needs(x, gamma, beta);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([x, gamma, beta, out, mean, invstd, n, c, s, batch_stats]() {
      if (!out.has_grad()) return;
      K::backward(x.value().data(), out.grad().data(), n, c, s, mean.data(), invstd.data(),
                  gamma.defined() ? gamma.value().data() : nullptr, batch_stats,
                  x.requires_grad() ? x.grad().data() : nullptr,
                  gamma.requires_grad() ? gamma.grad().data() : nullptr,
                  beta.requires_grad() ? beta.grad().data() : nullptr);
    });
  }
  return out;
}

}  // namespace ghnq::nn
