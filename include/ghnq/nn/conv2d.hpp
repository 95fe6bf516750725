/// \file
/// \brief 2-D convolution (NCHW, OIHW weights) with stride, padding, dilation and groups.
///
/// Cross-correlation as in PyTorch's `conv2d`: any kh x kw kernel (1x7, 7x1, ...), grouped and
/// depthwise convolutions (groups == Cin, any channel multiplier), optional bias.
#pragma once
#include <cstdint>

#include "ghnq/backend/cpu/conv2d.hpp"
#include "ghnq/nn/common.hpp"

namespace ghnq::nn {

/// Stride, zero padding, dilation and groups of a convolution (height and width separately).
struct conv2d_params {
  int stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dilation_h = 1, dilation_w = 1, groups = 1;

  /// The same stride, padding and dilation in both directions.
  /// \code auto p = ghnq::nn::conv2d_params::square(2, 1);   // stride 2, pad 1 \endcode
  static conv2d_params square(int stride, int pad, int dilation = 1, int groups = 1) {
    conv2d_params p;
    p.stride_h = p.stride_w = stride;
    p.pad_h = p.pad_w = pad;
    p.dilation_h = p.dilation_w = dilation;
    p.groups = groups;
    return p;
  }
};

/// Output extent of a convolution along one axis: floor((in + 2 pad - dilation (k - 1) - 1) / stride) + 1,
/// or 0 when the (dilated) kernel does not fit into the padded input. stride, dilation >= 1.
/// \code ghnq::nn::conv2d_output_size(32, 3, 2, 1, 1) == 16 \endcode
inline std::int64_t conv2d_output_size(std::int64_t in, std::int64_t k, std::int64_t stride, std::int64_t pad,
                                       std::int64_t dilation = 1) {
  const std::int64_t span = in + 2 * pad - dilation * (k - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;
}

/// y = conv2d(x, w) + b.
///
/// x [N, Cin, H, W], w [Cout, Cin/groups, kh, kw], b [Cout] or an undefined var (no bias);
/// y [N, Cout, Ho, Wo] with Ho = conv2d_output_size(H, kh, stride_h, pad_h, dilation_h) (same for W):
/// y[n, o, i, j] = b[o] + sum_{c, u, v} w[o, c, u, v] x[n, g Cin/groups + c, i sh + u dh - ph, j sw + v dw - pw]
/// where g = o / (Cout/groups) and x is zero outside the image. Backward gives dx, dw, db.
/// Throws shape_error on wrong ranks, Cin or Cout not divisible by groups, weight or bias shapes
/// that do not match, or an empty output; value_error on stride, dilation, groups < 1 or pad < 0.
/// \code
/// auto w = ghnq::autograd::parameter(ghnq::tensor<float>::zeros({64, 32, 3, 3}));
/// auto y = ghnq::nn::conv2d(tp, x, w, {}, ghnq::nn::conv2d_params::square(1, 1));  // [N, 64, H, W]
/// \endcode
template <class T, class B>
var<T, B> conv2d(tape<T, B>& tp, const var<T, B>& x, const var<T, B>& w, const var<T, B>& b,
                 const conv2d_params& p = {}) {
  detail::require_rank(x, 4, "conv2d", "x");
  detail::require_rank(w, 4, "conv2d", "weight");
  GHNQ_CHECK(p.stride_h >= 1 && p.stride_w >= 1, value_error, "conv2d: stride must be >= 1, got ", p.stride_h, "x",
             p.stride_w);
  GHNQ_CHECK(p.dilation_h >= 1 && p.dilation_w >= 1, value_error, "conv2d: dilation must be >= 1, got ",
             p.dilation_h, "x", p.dilation_w);
  GHNQ_CHECK(p.pad_h >= 0 && p.pad_w >= 0, value_error, "conv2d: padding must be >= 0, got ", p.pad_h, "x", p.pad_w);
  GHNQ_CHECK(p.groups >= 1, value_error, "conv2d: groups must be >= 1, got ", p.groups);
  const auto& xs = x.shape();
  const auto& ws = w.shape();
  const std::int64_t groups = p.groups;
  GHNQ_CHECK(xs[1] % groups == 0, shape_error, "conv2d: input x ", xs, " has ", xs[1],
             " channels, not divisible by groups = ", groups);
  GHNQ_CHECK(ws[0] % groups == 0, shape_error, "conv2d: weight ", ws, " has ", ws[0],
             " output channels, not divisible by groups = ", groups);
  GHNQ_CHECK(ws[1] == xs[1] / groups, shape_error, "conv2d: weight ", ws, " must have Cin/groups = ", xs[1] / groups,
             " input channels for input x ", xs, " and groups = ", groups);
  GHNQ_CHECK(ws[2] >= 1 && ws[3] >= 1, shape_error, "conv2d: weight ", ws, " has an empty kernel");
  if (b.defined()) {
    detail::require_contiguous(b, "conv2d", "bias");
    GHNQ_CHECK(b.shape() == ghnq::shape({ws[0]}), shape_error, "conv2d: bias ", b.shape(), " does not match weight ",
               ws, " (expected [", ws[0], "])");
  }
  backend::conv2d_geometry g;
  g.n = xs[0];
  g.cin = xs[1];
  g.h = xs[2];
  g.w = xs[3];
  g.cout = ws[0];
  g.kh = ws[2];
  g.kw = ws[3];
  g.stride_h = p.stride_h;
  g.stride_w = p.stride_w;
  g.pad_h = p.pad_h;
  g.pad_w = p.pad_w;
  g.dil_h = p.dilation_h;
  g.dil_w = p.dilation_w;
  g.groups = groups;
  g.ho = conv2d_output_size(g.h, g.kh, g.stride_h, g.pad_h, g.dil_h);
  g.wo = conv2d_output_size(g.w, g.kw, g.stride_w, g.pad_w, g.dil_w);
  GHNQ_CHECK(g.ho >= 1 && g.wo >= 1, shape_error, "conv2d: output would be empty (", g.ho, "x", g.wo, ") for input x ",
             xs, ", weight ", ws, ", stride ", p.stride_h, "x", p.stride_w, ", padding ", p.pad_h, "x", p.pad_w,
             ", dilation ", p.dilation_h, "x", p.dilation_w);

  using K = backend::impl<B, backend::op::conv2d>;
  tensor<T, B> y({g.n, g.cout, g.ho, g.wo});
  K::forward(g, x.value().data(), w.value().data(), b.defined() ? b.value().data() : static_cast<const T*>(nullptr),
             y.data());
  const bool tracked = tp.needs(x, w, b);
  auto out = tp.make_output(y, tracked);
  if (tracked) {
    tp.record([x, w, b, out, g]() {
      if (!out.has_grad()) return;
      bool first = false;  // a fresh dx buffer is written, not zeroed and added to
      T* dx = x.requires_grad() ? x.grad_for_write(first).data() : nullptr;
      T* dw = w.requires_grad() ? w.grad().data() : nullptr;
      T* db = b.requires_grad() ? b.grad().data() : nullptr;
      K::backward(g, x.value().data(), w.value().data(), out.grad().data(), dx, dw, db, first);
    });
  }
  return out;
}

}  // namespace ghnq::nn
