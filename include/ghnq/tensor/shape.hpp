/// \file
/// \brief `ghnq::shape`: a fixed-capacity list of extents (rank <= 6), allocation-free.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "ghnq/core/error.hpp"

namespace ghnq {

/// Extents of a tensor, outermost first (NCHW for images, OIHW for conv weights).
class shape {
 public:
  static constexpr int kMaxRank = 6;
  using value_type = std::int64_t;

  shape() = default;
  shape(std::initializer_list<std::int64_t> dims) { assign(dims.begin(), dims.end()); }
  explicit shape(const std::vector<std::int64_t>& dims) { assign(dims.begin(), dims.end()); }
  template <class It>
  shape(It first, It last) { assign(first, last); }

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return rank_; }
  bool empty() const noexcept { return rank_ == 0; }
  std::int64_t operator[](int i) const noexcept { return d_[static_cast<std::size_t>(i)]; }
  std::int64_t& operator[](int i) noexcept { return d_[static_cast<std::size_t>(i)]; }
  /// Extent of dimension i; negative i counts from the back.
  std::int64_t dim(int i) const {
    const int j = i < 0 ? i + rank_ : i;
    GHNQ_CHECK(j >= 0 && j < rank_, shape_error, "shape ", to_string(), ": no dimension ", i);
    return d_[static_cast<std::size_t>(j)];
  }
  const std::int64_t* begin() const noexcept { return d_.data(); }
  const std::int64_t* end() const noexcept { return d_.data() + rank_; }

  /// Number of elements (1 for rank 0). Throws shape_error when it does not fit in int64.
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (int i = 0; i < rank_; ++i)
      GHNQ_CHECK(!__builtin_mul_overflow(n, d_[static_cast<std::size_t>(i)], &n), shape_error, "shape ",
                 to_string(), ": element count overflows 64 bits");
    return n;
  }
  void push_back(std::int64_t v) {
    GHNQ_CHECK(rank_ < kMaxRank, shape_error, "shape: rank above ", kMaxRank);
    d_[static_cast<std::size_t>(rank_++)] = v;
  }
  std::vector<std::int64_t> to_vector() const { return {begin(), end()}; }

  /// "[64, 3, 32, 32]"
  std::string to_string() const {
    std::ostringstream os;
    os << '[';
    for (int i = 0; i < rank_; ++i) os << (i ? ", " : "") << d_[static_cast<std::size_t>(i)];
    os << ']';
    return os.str();
  }

  friend bool operator==(const shape& a, const shape& b) {
    return a.rank_ == b.rank_ && std::equal(a.begin(), a.end(), b.begin());
  }
  friend bool operator!=(const shape& a, const shape& b) { return !(a == b); }
  friend std::ostream& operator<<(std::ostream& os, const shape& s) { return os << s.to_string(); }

 private:
  template <class It>
  void assign(It first, It last) {
    rank_ = 0;
    for (; first != last; ++first) {
      GHNQ_CHECK(*first >= 0, shape_error, "shape: negative extent ", *first);
      push_back(static_cast<std::int64_t>(*first));
    }
  }
  std::array<std::int64_t, kMaxRank> d_{};
  int rank_ = 0;
};

/// Row-major (C order) strides of `s`, in elements.
inline shape contiguous_strides(const shape& s) {
  shape st = s;
  std::int64_t acc = 1;
  for (int i = s.rank() - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= s[i];
  }
  return st;
}

}  // namespace ghnq
