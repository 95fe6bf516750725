/// \file
/// \brief `autograd::var<T, Backend>`: a tensor value with an optional gradient, shared by handle.
///
/// Contract:
///  - A var is a cheap handle (shared pointer) to a node holding `value` and `grad`.
///  - `requires_grad()` vars receive gradients when a tape runs backward. Parameters are vars
///    created with requires_grad = true; optimizers read `grad()` and update `value()`.
///  - `grad()` is allocated (zero) on first use, with the value's shape.
#pragma once
#include <memory>
#include <string>
#include <utility>

#include "ghnq/tensor/tensor.hpp"

namespace ghnq::autograd {

template <class T, class Backend = backend::cpu_t>
struct node {
  tensor<T, Backend> value;
  tensor<T, Backend> grad;
  bool requires_grad = false;
  std::string name;
};

/// \tparam T       scalar type (float for training, double for gradient checks).
/// \tparam Backend backend tag of the tensors.
template <class T, class Backend = backend::cpu_t>
class var {
 public:
  using value_type = T;
  using backend_type = Backend;
  using tensor_type = tensor<T, Backend>;

  var() = default;
  explicit var(tensor_type value, bool requires_grad = false, std::string name = {})
      : n_(std::make_shared<node<T, Backend>>()) {
    n_->value = std::move(value);
    n_->requires_grad = requires_grad;
    n_->name = std::move(name);
  }

  bool defined() const noexcept { return static_cast<bool>(n_); }
  /// The value. A var is a handle: constness is shallow, like std::shared_ptr's.
  tensor_type& value() const noexcept { return n_->value; }
  const ghnq::shape& shape() const noexcept { return n_->value.shape(); }
  bool requires_grad() const noexcept { return n_ && n_->requires_grad; }
  void set_requires_grad(bool r) const noexcept { n_->requires_grad = r; }
  const std::string& name() const noexcept { return n_->name; }

  /// True once a gradient buffer exists.
  bool has_grad() const noexcept { return n_ && n_->grad.defined(); }
  /// Gradient buffer (allocated and zeroed on first call).
  tensor_type& grad() const {
    if (!n_->grad.defined()) n_->grad = tensor_type::zeros(n_->value.shape());
    return n_->grad;
  }
  /// Gradient buffer for a backward closure that writes every element of it: when no buffer
  /// exists yet, an uninitialized one is created and `overwrite` is set (the closure writes, so no
  /// zeroing pass is spent); otherwise the existing buffer is returned and the closure must add.
  tensor_type& grad_for_write(bool& overwrite) const {
    overwrite = !n_->grad.defined();
    if (overwrite) n_->grad = tensor_type(n_->value.shape());
    return n_->grad;
  }
  /// Zero the gradient (keeps the buffer).
  void zero_grad() const {
    if (n_->grad.defined()) n_->grad.set_zero();
  }
  /// Drop the gradient buffer.
  void reset_grad() const { n_->grad = tensor_type(); }

  /// Identity of the underlying node.
  const node<T, Backend>* id() const noexcept { return n_.get(); }
  std::shared_ptr<node<T, Backend>> handle() const noexcept { return n_; }

 private:
  std::shared_ptr<node<T, Backend>> n_;
};

/// A trainable tensor: a var with requires_grad set.
template <class T, class Backend = backend::cpu_t>
var<T, Backend> parameter(tensor<T, Backend> value, std::string name = {}) {
  return var<T, Backend>(std::move(value), true, std::move(name));
}

}  // namespace ghnq::autograd
