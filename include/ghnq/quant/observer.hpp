/// \file
/// \brief `quant::observer`: the range [m, M] (per tensor or per channel) a uniform quantizer
///        derives its scale and zero point from, with state across observations.
///
/// Contract:
///  - `observe(x)` computes the per-channel (axis 0) or per-tensor minimum and maximum of x and
///    merges them into the state according to the kind:
///      current         m = min(x), M = max(x)            (no memory: predicted weights)
///      min_max         m = min(m, min(x)), M = max(M, max(x))  (running extremes, PyTorch MinMaxObserver)
///      moving_average  m += momentum * (min(x) - m), same for M; the first observation sets m, M
///                      (PyTorch MovingAverageMinMaxObserver with averaging_constant = momentum)
///  - The state is the raw range; widening to contain 0 happens when parameters are computed
///    (make_uniform_params), as the spec and PyTorch do.
///  - A NaN or an infinity in x throws value_error naming the op ("quant::observer::observe") and,
///    when given, the observer's name; the state is left unchanged.
///  - Per-channel observers keep the channel count of their first observation (shape_error after).
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "ghnq/backend/cpu/quant.hpp"
#include "ghnq/quant/common.hpp"

namespace ghnq::quant {

/// How an observer merges a new range into its state (see the file comment).
enum class observer_kind { current, min_max, moving_average };

/// Range state of one quantized tensor (weights of a layer, or the input activations of a layer).
/// \code
/// ghnq::quant::observer obs(ghnq::quant::observer_kind::moving_average, ghnq::quant::per_tensor, 0.1);
/// obs.observe(batch_activations);        // tensor<float>
/// auto p = ghnq::quant::make_uniform_params<float>(obs.lo(), obs.hi(), 0, 255, ghnq::quant::mode::asymmetric);
/// \endcode
class observer {
 public:
  /// \param kind     merge rule.
  /// \param g        per tensor, or per channel of axis 0.
  /// \param momentum weight of the new range for moving_average, in (0, 1] (value_error otherwise).
  /// \param name     optional name quoted in error messages (e.g. the layer).
  explicit observer(observer_kind kind = observer_kind::current, granularity g = per_tensor, double momentum = 0.1,
                    std::string name = {})
      : kind_(kind), granularity_(g), momentum_(momentum), name_(std::move(name)) {
    GHNQ_CHECK(momentum > 0.0 && momentum <= 1.0, value_error, "quant::observer: momentum must be in (0, 1], got ",
               momentum);
  }

  /// Merges the range of x (contiguous, non-empty; rank >= 1 when per channel) into the state.
  template <class T, class B>
  void observe(const tensor<T, B>& x) {
    GHNQ_CHECK(x.defined() && x.numel() > 0, value_error, "quant::observer::observe", where(), ": empty tensor");
    GHNQ_CHECK(x.is_contiguous(), shape_error, "quant::observer::observe", where(), ": tensor of shape ", x.shape(),
               " is not contiguous");
    GHNQ_CHECK(granularity_ == per_tensor || x.rank() >= 1, shape_error, "quant::observer::observe", where(),
               ": per-channel observation of a rank-0 tensor");
    const std::int64_t channels = granularity_ == per_tensor ? 1 : x.dim(0);
    GHNQ_CHECK(count_ == 0 || channels == static_cast<std::int64_t>(lo_.size()), shape_error,
               "quant::observer::observe", where(), ": tensor of shape ", x.shape(), " has ", channels,
               " channels, the observer has ", lo_.size());
    std::vector<T> lo(static_cast<std::size_t>(channels)), hi(lo.size());
    const bool finite =
        backend::impl<B, backend::op::quant_range>::run(x.data(), channels, x.numel() / channels, lo.data(), hi.data());
    GHNQ_CHECK(finite, numeric_error, "quant::observer::observe", where(), ": the observed tensor of shape ", x.shape(),
               " holds NaN or infinite values, so its range is not finite");
    if (count_ == 0 || kind_ == observer_kind::current) {
      lo_.assign(lo.begin(), lo.end());
      hi_.assign(hi.begin(), hi.end());
    } else {
      for (std::size_t c = 0; c < lo.size(); ++c) {
        const double l = static_cast<double>(lo[c]), h = static_cast<double>(hi[c]);
        if (kind_ == observer_kind::min_max) {
          lo_[c] = std::min(lo_[c], l);
          hi_[c] = std::max(hi_[c], h);
        } else {
          lo_[c] += momentum_ * (l - lo_[c]);
          hi_[c] += momentum_ * (h - hi_[c]);
        }
      }
    }
    ++count_;
  }

  /// True once something was observed.
  bool ready() const noexcept { return count_ > 0; }
  /// Number of observations since construction or reset().
  std::int64_t count() const noexcept { return count_; }
  /// Observed minimum / maximum per channel (one entry when per tensor); empty before observe().
  const std::vector<double>& lo() const noexcept { return lo_; }
  const std::vector<double>& hi() const noexcept { return hi_; }
  /// Replaces the state (e.g. restored from a checkpoint); lo and hi must have the same size.
  void set_range(std::vector<double> lo, std::vector<double> hi) {
    GHNQ_CHECK(lo.size() == hi.size() && !lo.empty(), value_error, "quant::observer::set_range", where(),
               ": ", lo.size(), " minima and ", hi.size(), " maxima");
    lo_ = std::move(lo);
    hi_ = std::move(hi);
    if (count_ == 0) count_ = 1;
  }
  /// Forgets the state.
  void reset() noexcept {
    lo_.clear();
    hi_.clear();
    count_ = 0;
  }

  observer_kind kind() const noexcept { return kind_; }
  granularity gran() const noexcept { return granularity_; }
  double momentum() const noexcept { return momentum_; }
  const std::string& name() const noexcept { return name_; }

 private:
  std::string where() const { return name_.empty() ? std::string() : " ('" + name_ + "')"; }

  observer_kind kind_;
  granularity granularity_;
  double momentum_;
  std::string name_;
  std::vector<double> lo_, hi_;
  std::int64_t count_ = 0;
};

}  // namespace ghnq::quant
