/// \file
/// \brief Learning-rate schedules: constant, multi-step decay, cosine annealing, and linear
/// warm-up followed by cosine annealing. Each is a small value type with
/// `double lr_at(std::int64_t step) const`; a "step" is whatever unit the caller counts
/// (optimizer steps or epochs), starting at 0.
///
/// Every constructor validates its arguments (ghnq::value_error naming the argument), and
/// lr_at throws value_error for a negative step.
/// \code
/// ghnq::train::warmup_cosine_lr sched(1e-3, /*warmup*/ 500, /*total*/ 20000);
/// for (std::int64_t s = 0; s < 20000; ++s) { opt.set_lr(sched.lr_at(s)); /* ... */ opt.step(); }
/// \endcode
#pragma once
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "ghnq/core/error.hpp"

namespace ghnq::train {

namespace detail {
inline void check_lr(double v, const char* who, const char* what) {
  GHNQ_CHECK(std::isfinite(v) && v >= 0.0, value_error, who, ": ", what, " = ", v, " must be finite and >= 0");
}
inline void check_step(std::int64_t step, const char* who) {
  GHNQ_CHECK(step >= 0, value_error, who, "::lr_at: step ", step, " < 0");
}
inline constexpr double kPi = 3.141592653589793238462643383279502884;
}  // namespace detail

/// lr_at(t) = base_lr.
class constant_lr {
 public:
  explicit constant_lr(double base_lr) : base_(base_lr) { detail::check_lr(base_lr, "constant_lr", "base_lr"); }
  double lr_at(std::int64_t step) const {
    detail::check_step(step, "constant_lr");
    return base_;
  }

 private:
  double base_;
};

/// Step decay (torch.optim.lr_scheduler.MultiStepLR):
/// lr_at(t) = base_lr * gamma^k, k = number of milestones m with m <= t.
/// Milestones must be strictly increasing and >= 1; gamma > 0.
/// \code
/// ghnq::train::multi_step_lr s(0.1, {30, 60}, 0.1);  // 0.1 for t < 30, 0.01 for 30 <= t < 60, then 0.001
/// \endcode
class multi_step_lr {
 public:
  multi_step_lr(double base_lr, std::vector<std::int64_t> milestones, double gamma = 0.1)
      : base_(base_lr), milestones_(std::move(milestones)), gamma_(gamma) {
    detail::check_lr(base_lr, "multi_step_lr", "base_lr");
    GHNQ_CHECK(std::isfinite(gamma) && gamma > 0.0, value_error, "multi_step_lr: gamma = ", gamma,
               " must be finite and > 0");
    for (std::size_t i = 0; i < milestones_.size(); ++i) {
      GHNQ_CHECK(milestones_[i] >= 1, value_error, "multi_step_lr: milestone ", milestones_[i], " < 1");
      GHNQ_CHECK(i == 0 || milestones_[i] > milestones_[i - 1], value_error,
                 "multi_step_lr: milestones must be strictly increasing (", milestones_[i - 1], " then ",
                 milestones_[i], ")");
    }
  }
  double lr_at(std::int64_t step) const {
    detail::check_step(step, "multi_step_lr");
    double lr = base_;
    for (auto m : milestones_) {
      if (m > step) break;
      lr *= gamma_;
    }
    return lr;
  }
  const std::vector<std::int64_t>& milestones() const noexcept { return milestones_; }

 private:
  double base_;
  std::vector<std::int64_t> milestones_;
  double gamma_;
};

/// Cosine annealing from base_lr to min_lr over total_steps (CosineAnnealingLR's closed form):
/// lr_at(t) = min_lr + (base_lr - min_lr) * (1 + cos(pi * t / total_steps)) / 2 for t <= total_steps,
/// and min_lr after. Needs total_steps >= 1 and 0 <= min_lr <= base_lr.
class cosine_lr {
 public:
  cosine_lr(double base_lr, std::int64_t total_steps, double min_lr = 0.0)
      : base_(base_lr), total_(total_steps), min_(min_lr) {
    detail::check_lr(base_lr, "cosine_lr", "base_lr");
    detail::check_lr(min_lr, "cosine_lr", "min_lr");
    GHNQ_CHECK(min_lr <= base_lr, value_error, "cosine_lr: min_lr = ", min_lr, " exceeds base_lr = ", base_lr);
    GHNQ_CHECK(total_steps >= 1, value_error, "cosine_lr: total_steps = ", total_steps, " < 1");
  }
  double lr_at(std::int64_t step) const {
    detail::check_step(step, "cosine_lr");
    if (step >= total_) return min_;
    const double f = static_cast<double>(step) / static_cast<double>(total_);
    return min_ + (base_ - min_) * 0.5 * (1.0 + std::cos(detail::kPi * f));
  }

 private:
  double base_;
  std::int64_t total_;
  double min_;
};

/// Linear warm-up from 0, then cosine annealing to min_lr, with W = warmup_steps, T = total_steps:
/// \code
/// lr_at(t) = base_lr * t / W                                                      for t < W
///          = min_lr + (base_lr - min_lr) * (1 + cos(pi * (t - W) / (T - W))) / 2  for W <= t <= T
///          = min_lr                                                               for t > T
/// \endcode
/// so lr_at(0) = 0, lr_at(W) = base_lr and lr_at(T) = min_lr. W = 0 gives cosine_lr.
/// Needs 0 <= W < T and 0 <= min_lr <= base_lr.
class warmup_cosine_lr {
 public:
  warmup_cosine_lr(double base_lr, std::int64_t warmup_steps, std::int64_t total_steps, double min_lr = 0.0)
      : base_(base_lr), warmup_(warmup_steps), total_(total_steps), min_(min_lr) {
    detail::check_lr(base_lr, "warmup_cosine_lr", "base_lr");
    detail::check_lr(min_lr, "warmup_cosine_lr", "min_lr");
    GHNQ_CHECK(min_lr <= base_lr, value_error, "warmup_cosine_lr: min_lr = ", min_lr, " exceeds base_lr = ",
               base_lr);
    GHNQ_CHECK(warmup_steps >= 0, value_error, "warmup_cosine_lr: warmup_steps = ", warmup_steps, " < 0");
    GHNQ_CHECK(total_steps > warmup_steps, value_error, "warmup_cosine_lr: total_steps = ", total_steps,
               " must exceed warmup_steps = ", warmup_steps);
  }
  double lr_at(std::int64_t step) const {
    detail::check_step(step, "warmup_cosine_lr");
    if (step < warmup_) return base_ * static_cast<double>(step) / static_cast<double>(warmup_);
    if (step >= total_) return min_;
    const double f = static_cast<double>(step - warmup_) / static_cast<double>(total_ - warmup_);
    return min_ + (base_ - min_) * 0.5 * (1.0 + std::cos(detail::kPi * f));
  }

 private:
  double base_;
  std::int64_t warmup_, total_;
  double min_;
};

}  // namespace ghnq::train
