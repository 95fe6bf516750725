/// \file
/// \brief `ghnq::tensor<T, Backend>`: owning, reference-counted storage with shape, strides and views.
///
/// Contract:
///  - A tensor owns (shares) a buffer allocated by `backend::impl<Backend, op::memory>`.
///    Copying a tensor is shallow (both refer to the same buffer); `clone()` copies the data.
///  - Views (`reshape`, `slice`, `select`, `transpose`) share the buffer; they may be strided.
///    Kernels require `is_contiguous()`; `contiguous()` returns a packed copy when needed.
///  - Element access (`operator()`, `at`, `flat`) is host-only (CPU backend).
/// \code
/// auto x = ghnq::tensor<float>::zeros({64, 3, 32, 32});
/// auto img0 = x.select(0);            // [3, 32, 32] view
/// auto flat = x.reshape({64, -1});    // [64, 3072] view
/// \endcode
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <type_traits>
#include <vector>

#include "ghnq/backend/cpu/memory.hpp"
#include "ghnq/backend/ops.hpp"
#include "ghnq/backend/tags.hpp"
#include "ghnq/core/error.hpp"
#include "ghnq/tensor/shape.hpp"

namespace ghnq {

/// \tparam T       element type (float, double, integral types).
/// \tparam Backend backend tag owning the memory (backend::cpu_t or backend::cuda_t).
template <class T, class Backend = backend::cpu_t>
class tensor {
  static_assert(std::is_trivially_copyable_v<T>, "ghnq::tensor: element type must be trivially copyable");
  static_assert(backend::is_backend_v<Backend>, "ghnq::tensor: Backend must be a backend tag");

 public:
  using value_type = T;
  using backend_type = Backend;
  using memory = backend::impl<Backend, backend::op::memory>;

  tensor() = default;

  /// Uninitialized tensor of the given shape.
  explicit tensor(const ghnq::shape& s) : shape_(s), strides_(contiguous_strides(s)) {
    const auto n = static_cast<std::size_t>(s.numel());
    GHNQ_CHECK(n <= static_cast<std::size_t>(PTRDIFF_MAX) / sizeof(T), shape_error, "tensor: shape ", s,
               " needs more bytes than addressable");
    T* p = static_cast<T*>(memory::allocate(n * sizeof(T)));
    data_ = std::shared_ptr<T>(p, [](T* q) { memory::deallocate(q); });
  }

  static tensor empty(const ghnq::shape& s) { return tensor(s); }
  static tensor zeros(const ghnq::shape& s) {
    tensor t(s);
    t.set_zero();
    return t;
  }
  /// Host-side construction from values (row-major); copies to the device for device backends.
  static tensor from(const ghnq::shape& s, std::initializer_list<T> values) {
    return from(s, values.begin(), values.size());
  }
  static tensor from(const ghnq::shape& s, const std::vector<T>& values) {
    return from(s, values.data(), values.size());
  }
  static tensor from(const ghnq::shape& s, const T* values, std::size_t n) {
    GHNQ_CHECK(static_cast<std::int64_t>(n) == s.numel(), shape_error, "tensor::from: ", n,
               " values for shape ", s);
    tensor t(s);
    memory::copy_from_host(t.data(), values, n * sizeof(T));
    return t;
  }
  static tensor full(const ghnq::shape& s, T v) {
    static_assert(!Backend::is_device, "tensor::full: host backends only; fill on the host and copy");
    tensor t(s);
    std::fill_n(t.data(), s.numel(), v);
    return t;
  }

  // ---- shape ---------------------------------------------------------------------------
  const ghnq::shape& shape() const noexcept { return shape_; }
  const ghnq::shape& strides() const noexcept { return strides_; }
  int rank() const noexcept { return shape_.rank(); }
  std::int64_t dim(int i) const { return shape_.dim(i); }
  /// Number of elements (0 for an undefined tensor).
  std::int64_t numel() const { return data_ ? shape_.numel() : 0; }
  bool defined() const noexcept { return static_cast<bool>(data_); }
  bool is_contiguous() const noexcept { return strides_ == contiguous_strides(shape_); }

  // ---- data ----------------------------------------------------------------------------
  T* data() noexcept { return data_.get(); }
  const T* data() const noexcept { return data_.get(); }
  /// True when both tensors view the same first element.
  bool same_data(const tensor& o) const noexcept { return data_.get() == o.data_.get(); }
  /// Number of tensors sharing this buffer (views included).
  long use_count() const noexcept { return data_.use_count(); }

  /// Flat element i of a contiguous host tensor.
  T& flat(std::int64_t i) noexcept { return data_.get()[i]; }
  const T& flat(std::int64_t i) const noexcept { return data_.get()[i]; }

  /// Element access by index (host only, strided).
  template <class... I>
  T& operator()(I... idx) noexcept {
    static_assert(!Backend::is_device, "tensor::operator(): host backends only");
    return data_.get()[offset_of(idx...)];
  }
  template <class... I>
  const T& operator()(I... idx) const noexcept {
    static_assert(!Backend::is_device, "tensor::operator(): host backends only");
    return data_.get()[offset_of(idx...)];
  }
  /// Checked element access: throws shape_error on a wrong rank or an index out of range.
  template <class... I>
  T& at(I... idx) {
    check_index({static_cast<std::int64_t>(idx)...});
    return (*this)(idx...);
  }

  // ---- whole-tensor operations ---------------------------------------------------------
  void set_zero() {
    GHNQ_CHECK(is_contiguous(), shape_error, "tensor::set_zero: tensor ", shape_, " is not contiguous");
    memory::zero(data(), static_cast<std::size_t>(numel()) * sizeof(T));
  }
  void fill(T v) {
    static_assert(!Backend::is_device, "tensor::fill: host backends only");
    GHNQ_CHECK(is_contiguous(), shape_error, "tensor::fill: tensor ", shape_, " is not contiguous");
    std::fill_n(data(), numel(), v);
  }
  /// Deep copy (always contiguous).
  tensor clone() const {
    GHNQ_CHECK(defined(), value_error, "tensor::clone: undefined tensor");
    tensor t(shape_);
    if (is_contiguous()) {
      memory::copy(t.data(), data(), static_cast<std::size_t>(numel()) * sizeof(T));
    } else {
      copy_strided_host(t);
    }
    return t;
  }
  /// This tensor if contiguous, otherwise a packed copy.
  tensor contiguous() const { return is_contiguous() ? *this : clone(); }
  /// Copy the values of `src` (same shape) into this tensor.
  void copy_from(const tensor& src) {
    GHNQ_CHECK(defined() && src.defined(), value_error, "tensor::copy_from: undefined tensor");
    GHNQ_CHECK(src.shape() == shape_, shape_error, "tensor::copy_from: shape ", src.shape(), " into ", shape_);
    GHNQ_CHECK(is_contiguous(), shape_error, "tensor::copy_from: destination ", shape_, " is not contiguous");
    auto s = src.contiguous();
    memory::copy(data(), s.data(), static_cast<std::size_t>(numel()) * sizeof(T));
  }
  /// Copy the whole tensor to a host vector (row-major).
  std::vector<T> to_vector() const {
    if (!defined()) return {};
    auto s = contiguous();
    std::vector<T> v(static_cast<std::size_t>(numel()));
    memory::copy_to_host(v.data(), s.data(), v.size() * sizeof(T));
    return v;
  }

  // ---- views ---------------------------------------------------------------------------
  /// View with a new shape (one extent may be -1); the tensor must be contiguous.
  tensor reshape(std::initializer_list<std::int64_t> dims) const {
    return reshape(std::vector<std::int64_t>(dims));
  }
  tensor reshape(std::vector<std::int64_t> dims) const {
    GHNQ_CHECK(is_contiguous(), shape_error, "tensor::reshape: tensor ", shape_, " is not contiguous");
    std::int64_t known = 1;
    int infer = -1;
    for (std::size_t i = 0; i < dims.size(); ++i) {
      if (dims[i] == -1) {
        GHNQ_CHECK(infer < 0, shape_error, "tensor::reshape: more than one -1");
        infer = static_cast<int>(i);
      } else {
        known *= dims[i];
      }
    }
    if (infer >= 0) {
      GHNQ_CHECK(known > 0 && numel() % known == 0, shape_error, "tensor::reshape: cannot reshape ", shape_);
      dims[static_cast<std::size_t>(infer)] = numel() / known;
    }
    ghnq::shape s(dims);
    GHNQ_CHECK(s.numel() == numel(), shape_error, "tensor::reshape: ", shape_, " -> ", s, " changes the size");
    tensor t = *this;
    t.shape_ = s;
    t.strides_ = contiguous_strides(s);
    return t;
  }
  tensor reshape(const ghnq::shape& s) const { return reshape(s.to_vector()); }

  /// Sub-range [begin, end) along dimension d (a strided view unless d == 0).
  tensor slice(int d, std::int64_t begin, std::int64_t end) const {
    GHNQ_CHECK(d >= 0 && d < rank(), shape_error, "tensor::slice: no dimension ", d, " in ", shape_);
    GHNQ_CHECK(0 <= begin && begin <= end && end <= shape_[d], shape_error, "tensor::slice: range [", begin,
               ", ", end, ") out of ", shape_, " along dimension ", d);
    tensor t = *this;
    t.data_ = std::shared_ptr<T>(data_, data_.get() + begin * strides_[d]);
    t.shape_[d] = end - begin;
    return t;
  }
  /// Index i along dimension 0, dropping that dimension.
  tensor select(std::int64_t i) const {
    GHNQ_CHECK(rank() >= 1 && i >= 0 && i < shape_[0], shape_error, "tensor::select: index ", i, " out of ",
               shape_);
    tensor t;
    t.data_ = std::shared_ptr<T>(data_, data_.get() + i * strides_[0]);
    t.shape_ = ghnq::shape(shape_.begin() + 1, shape_.end());
    t.strides_ = ghnq::shape(strides_.begin() + 1, strides_.end());
    return t;
  }
  /// Swap dimensions a and b (a strided view).
  tensor transpose(int a, int b) const {
    GHNQ_CHECK(a >= 0 && a < rank() && b >= 0 && b < rank(), shape_error, "tensor::transpose: dimensions ", a,
               ", ", b, " of ", shape_);
    tensor t = *this;
    std::swap(t.shape_[a], t.shape_[b]);
    std::swap(t.strides_[a], t.strides_[b]);
    return t;
  }

 private:
  template <class... I>
  std::int64_t offset_of(I... idx) const noexcept {
    const std::int64_t ix[] = {static_cast<std::int64_t>(idx)...};
    std::int64_t off = 0;
    for (std::size_t k = 0; k < sizeof...(I); ++k) off += ix[k] * strides_[static_cast<int>(k)];
    return off;
  }
  void check_index(std::initializer_list<std::int64_t> ix) const {
    GHNQ_CHECK(static_cast<int>(ix.size()) == rank(), shape_error, "tensor::at: ", ix.size(),
               " indices for shape ", shape_);
    int k = 0;
    for (auto v : ix) {
      GHNQ_CHECK(v >= 0 && v < shape_[k], shape_error, "tensor::at: index ", v, " out of range in dimension ",
                 k, " of ", shape_);
      ++k;
    }
  }
  void copy_strided_host(tensor& dst) const {
    if constexpr (Backend::is_device) {
      throw unsupported_error("tensor: strided copies of device tensors are not implemented");
    } else {
      const std::int64_t n = numel();
      std::int64_t idx[shape::kMaxRank] = {};
      const int r = rank();
      for (std::int64_t lin = 0; lin < n; ++lin) {
        std::int64_t off = 0;
        for (int k = 0; k < r; ++k) off += idx[k] * strides_[k];
        dst.data()[lin] = data_.get()[off];
        for (int k = r - 1; k >= 0; --k) {
          if (++idx[k] < shape_[k]) break;
          idx[k] = 0;
        }
      }
    }
  }

  std::shared_ptr<T> data_;
  ghnq::shape shape_;
  ghnq::shape strides_;
};

/// Copy a tensor to another backend (host <-> device).
template <class ToBackend, class T, class FromBackend>
tensor<T, ToBackend> to_backend(const tensor<T, FromBackend>& src) {
  if constexpr (std::is_same_v<ToBackend, FromBackend>) {
    return src.clone();
  } else {
    auto s = src.contiguous();
    tensor<T, ToBackend> dst(s.shape());
    const auto bytes = static_cast<std::size_t>(s.numel()) * sizeof(T);
    if constexpr (!FromBackend::is_device) {
      backend::impl<ToBackend, backend::op::memory>::copy_from_host(dst.data(), s.data(), bytes);
    } else {
      static_assert(!ToBackend::is_device, "to_backend: device-to-device copies across backends");
      backend::impl<FromBackend, backend::op::memory>::copy_to_host(dst.data(), s.data(), bytes);
    }
    return dst;
  }
}

}  // namespace ghnq
