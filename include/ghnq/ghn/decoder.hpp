/// \file
/// \brief GHN-2 parameter decoders (spec §4.2, §4.4, §4.5): `conv_decoder` (fc -> top-left window -> 1x1 convs
/// -> (M0, M1, h', w') block, plus the classifier head `class_layer_predictor`), `decoder_1d` (norm weight /
/// bias rows) and `bias_class` (classifier bias).
///
/// All modules take node embeddings x of shape [N, H] (one row per node) and return differentiable blocks;
/// tile_to / normalize_fan_in (ghn/tiling.hpp) then map a block onto a target parameter.
///
/// Initialization (seeded, PyTorch defaults): every Linear / 1x1 Conv weight and bias ~ U(-1/sqrt(fan_in),
/// 1/sqrt(fan_in)), drawn from the given rng in `parameters()` order (weight, then bias, layer by layer).
/// 1x1 conv weights are stored as [out, in, 1, 1] (PyTorch layout) and applied as matrices.
///
/// Parameter counts at H = 32, max_shape (64, 64, 11, 11), nc = 10: decoder_1d 10,432; bias_class 650;
/// conv_decoder 1,597,450 (fc 511,104; conv1 33,024; conv2 1,052,672; class_layer_predictor 650).
#pragma once
#include <cmath>
#include <algorithm>
#include <cstdint>
#include <vector>

#include "ghnq/core/rng.hpp"
#include "ghnq/ghn/init.hpp"
#include "ghnq/ghn/tiling.hpp"
#include "ghnq/nn/activation.hpp"
#include "ghnq/nn/gather.hpp"
#include "ghnq/nn/init.hpp"
#include "ghnq/nn/linear.hpp"
#include "ghnq/nn/reshape.hpp"

namespace ghnq::ghn {

namespace detail {
/// A parameter of shape s drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) on the host, moved to backend B.
template <class T, class B>
autograd::var<T, B> fan_in_parameter(const ghnq::shape& s, std::int64_t fan_in, rng& g, const char* name) {
  return uniform_parameter<T, B>(s, 1.0 / std::sqrt(static_cast<double>(fan_in)), g, name);
}
template <class T, class B>
std::int64_t count(const std::vector<autograd::var<T, B>>& ps) {
  std::int64_t n = 0;
  for (const auto& p : ps) n += p.value().numel();
  return n;
}
template <class T, class B>
void require_embeddings(const autograd::var<T, B>& x, std::int64_t hid, const char* who) {
  GHNQ_CHECK(x.defined(), value_error, who, ": node embeddings are undefined");
  GHNQ_CHECK(x.value().rank() == 2 && x.shape()[1] == hid && x.shape()[0] >= 1, shape_error, who,
             ": node embeddings must be [N, ", hid, "] with N >= 1, got ", x.shape());
}
}  // namespace detail

/// decoder_1d = Linear(H -> 2H), ReLU, Linear(2H -> 2 Mc), Mc = max(M0, M1); output viewed [N, 2, Mc]:
/// row 0 = norm-layer weight, row 1 = bias (spec §4.4).
/// \code
/// ghnq::rng g(1111);
/// ghnq::ghn::decoder_1d<float> d1(32, {}, g);
/// auto y = d1.forward(tp, h);               // h: [N, 32] -> y: [N, 2, 64]
/// \endcode
template <class T, class B = backend::cpu_t>
struct decoder_1d {
  using var_type = autograd::var<T, B>;
  std::int64_t hid = 0;  ///< H
  std::int64_t mc = 0;   ///< max(M0, M1)
  var_type w1, b1, w2, b2;

  decoder_1d() = default;
  decoder_1d(std::int64_t hidden, const max_shape& ms, rng& g) : hid(hidden), mc(std::max(ms.out, ms.in)) {
    GHNQ_CHECK(hid >= 1 && mc >= 1, value_error, "decoder_1d: hidden size ", hid, " and max_shape (", ms.out, ", ",
               ms.in, ") must be positive");
    w1 = detail::fan_in_parameter<T, B>({2 * hid, hid}, hid, g, "decoder_1d.0.weight");
    b1 = detail::fan_in_parameter<T, B>({2 * hid}, hid, g, "decoder_1d.0.bias");
    w2 = detail::fan_in_parameter<T, B>({2 * mc, 2 * hid}, 2 * hid, g, "decoder_1d.2.weight");
    b2 = detail::fan_in_parameter<T, B>({2 * mc}, 2 * hid, g, "decoder_1d.2.bias");
  }
  std::vector<var_type> parameters() const { return {w1, b1, w2, b2}; }
  std::int64_t num_params() const { return detail::count(parameters()); }

  /// x: [N, H] -> [N, 2, Mc].
  var_type forward(autograd::tape<T, B>& tp, const var_type& x) const {
    detail::require_embeddings(x, hid, "decoder_1d");
    auto h = nn::relu(tp, nn::linear(tp, x, w1, b1));
    return nn::reshape(tp, nn::linear(tp, h, w2, b2), {x.shape()[0], 2, mc});
  }
};

/// bias_class = ReLU, Linear(Mc -> nc) on row 1 of the decoder_1d output: the classifier bias (spec §4.4).
template <class T, class B = backend::cpu_t>
struct bias_class {
  using var_type = autograd::var<T, B>;
  std::int64_t mc = 0;  ///< max(M0, M1)
  std::int64_t nc = 0;  ///< number of classes the GHN predicts for
  var_type w, b;

  bias_class() = default;
  bias_class(const max_shape& ms, std::int64_t num_classes, rng& g) : mc(std::max(ms.out, ms.in)), nc(num_classes) {
    GHNQ_CHECK(nc >= 1, value_error, "bias_class: number of classes ", nc, " must be >= 1");
    w = detail::fan_in_parameter<T, B>({nc, mc}, mc, g, "bias_class.1.weight");
    b = detail::fan_in_parameter<T, B>({nc}, mc, g, "bias_class.1.bias");
  }
  std::vector<var_type> parameters() const { return {w, b}; }
  std::int64_t num_params() const { return detail::count(parameters()); }

  /// y1d: [N, 2, Mc] (decoder_1d output) -> [N, nc] = Linear(relu(y1d[:, 1, :])).
  var_type forward(autograd::tape<T, B>& tp, const var_type& y1d) const {
    GHNQ_CHECK(y1d.defined() && y1d.value().rank() == 3 && y1d.shape()[1] == 2 && y1d.shape()[2] == mc, shape_error,
               "bias_class: input must be the decoder_1d output [N, 2, ", mc, "], got ",
               y1d.defined() ? y1d.shape() : ghnq::shape{});
    const auto n = y1d.shape()[0];
    std::vector<std::int64_t> idx(static_cast<std::size_t>(n * mc));
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < mc; ++j) idx[static_cast<std::size_t>(i * mc + j)] = (i * 2 + 1) * mc + j;
    auto row1 = nn::gather(tp, y1d, std::move(idx), {n, mc});
    return nn::linear(tp, nn::relu(tp, row1), w, b);
  }
};

/// ConvDecoder of GHN-2 (spec §4.2) with h0 = 4H, h1 = 8H:
///   fc Linear(H -> h0 S S), ReLU, view [N, h0, S, S] (channel-major), top-left (min(S,kh), min(S,kw)) window,
///   1x1 Conv(h0 -> h1), ReLU, 1x1 Conv(h1 -> M0 M1), view [N, M0, M1, h', w'] (channel o*M1 + i -> (o, i)).
/// class_layer_predictor (spec §4.5): ReLU, 1x1 Conv(M0 -> nc) over the M0 axis -> [N, nc, M1, h', w'].
/// The full block is computed (no fast path); kernels larger than S are served by tile_to's spatial tiling.
/// \code
/// ghnq::ghn::conv_decoder<float> dec(32, {64, 64, 11}, 10, g);
/// auto D = dec.forward(tp, h, 3, 3);       // [N, 64, 64, 3, 3]
/// auto C = dec.classify(tp, dec.forward(tp, h_cls, 1, 1));   // [N, 10, 64, 1, 1]
/// \endcode
template <class T, class B = backend::cpu_t>
struct conv_decoder {
  using var_type = autograd::var<T, B>;
  std::int64_t hid = 0, h0 = 0, h1 = 0, m0 = 0, m1 = 0, s = 0, nc = 0;
  var_type fc_w, fc_b, conv1_w, conv1_b, conv2_w, conv2_b, cls_w, cls_b;

  conv_decoder() = default;
  conv_decoder(std::int64_t hidden, const max_shape& ms, std::int64_t num_classes, rng& g)
      : hid(hidden), h0(4 * hidden), h1(8 * hidden), m0(ms.out), m1(ms.in), s(ms.spatial), nc(num_classes) {
    GHNQ_CHECK(hid >= 1 && m0 >= 1 && m1 >= 1 && s >= 1 && nc >= 1, value_error, "conv_decoder: hidden ", hid,
               ", max_shape (", m0, ", ", m1, ", ", s, ", ", s, ") and classes ", nc, " must be positive");
    fc_w = detail::fan_in_parameter<T, B>({h0 * s * s, hid}, hid, g, "decoder.fc.0.weight");
    fc_b = detail::fan_in_parameter<T, B>({h0 * s * s}, hid, g, "decoder.fc.0.bias");
    conv1_w = detail::fan_in_parameter<T, B>({h1, h0, 1, 1}, h0, g, "decoder.conv.0.weight");
    conv1_b = detail::fan_in_parameter<T, B>({h1}, h0, g, "decoder.conv.0.bias");
    conv2_w = detail::fan_in_parameter<T, B>({m0 * m1, h1, 1, 1}, h1, g, "decoder.conv.2.weight");
    conv2_b = detail::fan_in_parameter<T, B>({m0 * m1}, h1, g, "decoder.conv.2.bias");
    cls_w = detail::fan_in_parameter<T, B>({nc, m0, 1, 1}, m0, g, "decoder.class_layer_predictor.1.weight");
    cls_b = detail::fan_in_parameter<T, B>({nc}, m0, g, "decoder.class_layer_predictor.1.bias");
  }
  std::vector<var_type> parameters() const {
    return {fc_w, fc_b, conv1_w, conv1_b, conv2_w, conv2_b, cls_w, cls_b};
  }
  std::int64_t num_params() const { return detail::count(parameters()); }

  /// x: [N, H], requested kernel (kh, kw) >= 1 -> D: [N, M0, M1, min(S, kh), min(S, kw)].
  var_type forward(autograd::tape<T, B>& tp, const var_type& x, std::int64_t kh, std::int64_t kw) const {
    detail::require_embeddings(x, hid, "conv_decoder");
    GHNQ_CHECK(kh >= 1 && kw >= 1, value_error, "conv_decoder: requested kernel ", kh, "x", kw, " must be >= 1x1");
    const auto n = x.shape()[0], hh = std::min(s, kh), ww = std::min(s, kw), ss = s * s;
    auto f = nn::relu(tp, nn::linear(tp, x, fc_w, fc_b));  // [N, h0*S*S], feature c*S*S + y*S + x
    // rows (n, y, x) of the window, columns c
    std::vector<std::int64_t> idx(static_cast<std::size_t>(n * hh * ww * h0));
    std::size_t j = 0;
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t y = 0; y < hh; ++y)
        for (std::int64_t xx = 0; xx < ww; ++xx)
          for (std::int64_t c = 0; c < h0; ++c) idx[j++] = i * h0 * ss + c * ss + y * s + xx;
    const auto rows = n * hh * ww;
    auto r = nn::gather(tp, f, std::move(idx), {rows, h0});
    auto g1 = nn::relu(tp, nn::linear(tp, r, nn::reshape(tp, conv1_w, {h1, h0}), conv1_b));
    auto g2 = nn::linear(tp, g1, nn::reshape(tp, conv2_w, {m0 * m1, h1}), conv2_b);  // [rows, M0*M1]
    // [N, M0, M1, h', w'] <- g2[(n, y, x), o*M1 + i]
    const auto mm = m0 * m1;
    std::vector<std::int64_t> idx2(static_cast<std::size_t>(rows * mm));
    j = 0;
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t o = 0; o < m0; ++o)
        for (std::int64_t c = 0; c < m1; ++c)
          for (std::int64_t y = 0; y < hh; ++y)
            for (std::int64_t xx = 0; xx < ww; ++xx) idx2[j++] = ((i * hh + y) * ww + xx) * mm + o * m1 + c;
    return nn::gather(tp, g2, std::move(idx2), {n, m0, m1, hh, ww});
  }

  /// class_layer_predictor: D [N, M0, M1, h', w'] -> [N, nc, M1, h', w'] = Conv1x1(M0 -> nc)(relu(D)).
  var_type classify(autograd::tape<T, B>& tp, const var_type& D) const {
    GHNQ_CHECK(D.defined() && D.value().rank() == 5 && D.shape()[1] == m0 && D.shape()[2] == m1, shape_error,
               "conv_decoder::classify: block must be [N, ", m0, ", ", m1, ", h, w], got ",
               D.defined() ? D.shape() : ghnq::shape{});
    const auto n = D.shape()[0], hh = D.shape()[3], ww = D.shape()[4], sp = hh * ww;
    const auto rows = n * m1 * sp;
    std::vector<std::int64_t> idx(static_cast<std::size_t>(rows * m0));
    std::size_t j = 0;  // rows (n, i, y, x), columns o
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t c = 0; c < m1; ++c)
        for (std::int64_t p = 0; p < sp; ++p)
          for (std::int64_t o = 0; o < m0; ++o) idx[j++] = ((i * m0 + o) * m1 + c) * sp + p;
    auto r = nn::relu(tp, nn::gather(tp, D, std::move(idx), {rows, m0}));
    auto z = nn::linear(tp, r, nn::reshape(tp, cls_w, {nc, m0}), cls_b);  // [rows, nc]
    std::vector<std::int64_t> idx2(static_cast<std::size_t>(rows * nc));
    j = 0;  // [N, nc, M1, h', w'] <- z[(n, i, p), k]
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t k = 0; k < nc; ++k)
        for (std::int64_t c = 0; c < m1; ++c)
          for (std::int64_t p = 0; p < sp; ++p) idx2[j++] = ((i * m1 + c) * sp + p) * nc + k;
    return nn::gather(tp, z, std::move(idx2), {n, nc, m1, hh, ww});
  }
};

}  // namespace ghnq::ghn
