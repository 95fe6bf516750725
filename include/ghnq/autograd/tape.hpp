/// \file
/// \brief `autograd::tape<T, Backend>`: a reverse-mode tape of backward closures.
///
/// Contract:
///  - Ops take the tape first: `y = nn::relu(tp, x)`. When the tape is recording and any input
///    requires a gradient, the op marks its output as requiring a gradient and appends a closure
///    that reads the output's gradient and accumulates into its inputs' gradients.
///  - `backward(y)` seeds dy = 1 (y must hold one element) or `backward(y, seed)` any dy, runs the
///    closures in reverse order and clears the tape. Gradients accumulate (+=) into vars.
///  - A tape is used by one thread at a time; run independent networks on independent tapes.
///  - `no_grad` guard: ops record nothing while it lives (inference).
/// \code
/// ghnq::autograd::tape<float> tp;
/// auto w = ghnq::autograd::parameter(ghnq::tensor<float>::zeros({10, 784}));
/// auto loss = ghnq::nn::cross_entropy(tp, ghnq::nn::linear(tp, x, w), labels);
/// tp.backward(loss);    // w.grad() now holds dloss/dw
/// \endcode
#pragma once
#include <functional>
#include <utility>
#include <vector>

#include "ghnq/autograd/variable.hpp"
#include "ghnq/backend/cpu/elementwise.hpp"

namespace ghnq::autograd {

template <class T, class Backend = backend::cpu_t>
class tape {
 public:
  using var_type = var<T, Backend>;
  using tensor_type = tensor<T, Backend>;

  tape() = default;
  tape(const tape&) = delete;
  tape& operator=(const tape&) = delete;

  /// True when ops should record backward closures.
  bool recording() const noexcept { return enabled_; }
  void set_recording(bool on) noexcept { enabled_ = on; }

  /// True when an op with these inputs must record (recording and some input needs a gradient).
  template <class... V>
  bool needs(const V&... inputs) const noexcept {
    return enabled_ && (... || inputs.requires_grad());
  }

  /// Output var of an op: requires_grad when the op recorded.
  var_type make_output(tensor_type value, bool tracked) const { return var_type(std::move(value), tracked); }

  /// Append a backward closure (called by ops).
  template <class F>
  void record(F&& f) {
    ops_.emplace_back(std::forward<F>(f));
  }

  /// Number of recorded closures.
  std::size_t size() const noexcept { return ops_.size(); }

  /// Backward from a one-element output (dy = 1).
  void backward(const var_type& y) {
    GHNQ_CHECK(y.defined(), value_error, "tape::backward: undefined output");
    GHNQ_CHECK(y.value().numel() == 1, shape_error, "tape::backward: output of shape ", y.shape(),
               " is not a scalar; pass a seed gradient");
    auto seed = tensor_type::from(y.shape(), {T(1)});
    backward(y, seed);
  }
  /// Backward from any output with the given gradient dy (accumulated into y.grad()).
  /// The tape is cleared afterwards, also when a closure throws.
  void backward(const var_type& y, const tensor_type& dy) {
    struct clear_on_exit {
      tape& t;
      ~clear_on_exit() { t.clear(); }
    } guard{*this};
    GHNQ_CHECK(y.defined(), value_error, "tape::backward: undefined output");
    GHNQ_CHECK(y.requires_grad(), value_error, "tape::backward: the output does not depend on anything that ",
               "requires a gradient (were the inputs created with autograd::parameter, and was the tape recording?)");
    GHNQ_CHECK(dy.shape() == y.shape(), shape_error, "tape::backward: seed ", dy.shape(), " for output ",
               y.shape());
    auto& g = y.grad();
    const auto seed = dy.contiguous();
    backend::impl<Backend, backend::op::axpy>::run(T(1), seed.data(), g.data(), g.numel());
    for (auto it = ops_.rbegin(); it != ops_.rend(); ++it) (*it)();
  }
  /// Run every recorded closure with the gradients already accumulated into the recorded
  /// outputs' grad() — for outputs consumed elsewhere, e.g. predicted parameters whose gradients
  /// came from the target networks' own tapes — then clear the tape (also when a closure throws).
  /// \code
  /// auto w = ghn.predict(tp, net);                 // recorded on tp
  /// net_tape.backward(loss_of(w));                 // fills w[i].grad()
  /// tp.backward_accumulated();                     // into the GHN's parameters
  /// \endcode
  void backward_accumulated() {
    struct clear_on_exit {
      tape& t;
      ~clear_on_exit() { t.clear(); }
    } guard{*this};
    for (auto it = ops_.rbegin(); it != ops_.rend(); ++it) (*it)();
  }
  /// Forget all recorded closures (and the intermediate values they keep alive).
  void clear() { ops_.clear(); }

 private:
  std::vector<std::function<void()>> ops_;
  bool enabled_ = true;
};

/// Disables recording on a tape for the guard's lifetime.
template <class Tape>
class no_grad {
 public:
  explicit no_grad(Tape& t) : t_(t), prev_(t.recording()) { t_.set_recording(false); }
  ~no_grad() { t_.set_recording(prev_); }
  no_grad(const no_grad&) = delete;
  no_grad& operator=(const no_grad&) = delete;

 private:
  Tape& t_;
  bool prev_;
};

}  // namespace ghnq::autograd
