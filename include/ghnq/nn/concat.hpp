/// \file
/// \brief Concatenation of tensors along one dimension (channel concat of NCHW feature maps).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ghnq/backend/cpu/indexing.hpp"
#include "ghnq/nn/common.hpp"

namespace ghnq::nn {

/// Concatenate xs (at least one, all of the same rank) along `dim` (negative counts from the
/// back; default 1 = channels of NCHW). All other extents must match (shape_error naming the
/// shapes). The gradient of each input is its slice of the output gradient.
/// \code
/// auto y = ghnq::nn::concat(tp, {a, b, c});        // [N, Ca, H, W], [N, Cb, H, W], ... -> [N, Ca+Cb+Cc, H, W]
/// auto rows = ghnq::nn::concat(tp, {u, v}, 0);     // stack along the batch
/// \endcode
template <class T, class B>
var<T, B> concat(tape<T, B>& tp, const std::vector<var<T, B>>& xs, int dim = 1) {
  constexpr const char* kOp = "concat";
  GHNQ_CHECK(!xs.empty(), value_error, kOp, ": no inputs");
  for (std::size_t k = 0; k < xs.size(); ++k) {
    const std::string arg = "xs[" + std::to_string(k) + "]";
    detail::require_contiguous(xs[k], kOp, arg.c_str());
  }
  const ghnq::shape& s0 = xs[0].shape();
  const int rank = s0.rank();
  GHNQ_CHECK(rank >= 1, shape_error, kOp, ": inputs must have rank >= 1, got ", s0);
  GHNQ_CHECK(dim >= -rank && dim < rank, shape_error, kOp, ": dimension ", dim, " out of range for shape ", s0);
  const int d = dim < 0 ? dim + rank : dim;
  std::int64_t total = 0;
  for (std::size_t k = 0; k < xs.size(); ++k) {
    const ghnq::shape& sk = xs[k].shape();
    bool ok = sk.rank() == rank;
    for (int i = 0; ok && i < rank; ++i) ok = i == d || sk[i] == s0[i];
    GHNQ_CHECK(ok, shape_error, kOp, ": input ", k, " of shape ", sk, " does not match input 0 of shape ", s0,
               " outside dimension ", d);
    total += sk[d];
  }
  std::int64_t outer = 1, inner = 1;
  for (int i = 0; i < d; ++i) outer *= s0[i];
  for (int i = d + 1; i < rank; ++i) inner *= s0[i];
  ghnq::shape ys = s0;
  ys[d] = total;
  const std::int64_t inner_dst = total * inner;

  using K = backend::impl<B, backend::op::concat>;
  tensor<T, B> y(ys);
  std::int64_t offset = 0;
  bool any_grad = false;
  for (const auto& x : xs) {
    const std::int64_t ik = x.shape()[d] * inner;
    K::copy_in(x.value().data(), outer, ik, y.data(), inner_dst, offset);
    offset += ik;
    any_grad = any_grad || x.requires_grad();
  }
  const bool tracked = tp.recording() && any_grad;
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([xs, out, outer, inner, inner_dst, d]() {
      if (!out.has_grad()) return;
      std::int64_t off = 0;
      for (const auto& x : xs) {
        const std::int64_t ik = x.shape()[d] * inner;
        if (x.requires_grad()) {
          bool first = false;
          T* dx = x.grad_for_write(first).data();
          K::add_out(out.grad().data(), outer, ik, inner_dst, off, dx, first);
        }
        off += ik;
      }
    });
  }
  return out;
}

}  // namespace ghnq::nn
