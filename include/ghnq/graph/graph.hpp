/// \file
/// \brief The computational graph a GHN reads: the 15 node primitives of DeepNets-1M, nodes, edges
/// (data-flow and virtual shortest-path edges) and the graph container.
///
/// Contract (spec §1.1-1.4):
///  - `nodes` are in the reference (GHN-2) topological order: node 0 is the `input` node, every
///    edge goes from a lower to a higher index (the adjacency matrix is strictly upper triangular),
///    and for a classification network the classifier's weight and bias are the last two nodes.
///  - `edges` are sorted by (src, dst) and hold each ordered pair at most once. `dist == 1` marks a
///    forward data-flow edge; `dist in [2, s_max]` a virtual edge whose value is the length of the
///    shortest directed path from src to dst (added only where there is no data-flow edge).
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "ghnq/core/error.hpp"
#include "ghnq/tensor/shape.hpp"

namespace ghnq::graph {

/// Node types; the value is the row of the op-type embedding (spec §1.1, PRIMITIVES_DEEPNETS1M).
enum class primitive : std::uint8_t {
  max_pool = 0,   ///< max pooling
  avg_pool = 1,   ///< average pooling (not global)
  sep_conv = 2,   ///< weight of a grouped conv with dilation 1 (e.g. depthwise)
  dil_conv = 3,   ///< weight of a grouped conv with dilation > 1
  conv = 4,       ///< weight of a dense conv or of a linear layer
  msa = 5,        ///< multi-head self-attention marker (not produced from ghnq's conv IR)
  cse = 6,        ///< channel squeeze-excitation gating multiply
  sum = 7,        ///< element-wise sum of >= 2 inputs
  concat = 8,     ///< channel concatenation of >= 2 inputs
  input = 9,      ///< the input node (always node 0)
  bias = 10,      ///< bias of a conv / linear layer
  bn = 11,        ///< batch-norm weight (its bias is folded into the same node)
  ln = 12,        ///< layer-norm weight (bias folded)
  pos_enc = 13,   ///< positional encoding table
  glob_avg = 14,  ///< global average pooling
};

/// Number of primitives (rows of the op-type embedding).
inline constexpr int kNumPrimitives = 15;

/// Name of a primitive as in the reference list ("max_pool", ..., "glob_avg").
inline const char* to_string(primitive p) {
  switch (p) {
    case primitive::max_pool: return "max_pool";
    case primitive::avg_pool: return "avg_pool";
    case primitive::sep_conv: return "sep_conv";
    case primitive::dil_conv: return "dil_conv";
    case primitive::conv: return "conv";
    case primitive::msa: return "msa";
    case primitive::cse: return "cse";
    case primitive::sum: return "sum";
    case primitive::concat: return "concat";
    case primitive::input: return "input";
    case primitive::bias: return "bias";
    case primitive::bn: return "bn";
    case primitive::ln: return "ln";
    case primitive::pos_enc: return "pos_enc";
    case primitive::glob_avg: return "glob_avg";
  }
  return "?";
}

/// Inverse of `to_string`; throws ghnq::value_error naming the string when it is not a primitive.
/// \code auto p = ghnq::graph::primitive_from_string("bn"); // primitive::bn \endcode
inline primitive primitive_from_string(const std::string& s) {
  for (int i = 0; i < kNumPrimitives; ++i) {
    const auto p = static_cast<primitive>(i);
    if (s == to_string(p)) return p;
  }
  GHNQ_CHECK(false, value_error, "graph: unknown primitive '", s, "'");
  return primitive::input;  // unreachable
}

/// One node of a computational graph.
struct node {
  primitive type = primitive::input;
  std::string name;      ///< parameter name ("cells.0._ops.1.op.1.weight") or IR op name; "input"
  ghnq::shape shape;     ///< parameter shape; (1, 1, k, k) for pools; empty for other nodes
  int op = -1;           ///< index of the IR op the node stands for (-1 for the input node)
  int param = -1;        ///< index into the network's parameter list (registration order), or -1
  bool is_last_weight = false;  ///< node index == N - 2 (the classifier weight; spec §1.2)
  bool is_last_bias = false;    ///< node index == N - 1 (the classifier bias)
  int cell = 0;          ///< cell index (spec §1.3 item 11)
};

/// A directed edge src -> dst; `dist` = 1 for data flow, > 1 for a virtual (shortest-path) edge.
struct edge {
  int src = 0, dst = 0, dist = 1;
  friend bool operator==(const edge& a, const edge& b) {
    return a.src == b.src && a.dst == b.dst && a.dist == b.dist;
  }
  friend bool operator!=(const edge& a, const edge& b) { return !(a == b); }
};

/// A network's graph: ordered nodes and sorted edges (see the file contract).
struct computational_graph {
  std::vector<node> nodes;
  std::vector<edge> edges;  ///< sorted by (src, dst); dist 1 and virtual edges up to s_max
  int s_max = 1;            ///< cutoff used for the virtual edges (1 = none)
  int num_cells = 1;        ///< number of cells (1 + the largest "cells.<k>." index; 1 if none)

  int n_nodes() const noexcept { return static_cast<int>(nodes.size()); }

  /// Number of edges with dist <= max_dist (1: data-flow edges only).
  /// \code g.num_edges(1); g.num_edges(50); \endcode
  std::int64_t num_edges(int max_dist) const noexcept {
    return static_cast<std::int64_t>(
        std::count_if(edges.begin(), edges.end(), [&](const edge& e) { return e.dist <= max_dist; }));
  }

  /// The node types as strings, in node order (the form of deepnets_conv.json's `node_types`).
  std::vector<std::string> node_type_names() const {
    std::vector<std::string> out;
    out.reserve(nodes.size());
    for (const node& n : nodes) out.emplace_back(to_string(n.type));
    return out;
  }

  /// Data-flow successors of every node (dist == 1), each list in increasing order.
  std::vector<std::vector<int>> successors() const {
    std::vector<std::vector<int>> out(nodes.size());
    for (const edge& e : edges)
      if (e.dist == 1) out[static_cast<std::size_t>(e.src)].push_back(e.dst);
    return out;
  }
};

}  // namespace ghnq::graph
