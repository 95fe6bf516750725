/// \file
/// \brief Spatial subsampling (DARTS "Stride" op), per-channel scaling (squeeze-excitation gate),
/// n-ary sum and a constant zero tensor (the "none" op).
#pragma once
#include <vector>

#include "ghnq/backend/cpu/memory.hpp"
#include "ghnq/backend/cpu/spatial.hpp"
#include "ghnq/nn/add.hpp"
#include "ghnq/nn/common.hpp"

namespace ghnq::nn {

/// y = x[:, :, ::s, ::s] for x [N, C, H, W]; y has ceil(H/s) x ceil(W/s) pixels.
template <class T, class B>
var<T, B> subsample(tape<T, B>& tp, const var<T, B>& x, int s) {
  detail::require_rank(x, 4, "subsample", "x");
  GHNQ_CHECK(s >= 1, value_error, "subsample: stride ", s, " < 1");
  if (s == 1) return x;
  using K = backend::impl<B, backend::op::subsample>;
  const auto& xs = x.shape();
  const int h = static_cast<int>(xs[2]), w = static_cast<int>(xs[3]);
  tensor<T, B> y({xs[0], xs[1], (h + s - 1) / s, (w + s - 1) / s});
  K::forward(x.value().data(), y.data(), xs[0] * xs[1], h, w, s);
  const bool tracked = tp.needs(x);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([x, out, h, w, s]() {
      if (!out.has_grad()) return;
      K::backward(out.grad().data(), x.grad().data(), x.shape()[0] * x.shape()[1], h, w, s);
    });
  }
  return out;
}

/// y = x[:, :, top:, left:] for x [N, C, H, W] (FactorizedReduce's shifted path uses top = left = 1).
template <class T, class B>
var<T, B> crop(tape<T, B>& tp, const var<T, B>& x, int top, int left) {
  detail::require_rank(x, 4, "crop", "x");
  const auto& xs = x.shape();
  const int h = static_cast<int>(xs[2]), w = static_cast<int>(xs[3]);
  GHNQ_CHECK(top >= 0 && left >= 0 && top < h && left < w, shape_error, "crop: offsets (", top, ", ", left,
             ") leave nothing of input ", xs);
  using K = backend::impl<B, backend::op::crop>;
  tensor<T, B> y({xs[0], xs[1], h - top, w - left});
  K::forward(x.value().data(), y.data(), xs[0] * xs[1], h, w, top, left);
  const bool tracked = tp.needs(x);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([x, out, h, w, top, left]() {
      if (!out.has_grad()) return;
      K::backward(out.grad().data(), x.grad().data(), x.shape()[0] * x.shape()[1], h, w, top, left);
    });
  }
  return out;
}

/// y[n, c, :, :] = x[n, c, :, :] * s[n, c] for x [N, C, H, W] and s [N, C].
template <class T, class B>
var<T, B> channel_scale(tape<T, B>& tp, const var<T, B>& x, const var<T, B>& s) {
  detail::require_rank(x, 4, "channel_scale", "x");
  detail::require_rank(s, 2, "channel_scale", "s");
  const auto& xs = x.shape();
  GHNQ_CHECK(s.shape()[0] == xs[0] && s.shape()[1] == xs[1], shape_error, "channel_scale: scale ", s.shape(),
             " does not match input ", xs);
  using K = backend::impl<B, backend::op::channel_scale>;
  const std::int64_t planes = xs[0] * xs[1], hw = xs[2] * xs[3];
  tensor<T, B> y(xs);
  K::forward(x.value().data(), s.value().data(), y.data(), planes, hw);
  const bool tracked = tp.needs(x, s);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([x, s, out, planes, hw]() {
      if (!out.has_grad()) return;
      K::backward(x.value().data(), s.value().data(), out.grad().data(),
                  x.requires_grad() ? x.grad().data() : nullptr, s.requires_grad() ? s.grad().data() : nullptr,
                  planes, hw);
    });
  }
  return out;
}

/// Sum of one or more tensors of the same shape (a single input is returned as is), in one
/// pass; the backward copies dz into fresh input gradients and adds it to existing ones.
template <class T, class B>
var<T, B> sum(tape<T, B>& tp, const std::vector<var<T, B>>& xs) {
  GHNQ_CHECK(!xs.empty(), value_error, "sum: no inputs");
  if (xs.size() == 1) return xs[0];
  for (std::size_t k = 0; k < xs.size(); ++k) {
    GHNQ_CHECK(xs[k].defined(), value_error, "sum: input ", k, " is undefined");
    detail::require_contiguous(xs[k], "sum", "inputs");
    GHNQ_CHECK(xs[k].shape() == xs[0].shape(), shape_error, "sum: input ", k, " of shape ", xs[k].shape(),
               " does not match input 0 of shape ", xs[0].shape());
  }
  using A = backend::impl<B, backend::op::axpy>;
  using M = backend::impl<B, backend::op::memory>;
  const std::int64_t n = xs[0].value().numel();
  tensor<T, B> z(xs[0].shape());
  A::add(xs[0].value().data(), xs[1].value().data(), z.data(), n);
  for (std::size_t k = 2; k < xs.size(); ++k) A::run(T(1), xs[k].value().data(), z.data(), n);
  bool any = false;
  for (const auto& x : xs) any = any || x.requires_grad();
  const bool tracked = tp.recording() && any;
  auto out = tp.make_output(z, tracked);
  if (tracked) {
    tp.record([xs, out, n]() {
      if (!out.has_grad()) return;
      const T* dz = out.grad().data();
      for (const auto& x : xs) {
        if (!x.requires_grad()) continue;
        bool first = false;
        T* dx = x.grad_for_write(first).data();
        if (first) M::copy(dx, dz, static_cast<std::size_t>(n) * sizeof(T));
        else A::run(T(1), dz, dx, n);
      }
    });
  }
  return out;
}

/// A constant zero tensor (no gradient flows through it).
template <class T, class B = backend::cpu_t>
var<T, B> zeros(const ghnq::shape& s) {
  return var<T, B>(tensor<T, B>::zeros(s), false);
}

}  // namespace ghnq::nn
