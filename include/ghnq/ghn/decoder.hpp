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
#include <memory>
#include <utility>
#include <vector>

#include "ghnq/backend/cpu/gemm.hpp"
#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/core/rng.hpp"
#include "ghnq/ghn/init.hpp"
#include "ghnq/ghn/tiling.hpp"
#include "ghnq/nn/activation.hpp"
#include "ghnq/nn/combine_rows.hpp"
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

// ---- fast-path helpers (host backends) ----

/// Rows per GEMM task of the decoder fast path and columns per task of its last layer. The tiles are
/// fixed by the problem size only, so results do not depend on the number of threads.
inline constexpr std::int64_t kDecRowTile = 128;
inline constexpr std::int64_t kDecColTile = 256;
/// Below this many multiply-adds a loop of tasks runs inline on the caller.
inline constexpr std::int64_t kDecMinParallel = std::int64_t(1) << 18;

/// Grain for parallel_for over `tasks` tasks of `work` multiply-adds each: all inline when small.
inline std::int64_t dec_grain(std::int64_t tasks, std::int64_t work) {
  return tasks * work < kDecMinParallel ? std::max<std::int64_t>(1, tasks) : 1;
}

/// acc[j * acc_stride] += sum_i x[i * ld + j] for j < cols (rows summed in order in double; column
/// blocks in parallel).
template <class T>
void dec_column_sums(const T* x, std::int64_t rows, std::int64_t cols, std::int64_t ld, T* acc,
                     std::int64_t acc_stride = 1) {
  constexpr std::int64_t kCols = 256;
  const std::int64_t nb = (cols + kCols - 1) / kCols;
  parallel_for(0, nb, dec_grain(nb, rows * kCols), [&](std::int64_t b0, std::int64_t b1) {
    double sum[kCols];
    for (std::int64_t b = b0; b < b1; ++b) {
      const std::int64_t j0 = b * kCols, nj = std::min(cols - j0, kCols);
      std::fill_n(sum, nj, 0.0);
      for (std::int64_t i = 0; i < rows; ++i) {
        const T* xr = x + i * ld + j0;
        for (std::int64_t j = 0; j < nj; ++j) sum[j] += static_cast<double>(xr[j]);
      }
      for (std::int64_t j = 0; j < nj; ++j) acc[(j0 + j) * acc_stride] += static_cast<T>(sum[j]);
    }
  });
}

/// y = x where mask > 0, else 0 (n elements; the ReLU backward).
template <class T, class B>
tensor<T, B> dec_relu_grad(const tensor<T, B>& dy, const tensor<T, B>& y) {
  tensor<T, B> d(dy.shape());
  const std::int64_t n = dy.numel();
  const T* g = dy.data();
  const T* v = y.data();
  T* o = d.data();
  parallel_for(0, n, std::int64_t(1) << 15, [&](std::int64_t i0, std::int64_t i1) {
    for (std::int64_t i = i0; i < i1; ++i) o[i] = v[i] > T(0) ? g[i] : T(0);
  });
  return d;
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
///
/// Two ways to run it:
///  - `forward` / `classify` compute the full (M0, M1, h', w') block of every node: the documented slow
///    reference (kernels larger than S are served by tile_to's spatial tiling);
///  - the fast path `forward_blocks` (built from `window_features`, `hidden_features`, `block_rows`, and
///    `classify_rows` for the head) computes only what a target uses: the fc rows of the window, and of
///    the last 1x1 conv only the output channels o * M1 + i with o < out, i < in, where a target with
///    O x I channels needs out = min(O, M0), in = min(I, M1) (periodic tiling repeats the block beyond).
///    Its values equal the reference's block entries up to float rounding, and so do its gradients (rows
///    that are not computed receive no gradient, exactly as unused block entries do). The GEMMs are
///    split into fixed tiles run in parallel with oneTBB (results do not depend on the thread count).
/// \code
/// ghnq::ghn::conv_decoder<float> dec(32, {64, 64, 11}, 10, g);
/// auto D = dec.forward(tp, h, 3, 3);       // [N, 64, 64, 3, 3]
/// auto C = dec.classify(tp, dec.forward(tp, h_cls, 1, 1));   // [N, 10, 64, 1, 1]
/// // fast path: node 0 a 3x3 kernel needing 16 x 8 channels, node 1 a 1x7 kernel needing 64 x 64
/// auto bs = dec.forward_blocks(tp, h2, {{3, 3, 16, 8}, {1, 7, 64, 64}});
/// // node 0's block is bs.blocks[bs.part[0]] from element 16 * 8 * bs.row[0] on, laid out [16, 8, 3, 3]:
/// // == dec.forward(tp, h2, 3, 3)[0, :16, :8, :, :]
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

  // ---------------------------------------------------------------- fast path (host backends)

  /// A node's request for the fast path: its kernel (kh, kw) >= 1 and the block size it needs,
  /// out x in (1 <= out <= M0, 1 <= in <= M1; a target with O x I channels needs min(O, M0) x min(I, M1)).
  struct block_request {
    std::int64_t kh = 1, kw = 1, out = 1, in = 1;
  };
  /// Result of forward_blocks: one block per distinct (out, in), and where each node's rows are.
  struct block_set {
    std::vector<var_type> blocks;         ///< blocks[b]: flat, one segment per node (block_rows layout)
    std::vector<std::int64_t> out, in;    ///< block size of each block
    std::vector<std::size_t> part;        ///< per node: its block
    std::vector<std::int64_t> row;        ///< per node: its first row in that block
    std::vector<std::int64_t> hh, ww;     ///< per node: its window, min(S, kh) x min(S, kw)
  };

  /// Fast path: x [N, H], one request per node -> blocks such that, for node n with window h' x w',
  ///   blocks[part[n]][out * in * row[n] + (o * in + i) * h' w' + y * w' + x] == forward(x, kh_n, kw_n)[n, o, i, y, x]
  /// for o < out_n, i < in_n (up to float rounding). Work: the fc rows of each window (nodes grouped by
  /// window), one conv1 GEMM over all window positions of all nodes, and one conv2 GEMM per distinct
  /// (out, in) restricted to those channels (nodes with equal block sizes share it whatever their
  /// kernel). Differentiable w.r.t. x and every decoder parameter.
  block_set forward_blocks(autograd::tape<T, B>& tp, const var_type& x, const std::vector<block_request>& req) const {
    detail::require_embeddings(x, hid, "conv_decoder::forward_blocks");
    const auto n = static_cast<std::size_t>(x.shape()[0]);
    GHNQ_CHECK(req.size() == n, value_error, "conv_decoder::forward_blocks: ", req.size(), " requests for ", n,
               " nodes");
    block_set res;
    res.part.resize(n);
    res.row.resize(n);
    res.hh.resize(n);
    res.ww.resize(n);
    // window groups (in order of first appearance) and each node's place in its group
    std::vector<std::pair<std::int64_t, std::int64_t>> wins;
    std::vector<std::vector<std::int64_t>> members;
    std::vector<std::size_t> group(n);
    std::vector<std::int64_t> local(n);
    for (std::size_t i = 0; i < n; ++i) {
      const auto& r = req[i];
      GHNQ_CHECK(r.kh >= 1 && r.kw >= 1 && r.out >= 1 && r.out <= m0 && r.in >= 1 && r.in <= m1, value_error,
                 "conv_decoder::forward_blocks: request ", i, " (kernel ", r.kh, "x", r.kw, ", block ", r.out, "x",
                 r.in, ") needs a kernel >= 1x1 and a block within 1..", m0, " x 1..", m1);
      res.hh[i] = std::min(s, r.kh);
      res.ww[i] = std::min(s, r.kw);
      const std::pair<std::int64_t, std::int64_t> w{res.hh[i], res.ww[i]};
      std::size_t gi = 0;
      while (gi < wins.size() && wins[gi] != w) ++gi;
      if (gi == wins.size()) {
        wins.push_back(w);
        members.emplace_back();
      }
      group[i] = gi;
      local[i] = static_cast<std::int64_t>(members[gi].size());
      members[gi].push_back(static_cast<std::int64_t>(i));
    }
    std::vector<var_type> feats(wins.size());
    for (std::size_t gi = 0; gi < wins.size(); ++gi) {
      var_type xg = x;
      if (members[gi].size() != n) {
        auto m = std::make_shared<nn::row_map<T>>();
        m->reserve(members[gi].size());
        for (std::size_t k = 0; k < members[gi].size(); ++k) m->add(static_cast<std::int64_t>(k), 0, members[gi][k]);
        xg = nn::combine_rows(tp, {x}, static_cast<std::int64_t>(members[gi].size()),
                              std::shared_ptr<const nn::row_map<T>>(std::move(m)), false);
      }
      feats[gi] = window_features(tp, xg, wins[gi].first, wins[gi].second);
    }
    // nodes in order of block size; their window rows stacked in that order
    std::vector<std::size_t> order(n);
    for (std::size_t i = 0; i < n; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return req[a].out != req[b].out ? req[a].out < req[b].out : req[a].in < req[b].in;
    });
    std::vector<std::int64_t> start;  // first row of each block in the stacked rows
    std::int64_t total = 0;
    for (const std::size_t i : order) {
      if (res.out.empty() || res.out.back() != req[i].out || res.in.back() != req[i].in) {
        res.out.push_back(req[i].out);
        res.in.push_back(req[i].in);
        start.push_back(total);
      }
      res.part[i] = res.out.size() - 1;
      res.row[i] = total - start.back();
      total += res.hh[i] * res.ww[i];
    }
    start.push_back(total);
    var_type r_all;
    bool identity = wins.size() == 1;
    for (std::size_t k = 0; identity && k < n; ++k) identity = order[k] == k;
    if (identity) {
      r_all = feats[0];
    } else {
      auto m = std::make_shared<nn::row_map<T>>();
      m->reserve(static_cast<std::size_t>(total));
      std::int64_t r = 0;
      for (const std::size_t i : order) {
        const std::int64_t p = res.hh[i] * res.ww[i];
        for (std::int64_t q = 0; q < p; ++q) m->add(r++, static_cast<std::int32_t>(group[i]), local[i] * p + q);
      }
      r_all = nn::combine_rows(tp, feats, total, std::shared_ptr<const nn::row_map<T>>(std::move(m)), false);
    }
    const auto g1 = hidden_features(tp, r_all);
    // one segment per node: node rows in block order
    std::vector<std::vector<std::int64_t>> seg(res.out.size(), std::vector<std::int64_t>{0});
    for (const std::size_t i : order) seg[res.part[i]].push_back(res.row[i] + res.hh[i] * res.ww[i]);
    for (std::size_t b = 0; b < res.out.size(); ++b)
      res.blocks.push_back(block_rows(tp, g1, start[b], start[b + 1] - start[b], res.out[b], res.in[b], std::move(seg[b])));
    return res;
  }

  /// Fast path, step 1: the ReLU'd fc features of the top-left hh x ww window only (1 <= hh, ww <= S):
  ///   R[(n * hh + y) * ww + x, c] = relu(x_n fc_w^T + fc_b)[c * S * S + y * S + x]   -> [N * hh * ww, h0]
  /// (one GEMM per window position over the strided fc rows; backward through the same rows).
  var_type window_features(autograd::tape<T, B>& tp, const var_type& x, std::int64_t hh, std::int64_t ww) const {
    static_assert(!B::is_device, "conv_decoder::window_features: host backends only");
    using G = backend::impl<B, backend::op::gemm>;
    detail::require_embeddings(x, hid, "conv_decoder::window_features");
    GHNQ_CHECK(hh >= 1 && hh <= s && ww >= 1 && ww <= s, value_error, "conv_decoder::window_features: window ", hh,
               "x", ww, " must be within 1..", s);
    const std::int64_t n = x.shape()[0], p = hh * ww, ss = s * s, H = hid, C = h0, S = s;
    tensor<T, B> r({n * p, C});
    {
      const T* X = x.value().data();
      const T* W = fc_w.value().data();
      const T* bias = fc_b.value().data();
      T* R = r.data();
      parallel_for(0, p, detail::dec_grain(p, n * C * H), [&](std::int64_t q0, std::int64_t q1) {
        for (std::int64_t q = q0; q < q1; ++q) {
          const std::int64_t pos = (q / ww) * S + q % ww;
          for (std::int64_t i = 0; i < n; ++i)
            for (std::int64_t c = 0; c < C; ++c) R[(i * p + q) * C + c] = bias[c * ss + pos];
          G::run(false, true, n, C, H, T(1), X, H, W + pos * H, ss * H, T(1), R + q * C, p * C);
          for (std::int64_t i = 0; i < n; ++i)
            for (std::int64_t c = 0; c < C; ++c) R[(i * p + q) * C + c] = std::max(R[(i * p + q) * C + c], T(0));
        }
      });
    }
    const bool tracked = tp.needs(x, fc_w, fc_b);
    auto out = tp.make_output(r, tracked);
    if (tracked) {
      tp.record([x, out, w = fc_w, b = fc_b, n, p, ss, H, C, S, ww]() {
        if (!out.has_grad()) return;
        const auto d = detail::dec_relu_grad(out.grad(), out.value());
        const T* D = d.data();
        if (x.requires_grad())  // dx += sum_q dR_q W_q (positions in order)
          for (std::int64_t q = 0; q < p; ++q)
            G::run(false, false, n, H, C, T(1), D + q * C, p * C, w.value().data() + ((q / ww) * S + q % ww) * H,
                   ss * H, T(1), x.grad().data(), H);
        if (w.requires_grad()) {  // dW_q += dR_q^T x (disjoint rows per position)
          T* dw = w.grad().data();
          const T* X = x.value().data();
          parallel_for(0, p, detail::dec_grain(p, n * C * H), [&](std::int64_t q0, std::int64_t q1) {
            for (std::int64_t q = q0; q < q1; ++q)
              G::run(true, false, C, H, n, T(1), D + q * C, p * C, X, H, T(1), dw + ((q / ww) * S + q % ww) * H, ss * H);
          });
        }
        if (b.requires_grad()) {
          T* db = b.grad().data();
          for (std::int64_t q = 0; q < p; ++q)
            detail::dec_column_sums(D + q * C, n, C, p * C, db + (q / ww) * S + q % ww, ss);
        }
      });
    }
    return out;
  }

  /// Fast path, step 2: relu(r conv1^T + b) for window features r [rows, h0] -> [rows, h1].
  var_type hidden_features(autograd::tape<T, B>& tp, const var_type& r) const {
    static_assert(!B::is_device, "conv_decoder::hidden_features: host backends only");
    using G = backend::impl<B, backend::op::gemm>;
    GHNQ_CHECK(r.defined() && r.value().rank() == 2 && r.shape()[1] == h0, shape_error,
               "conv_decoder::hidden_features: input must be [rows, ", h0, "], got ",
               r.defined() ? r.shape() : ghnq::shape{});
    const std::int64_t rows = r.shape()[0], K = h0, M = h1;
    const std::int64_t tiles = (rows + detail::kDecRowTile - 1) / detail::kDecRowTile;
    tensor<T, B> y({rows, M});
    {
      const T* R = r.value().data();
      const T* W = conv1_w.value().data();
      const T* bias = conv1_b.value().data();
      T* Y = y.data();
      parallel_for(0, tiles, detail::dec_grain(tiles, detail::kDecRowTile * K * M), [&](std::int64_t t0, std::int64_t t1) {
        for (std::int64_t t = t0; t < t1; ++t) {
          const std::int64_t r0 = t * detail::kDecRowTile, nr = std::min(rows - r0, detail::kDecRowTile);
          for (std::int64_t i = r0; i < r0 + nr; ++i) std::copy_n(bias, M, Y + i * M);
          G::run(false, true, nr, M, K, T(1), R + r0 * K, K, W, K, T(1), Y + r0 * M, M);
          for (std::int64_t i = r0 * M; i < (r0 + nr) * M; ++i) Y[i] = std::max(Y[i], T(0));
        }
      });
    }
    const bool tracked = tp.needs(r, conv1_w, conv1_b);
    auto out = tp.make_output(y, tracked);
    if (tracked) {
      tp.record([r, out, w = conv1_w, b = conv1_b, rows, K, M, tiles]() {
        if (!out.has_grad()) return;
        const auto d = detail::dec_relu_grad(out.grad(), out.value());
        const T* D = d.data();
        if (r.requires_grad()) {
          T* dr = r.grad().data();
          const T* W = w.value().data();
          parallel_for(0, tiles, detail::dec_grain(tiles, detail::kDecRowTile * K * M), [&](std::int64_t t0, std::int64_t t1) {
            for (std::int64_t t = t0; t < t1; ++t) {
              const std::int64_t r0 = t * detail::kDecRowTile, nr = std::min(rows - r0, detail::kDecRowTile);
              G::run(false, false, nr, K, M, T(1), D + r0 * M, M, W, K, T(1), dr + r0 * K, K);
            }
          });
        }
        if (w.requires_grad()) {  // dW += D^T r, in blocks of 64 output channels
          T* dw = w.grad().data();
          const T* R = r.value().data();
          const std::int64_t nb = (M + 63) / 64;
          parallel_for(0, nb, detail::dec_grain(nb, 64 * K * rows), [&](std::int64_t b0, std::int64_t b1) {
            for (std::int64_t bb = b0; bb < b1; ++bb) {
              const std::int64_t j0 = bb * 64, nj = std::min<std::int64_t>(64, M - j0);
              G::run(true, false, nj, K, rows, T(1), D + j0, M, R, K, T(1), dw + j0 * K, K);
            }
          });
        }
        if (b.requires_grad()) detail::dec_column_sums(D, rows, M, M, b.grad().data());
      });
    }
    return out;
  }

  /// Fast path, step 3: conv2 restricted to the needed block channels, on rows [row0, row0 + rows) of
  /// g1 [*, h1]:
  ///   v(c, r) = g1[row0 + r] . conv2_w[o * M1 + i] + conv2_b[o * M1 + i],   c = o * in + i,
  /// for o < out <= M0, i < in <= M1, r < rows, returned flat ([out * in * rows]) in a segmented
  /// channel-major layout: the rows are cut into segments at the increasing offsets `seg`
  /// (seg.front() == 0, seg.back() == rows; empty means one segment), and segment [a, b) stores
  /// v(c, r) at out * in * a + c * (b - a) + (r - a). With one segment per node (its window rows),
  /// a node's block [out * in, h' * w'] is contiguous: tiling it onto a target is a strided copy.
  var_type block_rows(autograd::tape<T, B>& tp, const var_type& g1, std::int64_t row0, std::int64_t rows,
                      std::int64_t out, std::int64_t in, std::vector<std::int64_t> seg = {}) const {
    static_assert(!B::is_device, "conv_decoder::block_rows: host backends only");
    using G = backend::impl<B, backend::op::gemm>;
    GHNQ_CHECK(g1.defined() && g1.value().rank() == 2 && g1.shape()[1] == h1, shape_error,
               "conv_decoder::block_rows: input must be [rows, ", h1, "], got ", g1.defined() ? g1.shape() : ghnq::shape{});
    GHNQ_CHECK(row0 >= 0 && rows >= 1 && row0 + rows <= g1.shape()[0], value_error, "conv_decoder::block_rows: rows [",
               row0, ", ", row0 + rows, ") outside an input of ", g1.shape()[0], " rows");
    GHNQ_CHECK(out >= 1 && out <= m0 && in >= 1 && in <= m1, value_error, "conv_decoder::block_rows: block ", out, "x",
               in, " must be within 1..", m0, " x 1..", m1);
    if (seg.empty()) seg = {0, rows};
    GHNQ_CHECK(seg.size() >= 2 && seg.front() == 0 && seg.back() == rows, value_error,
               "conv_decoder::block_rows: segments must start at 0 and end at ", rows);
    for (std::size_t k = 1; k < seg.size(); ++k)
      GHNQ_CHECK(seg[k] > seg[k - 1], value_error, "conv_decoder::block_rows: segment offsets must increase");
    const std::int64_t K = h1, M1 = m1, cols = out * in;
    // tasks: channel tiles (whole o's, about kDecColTile channels) x row tiles
    const std::int64_t o_tile = std::max<std::int64_t>(1, detail::kDecColTile / in);
    const std::int64_t n_ot = (out + o_tile - 1) / o_tile, n_rt = (rows + detail::kDecRowTile - 1) / detail::kDecRowTile;
    auto segs = std::make_shared<const std::vector<std::int64_t>>(std::move(seg));
    tensor<T, B> y({cols * rows});
    {
      const T* A = g1.value().data() + row0 * K;
      const T* W = conv2_w.value().data();
      const T* bias = conv2_b.value().data();
      T* Y = y.data();
      const std::int64_t tasks = n_ot * n_rt;
      // rows o * M1 + i (i < in) of conv2_w: contiguous when in == M1, else packed once (a few rows
      // read them in place, one product per o: packing would cost more than the product)
      const bool direct = in < M1 && rows <= 8;
      const std::vector<T> pack = in < M1 && !direct ? pack_rows(W, out, in, M1, K) : std::vector<T>();
      const T* Wsub = in < M1 && !direct ? pack.data() : W;
      const std::vector<std::int64_t>& sg = *segs;
      parallel_for(0, tasks, detail::dec_grain(tasks, detail::kDecRowTile * o_tile * in * K), [&](std::int64_t t0, std::int64_t t1) {
        std::vector<T> tmp;
        for (std::int64_t t = t0; t < t1; ++t) {
          const std::int64_t ot = t % n_ot, rt = t / n_ot;
          const std::int64_t o0 = ot * o_tile, no = std::min(out - o0, o_tile), c0 = o0 * in, nc = no * in;
          const std::int64_t r0 = rt * detail::kDecRowTile, nr = std::min(rows - r0, detail::kDecRowTile);
          // channel-major tile [nc, nr], then each segment's part to its place
          tmp.resize(static_cast<std::size_t>(nc * nr));
          for (std::int64_t o = o0; o < o0 + no; ++o)
            for (std::int64_t i = 0; i < in; ++i) std::fill_n(tmp.data() + ((o - o0) * in + i) * nr, nr, bias[o * M1 + i]);
          if (direct) {
            for (std::int64_t o = o0; o < o0 + no; ++o)
              G::run(false, true, in, nr, K, T(1), W + o * M1 * K, K, A + r0 * K, K, T(1), tmp.data() + (o - o0) * in * nr,
                     nr);
          } else {
            G::run(false, true, nc, nr, K, T(1), Wsub + c0 * K, K, A + r0 * K, K, T(1), tmp.data(), nr);
          }
          for_segments(sg, r0, nr, [&](std::int64_t a, std::int64_t len, std::int64_t lo, std::int64_t hi) {
            T* dst = Y + cols * a + c0 * len + (lo - a);
            const T* src = tmp.data() + (lo - r0);
            const std::int64_t n = hi - lo;
            if (n == 1) {  // one row of the segment in this tile (a 1x1 window, or a window cut by the tile edge)
              for (std::int64_t c = 0; c < nc; ++c) dst[c * len] = src[c * nr];
            } else {
              for (std::int64_t c = 0; c < nc; ++c)
                for (std::int64_t j = 0; j < n; ++j) dst[c * len + j] = src[c * nr + j];
            }
          });
        }
      });
    }
    const bool tracked = tp.needs(g1, conv2_w, conv2_b);
    auto res = tp.make_output(y, tracked);
    if (tracked) {
      tp.record([g1, res, segs, w = conv2_w, b = conv2_b, row0, rows, out, in, K, M1, cols, n_rt]() {
        if (!res.has_grad()) return;
        // the gradient back in channel-major [cols, rows] order
        tensor<T, B> dct({cols, rows});
        {
          const T* src = res.grad().data();
          T* D = dct.data();
          const auto& sg = *segs;
          for (std::size_t k = 0; k + 1 < sg.size(); ++k) {
            const std::int64_t a = sg[k], len = sg[k + 1] - a;
            for (std::int64_t c = 0; c < cols; ++c) std::copy_n(src + cols * a + c * len, len, D + c * rows + a);
          }
        }
        const T* D = dct.data();
        const T* W = w.value().data();
        if (g1.requires_grad()) {  // dg1 += D^T W_sub
          const std::vector<T> pack = in < M1 ? pack_rows(W, out, in, M1, K) : std::vector<T>();
          const T* Bm = in < M1 ? pack.data() : W;
          T* dg = g1.grad().data() + row0 * K;
          parallel_for(0, n_rt, detail::dec_grain(n_rt, detail::kDecRowTile * cols * K), [&](std::int64_t t0, std::int64_t t1) {
            for (std::int64_t t = t0; t < t1; ++t) {
              const std::int64_t r0 = t * detail::kDecRowTile, nr = std::min(rows - r0, detail::kDecRowTile);
              G::run(true, false, nr, K, cols, T(1), D + r0, rows, Bm, K, T(1), dg + r0 * K, K);
            }
          });
        }
        if (w.requires_grad()) {  // dW[o * M1 + i] += D[o * in + i, :] g1 (disjoint rows per o)
          T* dw = w.grad().data();
          const T* A = g1.value().data() + row0 * K;
          parallel_for(0, out, detail::dec_grain(out, in * K * rows), [&](std::int64_t o0, std::int64_t o1) {
            for (std::int64_t o = o0; o < o1; ++o)
              G::run(false, false, in, K, rows, T(1), D + o * in * rows, rows, A, K, T(1), dw + o * M1 * K, K);
          });
        }
        if (b.requires_grad()) {
          T* db = b.grad().data();
          parallel_for(0, out, detail::dec_grain(out, in * rows), [&](std::int64_t o0, std::int64_t o1) {
            for (std::int64_t o = o0; o < o1; ++o)
              for (std::int64_t i = 0; i < in; ++i) {
                const T* d = D + (o * in + i) * rows;
                double sum = 0.0;
                for (std::int64_t r = 0; r < rows; ++r) sum += static_cast<double>(d[r]);
                db[o * M1 + i] += static_cast<T>(sum);
              }
          });
        }
      });
    }
    return res;
  }

  /// f(segment start, segment length, lo, hi) for each segment overlapping rows [r0, r0 + nr), with
  /// [lo, hi) the overlap.
  template <class F>
  static void for_segments(const std::vector<std::int64_t>& seg, std::int64_t r0, std::int64_t nr, F&& f) {
    auto it = std::upper_bound(seg.begin(), seg.end(), r0);
    for (std::size_t k = static_cast<std::size_t>(it - seg.begin()) - 1; k + 1 < seg.size() && seg[k] < r0 + nr; ++k)
      f(seg[k], seg[k + 1] - seg[k], std::max(seg[k], r0), std::min(seg[k + 1], r0 + nr));
  }

  /// Rows o * M1 + i (o < out, i < in) of a [M0 * M1, K] matrix packed contiguously: [out * in, K].
  static std::vector<T> pack_rows(const T* w, std::int64_t out, std::int64_t in, std::int64_t M1, std::int64_t K) {
    std::vector<T> p(static_cast<std::size_t>(out * in * K));
    for (std::int64_t o = 0; o < out; ++o) std::copy_n(w + o * M1 * K, in * K, p.data() + o * in * K);
    return p;
  }

  /// Fast-path classifier head: for a block g from block_rows with out = M0 whose segments are single
  /// rows (nodes with a 1x1 window; g flat [rows * M0 * in], row r's channels contiguous),
  ///   Z[r * in + i, k] = cls_b[k] + sum_o cls_w[k, o] relu(g[r * M0 * in + o * in + i])   -> [rows * in, nc]
  /// i.e. Z[r * in + i, k] == classify(forward(x, 1, 1))[n, k, i, 0, 0] for the node n at row r.
  var_type classify_rows(autograd::tape<T, B>& tp, const var_type& g, std::int64_t in) const {
    GHNQ_CHECK(in >= 1 && in <= m1 && g.defined() && g.value().rank() == 1 && g.value().numel() % (m0 * in) == 0,
               shape_error, "conv_decoder::classify_rows: block must be flat [rows * ", m0, " * in] with 1 <= in <= ",
               m1, ", got ", g.defined() ? g.shape() : ghnq::shape{}, " and in = ", in);
    const auto rows = g.value().numel() / (m0 * in);
    std::vector<std::int64_t> idx(static_cast<std::size_t>(rows * in * m0));
    std::size_t j = 0;  // rows (r, i), columns o
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t i = 0; i < in; ++i)
        for (std::int64_t o = 0; o < m0; ++o) idx[j++] = r * m0 * in + o * in + i;
    auto a = nn::relu(tp, nn::gather(tp, g, std::move(idx), {rows * in, m0}));
    return nn::linear(tp, a, nn::reshape(tp, cls_w, {nc, m0}), cls_b);
  }
};

}  // namespace ghnq::ghn
