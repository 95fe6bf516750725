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
///
/// **Implementation.** On host backends `gated_gnn::forward` runs all sweeps as one fused
/// differentiable op: per node a message sum over a CSR neighbour list, the GRU update and the
/// message MLPs with small vectorisable loops (no per-step tensors, vars or closures), one GEMM per
/// sweep for h W_hh^T (every node's previous state is known when the sweep starts), and, with a
/// recording tape, one backward closure that replays the sweeps in reverse and defers all
/// weight-gradient products to one GEMM per weight and sweep. `forward_reference` composes the
/// same computation from nn ops (combine_rows, gru_cell, linear, relu): the documented slow
/// reference, also the path for device backends.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "ghnq/backend/cpu/gemm.hpp"
#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/core/error.hpp"
#include "ghnq/core/rng.hpp"
#include "ghnq/ghn/init.hpp"
#include "ghnq/graph/batch.hpp"
#include "ghnq/nn/activation.hpp"
#include "ghnq/nn/combine_rows.hpp"
#include "ghnq/nn/gru_cell.hpp"
#include "ghnq/nn/linear.hpp"

namespace ghnq::ghn {

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

/// The precomputed update order and message lists of a graph_batch for GatedGNN (see
/// `gated_gnn`). Step k holds the nodes with local index k of every graph that has more than k
/// nodes, graph order. Build once per batch and reuse it across forward calls with
/// `gated_gnn::forward(tp, x, sched)`. Cost O(nodes + edges).
template <class T>
struct gnn_schedule {
  int total_nodes = 0;
  bool virtual_edges = true;
  std::vector<std::vector<int>> rows;  ///< rows[k] = global ids of the nodes of step k
  /// Message lists in CSR form over global node ids, per sweep direction (0: predecessors, read in
  /// the forward sweep; 1: successors, read in the backward sweep). Node v reads the entries
  /// [start[dir][v], start[dir][v + 1]): neighbour `nbr` (increasing), weight `w_msg` of MLP(h_u)
  /// (1 for a data-flow edge, else 0) and weight `w_ve` of MLP_ve(h_u) (1/dist with virtual edges,
  /// else 0). Without virtual edges only data-flow edges are listed.
  std::vector<std::int64_t> start[2];
  std::vector<int> nbr[2];
  std::vector<T> w_msg[2], w_ve[2];
  /// The data-flow (dist 1) entries alone, same CSR form: node v reads MLP(h_u) with weight 1 for
  /// u in flow_nbr[dir][flow_start[dir][v] .. flow_start[dir][v + 1]).
  std::vector<std::int64_t> flow_start[2];
  std::vector<int> flow_nbr[2];
  /// need[dir][kind][u]: in sweep dir some node reads MLP(h_u) (kind 0) / MLP_ve(h_u) (kind 1).
  std::vector<char> need[2][2];

  int steps() const noexcept { return static_cast<int>(rows.size()); }

  gnn_schedule(const graph::graph_batch& batch, bool ve) : total_nodes(batch.total_nodes()), virtual_edges(ve) {
    int n_max = 0;
    for (int b = 0; b < batch.size(); ++b) n_max = std::max(n_max, batch.n_nodes(b));
    rows.resize(static_cast<std::size_t>(n_max));
    for (int b = 0; b < batch.size(); ++b)
      for (int i = 0; i < batch.n_nodes(b); ++i) rows[static_cast<std::size_t>(i)].push_back(batch.offsets[static_cast<std::size_t>(b)] + i);
    const auto un = static_cast<std::size_t>(total_nodes);
    for (int dir = 0; dir < 2; ++dir) {
      start[dir].assign(un + 1, 0);
      flow_start[dir].assign(un + 1, 0);
      for (auto& nd : need[dir]) nd.assign(un, 0);
    }
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
        if (e.dist == 1) {
          ++flow_start[0][static_cast<std::size_t>(off + e.dst) + 1];
          ++flow_start[1][static_cast<std::size_t>(off + e.src) + 1];
        }
        if (!ve && e.dist != 1) continue;
        ++start[0][static_cast<std::size_t>(off + e.dst) + 1];
        ++start[1][static_cast<std::size_t>(off + e.src) + 1];
      }
    }
    for (int dir = 0; dir < 2; ++dir) {
      for (std::size_t v = 0; v < un; ++v) {
        start[dir][v + 1] += start[dir][v];
        flow_start[dir][v + 1] += flow_start[dir][v];
      }
      flow_nbr[dir].resize(static_cast<std::size_t>(flow_start[dir].back()));
      const auto ne = static_cast<std::size_t>(start[dir].back());
      nbr[dir].resize(ne);
      w_msg[dir].resize(ne);
      w_ve[dir].resize(ne);
    }
    // Forward lists in increasing src: edges are visited by src; backward lists in increasing dst:
    // within one src the dsts increase, and different srcs write different lists.
    std::vector<std::int64_t> fill0(start[0].begin(), start[0].end() - 1), fill1(start[1].begin(), start[1].end() - 1);
    std::vector<std::int64_t> ffill0(flow_start[0].begin(), flow_start[0].end() - 1),
        ffill1(flow_start[1].begin(), flow_start[1].end() - 1);
    for (int b = 0; b < batch.size(); ++b) {
      const int off = batch.offsets[static_cast<std::size_t>(b)];
      for (const graph::edge& e : batch[b].edges) {
        const int s = off + e.src, d = off + e.dst;
        if (e.dist == 1) {
          flow_nbr[0][static_cast<std::size_t>(ffill0[static_cast<std::size_t>(d)]++)] = s;
          flow_nbr[1][static_cast<std::size_t>(ffill1[static_cast<std::size_t>(s)]++)] = d;
        }
        if (!ve && e.dist != 1) continue;
        const T wm = e.dist == 1 ? T(1) : T(0), wv = ve ? T(1) / static_cast<T>(e.dist) : T(0);
        const auto q0 = static_cast<std::size_t>(fill0[static_cast<std::size_t>(d)]++);
        const auto q1 = static_cast<std::size_t>(fill1[static_cast<std::size_t>(s)]++);
        nbr[0][q0] = s;
        nbr[1][q1] = d;
        w_msg[0][q0] = w_msg[1][q1] = wm;
        w_ve[0][q0] = w_ve[1][q1] = wv;
        if (e.dist == 1) need[0][0][static_cast<std::size_t>(s)] = need[1][0][static_cast<std::size_t>(d)] = 1;
        if (ve) need[0][1][static_cast<std::size_t>(s)] = need[1][1][static_cast<std::size_t>(d)] = 1;
      }
    }
  }
};

namespace detail {

/// y[0, n) = b[0, n) + sum_i x[i] * wt[i * n + (0, n)]  (wt = W^T stored [in, n]; y = x W^T + b).
/// For the compile-time widths NC the accumulator is a fixed-size Eigen array (vector registers).
template <int NC, class T>
inline void gnn_affine_t_n(const T* x, std::int64_t in, const T* wt, const T* b, std::int64_t n, T* y) {
  if constexpr (NC > 0) {
    using arr = Eigen::Array<T, NC, 1>;
    arr acc = Eigen::Map<const arr>(b);
    for (std::int64_t i = 0; i < in; ++i) acc += x[i] * Eigen::Map<const arr>(wt + i * NC);
    Eigen::Map<arr> res(y);
    res = acc;
  } else {
    for (std::int64_t o = 0; o < n; ++o) y[o] = b[o];
    for (std::int64_t i = 0; i < in; ++i) {
      const T xi = x[i];
      const T* w = wt + i * n;
      for (std::int64_t o = 0; o < n; ++o) y[o] += xi * w[o];
    }
  }
}
template <class T>
inline void gnn_affine_t(const T* x, std::int64_t in, const T* wt, const T* b, std::int64_t n, T* y) {
  switch (n) {
    case 16: gnn_affine_t_n<16>(x, in, wt, b, n, y); break;
    case 32: gnn_affine_t_n<32>(x, in, wt, b, n, y); break;
    case 64: gnn_affine_t_n<64>(x, in, wt, b, n, y); break;
    case 96: gnn_affine_t_n<96>(x, in, wt, b, n, y); break;
    default: gnn_affine_t_n<0>(x, in, wt, b, n, y); break;
  }
}
/// y[0, in) += sum_o d[o] * w[o * in + (0, in)]  (w stored [n, in]; y += d W).
template <class T>
inline void gnn_add_dw(const T* __restrict d, std::int64_t n, const T* __restrict w, std::int64_t in,
                       T* __restrict y) {
  for (std::int64_t o = 0; o < n; ++o) {
    const T dob = d[o];
    if (dob == T(0)) continue;
    const T* __restrict wr = w + o * in;
    for (std::int64_t i = 0; i < in; ++i) y[i] += dob * wr[i];
  }
}
/// m[0, H) += sum_q w[q] * base[nb[q] * H + (0, H)] over q in [q0, q1) (w null: weights 1). For the
/// compile-time widths HC the accumulator is a fixed-size Eigen array (kept in vector registers);
/// HC = 0 handles any H.
template <int HC, class T>
inline void gnn_sum_rows(T* m, std::int64_t H, const T* base, const int* nb, const T* w, std::int64_t q0,
                         std::int64_t q1) {
  if constexpr (HC > 0) {
    using arr = Eigen::Array<T, HC, 1>;
    arr acc = Eigen::Map<const arr>(m);
    if (w) {
      for (std::int64_t q = q0; q < q1; ++q) acc += w[q] * Eigen::Map<const arr>(base + static_cast<std::int64_t>(nb[q]) * HC);
    } else {
      for (std::int64_t q = q0; q < q1; ++q) acc += Eigen::Map<const arr>(base + static_cast<std::int64_t>(nb[q]) * HC);
    }
    Eigen::Map<arr> res(m);
    res = acc;
  } else {
    using arr = Eigen::Array<T, Eigen::Dynamic, 1>;
    Eigen::Map<arr> acc(m, H);
    for (std::int64_t q = q0; q < q1; ++q)
      acc += (w ? w[q] : T(1)) * Eigen::Map<const arr>(base + static_cast<std::int64_t>(nb[q]) * H, H);
  }
}
template <class T>
inline void gnn_sum_rows_any(T* m, std::int64_t H, const T* base, const int* nb, const T* w, std::int64_t q0,
                             std::int64_t q1) {
  if (q0 >= q1) return;
  switch (H) {
    case 16: gnn_sum_rows<16>(m, H, base, nb, w, q0, q1); break;
    case 32: gnn_sum_rows<32>(m, H, base, nb, w, q0, q1); break;
    case 64: gnn_sum_rows<64>(m, H, base, nb, w, q0, q1); break;
    default: gnn_sum_rows<0>(m, H, base, nb, w, q0, q1); break;
  }
}

/// W^T of a row-major [rows, cols] matrix.
template <class T>
inline std::vector<T> gnn_transposed(const T* w, std::int64_t rows, std::int64_t cols) {
  std::vector<T> t(static_cast<std::size_t>(rows * cols));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) t[static_cast<std::size_t>(c * rows + r)] = w[r * cols + c];
  return t;
}
/// Scratch rows of the fused sweeps. Eigen's vectorised array expressions (exp, tanh, multiply-add)
/// compute a misaligned head with scalar code, so a buffer's alignment would change the last bits of
/// the results from call to call: every scratch buffer is allocated with the same (maximal) alignment
/// as the tensors, which makes the fused op bit-reproducible.
template <class T>
using gnn_buffer = std::vector<T, Eigen::aligned_allocator<T>>;

/// GRU gates of one row: g[0, H) = r = sigmoid(gi_r + gh_r), g[H, 2H) = z = sigmoid(gi_z + gh_z),
/// g[2H, 3H) = n = tanh(gi_n + r * gh_n) (gi, gh with their biases). Vectorised through Eigen's
/// array exp / tanh (within a few ulp of std::exp / std::tanh).
template <class T>
inline void gnn_gru_gates(const T* gi, const T* gh, std::int64_t H, T* g) {
  using arr = Eigen::Array<T, Eigen::Dynamic, 1>;
  using cmap = Eigen::Map<const arr>;
  Eigen::Map<arr> rz(g, 2 * H), n(g + 2 * H, H);
  rz = T(1) / (T(1) + (-(cmap(gi, 2 * H) + cmap(gh, 2 * H))).exp());
  n = (cmap(gi + 2 * H, H) + rz.head(H) * cmap(gh + 2 * H, H)).tanh();
}
/// acc[j] += sum_i x[i, j] for x [rows, cols] (row order, double accumulation: independent of threads).
template <class T>
inline void gnn_column_sums(const T* x, std::int64_t rows, std::int64_t cols, T* acc) {
  std::vector<double> s(static_cast<std::size_t>(cols), 0.0);
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j) s[static_cast<std::size_t>(j)] += static_cast<double>(x[i * cols + j]);
  for (std::int64_t j = 0; j < cols; ++j) acc[j] += static_cast<T>(s[static_cast<std::size_t>(j)]);
}

/// Values of one sweep kept for the backward pass of the fused GatedGNN op.
template <class T, class B>
struct gnn_sweep_record {
  int dir = 0;
  tensor<T, B> h_prev;       ///< [N, H] states when the sweep starts
  tensor<T, B> msg;          ///< [N, H] messages m_v
  tensor<T, B> gates;        ///< [N, 3H] r, z, n
  tensor<T, B> gh;           ///< [N, 3H] h_prev W_hh^T + b_hh
  tensor<T, B> hid[2], out[2];  ///< MLP / MLP_ve hidden [N, A] and output [N, H] (zero rows where unused)
};

}  // namespace detail

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
/// of the batch that have a node with local index k are updated together. Since a node's state is
/// final for the sweep right after its update, MLP(h_v) and MLP_ve(h_v) are computed once then
/// (for the nodes some later node reads). Virtual edges with dist > 1 are used only when
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
    return forward(tp, x, std::make_shared<const gnn_schedule<T>>(batch, virtual_edges));
  }

  /// As above with a schedule built beforehand (for the same virtual_edges setting). With a
  /// recording tape the schedule is copied into the backward closure; pass a shared_ptr to avoid it.
  autograd::var<T, B> forward(autograd::tape<T, B>& tp, const autograd::var<T, B>& x,
                              const gnn_schedule<T>& sc) const {
    if (needs_grad(tp, x)) return forward(tp, x, std::make_shared<const gnn_schedule<T>>(sc));
    return fused(tp, x, sc, nullptr);
  }
  autograd::var<T, B> forward(autograd::tape<T, B>& tp, const autograd::var<T, B>& x,
                              std::shared_ptr<const gnn_schedule<T>> sc) const {
    GHNQ_CHECK(sc != nullptr, value_error, "gated_gnn: null schedule");
    if constexpr (B::is_device) {
      return forward_reference(tp, x, *sc);
    } else {
      return fused(tp, x, *sc, sc);
    }
  }

  /// The same computation composed from nn ops, step by step (combine_rows messages over
  /// per-step MLP outputs, gru_cell, linear, relu): the documented slow reference of the fused
  /// forward (tests compare both), and the path of device backends.
  autograd::var<T, B> forward_reference(autograd::tape<T, B>& tp, const autograd::var<T, B>& x,
                                        const gnn_schedule<T>& sc) const {
    check_input(x, sc);
    const int n_steps = sc.steps();
    if (n_steps == 0) return x;
    std::vector<std::int64_t> pos(static_cast<std::size_t>(sc.total_nodes));
    std::vector<int> step_of(static_cast<std::size_t>(sc.total_nodes));
    for (int k = 0; k < n_steps; ++k)
      for (std::size_t r = 0; r < sc.rows[static_cast<std::size_t>(k)].size(); ++r) {
        pos[static_cast<std::size_t>(sc.rows[static_cast<std::size_t>(k)][r])] = static_cast<std::int64_t>(r);
        step_of[static_cast<std::size_t>(sc.rows[static_cast<std::size_t>(k)][r])] = k;
      }
    std::vector<autograd::var<T, B>> state(static_cast<std::size_t>(n_steps));
    auto scatter = std::make_shared<nn::row_map<T>>();
    for (int k = 0; k < n_steps; ++k) {
      const auto& rk = sc.rows[static_cast<std::size_t>(k)];
      auto gm = std::make_shared<nn::row_map<T>>();
      for (std::size_t r = 0; r < rk.size(); ++r) {
        gm->add(static_cast<std::int64_t>(r), 0, rk[r]);
        scatter->add(rk[r], static_cast<std::int32_t>(k), static_cast<std::int64_t>(r));
      }
      state[static_cast<std::size_t>(k)] =
          nn::combine_rows(tp, {x}, static_cast<std::int64_t>(rk.size()), std::shared_ptr<const nn::row_map<T>>(gm));
    }
    std::vector<autograd::var<T, B>> cache[2];
    for (int t = 0; t < rounds; ++t)
      for (int dir = 0; dir < 2; ++dir) {
        for (auto& c : cache) c.assign(static_cast<std::size_t>(n_steps), {});
        for (int i = 0; i < n_steps; ++i) {
          const int k = dir == 0 ? i : n_steps - 1 - i;
          const auto& rk = sc.rows[static_cast<std::size_t>(k)];
          const auto n_k = static_cast<std::int64_t>(rk.size());
          // message: sources (step j, kind) in order of first use
          std::vector<autograd::var<T, B>> srcs;
          std::vector<std::pair<int, int>> keys;
          auto m_map = std::make_shared<nn::row_map<T>>();
          auto slot = [&](int j, int kind) {
            for (std::size_t s = 0; s < keys.size(); ++s)
              if (keys[s] == std::make_pair(j, kind)) return static_cast<std::int32_t>(s);
            keys.emplace_back(j, kind);
            srcs.push_back(cache[kind][static_cast<std::size_t>(j)]);
            return static_cast<std::int32_t>(keys.size() - 1);
          };
          for (std::size_t r = 0; r < rk.size(); ++r) {
            const auto v = static_cast<std::size_t>(rk[r]);
            for (std::int64_t q = sc.start[dir][v]; q < sc.start[dir][v + 1]; ++q) {
              const auto qq = static_cast<std::size_t>(q);
              const auto u = static_cast<std::size_t>(sc.nbr[dir][qq]);
              if (sc.w_msg[dir][qq] != T(0)) m_map->add(static_cast<std::int64_t>(r), slot(step_of[u], 0), pos[u], sc.w_msg[dir][qq]);
              if (sc.w_ve[dir][qq] != T(0)) m_map->add(static_cast<std::int64_t>(r), slot(step_of[u], 1), pos[u], sc.w_ve[dir][qq]);
            }
          }
          const auto m = m_map->empty() ? autograd::var<T, B>(tensor<T, B>::zeros({n_k, hidden_size}))
                                        : nn::combine_rows(tp, srcs, n_k, std::shared_ptr<const nn::row_map<T>>(m_map));
          auto& s = state[static_cast<std::size_t>(k)];
          s = nn::gru_cell(tp, m, s, w_ih, w_hh, b_ih, b_hh);
          bool need0 = false, need1 = false;
          for (const int v : rk) {
            need0 = need0 || sc.need[dir][0][static_cast<std::size_t>(v)];
            need1 = need1 || sc.need[dir][1][static_cast<std::size_t>(v)];
          }
          if (need0) cache[0][static_cast<std::size_t>(k)] = msg.forward(tp, s);
          if (msg_ve && need1) cache[1][static_cast<std::size_t>(k)] = msg_ve->forward(tp, s);
        }
      }
    return nn::combine_rows(tp, state, sc.total_nodes, std::shared_ptr<const nn::row_map<T>>(scatter));
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

  bool needs_grad(const autograd::tape<T, B>& tp, const autograd::var<T, B>& x) const {
    bool any = tp.needs(x, w_ih, w_hh, b_ih, b_hh, msg.w1, msg.b1, msg.w2, msg.b2);
    if (msg_ve) any = any || tp.needs(msg_ve->w1, msg_ve->b1, msg_ve->w2, msg_ve->b2);
    return any;
  }

  void check_input(const autograd::var<T, B>& x, const gnn_schedule<T>& sc) const {
    nn::detail::require_rank(x, 2, "gated_gnn", "x");
    GHNQ_CHECK(x.shape()[0] == sc.total_nodes && x.shape()[1] == hidden_size, shape_error, "gated_gnn: x of shape ",
               x.shape(), " for a batch of ", sc.total_nodes, " nodes and hidden size ", hidden_size);
    GHNQ_CHECK(sc.virtual_edges == virtual_edges, value_error, "gated_gnn: schedule built with virtual_edges=",
               sc.virtual_edges, " for a layer with virtual_edges=", virtual_edges);
    GHNQ_CHECK(virtual_edges == msg_ve.has_value(), value_error, "gated_gnn: virtual_edges=", virtual_edges,
               " but the virtual-edge MLP is ", msg_ve ? "present" : "missing");
    const std::int64_t H = hidden_size, A = msg.w1.shape()[0];
    auto shp = [](const autograd::var<T, B>& v) { return v.defined() ? v.shape() : ghnq::shape{}; };
    GHNQ_CHECK(shp(w_ih) == ghnq::shape({3 * H, H}) && shp(w_hh) == ghnq::shape({3 * H, H}) &&
                   shp(b_ih) == ghnq::shape({3 * H}) && shp(b_hh) == ghnq::shape({3 * H}),
               shape_error, "gated_gnn: GRU parameters must be [", 3 * H, ", ", H, "] weights and [", 3 * H,
               "] biases");
    for (const mlp<T, B>* m : {&msg, msg_ve ? &*msg_ve : nullptr}) {
      if (m == nullptr) continue;
      GHNQ_CHECK(shp(m->w1) == ghnq::shape({A, H}) && shp(m->b1) == ghnq::shape({A}) &&
                     shp(m->w2) == ghnq::shape({H, A}) && shp(m->b2) == ghnq::shape({H}),
                 shape_error, "gated_gnn: message MLP parameters must be [", A, ", ", H, "], [", A, "], [", H, ", ",
                 A, "], [", H, "]");
    }
  }

  /// The fused forward (file comment). `keep` owns the schedule for the backward closure (null
  /// only when nothing is recorded).
  autograd::var<T, B> fused(autograd::tape<T, B>& tp, const autograd::var<T, B>& x, const gnn_schedule<T>& sc,
                            std::shared_ptr<const gnn_schedule<T>> keep) const {
    check_input(x, sc);
    const int n_steps = sc.steps();
    if (n_steps == 0) return x;
    using G = backend::impl<B, backend::op::gemm>;
    using rec_t = detail::gnn_sweep_record<T, B>;
    const bool tracked = needs_grad(tp, x);
    GHNQ_ASSERT(!tracked || keep != nullptr);
    const std::int64_t H = hidden_size, H3 = 3 * H, N = sc.total_nodes, A = msg.w1.shape()[0];
    const int kinds = msg_ve ? 2 : 1;
    const mlp<T, B>* mlps[2] = {&msg, msg_ve ? &*msg_ve : nullptr};
    // W^T copies: the per-node products loop over contiguous output columns.
    const std::vector<T> wih_t = detail::gnn_transposed(w_ih.value().data(), H3, H);
    std::vector<T> w1_t[2], w2_t[2];
    for (int kd = 0; kd < kinds; ++kd) {
      w1_t[kd] = detail::gnn_transposed(mlps[kd]->w1.value().data(), A, H);
      w2_t[kd] = detail::gnn_transposed(mlps[kd]->w2.value().data(), H, A);
    }
    const T* bih = b_ih.value().data();
    tensor<T, B> S = x.value().clone();  // current states, updated in place
    tensor<T, B> gh_buf({N, H3});
    tensor<T, B> cache[2];  // MLP outputs of the nodes already updated in this sweep
    for (int kd = 0; kd < kinds; ++kd) cache[kd] = tensor<T, B>({N, H});
    auto recs = tracked ? std::make_shared<std::vector<rec_t>>() : nullptr;

    for (int t = 0; t < rounds; ++t)
      for (int dir = 0; dir < 2; ++dir) {
        rec_t* rec = nullptr;
        if (tracked) {
          recs->emplace_back();
          rec = &recs->back();
          rec->dir = dir;
          rec->h_prev = S.clone();
          rec->msg = tensor<T, B>({N, H});
          rec->gates = tensor<T, B>({N, H3});
          for (int kd = 0; kd < kinds; ++kd) {
            rec->hid[kd] = tensor<T, B>::zeros({N, A});
            rec->out[kd] = tensor<T, B>::zeros({N, H});
          }
        }
        // gh = h_prev W_hh^T + b_hh for every node at once
        tensor<T, B>& gh = tracked ? (rec->gh = tensor<T, B>({N, H3})) : gh_buf;
        for (std::int64_t i = 0; i < N; ++i) std::copy_n(b_hh.value().data(), H3, gh.data() + i * H3);
        G::run(false, true, N, H3, H, T(1), S.data(), H, w_hh.value().data(), H, T(1), gh.data(), H3);
        // One node: message, GRU update, message MLPs. scratch: 7H + A values.
        auto update = [&](int v, T* scratch) {
          const auto uv = static_cast<std::size_t>(v);
          T* m = tracked ? rec->msg.data() + v * H : scratch;
          T* gi = scratch + H;
          T* hid = scratch + 4 * H;
          std::fill_n(m, H, T(0));
          if (kinds == 2)  // sum_u MLP_ve(h_u) / dist over all edges
            detail::gnn_sum_rows_any(m, H, cache[1].data(), sc.nbr[dir].data(), sc.w_ve[dir].data(), sc.start[dir][uv],
                                     sc.start[dir][uv + 1]);
          // + sum_u MLP(h_u) over data-flow edges
          detail::gnn_sum_rows_any(m, H, cache[0].data(), sc.flow_nbr[dir].data(), static_cast<const T*>(nullptr),
                                   sc.flow_start[dir][uv], sc.flow_start[dir][uv + 1]);
          detail::gnn_affine_t(m, H, wih_t.data(), bih, H3, gi);
          T* h = S.data() + v * H;
          // r, z, n into the gates row (or scratch); vectorised exp / tanh (Eigen, ~1-2 ulp)
          T* g = tracked ? rec->gates.data() + v * H3 : scratch + 4 * H + A;
          detail::gnn_gru_gates(gi, gh.data() + v * H3, H, g);
          for (std::int64_t j = 0; j < H; ++j) h[j] = (T(1) - g[H + j]) * g[2 * H + j] + g[H + j] * h[j];
          for (int kd = 0; kd < kinds; ++kd) {
            if (!sc.need[dir][kd][uv]) continue;
            const mlp<T, B>& mp = *mlps[kd];
            T* a = tracked ? rec->hid[kd].data() + v * A : hid;
            detail::gnn_affine_t(h, H, w1_t[kd].data(), mp.b1.value().data(), A, a);
            for (std::int64_t j = 0; j < A; ++j) a[j] = std::max(a[j], T(0));
            T* c = cache[kd].data() + v * H;
            detail::gnn_affine_t(a, A, w2_t[kd].data(), mp.b2.value().data(), H, c);
            for (std::int64_t j = 0; j < H; ++j) c[j] = std::max(c[j], T(0));
            if (tracked) std::copy_n(c, H, rec->out[kd].data() + v * H);
          }
        };
        detail::gnn_buffer<T> scratch(static_cast<std::size_t>(7 * H + A));
        for (int i = 0; i < n_steps; ++i) {
          const int k = dir == 0 ? i : n_steps - 1 - i;
          const auto& rk = sc.rows[static_cast<std::size_t>(k)];
          const auto n_k = static_cast<std::int64_t>(rk.size());
          if (n_k < kParallelRows) {
            for (const int v : rk) update(v, scratch.data());
          } else {
            parallel_for(0, n_k, kParallelRows / 2, [&](std::int64_t r0, std::int64_t r1) {
              detail::gnn_buffer<T> sc2(static_cast<std::size_t>(7 * H + A));
              for (std::int64_t r = r0; r < r1; ++r) update(rk[static_cast<std::size_t>(r)], sc2.data());
            });
          }
        }
      }
    auto out = tp.make_output(S, tracked);
    if (tracked) {
      tp.record([x, out, keep, recs, w_ih = w_ih, w_hh = w_hh, b_ih = b_ih, b_hh = b_hh, m0 = msg,
                 m1 = msg_ve, H, A, N, kinds]() {
        if (!out.has_grad()) return;
        backward(*keep, *recs, x, out, w_ih, w_hh, b_ih, b_hh, {&m0, m1 ? &*m1 : nullptr}, H, A, N, kinds);
      });
    }
    return out;
  }

  /// Rows of one step processed in parallel from this many on (a node update costs well under a
  /// microsecond at H = 32, so threads pay off only for a few dozen rows).
  static constexpr std::int64_t kParallelRows = 32;

  /// Backward of the fused op: the sweeps in reverse, nodes of each sweep in reverse update order
  /// (file comment of gated_gnn.hpp).
  static void backward(const gnn_schedule<T>& sc, const std::vector<detail::gnn_sweep_record<T, B>>& recs,
                       const autograd::var<T, B>& x, const autograd::var<T, B>& out, const autograd::var<T, B>& w_ih,
                       const autograd::var<T, B>& w_hh, const autograd::var<T, B>& b_ih,
                       const autograd::var<T, B>& b_hh, std::vector<const mlp<T, B>*> mlps, std::int64_t H,
                       std::int64_t A, std::int64_t N, int kinds) {
    using G = backend::impl<B, backend::op::gemm>;
    const std::int64_t H3 = 3 * H;
    const int n_steps = sc.steps();
    tensor<T, B> dS = out.grad().clone();  // gradient w.r.t. the states after the current sweep
    tensor<T, B> dC[2], dCp[2], dAp[2];
    for (int kd = 0; kd < kinds; ++kd) {
      dC[kd] = tensor<T, B>({N, H});
      dCp[kd] = tensor<T, B>({N, H});
      dAp[kd] = tensor<T, B>({N, A});
    }
    tensor<T, B> dGI({N, H3}), dGH({N, H3}), dM({N, H}), dHp({N, H});
    const T* wih = w_ih.value().data();
    for (std::size_t s = recs.size(); s-- > 0;) {
      const auto& rec = recs[s];
      const int dir = rec.dir;
      const tensor<T, B>& h_new = s + 1 < recs.size() ? recs[s + 1].h_prev : out.value();
      for (int kd = 0; kd < kinds; ++kd) {
        dC[kd].set_zero();
        dCp[kd].set_zero();
        dAp[kd].set_zero();
      }
      // One node: through its MLPs and GRU update; writes its rows of dCp, dAp, dGI, dGH, dHp, dM.
      auto node = [&](int v, T* dh) {
        const auto uv = static_cast<std::size_t>(v);
        std::copy_n(dS.data() + v * H, H, dh);
        for (int kd = 0; kd < kinds; ++kd) {
          if (!sc.need[dir][kd][uv]) continue;
          const mlp<T, B>& mp = *mlps[static_cast<std::size_t>(kd)];
          const T* c = rec.out[kd].data() + v * H;
          const T* a = rec.hid[kd].data() + v * A;
          T* dcp = dCp[kd].data() + v * H;
          T* dap = dAp[kd].data() + v * A;
          const T* dc = dC[kd].data() + v * H;
          for (std::int64_t j = 0; j < H; ++j) dcp[j] = c[j] > T(0) ? dc[j] : T(0);
          std::fill_n(dap, A, T(0));
          detail::gnn_add_dw(dcp, H, mp.w2.value().data(), A, dap);
          for (std::int64_t j = 0; j < A; ++j) dap[j] = a[j] > T(0) ? dap[j] : T(0);
          detail::gnn_add_dw(dap, A, mp.w1.value().data(), H, dh);
        }
        const T* g = rec.gates.data() + v * H3;
        const T* b = rec.gh.data() + v * H3;
        const T* hp = rec.h_prev.data() + v * H;
        T* da = dGI.data() + v * H3;
        T* db = dGH.data() + v * H3;
        T* dhp = dHp.data() + v * H;
        for (std::int64_t j = 0; j < H; ++j) {
          const T r = g[j], z = g[H + j], nn_ = g[2 * H + j];
          const T dn = dh[j] * (T(1) - z) * (T(1) - nn_ * nn_);
          const T dz = dh[j] * (hp[j] - nn_) * z * (T(1) - z);
          const T dr = dn * b[2 * H + j] * r * (T(1) - r);
          da[j] = db[j] = dr;
          da[H + j] = db[H + j] = dz;
          da[2 * H + j] = dn;
          db[2 * H + j] = dn * r;
          dhp[j] = dh[j] * z;
        }
        T* dm = dM.data() + v * H;
        std::fill_n(dm, H, T(0));
        detail::gnn_add_dw(da, H3, wih, H, dm);
      };
      // dm of a node flows into the MLP outputs of its neighbours (serial: targets repeat).
      auto scatter = [&](int v) {
        const auto uv = static_cast<std::size_t>(v);
        const T* dm = dM.data() + v * H;
        if (kinds == 2)
          for (std::int64_t q = sc.start[dir][uv]; q < sc.start[dir][uv + 1]; ++q) {
            T* d = dC[1].data() + static_cast<std::int64_t>(sc.nbr[dir][static_cast<std::size_t>(q)]) * H;
            const T w = sc.w_ve[dir][static_cast<std::size_t>(q)];
            for (std::int64_t j = 0; j < H; ++j) d[j] += w * dm[j];
          }
        for (std::int64_t q = sc.flow_start[dir][uv]; q < sc.flow_start[dir][uv + 1]; ++q) {
          T* d = dC[0].data() + static_cast<std::int64_t>(sc.flow_nbr[dir][static_cast<std::size_t>(q)]) * H;
          for (std::int64_t j = 0; j < H; ++j) d[j] += dm[j];
        }
      };
      detail::gnn_buffer<T> dh(static_cast<std::size_t>(H));
      // reverse of the update order: dir 0 updated k = 0..n-1, dir 1 k = n-1..0
      for (int i = 0; i < n_steps; ++i) {
        const int k = dir == 0 ? n_steps - 1 - i : i;
        const auto& rk = sc.rows[static_cast<std::size_t>(k)];
        const auto n_k = static_cast<std::int64_t>(rk.size());
        if (n_k < kParallelRows) {
          for (const int v : rk) node(v, dh.data());
        } else {
          parallel_for(0, n_k, kParallelRows / 2, [&](std::int64_t r0, std::int64_t r1) {
            detail::gnn_buffer<T> dh2(static_cast<std::size_t>(H));
            for (std::int64_t r = r0; r < r1; ++r) node(rk[static_cast<std::size_t>(r)], dh2.data());
          });
        }
        for (const int v : rk) scatter(v);
      }
      // Deferred products of the sweep.
      if (w_ih.requires_grad())
        G::run(true, false, H3, H, N, T(1), dGI.data(), H3, rec.msg.data(), H, T(1), w_ih.grad().data(), H);
      if (b_ih.requires_grad()) detail::gnn_column_sums(dGI.data(), N, H3, b_ih.grad().data());
      if (w_hh.requires_grad())
        G::run(true, false, H3, H, N, T(1), dGH.data(), H3, rec.h_prev.data(), H, T(1), w_hh.grad().data(), H);
      if (b_hh.requires_grad()) detail::gnn_column_sums(dGH.data(), N, H3, b_hh.grad().data());
      for (int kd = 0; kd < kinds; ++kd) {
        const mlp<T, B>& mp = *mlps[static_cast<std::size_t>(kd)];
        if (mp.w2.requires_grad())
          G::run(true, false, H, A, N, T(1), dCp[kd].data(), H, rec.hid[kd].data(), A, T(1), mp.w2.grad().data(), A);
        if (mp.b2.requires_grad()) detail::gnn_column_sums(dCp[kd].data(), N, H, mp.b2.grad().data());
        if (mp.w1.requires_grad())
          G::run(true, false, A, H, N, T(1), dAp[kd].data(), A, h_new.data(), H, T(1), mp.w1.grad().data(), H);
        if (mp.b1.requires_grad()) detail::gnn_column_sums(dAp[kd].data(), N, A, mp.b1.grad().data());
      }
      // d h_prev = dh * z + dgh W_hh
      G::run(false, false, N, H, H3, T(1), dGH.data(), H3, w_hh.value().data(), H, T(1), dHp.data(), H);
      std::swap(dS, dHp);
    }
    if (x.requires_grad()) nn::detail::accumulate(x, dS);
  }
};

}  // namespace ghnq::ghn
