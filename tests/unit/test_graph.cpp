// Tests of the computational graph (ghnq/graph): node set, edges and order on hand-written IRs
// (expected graphs derived by hand from the reference algorithm, see graph/build.hpp), virtual
// edges against Floyd-Warshall, DOT export, batches, and exact parity with the reference GHN-2
// graphs of the 24 DeepNets-1M networks in ../shared/bench/deepnets_conv.json.
#include <catch2/catch.hpp>

#include <algorithm>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "ghnq/arch/builder.hpp"
#include "ghnq/arch/deepnets.hpp"
#include "ghnq/arch/params.hpp"
#include "ghnq/graph/batch.hpp"
#include "ghnq/graph/build.hpp"
#include "ghnq/graph/dot.hpp"
#include "ghnq/graph/graph.hpp"
#include "ghnq/graph/virtual_edges.hpp"

#ifndef GHNQ_SOURCE_DIR
#define GHNQ_SOURCE_DIR "."
#endif

using namespace ghnq;
using graph::primitive;

namespace {

using edge_list = std::vector<std::pair<int, int>>;

edge_list flow_edges(const graph::computational_graph& g) {
  edge_list out;
  for (const auto& e : g.edges)
    if (e.dist == 1) out.emplace_back(e.src, e.dst);
  return out;
}

std::vector<primitive> types(const graph::computational_graph& g) {
  std::vector<primitive> out;
  for (const auto& n : g.nodes) out.push_back(n.type);
  return out;
}

std::vector<std::string> names(const graph::computational_graph& g) {
  std::vector<std::string> out;
  for (const auto& n : g.nodes) out.push_back(n.name);
  return out;
}

// Invariants every graph must satisfy (spec §1.4): input first, edges sorted, unique, forward.
void check_invariants(const graph::computational_graph& g) {
  REQUIRE(g.n_nodes() >= 1);
  CHECK(g.nodes[0].type == primitive::input);
  int extra_inputs = 0, bad_edges = 0, unsorted = 0, no_pred = 0;
  for (int i = 1; i < g.n_nodes(); ++i) extra_inputs += g.nodes[static_cast<std::size_t>(i)].type == primitive::input;
  for (std::size_t k = 0; k < g.edges.size(); ++k) {
    const auto& e = g.edges[k];
    bad_edges += !(e.src < e.dst && e.dist >= 1 && e.dist <= g.s_max);
    if (k > 0) unsorted += !(std::tie(g.edges[k - 1].src, g.edges[k - 1].dst) < std::tie(e.src, e.dst));
  }
  // Every node but the input has a data-flow predecessor.
  std::vector<int> indeg(static_cast<std::size_t>(g.n_nodes()), 0);
  for (const auto& e : g.edges)
    if (e.dist == 1) ++indeg[static_cast<std::size_t>(e.dst)];
  for (int i = 1; i < g.n_nodes(); ++i) no_pred += indeg[static_cast<std::size_t>(i)] == 0;
  CHECK(extra_inputs == 0);
  CHECK(bad_edges == 0);
  CHECK(unsorted == 0);
  CHECK(no_pred == 0);
  if (g.n_nodes() >= 2) {
    CHECK(g.nodes[static_cast<std::size_t>(g.n_nodes() - 2)].is_last_weight);
    CHECK(g.nodes[static_cast<std::size_t>(g.n_nodes() - 1)].is_last_bias);
  }
}

// conv(3->16, 3x3) - bn - relu - conv(16->8, 3x3, bias) - global pool - linear(8->10, bias)
arch::network chain_net() {
  arch::builder b(3, 8, 8, 10);
  int x = b.conv(b.input(), 16, 3, 3, 1, 1, 1, 1, 1, false, "conv1");
  x = b.batch_norm(x, true, "bn1");
  x = b.relu(x, "relu1");
  x = b.conv(x, 8, 3, 3, 1, 1, 1, 1, 1, true, "conv2");
  x = b.global_avg_pool(x, "pool");
  x = b.linear(x, 10, true, "fc");
  return b.finish(x, "chain");
}

// c0 -> relu -> c1; sum(c0, c1) -> pool -> linear without bias
arch::network residual_net() {
  arch::builder b(3, 8, 8, 10);
  const int c0 = b.conv(b.input(), 8, 3, 3, 1, 1, 1, 1, 1, false, "c0");
  const int r = b.relu(c0, "relu");
  const int c1 = b.conv(r, 8, 3, 3, 1, 1, 1, 1, 1, false, "c1");
  const int s = b.sum({c0, c1}, "add");
  return b.finish(b.linear(b.global_avg_pool(s, "pool"), 10, false, "fc"), "residual");
}

// c0 -> {conv a (1x1), max_pool} -> concat (in the given order) -> bn -> pool -> linear
arch::network concat_net(bool conv_first) {
  arch::builder b(3, 8, 8, 10);
  const int c0 = b.conv(b.input(), 8, 3, 3, 1, 1, 1, 1, 1, false, "c0");
  const int a = b.conv(c0, 4, 1, 1, 1, 0, 0, 1, 1, false, "a");
  const int p = b.max_pool(c0, 3, 1, 1, "mp");
  const int cat = conv_first ? b.concat({a, p}, "cat") : b.concat({p, a}, "cat");
  const int bn = b.batch_norm(cat, true, "bn");
  return b.finish(b.linear(b.global_avg_pool(bn, "pool"), 10, true, "fc"), "concat");
}

// conv -> squeeze-excitation (gate = hardswish or sigmoid) -> pool -> linear
arch::network se_net(bool hardswish) {
  arch::builder b(3, 8, 8, 10);
  const int c = b.conv(b.input(), 8, 3, 3, 1, 1, 1, 1, 1, false, "c");
  int q = b.global_avg_pool(c, "squeeze");
  q = b.linear(q, 4, true, "fc1");
  q = b.relu(q, "relu");
  q = b.linear(q, 8, true, "fc2");
  q = hardswish ? b.hardswish(q, "gate") : b.sigmoid(q, "gate");
  const int y = b.channel_scale(c, q, "mul");
  return b.finish(b.linear(b.global_avg_pool(y, "pool"), 10, true, "fc"), "se");
}

}  // namespace

TEST_CASE("graph: primitives", "[graph]") {
  CHECK(graph::kNumPrimitives == 15);
  const char* expected[] = {"max_pool", "avg_pool", "sep_conv", "dil_conv", "conv", "msa", "cse", "sum",
                            "concat", "input", "bias", "bn", "ln", "pos_enc", "glob_avg"};
  for (int i = 0; i < graph::kNumPrimitives; ++i) {
    CHECK(std::string(graph::to_string(static_cast<primitive>(i))) == expected[i]);
    CHECK(graph::primitive_from_string(expected[i]) == static_cast<primitive>(i));
  }
  CHECK_THROWS_AS(graph::primitive_from_string("relu"), value_error);
}

TEST_CASE("graph: chain conv-bn-relu-conv-linear", "[graph]") {
  const arch::network net = chain_net();
  const auto g = graph::build(net, 50);
  check_invariants(g);
  CHECK(types(g) == std::vector<primitive>{primitive::input, primitive::conv, primitive::bn, primitive::conv,
                                           primitive::bias, primitive::glob_avg, primitive::conv, primitive::bias});
  CHECK(names(g) == std::vector<std::string>{"input", "conv1.weight", "bn1.weight", "conv2.weight", "conv2.bias",
                                             "pool", "fc.weight", "fc.bias"});
  CHECK(flow_edges(g) == edge_list{{0, 1}, {1, 2}, {2, 3}, {3, 4}, {4, 5}, {5, 6}, {6, 7}});
  // Shapes: parameters in PyTorch layout, nothing for parameter-free nodes.
  CHECK(g.nodes[1].shape == shape({16, 3, 3, 3}));
  CHECK(g.nodes[2].shape == shape({16}));
  CHECK(g.nodes[3].shape == shape({8, 16, 3, 3}));
  CHECK(g.nodes[4].shape == shape({8}));
  CHECK(g.nodes[5].shape.empty());
  CHECK(g.nodes[6].shape == shape({10, 8}));
  CHECK(g.nodes[7].shape == shape({10}));
  CHECK(g.nodes[0].shape.empty());
  // Parameter indices (registration order: conv1.w, bn1.w, bn1.b, conv2.w, conv2.b, fc.w, fc.b)
  // and IR op indices.
  std::vector<int> param, op;
  for (const auto& n : g.nodes) {
    param.push_back(n.param);
    op.push_back(n.op);
  }
  CHECK(param == std::vector<int>{-1, 0, 1, 3, 4, -1, 5, 6});
  CHECK(op == std::vector<int>{-1, 1, 2, 4, 4, 5, 6, 6});
  CHECK(g.nodes[6].is_last_weight);
  CHECK(g.nodes[7].is_last_bias);
  CHECK_FALSE(g.nodes[5].is_last_weight);
  for (const auto& n : g.nodes) CHECK(n.cell == 0);
  CHECK(g.num_cells == 1);
  // A chain: every forward pair (i, j) is joined at distance j - i.
  CHECK(g.num_edges(1) == 7);
  CHECK(g.num_edges(50) == 28);
  for (const auto& e : g.edges) CHECK(e.dist == e.dst - e.src);
  const auto g3 = graph::build(net, 3);
  CHECK(g3.s_max == 3);
  CHECK(g3.num_edges(3) == 7 + 6 + 5);
  const auto g1 = graph::build(net, 1);
  CHECK(g1.edges.size() == 7);
}

TEST_CASE("graph: residual sum, linear without bias", "[graph]") {
  const auto g = graph::build(residual_net());
  check_invariants(g);
  CHECK(types(g) == std::vector<primitive>{primitive::input, primitive::conv, primitive::conv, primitive::sum,
                                           primitive::glob_avg, primitive::conv});
  CHECK(names(g) == std::vector<std::string>{"input", "c0.weight", "c1.weight", "add", "pool", "fc.weight"});
  CHECK(flow_edges(g) == edge_list{{0, 1}, {1, 2}, {1, 3}, {2, 3}, {3, 4}, {4, 5}});
  // Virtual edges: 0->2 (2), 0->3 (2), 0->4 (3), 0->5 (4), 1->4 (2), 1->5 (3), 2->4 (2), 2->5 (3), 3->5 (2).
  CHECK(g.num_edges(50) == 6 + 9);
  for (const auto& e : g.edges)
    if (e.src == 0 && e.dst == 5) CHECK(e.dist == 4);
}

TEST_CASE("graph: concat, and node order follows the autograd DFS order", "[graph]") {
  // The depth-first walk visits the concat's inputs in argument order, which sets the indices
  // that break ties inside a topological generation.
  const auto g1 = graph::build(concat_net(true));
  check_invariants(g1);
  CHECK(types(g1) == std::vector<primitive>{primitive::input, primitive::conv, primitive::conv, primitive::max_pool,
                                            primitive::concat, primitive::bn, primitive::glob_avg, primitive::conv,
                                            primitive::bias});
  CHECK(flow_edges(g1) == edge_list{{0, 1}, {1, 2}, {1, 3}, {2, 4}, {3, 4}, {4, 5}, {5, 6}, {6, 7}, {7, 8}});
  CHECK(g1.nodes[3].shape == shape({1, 1, 3, 3}));
  CHECK(g1.nodes[3].name == "mp");

  const auto g2 = graph::build(concat_net(false));
  check_invariants(g2);
  CHECK(types(g2) == std::vector<primitive>{primitive::input, primitive::conv, primitive::max_pool, primitive::conv,
                                            primitive::concat, primitive::bn, primitive::glob_avg, primitive::conv,
                                            primitive::bias});
  CHECK(names(g2)[3] == "a.weight");
  CHECK(flow_edges(g2) == edge_list{{0, 1}, {1, 2}, {1, 3}, {2, 4}, {3, 4}, {4, 5}, {5, 6}, {6, 7}, {7, 8}});
}

TEST_CASE("graph: sums and concats with one distinct input vanish", "[graph]") {
  arch::builder b(3, 8, 8, 10);
  const int c0 = b.conv(b.input(), 8, 3, 3, 1, 1, 1, 1, 1, false, "c0");
  const int s1 = b.sum({c0}, "sum1");        // a 1-input sum records nothing
  const int s2 = b.sum({s1, s1}, "sum2");    // x + x: one distinct incoming edge, removed
  const int k = b.concat({s2}, "cat");       // torch.cat([x]): one incoming edge, removed
  const auto g = graph::build(b.finish(b.linear(b.global_avg_pool(k, "pool"), 10, true, "fc")));
  check_invariants(g);
  CHECK(types(g) == std::vector<primitive>{primitive::input, primitive::conv, primitive::glob_avg, primitive::conv,
                                           primitive::bias});
  CHECK(flow_edges(g) == edge_list{{0, 1}, {1, 2}, {2, 3}, {3, 4}});
}

TEST_CASE("graph: bias node edges go weight -> bias -> consumers", "[graph]") {
  arch::builder b(3, 8, 8, 10);
  const int c = b.conv(b.input(), 8, 3, 3, 1, 1, 1, 1, 1, true, "c");
  const int a = b.conv(c, 8, 3, 3, 1, 1, 1, 1, 1, false, "a");
  const int d = b.conv(c, 8, 1, 1, 1, 0, 0, 1, 1, false, "d");
  const int s = b.sum({a, d}, "add");
  const auto g = graph::build(b.finish(b.linear(b.global_avg_pool(s, "pool"), 10, true, "fc")));
  check_invariants(g);
  auto idx = [&](const std::string& name) {
    for (int i = 0; i < g.n_nodes(); ++i)
      if (g.nodes[static_cast<std::size_t>(i)].name == name) return i;
    FAIL("no node " << name);
    return -1;
  };
  const edge_list e = flow_edges(g);
  auto has = [&](int u, int v) { return std::find(e.begin(), e.end(), std::make_pair(u, v)) != e.end(); };
  const int cw = idx("c.weight"), cb = idx("c.bias"), aw = idx("a.weight"), dw = idx("d.weight");
  CHECK(g.nodes[static_cast<std::size_t>(cb)].type == primitive::bias);
  CHECK(g.nodes[static_cast<std::size_t>(cb)].shape == shape({8}));
  CHECK(cb == cw + 1);
  CHECK(has(cw, cb));
  CHECK(has(cb, aw));
  CHECK(has(cb, dw));
  CHECK_FALSE(has(cw, aw));
  CHECK_FALSE(has(cw, dw));
  CHECK(has(0, cw));
  // The classifier's bias follows its weight.
  CHECK(has(idx("fc.weight"), idx("fc.bias")));
}

TEST_CASE("graph: grouped / dilated convs, pools, parameter-free ops", "[graph]") {
  arch::builder b(3, 16, 16, 10);
  const int x = b.conv(b.input(), 8, 3, 3, 1, 1, 1, 1, 1, false, "stem");
  const int dw = b.conv(b.relu(x, "r1"), 8, 3, 3, 1, 1, 1, 1, 8, false, "dw");              // groups 8
  const int dd = b.conv(b.relu(x, "r2"), 8, 3, 3, 1, 2, 2, 2, 8, false, "dd");              // dilation 2
  const int ap = b.avg_pool(x, 2, 2, 0, "ap");                                              // 2x2 -> 8x8
  int s = b.sum({dw, dd}, "s1");
  s = b.subsample(s, 2, "sub2");            // x[:, :, ::2, ::2]
  s = b.sum({s, b.identity(b.subsample(ap, 1, "sub1"), "id")}, "s2");
  s = b.subsample(s, 2, "sub3");
  s = b.flatten(s, "flat");                 // non-contiguous input: clone + view, both removed
  s = b.dropout(s, 0.5, "drop");
  const auto g = graph::build(b.finish(b.linear(s, 10, true, "fc")));
  check_invariants(g);
  const std::vector<primitive> ts = types(g);
  const std::multiset<primitive> got(ts.begin(), ts.end());
  CHECK(got.count(primitive::sep_conv) == 1);
  CHECK(got.count(primitive::dil_conv) == 1);
  CHECK(got.count(primitive::avg_pool) == 1);
  CHECK(got.count(primitive::sum) == 2);
  CHECK(g.n_nodes() == 9);  // input, stem, dw, dd, ap, s1, s2, fc.w, fc.b
  for (const auto& n : g.nodes) {
    if (n.type == primitive::sep_conv) CHECK((n.name == "dw.weight" && n.shape == shape({8, 1, 3, 3})));
    if (n.type == primitive::dil_conv) CHECK((n.name == "dd.weight" && n.shape == shape({8, 1, 3, 3})));
    if (n.type == primitive::avg_pool) CHECK((n.name == "ap" && n.shape == shape({1, 1, 2, 2})));
  }
  auto idx = [&](const std::string& name) {
    for (int i = 0; i < g.n_nodes(); ++i)
      if (g.nodes[static_cast<std::size_t>(i)].name == name) return i;
    FAIL("no node " << name);
    return -1;
  };
  // Removed ops are bridged: s1 -> s2 (subsample), ap -> s2 (subsample, identity), s2 -> fc
  // (subsample, flatten, dropout); the relus before dw / dd are bridged from stem.
  const edge_list e = flow_edges(g);
  auto has = [&](int u, int v) { return std::find(e.begin(), e.end(), std::make_pair(u, v)) != e.end(); };
  CHECK(has(idx("s1"), idx("s2")));
  CHECK(has(idx("ap"), idx("s2")));
  CHECK(has(idx("s2"), idx("fc.weight")));
  CHECK(has(idx("stem.weight"), idx("dw.weight")));
  CHECK(has(idx("stem.weight"), idx("dd.weight")));
  CHECK(has(idx("stem.weight"), idx("ap")));
  CHECK(g.num_edges(1) == 10);
}

TEST_CASE("graph: squeeze-excitation multiply (cse) and the reference's Hardswish test", "[graph]") {
  const auto g = graph::build(se_net(true));
  check_invariants(g);
  CHECK(types(g) == std::vector<primitive>{primitive::input, primitive::conv, primitive::conv, primitive::bias,
                                           primitive::conv, primitive::bias, primitive::cse, primitive::glob_avg,
                                           primitive::conv, primitive::bias});
  CHECK(names(g) == std::vector<std::string>{"input", "c.weight", "fc1.weight", "fc1.bias", "fc2.weight",
                                             "fc2.bias", "mul", "pool", "fc.weight", "fc.bias"});
  CHECK(flow_edges(g) ==
        edge_list{{0, 1}, {1, 2}, {1, 6}, {2, 3}, {3, 4}, {4, 5}, {5, 6}, {6, 7}, {7, 8}, {8, 9}});
  // With a sigmoid gate the reference does not recognise the multiply (it looks for "Hard*" two
  // nodes earlier) and removes it, wiring its inputs to its consumer.
  const auto gs = graph::build(se_net(false));
  check_invariants(gs);
  CHECK(types(gs) == std::vector<primitive>{primitive::input, primitive::conv, primitive::conv, primitive::bias,
                                            primitive::conv, primitive::bias, primitive::glob_avg, primitive::conv,
                                            primitive::bias});
  CHECK(flow_edges(gs) == edge_list{{0, 1}, {1, 2}, {1, 6}, {2, 3}, {3, 4}, {4, 5}, {5, 6}, {6, 7}, {7, 8}});
}

TEST_CASE("graph: hand-written IR, explicit parameter order, errors", "[graph]") {
  // Built directly with network.hpp (shapes not inferred: build infers them on a copy).
  arch::network net;
  net.in_channels = 1;
  net.in_h = net.in_w = 6;
  net.num_classes = 4;
  arch::op in;
  in.type = arch::op_type::input;
  in.name = "input";
  arch::op conv;
  conv.type = arch::op_type::conv;
  conv.inputs = {0};
  conv.name = "conv";
  conv.out_channels = 5;
  conv.kh = conv.kw = 3;
  conv.bias = true;
  arch::op gap;
  gap.type = arch::op_type::global_avg_pool;
  gap.inputs = {1};
  gap.name = "gap";
  arch::op fc;
  fc.type = arch::op_type::linear;
  fc.inputs = {2};
  fc.name = "fc";
  fc.out_channels = 4;
  fc.bias = true;
  net.ops = {in, conv, gap, fc};
  net.output = 3;
  net.param_order = {{3, arch::param_role::bias}, {3, arch::param_role::weight}, {1, arch::param_role::bias},
                     {1, arch::param_role::weight}};
  const auto g = graph::build(net);
  check_invariants(g);
  const auto params = arch::parameters(net);
  CHECK(names(g) == std::vector<std::string>{"input", "conv.weight", "conv.bias", "gap", "fc.weight", "fc.bias"});
  CHECK(g.nodes[1].param == 3);
  CHECK(g.nodes[2].param == 2);
  CHECK(g.nodes[4].param == 1);
  CHECK(g.nodes[5].param == 0);
  for (const auto& n : g.nodes) {
    if (n.param < 0) continue;
    CHECK(params[static_cast<std::size_t>(n.param)].name == n.name);
    CHECK(params[static_cast<std::size_t>(n.param)].shape == n.shape);
  }
  CHECK(g.nodes[1].shape == shape({5, 1, 3, 3}));

  CHECK_THROWS_AS(graph::build(net, 0), value_error);
  // An output that does not depend on anything traced (the input needs no gradient).
  arch::network bare;
  bare.in_channels = 1;
  bare.in_h = bare.in_w = 2;
  bare.num_classes = 4;
  arch::op flat;
  flat.type = arch::op_type::flatten;
  flat.inputs = {0};
  flat.name = "flat";
  bare.ops = {in, flat};
  bare.output = 1;
  CHECK_THROWS_AS(graph::build(bare), value_error);
  // Invalid IRs are rejected by shape inference.
  arch::network broken = net;
  broken.ops[3].inputs = {7};
  CHECK_THROWS_AS(graph::build(broken), shape_error);
}

TEST_CASE("graph: virtual edges equal Floyd-Warshall shortest paths", "[graph]") {
  std::mt19937 rng(12345);
  constexpr int kInf = 1 << 20;
  for (int trial = 0; trial < 60; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 60);
    const double p = std::uniform_real_distribution<double>(0.02, 0.3)(rng);
    const bool dag = trial % 3 != 2;  // every third graph is a general digraph (cycles allowed)
    std::vector<int> perm(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) perm[static_cast<std::size_t>(i)] = i;
    if (trial % 2 == 1) std::shuffle(perm.begin(), perm.end(), rng);  // unsorted labels
    std::vector<graph::edge> flow;
    std::vector<int> d(static_cast<std::size_t>(n * n), kInf);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) {
        if (i == j || (dag && j < i)) continue;
        if (std::uniform_real_distribution<double>(0, 1)(rng) >= p) continue;
        const int u = perm[static_cast<std::size_t>(i)], v = perm[static_cast<std::size_t>(j)];
        flow.push_back({u, v, 1});
        d[static_cast<std::size_t>(u * n + v)] = 1;
      }
    if (!flow.empty()) flow.push_back(flow.front());  // duplicates are merged
    std::shuffle(flow.begin(), flow.end(), rng);
    for (int k = 0; k < n; ++k)
      for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j) {
          const auto ij = static_cast<std::size_t>(i * n + j);
          d[ij] = std::min(d[ij], d[static_cast<std::size_t>(i * n + k)] + d[static_cast<std::size_t>(k * n + j)]);
        }
    for (const int s_max : {1, 2, 3, 7, 50}) {
      std::vector<graph::edge> expected;
      for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j) {
          const int dij = d[static_cast<std::size_t>(i * n + j)];
          if (i != j && dij <= s_max) expected.push_back({i, j, dij});
        }
      const auto got = graph::with_virtual_edges(n, flow, s_max);
      REQUIRE(got.size() == expected.size());
      CHECK(got == expected);
    }
  }
  CHECK_THROWS_AS(graph::with_virtual_edges(2, {{0, 0, 1}}, 5), value_error);
  CHECK_THROWS_AS(graph::with_virtual_edges(2, {{0, 2, 1}}, 5), value_error);
  CHECK_THROWS_AS(graph::with_virtual_edges(2, {{0, 1, 1}}, 0), value_error);
}

TEST_CASE("graph: DOT export", "[graph]") {
  auto g = graph::build(concat_net(true));
  g.nodes[3].name = "say \"hi\"";
  const std::string dot = graph::to_dot(g);
  CHECK(dot.rfind("digraph", 0) == 0);
  CHECK(dot.back() == '\n');
  for (int i = 0; i < g.n_nodes(); ++i) {
    const auto& n = g.nodes[static_cast<std::size_t>(i)];
    CHECK(dot.find("  n" + std::to_string(i) + " [label=\"" + std::to_string(i) + ": " + graph::to_string(n.type)) !=
          std::string::npos);
  }
  CHECK(dot.find("say \\\"hi\\\"") != std::string::npos);
  CHECK(dot.find("[1, 1, 3, 3]") != std::string::npos);
  auto count = [](const std::string& s, const std::string& what) {
    std::size_t c = 0;
    for (auto p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++c;
    return static_cast<std::int64_t>(c);
  };
  CHECK(count(dot, " -> ") == g.num_edges(1));
  CHECK(dot.find("  n0 -> n1;") != std::string::npos);
  graph::dot_options opt;
  opt.virtual_edges = true;
  const std::string all = graph::to_dot(g, opt);
  CHECK(count(all, " -> ") == static_cast<std::int64_t>(g.edges.size()));
  CHECK(count(all, "style=dashed") == static_cast<std::int64_t>(g.edges.size()) - g.num_edges(1));
}

TEST_CASE("graph: batches and node offsets", "[graph]") {
  graph::graph_batch batch;
  CHECK(batch.empty());
  CHECK(batch.total_nodes() == 0);
  const auto g0 = graph::build(chain_net());
  const auto g1 = graph::build(residual_net());
  const auto g2 = graph::build(concat_net(true));
  batch.add(g0);
  batch.add(std::make_shared<const graph::computational_graph>(g1));
  batch.add(g2);
  REQUIRE(batch.size() == 3);
  CHECK(batch.offsets == std::vector<int>{0, 8, 14, 23});
  CHECK(batch.total_nodes() == 23);
  CHECK(batch.n_nodes(1) == 6);
  CHECK(batch[2].n_nodes() == 9);
  CHECK(batch.num_edges(1) == 7 + 6 + 9);
  CHECK(batch.num_edges() == g0.num_edges(50) + g1.num_edges(50) + g2.num_edges(50));
  CHECK_FALSE(batch.exceeds());
  CHECK(batch.exceeds(22));
  CHECK_FALSE(batch.exceeds(23));

  const auto nt = batch.node_types();
  const auto ng = batch.node_graph();
  REQUIRE(nt.size() == 23);
  REQUIRE(ng.size() == 23);
  for (int b = 0; b < batch.size(); ++b)
    for (int i = 0; i < batch.n_nodes(b); ++i) {
      const auto k = static_cast<std::size_t>(batch.offsets[static_cast<std::size_t>(b)] + i);
      CHECK(ng[k] == b);
      CHECK(nt[k] == static_cast<int>(batch[b].nodes[static_cast<std::size_t>(i)].type));
    }
  const auto e = batch.edges(1);
  REQUIRE(e.size() == 22);
  CHECK((e[7].src == 8 && e[7].dst == 9 && e[7].graph == 1 && e[7].dist == 1));  // graph 1's 0 -> 1
  CHECK((e.back().src == 14 + 7 && e.back().dst == 14 + 8 && e.back().graph == 2));
  for (const auto& x : batch.edges()) {
    CHECK(x.src >= batch.offsets[static_cast<std::size_t>(x.graph)]);
    CHECK(x.dst < batch.offsets[static_cast<std::size_t>(x.graph) + 1]);
  }
  const graph::graph_batch copy(std::vector<graph::computational_graph>{g0, g1});
  CHECK(copy.offsets == std::vector<int>{0, 8, 14});
  batch.clear();
  CHECK(batch.size() == 0);
  CHECK(batch.offsets == std::vector<int>{0});
  CHECK_THROWS_AS(batch.add(std::shared_ptr<const graph::computational_graph>()), value_error);
}

TEST_CASE("graph: parity with the reference GHN-2 graphs of DeepNets-1M", "[graph][deepnets]") {
  const std::string path = GHNQ_SOURCE_DIR "/../shared/bench/deepnets_conv.json";
  std::ifstream f(path);
  if (!f) {
    WARN("skipped: " << path << " not found");
    return;
  }
  const nlohmann::json d = nlohmann::json::parse(f);
  REQUIRE(d.at("nets").size() == 24);
  for (const auto& entry : d.at("nets")) {
    INFO("net " << entry.at("index"));
    const auto& ev = entry.at("eval");
    arch::net_args a = arch::net_args_from_json(entry.at("net_args"));
    a.C = ev.at("C").get<int>();
    a.fc_dim = ev.at("fc_dim").get<int>();
    const arch::network net = arch::deepnets_network(a, 3, 32, 32, 10);
    const auto g = graph::build(net, 50);
    const auto& ref = ev.at("graph");
    REQUIRE(g.n_nodes() == ref.at("n_nodes").get<int>());
    REQUIRE(g.node_type_names() == ref.at("node_types").get<std::vector<std::string>>());
    REQUIRE(g.num_edges(1) == ref.at("edges_1hop").get<std::int64_t>());
    // edges_ve50 counts every pair at shortest-path distance <= 50, the 1-hop edges included.
    REQUIRE(g.num_edges(50) == ref.at("edges_ve50").get<std::int64_t>());
    check_invariants(g);
    const auto params = arch::parameters(net);
    for (const auto& n : g.nodes) {
      CHECK((n.cell >= 0 && n.cell < a.n_cells));
      if (n.param < 0) continue;
      CHECK(params[static_cast<std::size_t>(n.param)].name == n.name);
      CHECK(params[static_cast<std::size_t>(n.param)].shape == n.shape);
    }
    const auto& w = g.nodes[static_cast<std::size_t>(g.n_nodes() - 2)];
    CHECK(w.name.rfind("classifier.", 0) == 0);
    CHECK(w.cell == a.n_cells - 1);
    CHECK(g.num_cells == a.n_cells);
  }
}
