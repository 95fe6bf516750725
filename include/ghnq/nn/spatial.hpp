/// \file
/// \brief Spatial subsampling (DARTS "Stride" op), per-channel scaling (squeeze-excitation gate),
/// n-ary sum and a constant zero tensor (the "none" op).
#pragma once
#include <vector>

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

/// Sum of one or more tensors of the same shape (a single input is returned as is).
template <class T, class B>
var<T, B> sum(tape<T, B>& tp, const std::vector<var<T, B>>& xs) {
  GHNQ_CHECK(!xs.empty(), value_error, "sum: no inputs");
  var<T, B> acc = xs[0];
  for (std::size_t i = 1; i < xs.size(); ++i) acc = add(tp, acc, xs[i]);
  return acc;
}

/// A constant zero tensor (no gradient flows through it).
template <class T, class B = backend::cpu_t>
var<T, B> zeros(const ghnq::shape& s) {
  return var<T, B>(tensor<T, B>::zeros(s), false);
}

}  // namespace ghnq::nn
