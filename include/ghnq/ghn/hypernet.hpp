/// \file
/// \brief `hypernet<Config>`: GHN-2 assembled from its parts — op embedding + ShapeEncoder,
/// a GNN layer (GatedGNN by default), LayerNorm, the decoders, periodic tiling and fan-in
/// normalization — predicting every parameter tensor of the networks of a graph batch.
///
/// Contract:
///  - `Config` is a compile-time type (see ghn2_config) giving the backend, the scalar type, the
///    hidden size, the decoder's max shape, the class count, s_max and the GNN layer template.
///  - `predict(tp, nets, batch)` returns, for each network k, one var per entry of
///    `arch::parameters(*nets[k])` (the executor's parameter-set order) with exactly that shape.
///    Parameters whose op has no graph node (ops that cannot reach the output) get zeros and no
///    gradient: the executor skips those ops.
///  - With a recording tape, gradients flow from the predicted tensors into every GHN parameter.
///  - Decoder calls are batched across the whole batch: all conv/linear weights in one
///    ConvDecoder fast-path call (conv_decoder::forward_blocks: only the block channels and window
///    each target uses), all 1-D parameters in one decoder_1d call. `predict_reference` computes
///    the same values the straightforward way (full decoder blocks, tile_to, normalize_fan_in).
///  - Without a recording tape (no_grad) nothing is recorded: no backward closures, no saved values.
/// \code
/// ghnq::rng g(0);
/// ghnq::hypernet<ghnq::ghn2_config<>> ghn(g);
/// auto params = ghn.predict(tp, net);          // one var per parameter of net
/// \endcode
#pragma once
#include <algorithm>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "ghnq/arch/params.hpp"
#include "ghnq/exec/quant_plan.hpp"
#include "ghnq/exec/quantize.hpp"
#include "ghnq/ghn/decoder.hpp"
#include "ghnq/nn/add.hpp"
#include "ghnq/nn/embedding.hpp"
#include "ghnq/nn/linear.hpp"
#include "ghnq/ghn/gated_gnn.hpp"
#include "ghnq/ghn/shape_encoder.hpp"
#include "ghnq/ghn/tiling.hpp"
#include "ghnq/graph/batch.hpp"
#include "ghnq/graph/build.hpp"
#include "ghnq/nn/gather.hpp"
#include "ghnq/nn/activation.hpp"
#include "ghnq/nn/affine.hpp"
#include "ghnq/nn/layer_norm.hpp"

namespace ghnq {

/// The CIFAR-10 GHN-2 configuration (H = 32, max_shape 64x64x11x11, 10 classes, s_max = 50,
/// GatedGNN, LayerNorm after the GNN, fan-in normalization of predictions).
/// \tparam Backend_ backend tag. \tparam T_ scalar type. \tparam tHidden hidden size H.
template <class Backend_ = backend::cpu_t, class T_ = float, int tHidden = 32, int tClasses = 10>
struct ghn2_config {
  static_assert(tHidden >= 4 && tHidden % 4 == 0, "ghn2_config: the hidden size must be a positive multiple of 4");
  static_assert(tClasses >= 1, "ghn2_config: at least one class");
  using backend = Backend_;
  using scalar = T_;
  static constexpr int kHidden = tHidden;
  static constexpr int kClasses = tClasses;
  static constexpr std::int64_t kMaxOut = 64, kMaxIn = 64, kMaxSpatial = 11;
  static constexpr int kSMax = 50;
  static constexpr bool kLayerNorm = true;
  static constexpr bool kWeightNorm = true;
  /// The GNN layer (see the concept in ghn/gated_gnn.hpp).
  template <class T, class B>
  using gnn = ghn::gated_gnn<T, B>;
};

/// The quantization-aware variant of ghn2_config: a learned bit-width embedding per node (added
/// before the GNN) and a quant head Linear(H -> 2) giving each quantized conv / linear op the
/// log-factors of its weight step and input step / clip. Both start at zero, so an untrained
/// ghn2q predicts exactly as ghn2 with the same weights, and an FP checkpoint's tensors fit it.
/// Extra parameters: 8 H + 2 H + 2 (1,620,764 + 322 at H = 32).
template <class Backend_ = backend::cpu_t, class T_ = float, int tHidden = 32, int tClasses = 10>
struct ghn2q_config : ghn2_config<Backend_, T_, tHidden, tClasses> {
  static constexpr bool kQuantAware = true;
};

namespace ghn {
/// Rows of the bit-width embedding: float, 1, 2, 3, 4, 5-7, 8, 9-16 bits.
inline constexpr std::int64_t kBitLevels = 8;
/// Embedding rows of node bit-widths (32 or 0: float).
inline std::vector<std::int64_t> bit_levels(const std::vector<int>& bits) {
  std::vector<std::int64_t> out(bits.size());
  for (std::size_t i = 0; i < bits.size(); ++i) {
    const int b = bits[i];
    out[i] = (b <= 0 || b >= 32) ? 0 : b <= 4 ? b : b < 8 ? 5 : b == 8 ? 6 : 7;
  }
  return out;
}
template <class C, class = void>
struct is_quant_aware : std::false_type {};
template <class C>
struct is_quant_aware<C, std::void_t<decltype(C::kQuantAware)>> : std::bool_constant<C::kQuantAware> {};
}  // namespace ghn

/// Output of hypernet::predict_quant: parameter sets and quantizer log-factors per network.
template <class T, class B>
struct quant_prediction {
  std::vector<std::vector<autograd::var<T, B>>> params;
  std::vector<exec::quant_factors<T, B>> factors;
};

template <class Config>
class hypernet {
 public:
  using config = Config;
  using B = typename Config::backend;
  using T = typename Config::scalar;
  using var_t = autograd::var<T, B>;
  using tape_t = autograd::tape<T, B>;
  using gnn_t = typename Config::template gnn<T, B>;
  static constexpr int kHidden = Config::kHidden;
  /// True for quantization-aware configurations (ghn2q_config).
  static constexpr bool quant_aware = ghn::is_quant_aware<Config>::value;

  explicit hypernet(rng& g)
      : ms_{Config::kMaxOut, Config::kMaxIn, Config::kMaxSpatial},
        enc_(kHidden, Config::kClasses, static_cast<int>(Config::kMaxSpatial), g),
        gnn_(kHidden, Config::kSMax > 1, g),
        dec_(kHidden, ms_, Config::kClasses, g),
        d1_(kHidden, ms_, g),
        bc_(ms_, Config::kClasses, g) {
    if constexpr (Config::kLayerNorm) {
      ln_w_ = autograd::parameter(tensor<T, B>::full({kHidden}, T(1)), "ln.weight");
      ln_b_ = autograd::parameter(tensor<T, B>::zeros({kHidden}), "ln.bias");
    }
    if constexpr (quant_aware) {  // zero-initialized: a new quantization-aware GHN predicts as its float twin
      bit_emb_ = autograd::parameter(tensor<T, B>::zeros({ghn::kBitLevels, kHidden}), "quant.bit_embedding");
      qhead_w_ = autograd::parameter(tensor<T, B>::zeros({2, kHidden}), "quant.head.weight");
      qhead_b_ = autograd::parameter(tensor<T, B>::zeros({2}), "quant.head.bias");
    }
  }

  /// Every trainable tensor, in a fixed order (encoder, GNN, LayerNorm, decoders).
  std::vector<var_t> parameters() const {
    std::vector<var_t> ps;
    auto add = [&](const std::vector<var_t>& v) { ps.insert(ps.end(), v.begin(), v.end()); };
    add(enc_.parameters());
    add(gnn_.parameters());
    if constexpr (Config::kLayerNorm) add({ln_w_, ln_b_});
    add(dec_.parameters());
    add(d1_.parameters());
    add(bc_.parameters());
    if constexpr (quant_aware) add({bit_emb_, qhead_w_, qhead_b_});
    return ps;
  }
  std::int64_t num_params() const {
    std::int64_t n = 0;
    for (const auto& p : parameters()) n += p.value().numel();
    return n;
  }

  /// The graph a network is read as (s_max of the configuration).
  static graph::computational_graph graph_of(const arch::network& net) { return graph::build(net, Config::kSMax); }

  /// Node embeddings after encoder, GNN and LayerNorm: [batch.total_nodes(), H].
  /// `node_bits` (quantization-aware configurations only, one entry per node of the batch): the
  /// bit-width each node's tensor is quantized to (32: float), added as a learned bit-width embedding
  /// before the GNN.
  var_t embed(tape_t& tp, const graph::graph_batch& batch, const std::vector<int>* node_bits = nullptr) const {
    auto h0 = enc_.forward(tp, batch);
    if constexpr (quant_aware) {
      if (node_bits != nullptr) h0 = nn::add(tp, h0, nn::embedding(tp, bit_emb_, ghn::bit_levels(*node_bits)));
    }
    auto h = gnn_.forward(tp, h0, batch);
    if constexpr (Config::kLayerNorm) h = nn::layer_norm(tp, h, ln_w_, ln_b_);
    return h;
  }

  /// Predicted parameter sets, one per network of the batch (nets[k] is the network of graph k).
  ///
  /// Fast path (equal to `predict_reference` up to float rounding, gradients included): all conv /
  /// linear weights are decoded by one conv_decoder::forward_blocks call, which computes only the
  /// window and block channels each target uses (one conv2 GEMM per distinct needed block size); every
  /// predicted tensor is then read from its node's contiguous block by one multi-output
  /// nn::gather_tiles per block with the fan-in scale folded in; the 1-D squashings (2 sigmoid(p / 2), tanh(p / 5)) are applied once to the whole
  /// decoder_1d / bias_class output before tiling (elementwise maps commute with gathers).
  std::vector<std::vector<var_t>> predict(tape_t& tp, const std::vector<const arch::network*>& nets,
                                          const graph::graph_batch& batch) const {
    return decode(tp, nets, batch, embed(tp, batch));
  }

  /// Parameters and quantizer log-factors for networks quantized by `plans` (one plan per network,
  /// exec::plan_quantization; null: float). The plans' bit-widths enter the node embeddings and
  /// the quant head gives each conv / linear op log-factors of its weight step and input step /
  /// clip (exec::quantize.hpp); both exist only in quantization-aware configurations
  /// (ghn2q_config), otherwise the factors are undefined (factor 1) and the parameters are
  /// predict()'s.
  quant_prediction<T, B> predict_quant(tape_t& tp, const std::vector<const arch::network*>& nets,
                                       const graph::graph_batch& batch,
                                       const std::vector<std::vector<exec::op_quant>>* plans) const {
    GHNQ_CHECK(plans == nullptr || plans->size() == nets.size(), value_error, "hypernet::predict_quant: ",
               plans ? plans->size() : 0, " plans for ", nets.size(), " networks");
    GHNQ_CHECK(nets.size() == batch.graphs.size(), value_error, "hypernet::predict_quant: ", nets.size(),
               " networks for ", batch.graphs.size(), " graphs");
    quant_prediction<T, B> out;
    out.factors.resize(nets.size());
    if constexpr (!quant_aware) {
      out.params = predict(tp, nets, batch);
      return out;
    } else {
      // Bit-width of every node: its op's weight bits for conv / linear weight nodes, else 32.
      std::vector<int> bits(static_cast<std::size_t>(batch.total_nodes()), 32);
      std::vector<std::vector<std::int64_t>> rows(nets.size());  // per op: the node row of its weight
      for (std::size_t k = 0; k < nets.size(); ++k) {
        const auto& g = *batch.graphs[k];
        const auto infos = arch::parameters(*nets[k]);
        rows[k].assign(nets[k]->ops.size(), -1);
        for (std::size_t v = 0; v < g.nodes.size(); ++v) {
          const auto& nd = g.nodes[v];
          if (nd.param < 0 || nd.type == graph::primitive::bias || nd.type == graph::primitive::bn ||
              nd.type == graph::primitive::ln)
            continue;
          const auto& pi = infos[static_cast<std::size_t>(nd.param)];
          if (pi.role != arch::param_role::weight) continue;
          const auto op = static_cast<std::size_t>(pi.op);
          const std::int64_t row = batch.offsets[k] + static_cast<std::int64_t>(v);
          rows[k][op] = row;
          if (plans != nullptr && (*plans)[k][op].w_bits > 0) bits[static_cast<std::size_t>(row)] = (*plans)[k][op].w_bits;
        }
      }
      const var_t h = embed(tp, batch, plans != nullptr ? &bits : nullptr);
      out.params = decode(tp, nets, batch, h);
      if (plans == nullptr) return out;
      // Quant head on the weight nodes of quantized ops: [n, 2] = (log f_w, log f_a).
      std::vector<std::int64_t> idx;
      std::vector<std::pair<std::size_t, std::size_t>> where;
      for (std::size_t k = 0; k < nets.size(); ++k) {
        out.factors[k].weight.assign(nets[k]->ops.size(), var_t());
        out.factors[k].input.assign(nets[k]->ops.size(), var_t());
        for (std::size_t op = 0; op < rows[k].size(); ++op)
          if (rows[k][op] >= 0 && (*plans)[k][op].quantized()) {
            for (int j = 0; j < kHidden; ++j) idx.push_back(rows[k][op] * kHidden + j);
            where.emplace_back(k, op);
          }
      }
      if (where.empty()) return out;
      const auto n = static_cast<std::int64_t>(where.size());
      const auto f = nn::linear(tp, nn::gather(tp, h, std::move(idx), {n, kHidden}), qhead_w_, qhead_b_);  // [n, 2]
      for (std::int64_t r = 0; r < n; ++r) {
        const auto [k, op] = where[static_cast<std::size_t>(r)];
        out.factors[k].weight[op] = nn::gather(tp, f, {2 * r}, {1});
        out.factors[k].input[op] = nn::gather(tp, f, {2 * r + 1}, {1});
      }
      return out;
    }
  }

  /// Decoders, tiling and normalization on given node embeddings `h` (see predict()).
  std::vector<std::vector<var_t>> decode(tape_t& tp, const std::vector<const arch::network*>& nets,
                                         const graph::graph_batch& batch, const var_t& h) const {
    GHNQ_CHECK(nets.size() == batch.graphs.size(), value_error, "hypernet::predict: ", nets.size(),
               " networks for ", batch.graphs.size(), " graphs");
    std::vector<std::vector<var_t>> out(nets.size());
    std::vector<std::vector<arch::param_info>> infos(nets.size());
    for (std::size_t k = 0; k < nets.size(); ++k) {
      infos[k] = arch::parameters(*nets[k]);
      out[k].resize(infos[k].size());
    }
    struct item {
      std::size_t net;
      int param, bias_param;    // bias_param: BN bias predicted from the same node (or -1)
      std::int64_t row;         // global node index
      std::int64_t bo = 0, bi = 0;  // needed block rows / columns (conv and classifier weights)
    };
    const std::int64_t m0 = ms_.out, m1 = ms_.in;
    std::vector<item> conv, cls_w, one_d, cls_b;
    for (std::size_t k = 0; k < nets.size(); ++k) {
      const auto& g = *batch.graphs[k];
      std::vector<int> bias_of_op(nets[k]->ops.size(), -1);
      for (std::size_t p = 0; p < infos[k].size(); ++p)
        if (infos[k][p].role == arch::param_role::bias) bias_of_op[static_cast<std::size_t>(infos[k][p].op)] = static_cast<int>(p);
      for (std::size_t v = 0; v < g.nodes.size(); ++v) {
        const auto& nd = g.nodes[v];
        if (nd.param < 0) continue;
        const std::int64_t row = batch.offsets[k] + static_cast<std::int64_t>(v);
        const auto& pi = infos[k][static_cast<std::size_t>(nd.param)];
        const auto& sz = pi.shape;
        if (nd.type == graph::primitive::bn || nd.type == graph::primitive::ln) {
          one_d.push_back({k, nd.param, bias_of_op[static_cast<std::size_t>(pi.op)], row});
        } else if (nd.type == graph::primitive::bias) {
          (nd.is_last_bias ? cls_b : one_d).push_back({k, nd.param, -1, row});
        } else {
          GHNQ_CHECK(sz.rank() >= 2 && sz.rank() <= 4, value_error, "hypernet::predict: weight '", pi.name,
                     "' of shape ", sz, " must have rank 2..4");
          const std::int64_t bi = std::min(sz[1], m1);
          if (nd.is_last_weight && sz.rank() == 2) cls_w.push_back({k, nd.param, -1, row, m0, bi});
          else conv.push_back({k, nd.param, -1, row, std::min(sz[0], m0), bi});
        }
      }
    }
    auto rows_of = [&](const std::vector<item>& items) {
      std::vector<std::int64_t> idx;
      idx.reserve(items.size() * kHidden);
      for (const auto& it : items)
        for (int j = 0; j < kHidden; ++j) idx.push_back(it.row * kHidden + j);
      return nn::gather(tp, h, std::move(idx), {static_cast<std::int64_t>(items.size()), kHidden});
    };
    auto target_of = [&](const item& it, int param) -> const ghnq::shape& {
      return infos[it.net][static_cast<std::size_t>(param)].shape;
    };
    auto weight_scale = [](const ghnq::shape& sz) { return Config::kWeightNorm ? ghn::fan_in_scale(sz) : 1.0; };
    // Tiles read from one source; assigns the outputs.
    auto place = [&](const var_t& src, const std::vector<nn::tile_spec>& specs,
                     const std::vector<std::pair<const item*, int>>& dst) {
      if (specs.empty()) return;
      auto ws = nn::gather_tiles(tp, src, specs);
      for (std::size_t t = 0; t < ws.size(); ++t) out[dst[t].first->net][static_cast<std::size_t>(dst[t].second)] = ws[t];
    };
    using dec_t = ghn::conv_decoder<T, B>;
    // Conv / linear weights: one fast-path call; every node reads its window of its block.
    if (!conv.empty()) {
      std::vector<typename dec_t::block_request> req;
      req.reserve(conv.size());
      for (const auto& it : conv) {
        const auto& sz = target_of(it, it.param);
        req.push_back({sz.rank() == 4 ? sz[2] : 1, sz.rank() == 4 ? sz[3] : 1, it.bo, it.bi});
      }
      const auto bs = dec_.forward_blocks(tp, rows_of(conv), req);
      std::vector<std::vector<nn::tile_spec>> specs(bs.blocks.size());
      std::vector<std::vector<std::pair<const item*, int>>> dst(bs.blocks.size());
      for (std::size_t n = 0; n < conv.size(); ++n) {
        const std::size_t b = bs.part[n];
        const std::int64_t bo = bs.out[b], bi = bs.in[b], hh = bs.hh[n], ww = bs.ww[n], p = hh * ww;
        const auto& sz = target_of(conv[n], conv[n].param);
        // the node's block [bo, bi, hh, ww] is contiguous from bo * bi * row on
        specs[b].push_back({sz, bo * bi * bs.row[n], {{bo, bi, hh, ww}}, {{bi * p, p, ww, 1}}, weight_scale(sz)});
        dst[b].emplace_back(&conv[n], conv[n].param);
      }
      for (std::size_t b = 0; b < bs.blocks.size(); ++b) place(bs.blocks[b], specs[b], dst[b]);
    }
    // Classifier weights: all M0 block rows feed the head; columns as needed.
    if (!cls_w.empty()) {
      std::vector<typename dec_t::block_request> req;
      for (const auto& it : cls_w) req.push_back({1, 1, it.bo, it.bi});
      const auto bs = dec_.forward_blocks(tp, rows_of(cls_w), req);
      const std::int64_t nc = Config::kClasses;
      for (std::size_t b = 0; b < bs.blocks.size(); ++b) {
        const std::int64_t bi = bs.in[b];
        const auto z = dec_.classify_rows(tp, bs.blocks[b], bi);  // [rows * bi, nc], row r * bi + i
        std::vector<nn::tile_spec> specs;
        std::vector<std::pair<const item*, int>> dst;
        for (std::size_t n = 0; n < cls_w.size(); ++n) {
          if (bs.part[n] != b) continue;
          const auto& sz = target_of(cls_w[n], cls_w[n].param);
          specs.push_back({sz, bs.row[n] * bi * nc, {{nc, bi, 1, 1}}, {{1, nc, 0, 0}}, weight_scale(sz)});
          dst.emplace_back(&cls_w[n], cls_w[n].param);
        }
        place(z, specs, dst);
      }
    }
    // 1-D parameters: row 0 of decoder_1d -> norm weights, row 1 -> biases.
    if (!one_d.empty()) {
      const auto Y = d1_.forward(tp, rows_of(one_d));  // [N, 2, Mc]
      const std::int64_t mc = Y.shape()[2];
      var_t s0 = Y, s1 = Y;
      if constexpr (Config::kWeightNorm) {
        s0 = nn::affine(tp, nn::sigmoid(tp, nn::affine(tp, Y, 0.5)), 2.0);
        s1 = nn::tanh(tp, nn::affine(tp, Y, 0.2));
      }
      std::vector<nn::tile_spec> spec0, spec1;
      std::vector<std::pair<const item*, int>> dst0, dst1;
      auto add = [&](const item& it, int param, std::int64_t n, int r) {
        const auto& sz = target_of(it, param);
        GHNQ_CHECK(sz.rank() == 1, value_error, "hypernet::predict: 1-D parameter '",
                   infos[it.net][static_cast<std::size_t>(param)].name, "' has shape ", sz);
        (r == 0 ? spec0 : spec1).push_back({sz, (2 * n + r) * mc, {{mc, 1, 1, 1}}, {{1, 0, 0, 0}}, 1.0});
        (r == 0 ? dst0 : dst1).emplace_back(&it, param);
      };
      for (std::size_t n = 0; n < one_d.size(); ++n) {
        const auto& it = one_d[n];
        const auto i = static_cast<std::int64_t>(n);
        if (infos[it.net][static_cast<std::size_t>(it.param)].role == arch::param_role::weight) {
          add(it, it.param, i, 0);
          if (it.bias_param >= 0) add(it, it.bias_param, i, 1);
        } else {
          add(it, it.param, i, 1);
        }
      }
      place(s0, spec0, dst0);
      place(s1, spec1, dst1);
    }
    if (!cls_b.empty()) {
      auto Bc = bc_.forward(tp, d1_.forward(tp, rows_of(cls_b)));  // [N, nc]
      if constexpr (Config::kWeightNorm) Bc = nn::tanh(tp, nn::affine(tp, Bc, 0.2));
      const std::int64_t nc = Bc.shape()[1];
      std::vector<nn::tile_spec> specs;
      std::vector<std::pair<const item*, int>> dst;
      for (std::size_t n = 0; n < cls_b.size(); ++n) {
        const auto& sz = target_of(cls_b[n], cls_b[n].param);
        GHNQ_CHECK(sz.rank() == 1, value_error, "hypernet::predict: classifier bias of shape ", sz);
        specs.push_back({sz, static_cast<std::int64_t>(n) * nc, {{nc, 1, 1, 1}}, {{1, 0, 0, 0}}, 1.0});
        dst.emplace_back(&cls_b[n], cls_b[n].param);
      }
      place(Bc, specs, dst);
    }
    for (std::size_t k = 0; k < nets.size(); ++k)  // parameters of ops without a graph node
      for (std::size_t p = 0; p < out[k].size(); ++p)
        if (!out[k][p].defined()) out[k][p] = var_t(tensor<T, B>::zeros(infos[k][p].shape), false);
    return out;
  }

  /// The same predictions computed the straightforward way: full (M0, M1, h', w') decoder blocks
  /// (conv_decoder::forward / classify), then tile_to and normalize_fan_in per parameter. The
  /// documented slow reference of `predict` (equal up to float rounding, gradients included).
  std::vector<std::vector<var_t>> predict_reference(tape_t& tp, const std::vector<const arch::network*>& nets,
                                          const graph::graph_batch& batch) const {
    GHNQ_CHECK(nets.size() == batch.graphs.size(), value_error, "hypernet::predict_reference: ", nets.size(),
               " networks for ", batch.graphs.size(), " graphs");
    const var_t h = embed(tp, batch);
    std::vector<std::vector<var_t>> out(nets.size());
    std::vector<std::vector<arch::param_info>> infos(nets.size());
    for (std::size_t k = 0; k < nets.size(); ++k) {
      infos[k] = arch::parameters(*nets[k]);
      out[k].resize(infos[k].size());
    }
    // Group the nodes by decoder call.
    struct item {
      std::size_t net;
      int param, bias_param;  // bias_param: BN bias predicted from the same node (or -1)
      std::int64_t row;       // global node index
    };
    std::map<std::pair<std::int64_t, std::int64_t>, std::vector<item>> conv_groups;  // (kh, kw)
    std::vector<item> cls_w, one_d, cls_b;
    for (std::size_t k = 0; k < nets.size(); ++k) {
      const auto& g = *batch.graphs[k];
      std::vector<int> bias_of_op(nets[k]->ops.size(), -1);
      for (std::size_t p = 0; p < infos[k].size(); ++p)
        if (infos[k][p].role == arch::param_role::bias) bias_of_op[static_cast<std::size_t>(infos[k][p].op)] = static_cast<int>(p);
      for (std::size_t v = 0; v < g.nodes.size(); ++v) {
        const auto& nd = g.nodes[v];
        if (nd.param < 0) continue;
        const std::int64_t row = batch.offsets[k] + static_cast<std::int64_t>(v);
        const auto& pi = infos[k][static_cast<std::size_t>(nd.param)];
        if (nd.type == graph::primitive::bn || nd.type == graph::primitive::ln) {
          one_d.push_back({k, nd.param, bias_of_op[static_cast<std::size_t>(pi.op)], row});
        } else if (nd.type == graph::primitive::bias) {
          (nd.is_last_bias ? cls_b : one_d).push_back({k, nd.param, -1, row});
        } else if (nd.is_last_weight && pi.shape.rank() == 2) {
          cls_w.push_back({k, nd.param, -1, row});
        } else {
          const auto kh = pi.shape.rank() == 4 ? pi.shape[2] : 1, kw = pi.shape.rank() == 4 ? pi.shape[3] : 1;
          conv_groups[{kh, kw}].push_back({k, nd.param, -1, row});
        }
      }
    }
    auto rows_of = [&](const std::vector<item>& items) {
      std::vector<std::int64_t> idx;
      idx.reserve(items.size() * kHidden);
      for (const auto& it : items)
        for (int j = 0; j < kHidden; ++j) idx.push_back(it.row * kHidden + j);
      return nn::gather(tp, h, std::move(idx), {static_cast<std::int64_t>(items.size()), kHidden});
    };
    auto place = [&](const item& it, int param, const var_t& block, std::vector<std::int64_t> prefix,
                     ghn::param_role role) {
      const auto& target = infos[it.net][static_cast<std::size_t>(param)].shape;
      auto w = ghn::tile_to(tp, block, target, prefix);
      if constexpr (Config::kWeightNorm) w = ghn::normalize_fan_in(tp, w, role);
      out[it.net][static_cast<std::size_t>(param)] = w;
    };
    for (const auto& [k, items] : conv_groups) {
      const auto D = dec_.forward(tp, rows_of(items), k.first, k.second);
      for (std::size_t n = 0; n < items.size(); ++n)
        place(items[n], items[n].param, D, {static_cast<std::int64_t>(n)}, ghn::param_role::weight);
    }
    if (!cls_w.empty()) {
      const auto C = dec_.classify(tp, dec_.forward(tp, rows_of(cls_w), 1, 1));
      for (std::size_t n = 0; n < cls_w.size(); ++n)
        place(cls_w[n], cls_w[n].param, C, {static_cast<std::int64_t>(n)}, ghn::param_role::weight);
    }
    if (!one_d.empty()) {
      const auto Y = d1_.forward(tp, rows_of(one_d));  // [N, 2, Mc]: row 0 norm weight, row 1 bias
      for (std::size_t n = 0; n < one_d.size(); ++n) {
        const auto& it = one_d[n];
        const auto i = static_cast<std::int64_t>(n);
        const bool norm = infos[it.net][static_cast<std::size_t>(it.param)].role == arch::param_role::weight;
        if (norm) {
          place(it, it.param, Y, {i, 0}, ghn::param_role::norm_weight);
          if (it.bias_param >= 0) place(it, it.bias_param, Y, {i, 1}, ghn::param_role::bias);
        } else {
          place(it, it.param, Y, {i, 1}, ghn::param_role::bias);
        }
      }
    }
    if (!cls_b.empty()) {
      const auto Bc = bc_.forward(tp, d1_.forward(tp, rows_of(cls_b)));  // [N, nc]
      for (std::size_t n = 0; n < cls_b.size(); ++n)
        place(cls_b[n], cls_b[n].param, Bc, {static_cast<std::int64_t>(n)}, ghn::param_role::bias);
    }
    for (std::size_t k = 0; k < nets.size(); ++k)  // parameters of ops without a graph node
      for (std::size_t p = 0; p < out[k].size(); ++p)
        if (!out[k][p].defined()) out[k][p] = var_t(tensor<T, B>::zeros(infos[k][p].shape), false);
    return out;
  }

  /// Predicted parameter set of one network (builds its graph).
  std::vector<var_t> predict(tape_t& tp, const arch::network& net) const {
    graph::graph_batch batch;
    batch.add(graph_of(net));
    return predict(tp, {&net}, batch)[0];
  }
  /// `predict_reference` of one network.
  std::vector<var_t> predict_reference(tape_t& tp, const arch::network& net) const {
    graph::graph_batch batch;
    batch.add(graph_of(net));
    return predict_reference(tp, {&net}, batch)[0];
  }

  const ghn::max_shape& max_shape() const noexcept { return ms_; }

 private:
  var_t bit_emb_, qhead_w_, qhead_b_;  // quantization-aware configurations only
  ghn::max_shape ms_;
  ghn::shape_encoder<T, B> enc_;
  gnn_t gnn_;
  var_t ln_w_, ln_b_;
  ghn::conv_decoder<T, B> dec_;
  ghn::decoder_1d<T, B> d1_;
  ghn::bias_class<T, B> bc_;
};

}  // namespace ghnq
