/// \file
/// \brief Batches of computational graphs (GHN meta-batches) with per-graph node offsets
/// (spec §1.6, the sparse `GraphBatch` of GHN-2).
///
/// Graph b's local node i is global node `offsets[b] + i`. Edges keep the local numbering inside
/// each graph; `edges()` returns them with the offsets added and the graph index attached, which
/// is what a GatedGNN sweep over the whole batch reads.
#pragma once
#include <climits>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "ghnq/core/error.hpp"
#include "ghnq/graph/graph.hpp"

namespace ghnq::graph {

/// The reference's meta-batch limit: a GHN-2 training meta-batch whose total node count exceeds
/// this is discarded and resampled (spec §1.6).
inline constexpr int kMaxNodesBatch = 2200;

/// An edge of a batch: global node indices, distance and the graph it belongs to.
struct batch_edge {
  int src = 0, dst = 0, dist = 1, graph = 0;
};

/// A batch of graphs. Graphs are shared, immutable (`std::shared_ptr<const ...>`), so a batch of
/// cached graphs costs no copies.
///
/// Invariant: `offsets.size() == graphs.size() + 1`, `offsets[0] == 0`, `offsets[b + 1] -
/// offsets[b] == graphs[b]->n_nodes()`. Change the batch only through `add` / `clear`.
/// \code
/// ghnq::graph::graph_batch batch;
/// for (const auto& net : nets) batch.add(ghnq::graph::build(net));
/// int first_node_of_graph_2 = batch.offsets[2];
/// \endcode
struct graph_batch {
  std::vector<std::shared_ptr<const computational_graph>> graphs;
  std::vector<int> offsets{0};  ///< cumulative node counts (exclusive prefix sums, then the total)

  graph_batch() = default;
  /// A batch of the given graphs (moved in), in order.
  explicit graph_batch(std::vector<computational_graph> gs) {
    for (computational_graph& g : gs) add(std::move(g));
  }

  /// Appends a graph (moved into shared storage).
  void add(computational_graph g) { add(std::make_shared<const computational_graph>(std::move(g))); }
  /// Appends a shared graph; throws value_error on a null pointer.
  void add(std::shared_ptr<const computational_graph> g) {
    GHNQ_CHECK(g != nullptr, value_error, "graph_batch::add: null graph");
    offsets.push_back(offsets.back() + g->n_nodes());
    graphs.push_back(std::move(g));
  }
  void clear() {
    graphs.clear();
    offsets.assign(1, 0);
  }

  /// Number of graphs.
  int size() const noexcept { return static_cast<int>(graphs.size()); }
  bool empty() const noexcept { return graphs.empty(); }
  /// Graph b (0 <= b < size()).
  const computational_graph& operator[](int b) const { return *graphs[static_cast<std::size_t>(b)]; }
  /// Total number of nodes (sum of the graphs' node counts).
  int total_nodes() const noexcept { return offsets.back(); }
  /// Number of nodes of graph b.
  int n_nodes(int b) const { return offsets[static_cast<std::size_t>(b) + 1] - offsets[static_cast<std::size_t>(b)]; }
  /// True when the batch has more than `max_nodes` nodes (the meta-batch filter).
  bool exceeds(int max_nodes = kMaxNodesBatch) const noexcept { return total_nodes() > max_nodes; }

  /// Total number of edges with dist <= max_dist.
  std::int64_t num_edges(int max_dist = INT_MAX) const noexcept {
    std::int64_t n = 0;
    for (const auto& g : graphs) n += g->num_edges(max_dist);
    return n;
  }

  /// Primitive id of every node, graphs concatenated (length total_nodes()).
  std::vector<int> node_types() const {
    std::vector<int> out;
    out.reserve(static_cast<std::size_t>(total_nodes()));
    for (const auto& g : graphs)
      for (const node& n : g->nodes) out.push_back(static_cast<int>(n.type));
    return out;
  }

  /// Graph index of every node (length total_nodes()).
  std::vector<int> node_graph() const {
    std::vector<int> out;
    out.reserve(static_cast<std::size_t>(total_nodes()));
    for (int b = 0; b < size(); ++b) out.insert(out.end(), static_cast<std::size_t>(n_nodes(b)), b);
    return out;
  }

  /// All edges with dist <= max_dist, with global node indices, graph by graph, each graph's
  /// edges in (src, dst) order.
  std::vector<batch_edge> edges(int max_dist = INT_MAX) const {
    std::vector<batch_edge> out;
    out.reserve(static_cast<std::size_t>(num_edges(max_dist)));
    for (int b = 0; b < size(); ++b) {
      const int off = offsets[static_cast<std::size_t>(b)];
      for (const edge& e : (*this)[b].edges)
        if (e.dist <= max_dist) out.push_back({e.src + off, e.dst + off, e.dist, b});
    }
    return out;
  }
};

}  // namespace ghnq::graph
