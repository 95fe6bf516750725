/// \file
/// \brief GatedGNN of GHN-1/2 (spec §3): sequential forward/backward sweeps over the nodes in
/// topological order with a shared GRU cell and message MLPs (plus the 1/s-weighted virtual-edge
/// MLP of GHN-2), batched over a graph_batch.
///
/// **GNN layer concept.** The hypernetwork takes its graph layer as a template parameter. A type
/// `L` models the concept when, for `const L& l`, `autograd::tape<T, B>& tp`, an input
/// `autograd::var<T, B> x` of shape [batch.total_nodes(), H] (the node features of a
/// `graph::graph_batch batch`, nodes in batch order: graph 0's nodes, then graph 1's, ...):
///  - `l.forward(tp, x, batch)` returns the node states, a var of the same shape [total_nodes, H],
///    differentiable w.r.t. x and the layer's parameters, and independent of how graphs are grouped
///    into batches (batched result == per-graph results);
///  - `l.parameters()` returns `std::vector<autograd::var<T, B>>` in a fixed order (the order of
///    the reference's state dict), `l.num_params()` their total number of elements;
///  - `l.hidden()` returns H; construction is seeded by a `ghnq::rng&` (documented per layer).
/// The layer applies no final normalisation: the hypernetwork applies LayerNorm(H) after it
/// (GHN-2 `--ln`). A GHN-3 transformer layer provides the same members (using the edge distances
/// of `batch` as it needs).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ghnq/core/error.hpp"
#include "ghnq/core/rng.hpp"
#include "ghnq/ghn/init.hpp"
#include "ghnq/graph/batch.hpp"
#include "ghnq/nn/activation.hpp"
#include "ghnq/nn/combine_rows.hpp"
#include "ghnq/nn/gru_cell.hpp"
#include "ghnq/nn/linear.hpp"

namespace ghnq::ghn {

namespace detail {
}  // namespace detail

/// MLP(in, (a, b)) of ppuda: Linear(in -> a), ReLU, Linear(a -> b), ReLU (ReLU after the last layer
/// too, `last_activation='same'`). Weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn in
/// the order w1, b1, w2, b2 (also the `parameters()` order).
/// \code
/// ghnq::ghn::mlp<float> m(32, 16, 32, g);
/// auto y = m.forward(tp, x);   // [N, 32] -> [N, 32]
/// \endcode
template <class T, class B = backend::cpu_t>
struct mlp {
  autograd::var<T, B> w1, b1, w2, b2;

  mlp(int in, int a, int b, rng& g, const std::string& prefix = "mlp") {
    GHNQ_CHECK(in >= 1 && a >= 1 && b >= 1, value_error, "mlp: sizes must be >= 1, got in=", in, " a=", a, " b=", b);
    const double s1 = 1.0 / std::sqrt(static_cast<double>(in)), s2 = 1.0 / std::sqrt(static_cast<double>(a));
    w1 = detail::uniform_parameter<T, B>({a, in}, s1, g, prefix + ".fc.0.weight");
    b1 = detail::uniform_parameter<T, B>({a}, s1, g, prefix + ".fc.0.bias");
    w2 = detail::uniform_parameter<T, B>({b, a}, s2, g, prefix + ".fc.2.weight");
    b2 = detail::uniform_parameter<T, B>({b}, s2, g, prefix + ".fc.2.bias");
  }
  /// relu(relu(x W1^T + b1) W2^T + b2): [N, in] -> [N, b].
  autograd::var<T, B> forward(autograd::tape<T, B>& tp, const autograd::var<T, B>& x) const {
    return nn::relu(tp, nn::linear(tp, nn::relu(tp, nn::linear(tp, x, w1, b1)), w2, b2));
  }
  std::vector<autograd::var<T, B>> parameters() const { return {w1, b1, w2, b2}; }
  std::int64_t num_params() const {
    std::int64_t n = 0;
    for (const auto& p : parameters()) n += p.value().numel();
    return n;
  }
};

/// The precomputed update order of a graph_batch for GatedGNN (see `gated_gnn`). Step k holds
/// the nodes with local index k of every graph that has more than k nodes, graph order.
/// Build once per batch and reuse it across forward calls with `gated_gnn::forward(tp, x, sched)`.
template <class T>
struct gnn_schedule {
  /// One step of one sweep: the cached MLP outputs it reads and the message map over them.
  struct step_plan {
    std::vector<std::pair<int, int>> sources;          ///< (step j, kind: 0 = mlp, 1 = mlp_ve)
    std::shared_ptr<const nn::row_map<T>> message;     ///< rows of m_k over `sources`; null if none
  };
  int total_nodes = 0;
  bool virtual_edges = true;
  std::vector<std::vector<int>> rows;                  ///< rows[k] = global ids of the nodes of step k
  std::vector<std::shared_ptr<const nn::row_map<T>>> gather;  ///< step k's rows of x
  std::shared_ptr<const nn::row_map<T>> scatter;       ///< final states of all steps -> [total, H]
  std::vector<step_plan> plan[2];                      ///< [0] forward sweep, [1] backward sweep
  std::vector<char> need[2][2];                        ///< need[dir][kind][j]: step j's cache is read

  int steps() const noexcept { return static_cast<int>(rows.size()); }

  gnn_schedule(const graph::graph_batch& batch, bool ve) : total_nodes(batch.total_nodes()), virtual_edges(ve) {
    int n_max = 0;
    for (int b = 0; b < batch.size(); ++b) n_max = std::max(n_max, batch.n_nodes(b));
    rows.resize(static_cast<std::size_t>(n_max));
    std::vector<std::int64_t> pos(static_cast<std::size_t>(total_nodes));
    std::vector<int> step_of(static_cast<std::size_t>(total_nodes));
    for (int b = 0; b < batch.size(); ++b)
      for (int i = 0; i < batch.n_nodes(b); ++i) {
        const int gid = batch.offsets[static_cast<std::size_t>(b)] + i;
        auto& r = rows[static_cast<std::size_t>(i)];
        pos[static_cast<std::size_t>(gid)] = static_cast<std::int64_t>(r.size());
        step_of[static_cast<std::size_t>(gid)] = i;
        r.push_back(gid);
      }
    auto sc = std::make_shared<nn::row_map<T>>();
    gather.resize(rows.size());
    for (std::size_t k = 0; k < rows.size(); ++k) {
      auto gm = std::make_shared<nn::row_map<T>>();
      for (std::size_t r = 0; r < rows[k].size(); ++r) {
        gm->add(static_cast<std::int64_t>(r), 0, rows[k][r]);
        sc->add(rows[k][r], static_cast<std::int32_t>(k), static_cast<std::int64_t>(r));
      }
      gather[k] = std::move(gm);
    }
    scatter = std::move(sc);

    // Neighbour lists per direction in CSR form: nbr[dir] rows = nodes, entries (u, dist) with u the
    // neighbour read by the node (dir 0: predecessors, dir 1: successors), each list in increasing u
    // (edges are sorted by (src, dst), so a counting sort keeps that order).
    std::vector<std::int64_t> start[2];
    std::vector<std::pair<int, int>> nbr[2];
    for (int dir = 0; dir < 2; ++dir) start[dir].assign(static_cast<std::size_t>(total_nodes) + 1, 0);
    for (int b = 0; b < batch.size(); ++b) {
      const int off = batch.offsets[static_cast<std::size_t>(b)];
      const graph::edge* prev = nullptr;
      for (const graph::edge& e : batch[b].edges) {
        GHNQ_CHECK(e.src < e.dst && e.src >= 0 && e.dst < batch.n_nodes(b) && e.dist >= 1, value_error,
                   "gated_gnn: graph ", b, " has edge ", e.src, " -> ", e.dst, " (dist ", e.dist,
                   "); edges must go from a lower to a higher node index with dist >= 1");
        GHNQ_CHECK(prev == nullptr || prev->src < e.src || (prev->src == e.src && prev->dst < e.dst), value_error,
                   "gated_gnn: edges of graph ", b, " are not sorted by (src, dst) without repeats at ", e.src,
                   " -> ", e.dst);
        prev = &e;
        if (!ve && e.dist != 1) continue;
        ++start[0][static_cast<std::size_t>(off + e.dst) + 1];
        ++start[1][static_cast<std::size_t>(off + e.src) + 1];
      }
    }
    for (int dir = 0; dir < 2; ++dir) {
      for (std::size_t v = 0; v < static_cast<std::size_t>(total_nodes); ++v) start[dir][v + 1] += start[dir][v];
      nbr[dir].resize(static_cast<std::size_t>(start[dir].back()));
    }
    {
      std::vector<std::int64_t> fill0(start[0].begin(), start[0].end() - 1), fill1(start[1].begin(), start[1].end() - 1);
      // forward lists in increasing src: visit edges by src (their order); backward lists in
      // increasing dst: within one src the dsts increase, and different srcs write different lists.
      for (int b = 0; b < batch.size(); ++b) {
        const int off = batch.offsets[static_cast<std::size_t>(b)];
        for (const graph::edge& e : batch[b].edges) {
          if (!ve && e.dist != 1) continue;
          nbr[0][static_cast<std::size_t>(fill0[static_cast<std::size_t>(off + e.dst)]++)] = {off + e.src, e.dist};
          nbr[1][static_cast<std::size_t>(fill1[static_cast<std::size_t>(off + e.src)]++)] = {off + e.dst, e.dist};
        }
      }
    }
    for (int dir = 0; dir < 2; ++dir) {
      plan[dir].resize(rows.size());
      for (auto& nd : need[dir]) nd.assign(rows.size(), 0);
      std::vector<int> local(2 * rows.size(), -1);  // (step, kind) -> source slot of the current step
      for (std::size_t k = 0; k < rows.size(); ++k) {
        auto& p = plan[dir][k];
        auto m = std::make_shared<nn::row_map<T>>();
        std::size_t cap = 0;
        for (const int v : rows[k])
          cap += static_cast<std::size_t>(start[dir][static_cast<std::size_t>(v) + 1] - start[dir][static_cast<std::size_t>(v)]);
        m->reserve(ve ? 2 * cap : cap);
        auto slot = [&](int j, int kind) {
          int& s = local[static_cast<std::size_t>(2 * j + kind)];
          if (s < 0) {
            s = static_cast<int>(p.sources.size());
            p.sources.emplace_back(j, kind);
            need[dir][kind][static_cast<std::size_t>(j)] = 1;
          }
          return s;
        };
        for (std::size_t r = 0; r < rows[k].size(); ++r) {
          const auto v = static_cast<std::size_t>(rows[k][r]);
          for (std::int64_t q = start[dir][v]; q < start[dir][v + 1]; ++q) {
            const auto [u, dist] = nbr[dir][static_cast<std::size_t>(q)];
            const int j = step_of[static_cast<std::size_t>(u)];
            const auto ur = pos[static_cast<std::size_t>(u)];
            if (dist == 1) m->add(static_cast<std::int64_t>(r), slot(j, 0), ur, T(1));
            if (ve) m->add(static_cast<std::int64_t>(r), slot(j, 1), ur, T(1) / static_cast<T>(dist));
          }
        }
        for (const auto& [j, kind] : p.sources) local[static_cast<std::size_t>(2 * j + kind)] = -1;
        if (!m->empty()) p.message = std::move(m);
      }
    }
  }
};

/// GatedGNN (spec §3), a model of the GNN layer concept (file comment).
///
/// Modules: with virtual edges (GHN-2) `mlp = MLP(H, (H/2, H))` and `mlp_ve = MLP(H, (H/2, H))`;
/// without (GHN-1) `mlp = MLP(H, (H, H))`; a shared `GRUCell(H, H)` (nn::gru_cell). One round
/// (T = 1, the reference default) is a forward sweep over local node index k = 0..Nmax-1 followed
/// by a backward sweep k = Nmax-1..0. Updating node v in the forward sweep:
///
///   m_v = Σ_{u->v, dist 1} MLP(h_u)  [+ Σ_{u->v, any dist s} MLP_ve(h_u) / s   with virtual edges]
///   h_v = GRUCell(input = m_v, hidden = h_v)
///
/// where h_u is u's state already updated in this sweep (in-place sequential semantics); the
/// backward sweep uses successors w (v->w) instead. Nodes without neighbours get m = 0. All graphs
/// of the batch that have a node with local index k are updated together (one GRU call). Since a
/// node's state is final for the sweep right after its update, MLP(h_v) and MLP_ve(h_v) are
/// computed once then (for the nodes some later node reads) and messages are weighted sums of
/// those cached rows (nn::combine_rows). Virtual edges with dist > 1 are used only when
/// `virtual_edges` is on; all edges of the graphs (dist <= the graphs' s_max) are read.
///
/// Parameters (`parameters()` order and rng draw order): mlp (w1, b1, w2, b2), mlp_ve (same, with
/// virtual edges), gru (w_ih [3H, H], w_hh [3H, H], b_ih [3H], b_hh [3H]) all U(-1/sqrt(H), 1/sqrt(H)).
/// H = 32 with virtual edges: 2 * 1072 + 6336 = 8480 parameters; without: 2112 + 6336 = 8448.
/// No normalisation is applied inside (the hypernetwork applies LayerNorm(H) afterwards).
/// \code
/// ghnq::rng g(0);
/// ghnq::ghn::gated_gnn<float> gnn(32, true, g);
/// auto h = gnn.forward(tp, x, batch);   // x, h: [batch.total_nodes(), 32]
/// \endcode
template <class T, class B = backend::cpu_t>
struct gated_gnn {
  int hidden_size = 0;
  bool virtual_edges = true;
  int rounds = 1;  ///< T propagation rounds (1 in GHN-1/2)
  mlp<T, B> msg;
  std::optional<mlp<T, B>> msg_ve;  ///< empty without virtual edges
  autograd::var<T, B> w_ih, w_hh, b_ih, b_hh;

  gated_gnn(int hidden, bool ve, rng& g)
      : hidden_size(hidden), virtual_edges(ve), msg(make_mlp(hidden, ve, g, "mlp")) {
    if (ve) msg_ve.emplace(make_mlp(hidden, ve, g, "mlp_ve"));
    const double s = 1.0 / std::sqrt(static_cast<double>(hidden));
    w_ih = detail::uniform_parameter<T, B>({3 * hidden, hidden}, s, g, "gru.weight_ih");
    w_hh = detail::uniform_parameter<T, B>({3 * hidden, hidden}, s, g, "gru.weight_hh");
    b_ih = detail::uniform_parameter<T, B>({3 * hidden}, s, g, "gru.bias_ih");
    b_hh = detail::uniform_parameter<T, B>({3 * hidden}, s, g, "gru.bias_hh");
  }
  int hidden() const noexcept { return hidden_size; }

  /// Node states after `rounds` rounds: x [batch.total_nodes(), H] -> [batch.total_nodes(), H].
  autograd::var<T, B> forward(autograd::tape<T, B>& tp, const autograd::var<T, B>& x,
                              const graph::graph_batch& batch) const {
    return forward(tp, x, gnn_schedule<T>(batch, virtual_edges));
  }

  /// As above with a schedule built beforehand (for the same virtual_edges setting).
  autograd::var<T, B> forward(autograd::tape<T, B>& tp, const autograd::var<T, B>& x,
                              const gnn_schedule<T>& sc) const {
    nn::detail::require_rank(x, 2, "gated_gnn", "x");
    GHNQ_CHECK(x.shape()[0] == sc.total_nodes && x.shape()[1] == hidden_size, shape_error, "gated_gnn: x of shape ",
               x.shape(), " for a batch of ", sc.total_nodes, " nodes and hidden size ", hidden_size);
    GHNQ_CHECK(sc.virtual_edges == virtual_edges, value_error, "gated_gnn: schedule built with virtual_edges=",
               sc.virtual_edges, " for a layer with virtual_edges=", virtual_edges);
    const int n_steps = sc.steps();
    if (n_steps == 0) return x;
    std::vector<autograd::var<T, B>> state(static_cast<std::size_t>(n_steps));
    for (int k = 0; k < n_steps; ++k) {
      const auto ku = static_cast<std::size_t>(k);
      state[ku] = nn::combine_rows(tp, {x}, static_cast<std::int64_t>(sc.rows[ku].size()), sc.gather[ku], false);
    }
    std::vector<autograd::var<T, B>> cache[2];
    for (auto& c : cache) c.resize(static_cast<std::size_t>(n_steps));
    std::vector<autograd::var<T, B>> srcs;
    for (int t = 0; t < rounds; ++t)
      for (int dir = 0; dir < 2; ++dir) {
        for (auto& c : cache)
          for (auto& v : c) v = {};
        for (int i = 0; i < n_steps; ++i) {
          const int k = dir == 0 ? i : n_steps - 1 - i;
          const auto ku = static_cast<std::size_t>(k);
          const auto n_k = static_cast<std::int64_t>(sc.rows[ku].size());
          const auto& p = sc.plan[dir][ku];
          autograd::var<T, B> m;
          if (p.message) {
            srcs.clear();
            for (const auto& [j, kind] : p.sources) srcs.push_back(cache[kind][static_cast<std::size_t>(j)]);
            m = nn::combine_rows(tp, srcs, n_k, p.message, false);
          } else {
            m = autograd::var<T, B>(tensor<T, B>::zeros({n_k, hidden_size}));
          }
          state[ku] = nn::gru_cell(tp, m, state[ku], w_ih, w_hh, b_ih, b_hh);
          if (sc.need[dir][0][ku]) cache[0][ku] = msg.forward(tp, state[ku]);
          if (msg_ve && sc.need[dir][1][ku]) cache[1][ku] = msg_ve->forward(tp, state[ku]);
        }
      }
    return nn::combine_rows(tp, state, sc.total_nodes, sc.scatter, false);
  }

  /// mlp (w1, b1, w2, b2), [mlp_ve (w1, b1, w2, b2)], gru (w_ih, w_hh, b_ih, b_hh).
  std::vector<autograd::var<T, B>> parameters() const {
    auto p = msg.parameters();
    if (msg_ve) {
      auto q = msg_ve->parameters();
      p.insert(p.end(), q.begin(), q.end());
    }
    p.insert(p.end(), {w_ih, w_hh, b_ih, b_hh});
    return p;
  }
  std::int64_t num_params() const {
    std::int64_t n = 0;
    for (const auto& p : parameters()) n += p.value().numel();
    return n;
  }

 private:
  static mlp<T, B> make_mlp(int hidden, bool ve, rng& g, const char* name) {
    GHNQ_CHECK(hidden >= 2 && (!ve || hidden % 2 == 0), value_error, "gated_gnn: hidden size ", hidden,
               " must be >= 2 (and even with virtual edges)");
    return mlp<T, B>(hidden, ve ? hidden / 2 : hidden, hidden, g, name);
  }
};

}  // namespace ghnq::ghn
