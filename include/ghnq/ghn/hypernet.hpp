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
///  - Decoder calls are batched: all conv/linear weights with the same kernel size in one
///    ConvDecoder call, all 1-D parameters in one decoder_1d call, across the whole batch.
/// \code
/// ghnq::rng g(0);
/// ghnq::hypernet<ghnq::ghn2_config<>> ghn(g);
/// auto params = ghn.predict(tp, net);          // one var per parameter of net
/// \endcode
#pragma once
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "ghnq/arch/params.hpp"
#include "ghnq/ghn/decoder.hpp"
#include "ghnq/ghn/gated_gnn.hpp"
#include "ghnq/ghn/shape_encoder.hpp"
#include "ghnq/ghn/tiling.hpp"
#include "ghnq/graph/batch.hpp"
#include "ghnq/graph/build.hpp"
#include "ghnq/nn/gather.hpp"
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
  var_t embed(tape_t& tp, const graph::graph_batch& batch) const {
    auto h = gnn_.forward(tp, enc_.forward(tp, batch), batch);
    if constexpr (Config::kLayerNorm) h = nn::layer_norm(tp, h, ln_w_, ln_b_);
    return h;
  }

  /// Predicted parameter sets, one per network of the batch (nets[k] is the network of graph k).
  std::vector<std::vector<var_t>> predict(tape_t& tp, const std::vector<const arch::network*>& nets,
                                          const graph::graph_batch& batch) const {
    GHNQ_CHECK(nets.size() == batch.graphs.size(), value_error, "hypernet::predict: ", nets.size(),
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

  const ghn::max_shape& max_shape() const noexcept { return ms_; }

 private:
  ghn::max_shape ms_;
  ghn::shape_encoder<T, B> enc_;
  gnn_t gnn_;
  var_t ln_w_, ln_b_;
  ghn::conv_decoder<T, B> dec_;
  ghn::decoder_1d<T, B> d1_;
  ghn::bias_class<T, B> bc_;
};

}  // namespace ghnq
