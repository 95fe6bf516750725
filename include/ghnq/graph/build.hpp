/// \file
/// \brief Network IR -> computational graph, reproducing the reference GHN-2 graphs (spec §1.2-1.4,
/// ppuda `Graph._build_graph` / `_filter_graph` / `_add_virtual_edges`) node for node, edge for
/// edge and in the same node order.
///
/// The reference traces PyTorch's autograd graph, and its node order depends on that graph's
/// exact shape (the topological sort runs *before* parameter-free nodes are filtered out, and the
/// SE-multiply filter looks at the node two positions earlier). `build` therefore works in three
/// stages:
///
/// 1. **Autograd emulation.** Each IR op (in execution order) is expanded into the backward
///    functions PyTorch records for it, with their inputs ("next functions") in PyTorch's order:
///
///    | IR op | backward functions (inputs in order) |
///    |---|---|
///    | input | none: the image does not require grad |
///    | conv | Convolution(x, W, b?) |
///    | linear | Addmm(b, x, T(W)) with bias; Mm(x, T(W)) without |
///    | batch_norm | NativeBatchNorm(x, W, b) (affine) or NativeBatchNorm(x) |
///    | relu, hardswish, sigmoid, dropout (p > 0) | one function each (dropout traced in training mode) |
///    | max_pool, avg_pool | MaxPool2DWithIndices / AvgPool2D(x), kernel k |
///    | global_avg_pool (classifier head) | Mean(keepdim=True) then View (the `reshape(N, -1)`) |
///    | global_avg_pool feeding a channel_scale's scale (SE squeeze) | View(x) then Mean(keepdim=False) |
///    | flatten | View (Clone + UnsafeView for a non-contiguous input); nothing for a flat input |
///    | sum of n >= 2 | left fold of Add(a, b); a 1-input sum is its input |
///    | concat | Cat(inputs...), also for one input (`torch.cat([x])` is still recorded) |
///    | channel_scale (x, s) | Mul(x, View(s)) |
///    | zero (stride s) | [4 x Slice if s > 1] then Mul(x, none) (DeepNets' `x * 0` dummy) |
///    | subsample (stride > 1), shift | 4 x Slice: `x[:, :, a:b:c, a:b:c]` records one Slice per index |
///    | identity, subsample with stride 1, dropout with p = 0 | nothing |
///
///    A function is recorded only when one of its inputs carries gradient (a parameter leaf or
///    another function): ops computed from the image alone record nothing, as in PyTorch.
///    Slicing and the strided SE output are the only non-contiguous values (this decides View
///    versus Clone + UnsafeView for a later reshape).
///
/// 2. **Reference traversal and filter.** A depth-first walk from the output's function, children
///    in input order, numbers graph nodes in pre-order: a function is represented by its parameter
///    leaves (weight then bias; norm biases are skipped) or, without parameters, by itself. Each
///    child's representative (for a function with parameters, its *last* leaf) gets an edge to the
///    parent's first leaf; a bias leaf's edge is reversed (weight -> bias; the reference tests
///    "bias" in the parameter name, ghnq the parameter's role). For linear layers the
///    edges entering the bias are moved to the weight (input -> W -> b). The input node is
///    appended and joined to the node(s) without predecessors. The whole autograd-sized graph is
///    sorted with networkx's generation-wise Kahn sort (zero-in-degree nodes in index order,
///    successors in increasing index; spec §1.3 item 7). Then parameter-free nodes are dropped,
///    each removal connecting all predecessors to all successors (processed in sorted order,
///    deletions applied at the end of a pass as the reference does):
///      - pass 1: everything except parameter nodes, the input, pools, Mean with keepdim=True,
///        Add, Cat and Mul; a Mul survives only when the node two positions earlier in the sorted
///        list is a Hardswish (the reference's SE-gate test, kept literally: it drops some SE
///        multiplies and would keep a dummy `x * 0` preceded by a Hardswish);
///      - pass 2: Add with at most one incoming edge at the time it is visited;
///      - pass 3: Cat likewise.
///    Removals preserve the relative order of the surviving nodes.
///
/// 3. **Virtual edges** by BFS up to `s_max` (graph/virtual_edges.hpp).
///
/// This reproduces, for all 24 networks of the DeepNets-1M conv benchmark, the reference node
/// count, node-type sequence, 1-hop edge count and virtual-edge count (tests/unit/test_graph.cpp).
/// Facts the emulation depends on, derived by matching those files: `x[:, :, 1:, 1:]` and
/// `x[:, :, ::s, ::s]` each record four Slice functions (the full `:` slices are recorded too);
/// the tie-breaking of the sort depends on every recorded function, so the IR must mirror the
/// reference forward op for op: a DeepNets cell output is a `concat` even with one state
/// (`torch.cat([s])`), and the stem-1 ReLU is in-place, so cell 0's preprocess0 reads the ReLU's
/// output (also its true data flow). Only msa's marker (Clone after Softmax) has no IR source.
/// Deliberate difference: a batch_norm on a flat [N, C] value is a `bn` node (the reference maps
/// only BatchNorm2d); no DeepNets network has one.
///
/// Node fields: `name` is the parameter name or the IR op name ("input" for the input node);
/// `shape` the parameter shape or (1, 1, k, k) for pools; `cell` follows the reference's
/// `get_cell_ind` ("cells.<k>." -> k, "stem*" -> 0, "classifier*"/"auxiliary*" -> last cell,
/// other parameter-free nodes inherit the previous node's cell).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "ghnq/arch/network.hpp"
#include "ghnq/arch/params.hpp"
#include "ghnq/arch/shape_inference.hpp"
#include "ghnq/core/error.hpp"
#include "ghnq/graph/graph.hpp"
#include "ghnq/graph/virtual_edges.hpp"

namespace ghnq::graph {

namespace detail {

/// Backward-function classes of the emulated autograd graph.
enum class fn_class : std::uint8_t {
  convolution, addmm, mm, transpose, batch_norm, relu, hardswish, sigmoid, max_pool, avg_pool,
  mean, view, clone, unsafe_view, slice, add, cat, mul, dropout
};

/// A reference to an autograd input: nothing, a backward function or a parameter leaf.
struct fn_ref {
  enum kind_t : std::uint8_t { none, fn, leaf } kind = none;
  int idx = -1;
};

struct fn_node {
  fn_class cls = fn_class::relu;
  std::vector<fn_ref> next;
  int op = -1;
  int kernel = 0;        ///< pools
  bool keepdim = false;  ///< mean
};

struct leaf_node {
  int param = -1;        ///< index into arch::parameters(net)
  int op = -1;
  bool is_bias = false;
  bool norm_bias = false;  ///< batch-norm bias: never a graph node
};

/// Stage 1: the emulated autograd graph of a network (see the file comment).
struct autograd_trace {
  std::vector<fn_node> fns;
  std::vector<leaf_node> leaves;
  fn_ref output;
};

inline autograd_trace trace_autograd(const arch::network& net, const std::vector<arch::param_info>& params) {
  using arch::op_type;
  const int n_ops = static_cast<int>(net.ops.size());
  autograd_trace t;
  // (op, role) -> parameter index
  std::vector<int> param_of(static_cast<std::size_t>(n_ops) * 2, -1);
  for (std::size_t k = 0; k < params.size(); ++k)
    param_of[static_cast<std::size_t>(params[k].op) * 2 + (params[k].role == arch::param_role::bias ? 1 : 0)] =
        static_cast<int>(k);

  auto leaf = [&](int op, bool bias) -> fn_ref {
    const int p = param_of[static_cast<std::size_t>(op) * 2 + (bias ? 1 : 0)];
    GHNQ_ASSERT(p >= 0);
    leaf_node l;
    l.param = p;
    l.op = op;
    l.is_bias = bias;
    l.norm_bias = bias && net.ops[static_cast<std::size_t>(op)].type == op_type::batch_norm;
    t.leaves.push_back(l);
    return {fn_ref::leaf, static_cast<int>(t.leaves.size()) - 1};
  };
  // PyTorch records a backward function only when some input requires grad: values computed
  // from the image alone (before the first parameter) record nothing.
  auto make = [&](fn_class c, int op, std::vector<fn_ref> next, int kernel = 0, bool keepdim = false) -> fn_ref {
    if (std::all_of(next.begin(), next.end(), [](const fn_ref& r) { return r.kind == fn_ref::none; })) return {};
    fn_node f;
    f.kernel = kernel;
    f.keepdim = keepdim;
    f.cls = c;
    f.op = op;
    f.next = std::move(next);
    t.fns.push_back(std::move(f));
    return {fn_ref::fn, static_cast<int>(t.fns.size()) - 1};
  };
  auto slices = [&](fn_ref x, int op) {
    for (int k = 0; k < 4; ++k) x = make(fn_class::slice, op, {x});
    return x;
  };

  // SE squeezes: global_avg_pool ops whose value reaches a channel_scale's scale input through
  // flat element-wise / linear ops.
  std::vector<char> se_mean(static_cast<std::size_t>(n_ops), 0);
  for (const arch::op& o : net.ops) {
    if (o.type != op_type::channel_scale || o.inputs.size() < 2) continue;
    int j = o.inputs[1];
    while (j >= 0) {
      const arch::op& p = net.ops[static_cast<std::size_t>(j)];
      if (p.type == op_type::global_avg_pool) {
        se_mean[static_cast<std::size_t>(j)] = 1;
        break;
      }
      const bool through = p.type == op_type::linear || p.type == op_type::relu || p.type == op_type::hardswish ||
                           p.type == op_type::sigmoid || p.type == op_type::identity ||
                           p.type == op_type::dropout || p.type == op_type::batch_norm ||
                           (p.type == op_type::sum && p.inputs.size() == 1);
      j = through && !p.inputs.empty() ? p.inputs[0] : -1;
    }
  }

  std::vector<fn_ref> val(static_cast<std::size_t>(n_ops));
  std::vector<char> noncontig(static_cast<std::size_t>(n_ops), 0);
  auto in = [&](const arch::op& o, std::size_t k) { return val[static_cast<std::size_t>(o.inputs[k])]; };
  auto in_noncontig = [&](const arch::op& o) { return noncontig[static_cast<std::size_t>(o.inputs[0])] != 0; };
  auto is_flat_in = [&](const arch::op& o) { return arch::is_flat(net.ops[static_cast<std::size_t>(o.inputs[0])]); };
  auto reshape = [&](fn_ref x, bool nc, int op) {
    if (nc) return make(fn_class::unsafe_view, op, {make(fn_class::clone, op, {x})});
    return make(fn_class::view, op, {x});
  };

  for (int i = 0; i < n_ops; ++i) {
    const arch::op& o = net.ops[static_cast<std::size_t>(i)];
    const auto ui = static_cast<std::size_t>(i);
    fn_ref v;
    bool nc = false;
    switch (o.type) {
      case op_type::input: break;
      case op_type::conv:
        v = make(fn_class::convolution, i, {in(o, 0), leaf(i, false), o.bias ? leaf(i, true) : fn_ref{}});
        break;
      case op_type::linear:
        if (o.bias)
          v = make(fn_class::addmm, i, {leaf(i, true), in(o, 0), make(fn_class::transpose, i, {leaf(i, false)})});
        else
          v = make(fn_class::mm, i, {in(o, 0), make(fn_class::transpose, i, {leaf(i, false)})});
        break;
      case op_type::batch_norm:
        if (o.bias) v = make(fn_class::batch_norm, i, {in(o, 0), leaf(i, false), leaf(i, true)});
        else v = make(fn_class::batch_norm, i, {in(o, 0)});
        break;
      case op_type::relu: v = make(fn_class::relu, i, {in(o, 0)}); break;
      case op_type::hardswish: v = make(fn_class::hardswish, i, {in(o, 0)}); break;
      case op_type::sigmoid: v = make(fn_class::sigmoid, i, {in(o, 0)}); break;
      case op_type::max_pool:
      case op_type::avg_pool:
        v = make(o.type == op_type::max_pool ? fn_class::max_pool : fn_class::avg_pool, i, {in(o, 0)}, o.kh);
        break;
      case op_type::global_avg_pool:
        if (se_mean[ui]) {
          v = make(fn_class::mean, i, {reshape(in(o, 0), in_noncontig(o), i)}, 0, false);
        } else {
          v = make(fn_class::mean, i, {in(o, 0)}, 0, true);
          v = make(fn_class::view, i, {v});
        }
        break;
      case op_type::flatten:
        v = is_flat_in(o) ? in(o, 0) : reshape(in(o, 0), in_noncontig(o), i);
        break;
      case op_type::sum:
        v = in(o, 0);
        nc = o.inputs.size() == 1 && in_noncontig(o);
        for (std::size_t k = 1; k < o.inputs.size(); ++k) v = make(fn_class::add, i, {v, in(o, k)});
        break;
      case op_type::concat: {
        std::vector<fn_ref> xs;
        for (std::size_t k = 0; k < o.inputs.size(); ++k) xs.push_back(in(o, k));
        v = make(fn_class::cat, i, std::move(xs));
        break;
      }
      case op_type::zero: {
        fn_ref x = in(o, 0);
        if (o.stride > 1) x = slices(x, i);
        v = make(fn_class::mul, i, {x, fn_ref{}});
        break;
      }
      case op_type::identity:
        v = in(o, 0);
        nc = in_noncontig(o);
        break;
      case op_type::subsample:
        if (o.stride > 1) {
          v = slices(in(o, 0), i);
          nc = true;
        } else {
          v = in(o, 0);
          nc = in_noncontig(o);
        }
        break;
      case op_type::shift:
        v = slices(in(o, 0), i);
        nc = true;
        break;
      case op_type::dropout:
        if (o.p > 0) v = make(fn_class::dropout, i, {in(o, 0)});
        else {
          v = in(o, 0);
          nc = in_noncontig(o);
        }
        break;
      case op_type::channel_scale:
        v = make(fn_class::mul, i, {in(o, 0), make(fn_class::view, i, {in(o, 1)})});
        break;
    }
    val[ui] = v;
    noncontig[ui] = nc ? 1 : 0;
  }
  t.output = val[static_cast<std::size_t>(net.output)];
  return t;
}

/// Small adjacency with set semantics (degrees are small).
struct adjacency {
  std::vector<std::vector<int>> succ, pred;
  explicit adjacency(std::size_t n = 0) : succ(n), pred(n) {}
  static bool contains(const std::vector<int>& v, int x) { return std::find(v.begin(), v.end(), x) != v.end(); }
  static void erase(std::vector<int>& v, int x) {
    auto it = std::find(v.begin(), v.end(), x);
    if (it != v.end()) v.erase(it);
  }
  bool has(int a, int b) const { return contains(succ[static_cast<std::size_t>(a)], b); }
  void add(int a, int b) {
    if (has(a, b)) return;
    succ[static_cast<std::size_t>(a)].push_back(b);
    pred[static_cast<std::size_t>(b)].push_back(a);
  }
  void remove(int a, int b) {
    erase(succ[static_cast<std::size_t>(a)], b);
    erase(pred[static_cast<std::size_t>(b)], a);
  }
};

/// A node of the autograd-sized graph of stage 2.
struct trace_node {
  enum kind_t : std::uint8_t { fn, leaf, input } kind = fn;
  int idx = -1;  ///< fn or leaf index
};

/// One removal pass over the positions in increasing order: for each position with
/// `remove(pos)` true, connects all its predecessors to all its successors; afterwards deletes
/// the removed nodes. Returns the positions kept (in order) and remaps `adj` to them.
template <class Remove>
std::vector<int> filter_pass(adjacency& adj, Remove&& remove) {
  const int n = static_cast<int>(adj.succ.size());
  std::vector<int> keep;
  keep.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    if (!remove(i)) {
      keep.push_back(i);
      continue;
    }
    const std::vector<int> succ = adj.succ[static_cast<std::size_t>(i)];
    const std::vector<int> pred = adj.pred[static_cast<std::size_t>(i)];
    for (const int n1 : succ)
      for (const int n2 : pred)
        if (n1 != n2) adj.add(n2, n1);
  }
  if (static_cast<int>(keep.size()) == n) return keep;
  std::vector<int> pos(static_cast<std::size_t>(n), -1);
  for (std::size_t k = 0; k < keep.size(); ++k) pos[static_cast<std::size_t>(keep[k])] = static_cast<int>(k);
  adjacency out(keep.size());
  for (std::size_t k = 0; k < keep.size(); ++k)
    for (const int b : adj.succ[static_cast<std::size_t>(keep[k])])
      if (pos[static_cast<std::size_t>(b)] >= 0) out.add(static_cast<int>(k), pos[static_cast<std::size_t>(b)]);
  adj = std::move(out);
  return keep;
}

/// networkx.topological_sort (generation-wise Kahn): zero in-degree nodes in index order, each
/// generation's nodes in discovery order, successors in increasing index order.
inline std::vector<int> kahn_generations(const adjacency& adj) {
  const std::size_t n = adj.succ.size();
  std::vector<int> indeg(n);
  for (std::size_t i = 0; i < n; ++i) indeg[i] = static_cast<int>(adj.pred[i].size());
  std::vector<int> order, gen, next;
  order.reserve(n);
  for (std::size_t i = 0; i < n; ++i)
    if (indeg[i] == 0) gen.push_back(static_cast<int>(i));
  std::vector<int> succ;
  while (!gen.empty()) {
    next.clear();
    for (const int u : gen) {
      succ = adj.succ[static_cast<std::size_t>(u)];
      std::sort(succ.begin(), succ.end());
      for (const int v : succ)
        if (--indeg[static_cast<std::size_t>(v)] == 0) next.push_back(v);
      order.push_back(u);
    }
    std::swap(gen, next);
  }
  GHNQ_CHECK(order.size() == n, value_error, "graph: the traced graph has a cycle");
  return order;
}

/// k for a name containing "cells.<k>", else -1.
inline int cells_index(const std::string& name) {
  const auto pos = name.find("cells.");
  if (pos == std::string::npos) return -1;
  int c = -1;
  for (std::size_t k = pos + 6; k < name.size() && name[k] >= '0' && name[k] <= '9'; ++k)
    c = (c < 0 ? 0 : c * 10) + (name[k] - '0');
  return c;
}

/// The reference's get_cell_ind: the cell of a node named `name`, or -1 for "inherit the
/// previous node's cell".
inline int cell_of(const std::string& name, int n_cells) {
  const int c = cells_index(name);
  if (c >= 0) return c;
  if (name.rfind("classifier", 0) == 0 || name.rfind("auxiliary", 0) == 0) return n_cells - 1;
  if (n_cells == 1 || name.rfind("stem", 0) == 0 || name.rfind("pos_enc", 0) == 0) return 0;
  return -1;
}

}  // namespace detail

/// Builds the computational graph of `net` (shapes need not be inferred; an invalid network
/// throws as arch::infer_shapes does) with virtual edges up to `s_max` (1 = none; GHN-2 uses 50).
/// Only ops that the output depends on (through a path that carries gradient) appear. Throws
/// value_error when s_max < 1 or when the output does not depend on any parameter. See the file
/// comment for the exact rules. Cost: about 0.3 ms for a 200-node DeepNets-1M graph with
/// s_max = 50 (one core of a 2-core AMD EPYC).
/// \code
/// auto g = ghnq::graph::build(ghnq::arch::deepnets_network(args, 3, 32, 32, 10));
/// std::cout << g.n_nodes() << " nodes, " << g.num_edges(1) << " data-flow edges\n";
/// \endcode
inline computational_graph build(const arch::network& net_in, int s_max = 50) {
  GHNQ_CHECK(s_max >= 1, value_error, "graph::build: s_max must be >= 1, got ", s_max);
  // Networks from arch::builder::finish (or infer_shapes) are used as they are; others are
  // validated and inferred on a copy.
  bool inferred = !net_in.ops.empty();
  for (const arch::op& o : net_in.ops) inferred = inferred && o.c > 0;
  arch::network tmp;
  if (inferred) arch::check_output(net_in);
  else {
    tmp = net_in;
    arch::infer_shapes(tmp);
  }
  const arch::network& net = inferred ? net_in : tmp;
  const std::vector<arch::param_info> params = arch::parameters(net);
  const detail::autograd_trace t = detail::trace_autograd(net, params);
  GHNQ_CHECK(t.output.kind == detail::fn_ref::fn, value_error, "graph::build: the output of network '", net.name,
             "' does not depend on any parameter (nothing to trace)");

  // ---- Stage 2a: depth-first traversal from the output (pre-order numbering).
  std::vector<detail::trace_node> tn;
  std::vector<std::pair<int, int>> raw_edges;
  std::vector<int> fn_link(t.fns.size(), -1), leaf_link(t.leaves.size(), -1);
  struct frame {
    int f;
    std::size_t child;
    int link_start;
  };
  std::vector<frame> stack;
  auto visit = [&](int f) {
    const detail::fn_node& fn = t.fns[static_cast<std::size_t>(f)];
    int first = -1, last = -1;
    for (const detail::fn_ref& r : fn.next) {
      if (r.kind != detail::fn_ref::leaf || t.leaves[static_cast<std::size_t>(r.idx)].norm_bias) continue;
      const int id = static_cast<int>(tn.size());
      tn.push_back({detail::trace_node::leaf, r.idx});
      leaf_link[static_cast<std::size_t>(r.idx)] = id;
      if (first < 0) first = id;
      last = id;
    }
    if (first < 0) {
      first = last = static_cast<int>(tn.size());
      tn.push_back({detail::trace_node::fn, f});
    }
    fn_link[static_cast<std::size_t>(f)] = last;
    stack.push_back({f, 0, first});
  };
  auto add_edge = [&](int link, bool reversed, int start) {
    if (link < 0 || link == start) return;
    if (reversed) raw_edges.emplace_back(start, link);
    else raw_edges.emplace_back(link, start);
  };
  visit(t.output.idx);
  while (!stack.empty()) {
    frame& fr = stack.back();
    const detail::fn_node& fn = t.fns[static_cast<std::size_t>(fr.f)];
    if (fr.child == fn.next.size()) {
      const int done = fr.f;
      stack.pop_back();
      if (!stack.empty()) add_edge(fn_link[static_cast<std::size_t>(done)], false, stack.back().link_start);
      continue;
    }
    const detail::fn_ref r = fn.next[fr.child++];
    if (r.kind == detail::fn_ref::leaf) {
      add_edge(leaf_link[static_cast<std::size_t>(r.idx)], t.leaves[static_cast<std::size_t>(r.idx)].is_bias,
               fr.link_start);
    } else if (r.kind == detail::fn_ref::fn) {
      if (fn_link[static_cast<std::size_t>(r.idx)] >= 0) add_edge(fn_link[static_cast<std::size_t>(r.idx)], false, fr.link_start);
      else visit(r.idx);  // the edge is added when this child's frame is popped
    }
  }

  // ---- Stage 2b: adjacency, linear-layer fix, input node, topological sort.
  const int n_trace = static_cast<int>(tn.size());
  detail::adjacency adj(static_cast<std::size_t>(n_trace) + 1);
  for (const auto& e : raw_edges) adj.add(e.first, e.second);
  for (int i = 0; i < n_trace; ++i) {
    const detail::trace_node& x = tn[static_cast<std::size_t>(i)];
    if (x.kind != detail::trace_node::leaf) continue;
    const detail::leaf_node& l = t.leaves[static_cast<std::size_t>(x.idx)];
    if (l.is_bias || net.ops[static_cast<std::size_t>(l.op)].type != arch::op_type::linear) continue;
    std::vector<int> outs = adj.succ[static_cast<std::size_t>(i)];
    std::sort(outs.begin(), outs.end());
    for (const int o : outs) {
      const std::vector<int> preds = adj.pred[static_cast<std::size_t>(o)];
      for (const int p : preds) adj.add(p, i);
      for (const int p : preds) adj.remove(p, o);
      adj.add(i, o);
      adj.remove(i, i);
    }
  }
  tn.push_back({detail::trace_node::input, -1});
  for (int i = 0; i < n_trace; ++i)
    if (adj.pred[static_cast<std::size_t>(i)].empty()) adj.add(n_trace, i);
  const std::vector<int> order = detail::kahn_generations(adj);
  {
    std::vector<int> pos(order.size());
    for (std::size_t k = 0; k < order.size(); ++k) pos[static_cast<std::size_t>(order[k])] = static_cast<int>(k);
    detail::adjacency sorted(order.size());
    std::vector<detail::trace_node> tn_sorted(order.size());
    for (std::size_t k = 0; k < order.size(); ++k) {
      tn_sorted[k] = tn[static_cast<std::size_t>(order[k])];
      for (const int b : adj.succ[static_cast<std::size_t>(order[k])])
        sorted.add(static_cast<int>(k), pos[static_cast<std::size_t>(b)]);
    }
    adj = std::move(sorted);
    tn = std::move(tn_sorted);
  }

  // ---- Stage 2c: filter parameter-free nodes.
  auto fn_at = [&](int pos) -> const detail::fn_node* {
    const detail::trace_node& x = tn[static_cast<std::size_t>(pos)];
    return x.kind == detail::trace_node::fn ? &t.fns[static_cast<std::size_t>(x.idx)] : nullptr;
  };
  {
    const int n = static_cast<int>(tn.size());
    std::vector<char> drop(static_cast<std::size_t>(n), 0);
    for (int i = 0; i < n; ++i) {
      const detail::fn_node* f = fn_at(i);
      if (f == nullptr) continue;
      switch (f->cls) {
        case detail::fn_class::max_pool:
        case detail::fn_class::avg_pool:
        case detail::fn_class::add:
        case detail::fn_class::cat: break;
        case detail::fn_class::mean: drop[static_cast<std::size_t>(i)] = f->keepdim ? 0 : 1; break;
        case detail::fn_class::mul: {
          const detail::fn_node* h = fn_at(((i - 2) % n + n) % n);  // Python's nodes[i - 2]
          drop[static_cast<std::size_t>(i)] = (h != nullptr && h->cls == detail::fn_class::hardswish) ? 0 : 1;
          break;
        }
        default: drop[static_cast<std::size_t>(i)] = 1;
      }
    }
    std::vector<int> keep = detail::filter_pass(adj, [&](int i) { return drop[static_cast<std::size_t>(i)] != 0; });
    std::vector<detail::trace_node> tn2;
    for (const int k : keep) tn2.push_back(tn[static_cast<std::size_t>(k)]);
    tn = std::move(tn2);
  }
  for (const detail::fn_class cls : {detail::fn_class::add, detail::fn_class::cat}) {
    std::vector<int> keep = detail::filter_pass(adj, [&](int i) {
      const detail::fn_node* f = fn_at(i);
      return f != nullptr && f->cls == cls && adj.pred[static_cast<std::size_t>(i)].size() <= 1;
    });
    std::vector<detail::trace_node> tn2;
    for (const int k : keep) tn2.push_back(tn[static_cast<std::size_t>(k)]);
    tn = std::move(tn2);
  }

  // ---- Nodes and data-flow edges.
  computational_graph g;
  const int n = static_cast<int>(tn.size());
  int max_cell = -1;
  for (const arch::op& o : net.ops) max_cell = std::max(max_cell, detail::cells_index(o.name));
  g.num_cells = max_cell >= 0 ? max_cell + 1 : 1;
  g.nodes.resize(static_cast<std::size_t>(n));
  int cell = 0;
  for (int i = 0; i < n; ++i) {
    const detail::trace_node& x = tn[static_cast<std::size_t>(i)];
    node& nd = g.nodes[static_cast<std::size_t>(i)];
    if (x.kind == detail::trace_node::input) {
      nd.type = primitive::input;
      nd.name = "input";
    } else if (x.kind == detail::trace_node::leaf) {
      const detail::leaf_node& l = t.leaves[static_cast<std::size_t>(x.idx)];
      const arch::op& o = net.ops[static_cast<std::size_t>(l.op)];
      const arch::param_info& p = params[static_cast<std::size_t>(l.param)];
      if (o.type == arch::op_type::batch_norm) nd.type = primitive::bn;
      else if (l.is_bias) nd.type = primitive::bias;
      else if (o.type == arch::op_type::conv && o.groups > 1) nd.type = o.dilation > 1 ? primitive::dil_conv : primitive::sep_conv;
      else nd.type = primitive::conv;
      nd.name = p.name;
      nd.shape = p.shape;
      nd.op = l.op;
      nd.param = l.param;
    } else {
      const detail::fn_node& f = t.fns[static_cast<std::size_t>(x.idx)];
      switch (f.cls) {
        case detail::fn_class::max_pool: nd.type = primitive::max_pool; break;
        case detail::fn_class::avg_pool: nd.type = primitive::avg_pool; break;
        case detail::fn_class::mean: nd.type = primitive::glob_avg; break;
        case detail::fn_class::mul: nd.type = primitive::cse; break;
        case detail::fn_class::add: nd.type = primitive::sum; break;
        case detail::fn_class::cat: nd.type = primitive::concat; break;
        default: GHNQ_ASSERT(false);
      }
      if (f.cls == detail::fn_class::max_pool || f.cls == detail::fn_class::avg_pool)
        nd.shape = ghnq::shape{1, 1, f.kernel, f.kernel};
      nd.op = f.op;
      nd.name = net.ops[static_cast<std::size_t>(f.op)].name;
    }
    const int c = x.kind == detail::trace_node::leaf ? detail::cell_of(nd.name, g.num_cells)
                                                     : (g.num_cells == 1 ? 0 : -1);
    if (c >= 0) cell = c;
    nd.cell = cell;
  }
  if (n >= 2) {
    g.nodes[static_cast<std::size_t>(n) - 2].is_last_weight = true;
    g.nodes[static_cast<std::size_t>(n) - 1].is_last_bias = true;
  }
  for (int i = 0; i < n; ++i)
    for (const int j : adj.succ[static_cast<std::size_t>(i)]) g.edges.push_back({i, j, 1});

  // ---- Stage 3: virtual edges (also sorts the edges).
  add_virtual_edges(g, s_max);
  return g;
}

}  // namespace ghnq::graph
