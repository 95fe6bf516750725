/// \file
/// \brief GHN node features (spec §2): the op-type embedding plus the ShapeEncoder, which embeds
/// each node's parameter shape as four indices into a channel and a spatial vocabulary.
///
/// x_v = embed(op_v) + concat(E_ch[d0], E_ch[d1], E_sp[d2], E_sp[d3])   (width H; E_ch, E_sp of width H/4)
///
/// where (d0, d1, d2, d3) are the vocabulary indices of the node's shape made 4-D (`shape_vocab`).
/// Nodes without a shape (input, sum, concat, glob_avg, msa, cse: `graph::node::shape` is empty)
/// use the dummy indices (n_ch, n_ch, n_sp, n_sp), the extra last row of each table.
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "ghnq/core/error.hpp"
#include "ghnq/core/rng.hpp"
#include "ghnq/graph/batch.hpp"
#include "ghnq/graph/graph.hpp"
#include "ghnq/nn/add.hpp"
#include "ghnq/nn/concat.hpp"
#include "ghnq/nn/embedding.hpp"

namespace ghnq::ghn {

/// The channel and spatial vocabularies of the ShapeEncoder and the lookup rules (spec §2.2).
///
///  - channels: sorted unique {1, 3, nc} ∪ {8..56 step 8} ∪ {64..4080 step 16} ∪ {4096..8192 step 32}
///    (391 values for nc = 10 or 1000);
///  - spatial: odd 1..max(12, S)-1 ∪ {14, 16} (S = 11: {1,3,5,7,9,11,14,16}).
///
/// Lookup of a size not in the vocabulary: channels 4..7 -> 8; channels above the largest (8192)
/// -> the largest; spatial 2 -> 3; spatial above the largest -> the largest; otherwise the
/// nearest listed value, ties going to the smaller one (so channel 2 -> 1). Sizes < 1 throw.
/// \code
/// ghnq::ghn::shape_vocab v(10, 11);
/// v.num_channels();               // 391
/// v.channels[v.channel_index(5)]; // 8
/// auto ix = v.indices(ghnq::shape{64, 32, 3, 3});   // {ch(64), ch(32), sp(3), sp(3)}
/// \endcode
struct shape_vocab {
  std::vector<std::int64_t> channels;  ///< sorted
  std::vector<std::int64_t> spatial;   ///< sorted

  shape_vocab(int num_classes, int max_spatial) {
    GHNQ_CHECK(num_classes >= 1, value_error, "shape_vocab: num_classes must be >= 1, got ", num_classes);
    GHNQ_CHECK(max_spatial >= 1, value_error, "shape_vocab: max_spatial must be >= 1, got ", max_spatial);
    channels = {1, 3, num_classes};
    for (int c = 8; c <= 56; c += 8) channels.push_back(c);
    for (int c = 64; c <= 4080; c += 16) channels.push_back(c);
    for (int c = 4096; c <= 8192; c += 32) channels.push_back(c);
    std::sort(channels.begin(), channels.end());
    channels.erase(std::unique(channels.begin(), channels.end()), channels.end());
    for (int s = 1; s <= std::max(12, max_spatial) - 1; s += 2) spatial.push_back(s);
    spatial.push_back(14);
    spatial.push_back(16);
    std::sort(spatial.begin(), spatial.end());
    spatial.erase(std::unique(spatial.begin(), spatial.end()), spatial.end());
  }

  std::int64_t num_channels() const noexcept { return static_cast<std::int64_t>(channels.size()); }
  std::int64_t num_spatial() const noexcept { return static_cast<std::int64_t>(spatial.size()); }
  /// The "no shape" indices: one past the last entry of each vocabulary.
  std::int64_t dummy_channel() const noexcept { return num_channels(); }
  std::int64_t dummy_spatial() const noexcept { return num_spatial(); }

  /// Index of channel size c (rules in the struct comment).
  std::int64_t channel_index(std::int64_t c) const {
    GHNQ_CHECK(c >= 1, value_error, "shape_vocab: channel size must be >= 1, got ", c);
    if (const auto i = find(channels, c); i >= 0) return i;
    if (c >= 4 && c <= 7) return find(channels, 8);
    return nearest(channels, c);
  }
  /// Index of spatial size s (rules in the struct comment).
  std::int64_t spatial_index(std::int64_t s) const {
    GHNQ_CHECK(s >= 1, value_error, "shape_vocab: spatial size must be >= 1, got ", s);
    if (const auto i = find(spatial, s); i >= 0) return i;
    if (s == 2) return find(spatial, 3);
    return nearest(spatial, s);
  }

  /// A parameter shape made 4-D (spec §2.2): (n) -> (n,1,1,1); (a,b) -> (a,b,1,1);
  /// (1,L,D) with L,D > 1 -> (1, D, floor(sqrt L), floor(sqrt L)); other (a,b,c) -> (a,b,c,1);
  /// 4-D unchanged. Rank 0 or > 4 throws shape_error.
  static std::array<std::int64_t, 4> to_4d(const ghnq::shape& s) {
    switch (s.rank()) {
      case 1: return {s[0], 1, 1, 1};
      case 2: return {s[0], s[1], 1, 1};
      case 3:
        if (s[0] == 1 && s[1] > 1 && s[2] > 1) {
          auto r = static_cast<std::int64_t>(std::floor(std::sqrt(static_cast<double>(s[1]))));
          while (r * r > s[1]) --r;  // guard against rounding
          while ((r + 1) * (r + 1) <= s[1]) ++r;
          return {1, s[2], r, r};
        }
        return {s[0], s[1], s[2], 1};
      case 4: return {s[0], s[1], s[2], s[3]};
      default: break;
    }
    GHNQ_CHECK(false, shape_error, "shape_vocab::to_4d: cannot encode a shape of rank ", s.rank(), ": ", s);
    return {};
  }

  /// (d0, d1, d2, d3) of a shape; an empty shape gives the dummy indices.
  std::array<std::int64_t, 4> indices(const ghnq::shape& s) const {
    if (s.empty()) return {dummy_channel(), dummy_channel(), dummy_spatial(), dummy_spatial()};
    const auto d = to_4d(s);
    return {channel_index(d[0]), channel_index(d[1]), spatial_index(d[2]), spatial_index(d[3])};
  }

 private:
  static std::int64_t find(const std::vector<std::int64_t>& v, std::int64_t x) {
    const auto it = std::lower_bound(v.begin(), v.end(), x);
    return (it != v.end() && *it == x) ? static_cast<std::int64_t>(it - v.begin()) : -1;
  }
  // Nearest value, ties to the smaller; above the largest -> the largest, below the smallest -> 0.
  static std::int64_t nearest(const std::vector<std::int64_t>& v, std::int64_t x) {
    const auto it = std::lower_bound(v.begin(), v.end(), x);
    if (it == v.end()) return static_cast<std::int64_t>(v.size()) - 1;
    if (it == v.begin()) return 0;
    const auto hi = static_cast<std::int64_t>(it - v.begin());
    return (x - v[static_cast<std::size_t>(hi - 1)] <= *it - x) ? hi - 1 : hi;
  }
};

/// Op-type embedding + ShapeEncoder of GHN-1/2/3 (spec §2.1-2.2).
///
/// Parameters, in `parameters()` order (all initialised N(0, 1) like PyTorch's Embedding, drawn
/// in this order from the rng):
///  - `embed`         [15, H]                   op-type table (row = graph::primitive);
///  - `embed_channel` [n_ch + 1, H/4]           channel table (last row: no shape);
///  - `embed_spatial` [n_sp + 1, H/4]           spatial table (last row: no shape).
/// H must be a positive multiple of 4. For H = 32, nc = 10, S = 11: 480 + 392*8 + 9*8 = 3688.
/// \code
/// ghnq::rng g(0);
/// ghnq::ghn::shape_encoder<float> enc(32, 10, 11, g);
/// auto x = enc.forward(tp, batch);   // [batch.total_nodes(), 32]
/// \endcode
template <class T, class B = backend::cpu_t>
struct shape_encoder {
  int hidden = 0;
  shape_vocab vocab;
  autograd::var<T, B> embed, embed_channel, embed_spatial;

  shape_encoder(int hidden_size, int num_classes, int max_spatial, rng& g)
      : hidden(hidden_size), vocab(num_classes, max_spatial) {
    GHNQ_CHECK(hidden_size >= 4 && hidden_size % 4 == 0, value_error,
               "shape_encoder: hidden size must be a positive multiple of 4, got ", hidden_size);
    const std::int64_t q = hidden_size / 4;
    embed = make({graph::kNumPrimitives, hidden_size}, g, "embed.weight");
    embed_channel = make({vocab.num_channels() + 1, q}, g, "shape_enc.embed_channel.weight");
    embed_spatial = make({vocab.num_spatial() + 1, q}, g, "shape_enc.embed_spatial.weight");
  }

  /// Node-index arrays of a batch: op ids and the four shape indices of every node, in global
  /// node order (the encoder's inputs; exposed for tests and caching).
  struct node_indices {
    std::vector<std::int64_t> op, d0, d1, d2, d3;
  };
  node_indices indices(const graph::graph_batch& batch) const {
    node_indices r;
    const auto n = static_cast<std::size_t>(batch.total_nodes());
    for (auto* v : {&r.op, &r.d0, &r.d1, &r.d2, &r.d3}) v->reserve(n);
    for (int b = 0; b < batch.size(); ++b)
      for (const graph::node& nd : batch[b].nodes) {
        r.op.push_back(static_cast<std::int64_t>(nd.type));
        const auto ix = vocab.indices(nd.shape);
        r.d0.push_back(ix[0]);
        r.d1.push_back(ix[1]);
        r.d2.push_back(ix[2]);
        r.d3.push_back(ix[3]);
      }
    return r;
  }

  /// Node features of every node of the batch: [batch.total_nodes(), H].
  autograd::var<T, B> forward(autograd::tape<T, B>& tp, const graph::graph_batch& batch) const {
    const auto ix = indices(batch);
    auto shape_part = nn::concat(tp,
                                 {nn::embedding(tp, embed_channel, ix.d0), nn::embedding(tp, embed_channel, ix.d1),
                                  nn::embedding(tp, embed_spatial, ix.d2), nn::embedding(tp, embed_spatial, ix.d3)},
                                 1);
    return nn::add(tp, nn::embedding(tp, embed, ix.op), shape_part);
  }

  /// embed, embed_channel, embed_spatial.
  std::vector<autograd::var<T, B>> parameters() const { return {embed, embed_channel, embed_spatial}; }
  std::int64_t num_params() const {
    std::int64_t n = 0;
    for (const auto& p : parameters()) n += p.value().numel();
    return n;
  }

 private:
  static autograd::var<T, B> make(const ghnq::shape& s, rng& g, const char* name) {
    std::vector<T> v(static_cast<std::size_t>(s.numel()));
    for (auto& e : v) e = static_cast<T>(g.normal());
    return autograd::parameter(tensor<T, B>::from(s, v), name);
  }
};

}  // namespace ghnq::ghn
