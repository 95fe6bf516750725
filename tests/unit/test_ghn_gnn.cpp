// Tests of the GHN node encoder (op embedding + ShapeEncoder, spec §2), the GatedGNN (spec §3) and
// the nn::combine_rows primitive they use. GatedGNN is checked against a naive per-graph,
// node-by-node reference written here; batched results against per-graph results.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ghnq/arch/deepnets.hpp"
#include "ghnq/arch/families.hpp"
#include "ghnq/ghn/gated_gnn.hpp"
#include "ghnq/ghn/shape_encoder.hpp"
#include "ghnq/graph/batch.hpp"
#include "ghnq/graph/build.hpp"
#include "ghnq/nn/combine_rows.hpp"
#include "support/gradcheck.hpp"

using namespace ghnq;
using graph::primitive;

namespace {

#ifdef GHNQ_SOURCE_DIR
const char* kBenchFile = GHNQ_SOURCE_DIR "/../shared/bench/deepnets_conv.json";
#else
const char* kBenchFile = "/work/shared/bench/deepnets_conv.json";
#endif

// Graph of DeepNets benchmark net `index` (eval width), or an empty graph when the file is missing.
graph::computational_graph deepnets_graph(int index) {
  std::ifstream f(kBenchFile);
  if (!f) return {};
  const auto j = nlohmann::json::parse(f);
  const auto& n = j.at("nets").at(static_cast<std::size_t>(index));
  auto a = arch::net_args_from_json(n.at("net_args"));
  a.C = n.at("eval").at("C").get<int>();
  a.fc_dim = n.at("eval").at("fc_dim").get<int>();
  return graph::build(arch::deepnets_network(a, 3, 32, 32, 10), 50);
}

// A hand-made graph: chain 0..n-1 with a skip edge and virtual edges (dist = path length).
graph::computational_graph small_graph(int n, bool skip) {
  graph::computational_graph g;
  const primitive types[] = {primitive::input, primitive::conv, primitive::bn, primitive::sum,
                             primitive::conv, primitive::glob_avg, primitive::conv, primitive::bias};
  for (int i = 0; i < n; ++i) {
    graph::node nd;
    nd.type = i == 0 ? primitive::input : types[i % 8];
    if (nd.type == primitive::conv) nd.shape = ghnq::shape{8 * i, 3, 3, 3};
    if (nd.type == primitive::bn || nd.type == primitive::bias) nd.shape = ghnq::shape{8 * i};
    g.nodes.push_back(nd);
  }
  // data-flow: i -> i+1, plus (skip) 0 -> 2; virtual edges = shortest path lengths
  std::vector<std::vector<int>> d(static_cast<std::size_t>(n), std::vector<int>(static_cast<std::size_t>(n), 0));
  for (int i = 0; i + 1 < n; ++i) d[i][i + 1] = 1;
  if (skip && n > 2) d[0][2] = 1;
  for (int i = 0; i < n; ++i)
    for (int j = i + 2; j < n; ++j)
      if (d[i][j] == 0) {
        int best = 0;
        for (int k = i + 1; k < j; ++k)
          if (d[i][k] && d[k][j] && (best == 0 || d[i][k] + d[k][j] < best)) best = d[i][k] + d[k][j];
        d[i][j] = best;
      }
  for (int i = 0; i < n; ++i)
    for (int j = i + 1; j < n; ++j)
      if (d[i][j]) g.edges.push_back({i, j, d[i][j]});
  g.s_max = 50;
  return g;
}

// ---- naive reference of the GatedGNN (one graph, node by node, plain loops) ----
using vec = std::vector<double>;

template <class T>
vec row_of(const tensor<T>& t, std::int64_t r) {
  vec v(static_cast<std::size_t>(t.dim(1)));
  for (std::int64_t j = 0; j < t.dim(1); ++j) v[static_cast<std::size_t>(j)] = static_cast<double>(t(r, j));
  return v;
}

// y = W x + b (W [o, i])
template <class T>
vec affine(const autograd::var<T>& w, const autograd::var<T>& b, const vec& x) {
  const auto o = w.shape()[0], in = w.shape()[1];
  vec y(static_cast<std::size_t>(o));
  for (std::int64_t r = 0; r < o; ++r) {
    double s = b.defined() ? static_cast<double>(b.value().flat(r)) : 0.0;
    for (std::int64_t c = 0; c < in; ++c)
      s += static_cast<double>(w.value()(r, c)) * x[static_cast<std::size_t>(c)];
    y[static_cast<std::size_t>(r)] = s;
  }
  return y;
}
vec relu(vec v) {
  for (auto& e : v) e = std::max(e, 0.0);
  return v;
}
template <class T>
vec ref_mlp(const ghn::mlp<T>& m, const vec& x) {
  return relu(affine(m.w2, m.b2, relu(affine(m.w1, m.b1, x))));
}
template <class T>
vec ref_gru(const ghn::gated_gnn<T>& g, const vec& x, const vec& h) {
  const auto gi = affine(g.w_ih, g.b_ih, x), gh = affine(g.w_hh, g.b_hh, h);
  const std::size_t H = h.size();
  vec out(H);
  auto sig = [](double a) { return 1.0 / (1.0 + std::exp(-a)); };
  for (std::size_t j = 0; j < H; ++j) {
    const double r = sig(gi[j] + gh[j]), z = sig(gi[H + j] + gh[H + j]);
    const double nn_ = std::tanh(gi[2 * H + j] + r * gh[2 * H + j]);
    out[j] = (1 - z) * nn_ + z * h[j];
  }
  return out;
}
template <class T>
std::vector<vec> ref_gnn(const ghn::gated_gnn<T>& gnn, const graph::computational_graph& g, std::vector<vec> h) {
  const int n = g.n_nodes();
  const std::size_t H = static_cast<std::size_t>(gnn.hidden());
  for (int dir = 0; dir < 2; ++dir)
    for (int i = 0; i < n; ++i) {
      const int v = dir == 0 ? i : n - 1 - i;
      vec m(H, 0.0);
      for (const auto& e : g.edges) {
        const int u = dir == 0 ? (e.dst == v ? e.src : -1) : (e.src == v ? e.dst : -1);
        if (u < 0) continue;
        if (e.dist == 1) {
          const auto a = ref_mlp(gnn.msg, h[static_cast<std::size_t>(u)]);
          for (std::size_t j = 0; j < H; ++j) m[j] += a[j];
        }
        if (gnn.virtual_edges) {
          const auto a = ref_mlp(*gnn.msg_ve, h[static_cast<std::size_t>(u)]);
          for (std::size_t j = 0; j < H; ++j) m[j] += a[j] / e.dist;
        }
      }
      h[static_cast<std::size_t>(v)] = ref_gru(gnn, m, h[static_cast<std::size_t>(v)]);
    }
  return h;
}

template <class T>
autograd::var<T> random_var(const ghnq::shape& s, rng& g, bool grad = false) {
  return autograd::var<T>(test::random_tensor<T>(s, g), grad);
}

template <class T>
void require_rows_close(const tensor<T>& got, std::int64_t first_row, const std::vector<vec>& want, double atol) {
  double worst = 0.0;
  for (std::size_t r = 0; r < want.size(); ++r)
    for (std::size_t j = 0; j < want[r].size(); ++j)
      worst = std::max(worst, std::abs(static_cast<double>(got(first_row + static_cast<std::int64_t>(r),
                                                               static_cast<std::int64_t>(j))) -
                                       want[r][j]));
  INFO("max abs difference " << worst);
  REQUIRE(worst <= atol);
}

}  // namespace

// ---------------------------------------------------------------- combine_rows

TEMPLATE_TEST_CASE("combine_rows: forward against a naive loop", "[ghn][nn]", float, double) {
  using T = TestType;
  rng g(3);
  autograd::tape<T> tp;
  for (int trial = 0; trial < 5; ++trial) {
    const std::int64_t d = 1 + static_cast<std::int64_t>(g.uniform() * 40), n_out = 1 + trial * 3;
    std::vector<autograd::var<T>> srcs;
    const int ns = 1 + trial % 3;
    for (int s = 0; s < ns; ++s) srcs.push_back(random_var<T>({2 + s, d}, g));
    nn::row_map<T> m;
    for (int e = 0; e < 4 * trial + 2; ++e) {
      const auto s = static_cast<std::int32_t>(g.uniform() * ns);
      m.add(static_cast<std::int64_t>(g.uniform() * static_cast<double>(n_out)), s,
            static_cast<std::int64_t>(g.uniform() * static_cast<double>(2 + s)), static_cast<T>(g.uniform(-2, 2)));
    }
    auto y = nn::combine_rows(tp, srcs, n_out, m);
    REQUIRE(y.shape() == ghnq::shape({n_out, d}));
    auto want = tensor<T>::zeros({n_out, d});
    for (std::int64_t e = 0; e < m.size(); ++e)
      for (std::int64_t j = 0; j < d; ++j)
        want(m.out_row[e], j) += m.weight[e] * srcs[m.src[e]].value()(m.src_row[e], j);
    test::require_close(y.value(), want, 1e-5, 1e-5);
  }
}

TEST_CASE("combine_rows: gradients and errors", "[ghn][nn]") {
  rng g(5);
  auto a = random_var<double>({3, 4}, g, true), b = random_var<double>({2, 4}, g, true);
  auto c = random_var<double>({2, 4}, g, false);  // no gradient
  nn::row_map<double> m;
  m.add(0, 0, 2, 0.5);
  m.add(0, 1, 0, -1.5);
  m.add(2, 1, 0, 2.0);  // repeated source row
  m.add(2, 2, 1, 1.0);
  m.add(3, 0, 2, 1.0);  // repeated source row, other target; row 1 stays zero
  test::check_gradients([&](test::dtape& tp, std::vector<test::dvar>& in) {
    return nn::combine_rows(tp, {in[0], in[1], in[2]}, 4, m);
  }, {a, b, c});
  autograd::tape<double> tp;
  nn::row_map<double> bad;
  bad.add(0, 1, 0);
  CHECK_THROWS_AS(nn::combine_rows(tp, {a}, 1, bad), value_error);  // no source 1
  bad.clear();
  bad.add(0, 0, 3);
  CHECK_THROWS_AS(nn::combine_rows(tp, {a}, 1, bad), value_error);  // row 3 of 3
  bad.clear();
  bad.add(1, 0, 0);
  CHECK_THROWS_AS(nn::combine_rows(tp, {a}, 1, bad), value_error);  // output row 1 of 1
  CHECK_THROWS_AS(nn::combine_rows(tp, {a, random_var<double>({2, 5}, g)}, 1, nn::row_map<double>{}), shape_error);
  CHECK_THROWS_AS(nn::combine_rows(tp, std::vector<test::dvar>{}, 1, nn::row_map<double>{}), value_error);
}

// ---------------------------------------------------------------- shape vocabulary

TEST_CASE("shape_vocab: vocabulary sizes", "[ghn]") {
  CHECK(ghn::shape_vocab(10, 11).num_channels() == 391);
  CHECK(ghn::shape_vocab(1000, 11).num_channels() == 391);
  CHECK(ghn::shape_vocab(16, 11).num_channels() == 390);  // 16 is already listed
  CHECK(ghn::shape_vocab(100, 11).num_channels() == 391);
  const ghn::shape_vocab v(10, 11);
  CHECK(v.spatial == std::vector<std::int64_t>{1, 3, 5, 7, 9, 11, 14, 16});
  CHECK(ghn::shape_vocab(10, 16).spatial == std::vector<std::int64_t>{1, 3, 5, 7, 9, 11, 13, 14, 15, 16});
  CHECK(ghn::shape_vocab(10, 7).num_spatial() == 8);  // max(12, S)
  CHECK(v.channels.front() == 1);
  CHECK(v.channels[1] == 3);
  CHECK(v.channels.back() == 8192);
  CHECK(std::is_sorted(v.channels.begin(), v.channels.end()));
  CHECK(v.dummy_channel() == 391);
  CHECK(v.dummy_spatial() == 8);
  CHECK_THROWS_AS(ghn::shape_vocab(0, 11), value_error);
}

TEST_CASE("shape_vocab: lookup rules", "[ghn]") {
  const ghn::shape_vocab v(10, 11);
  auto ch = [&](std::int64_t c) { return v.channels[static_cast<std::size_t>(v.channel_index(c))]; };
  auto sp = [&](std::int64_t s) { return v.spatial[static_cast<std::size_t>(v.spatial_index(s))]; };
  // listed values map to themselves
  for (std::int64_t c : {1, 3, 8, 10, 16, 56, 64, 80, 4080, 4096, 4128, 8192}) CHECK(ch(c) == c);
  CHECK(v.channel_index(1) == 0);
  CHECK(ch(2) == 1);  // tie 1 / 3 -> smaller
  for (std::int64_t c = 4; c <= 7; ++c) CHECK(ch(c) == 8);
  CHECK(ch(9) == 8);        // tie 8 / 10 -> smaller
  CHECK(ch(11) == 10);
  CHECK(ch(13) == 10);      // tie 10 / 16
  CHECK(ch(14) == 16);
  CHECK(ch(60) == 56);      // tie 56 / 64
  CHECK(ch(61) == 64);
  CHECK(ch(72) == 64);      // tie 64 / 80
  CHECK(ch(73) == 80);
  CHECK(ch(4088) == 4080);  // tie 4080 / 4096
  CHECK(ch(4089) == 4096);
  CHECK(ch(8191) == 8192);
  CHECK(ch(8193) == 8192);
  CHECK(ch(100000) == 8192);
  CHECK(ghn::shape_vocab(5, 11).channels[static_cast<std::size_t>(ghn::shape_vocab(5, 11).channel_index(5))] == 5);
  for (std::int64_t s : {1, 3, 5, 7, 9, 11, 14, 16}) CHECK(sp(s) == s);
  CHECK(sp(2) == 3);
  CHECK(sp(4) == 3);  // tie 3 / 5
  CHECK(sp(12) == 11);
  CHECK(sp(13) == 14);
  CHECK(sp(15) == 14);  // tie 14 / 16
  CHECK(sp(17) == 16);
  CHECK(sp(224) == 16);
  CHECK_THROWS_AS(v.channel_index(0), value_error);
  CHECK_THROWS_AS(v.spatial_index(0), value_error);
}

TEST_CASE("shape_vocab: shapes to 4-D and indices", "[ghn]") {
  using A = std::array<std::int64_t, 4>;
  CHECK(ghn::shape_vocab::to_4d(ghnq::shape{5}) == A{5, 1, 1, 1});
  CHECK(ghn::shape_vocab::to_4d(ghnq::shape{10, 64}) == A{10, 64, 1, 1});
  CHECK(ghn::shape_vocab::to_4d(ghnq::shape{1, 197, 768}) == A{1, 768, 14, 14});
  CHECK(ghn::shape_vocab::to_4d(ghnq::shape{1, 16, 3}) == A{1, 3, 4, 4});
  CHECK(ghn::shape_vocab::to_4d(ghnq::shape{1, 1, 5}) == A{1, 1, 5, 1});
  CHECK(ghn::shape_vocab::to_4d(ghnq::shape{1, 5, 1}) == A{1, 5, 1, 1});
  CHECK(ghn::shape_vocab::to_4d(ghnq::shape{2, 3, 4}) == A{2, 3, 4, 1});
  CHECK(ghn::shape_vocab::to_4d(ghnq::shape{64, 32, 3, 5}) == A{64, 32, 3, 5});
  CHECK_THROWS_AS(ghn::shape_vocab::to_4d(ghnq::shape{1, 2, 3, 4, 5}), shape_error);
  CHECK_THROWS_AS(ghn::shape_vocab::to_4d(ghnq::shape{}), shape_error);
  const ghn::shape_vocab v(10, 11);
  const auto ch = [&](std::int64_t c) { return v.channel_index(c); };
  const auto sp = [&](std::int64_t s) { return v.spatial_index(s); };
  CHECK(v.indices(ghnq::shape{64, 32, 3, 3}) == A{ch(64), ch(32), sp(3), sp(3)});
  CHECK(v.indices(ghnq::shape{10, 2048}) == A{ch(10), ch(2048), sp(1), sp(1)});
  CHECK(v.indices(ghnq::shape{1, 1, 2, 2}) == A{ch(1), ch(1), sp(3), sp(3)});
  CHECK(v.indices(ghnq::shape{}) == A{391, 391, 8, 8});
}

TEST_CASE("shape_encoder: dummy indices for shapeless nodes of a real graph", "[ghn]") {
  graph::graph_batch batch;
  batch.add(graph::build(arch::resnet20(3, 32, 32, 10, 4), 50));
  batch.add(small_graph(8, true));
  rng g(1);
  const ghn::shape_encoder<float> enc(32, 10, 11, g);
  const auto ix = enc.indices(batch);
  REQUIRE(ix.op.size() == static_cast<std::size_t>(batch.total_nodes()));
  int dummies = 0, shaped = 0;
  std::size_t k = 0;
  for (int b = 0; b < batch.size(); ++b)
    for (const auto& nd : batch[b].nodes) {
      INFO("node " << k << " " << graph::to_string(nd.type));
      CHECK(ix.op[k] == static_cast<std::int64_t>(nd.type));
      const bool shapeless = nd.type == primitive::input || nd.type == primitive::sum ||
                             nd.type == primitive::concat || nd.type == primitive::glob_avg ||
                             nd.type == primitive::msa || nd.type == primitive::cse;
      const bool dummy = ix.d0[k] == 391 && ix.d1[k] == 391 && ix.d2[k] == 8 && ix.d3[k] == 8;
      CHECK(dummy == shapeless);
      if (!shapeless) {
        CHECK(ix.d0[k] < 391);
        CHECK(ix.d1[k] < 391);
        CHECK(ix.d2[k] < 8);
        CHECK(ix.d3[k] < 8);
      }
      (dummy ? dummies : shaped) += 1;
      ++k;
    }
  CHECK(dummies > 0);
  CHECK(shaped > 0);
  // the 3x3 conv stem of resnet20 (width 4): [4, 3, 3, 3]
  CHECK(batch[0].nodes[1].type == primitive::conv);
  CHECK(ix.d0[1] == enc.vocab.channel_index(4));
  CHECK(enc.vocab.channels[static_cast<std::size_t>(ix.d0[1])] == 8);
  CHECK(enc.vocab.channels[static_cast<std::size_t>(ix.d1[1])] == 3);
  CHECK(enc.vocab.spatial[static_cast<std::size_t>(ix.d2[1])] == 3);
}

TEMPLATE_TEST_CASE("shape_encoder: forward against a manual computation, parameter count", "[ghn]", float,
                   double) {
  using T = TestType;
  rng g(2);
  const ghn::shape_encoder<T> enc(32, 10, 11, g);
  CHECK(enc.num_params() == 15 * 32 + 392 * 8 + 9 * 8);
  CHECK(enc.num_params() == 3688);
  REQUIRE(enc.parameters().size() == 3);
  CHECK(enc.embed.shape() == ghnq::shape({15, 32}));
  CHECK(enc.embed_channel.shape() == ghnq::shape({392, 8}));
  CHECK(enc.embed_spatial.shape() == ghnq::shape({9, 8}));
  graph::graph_batch batch;
  batch.add(small_graph(8, true));
  batch.add(graph::build(arch::resnet20(3, 32, 32, 10, 4), 50));
  autograd::tape<T> tp;
  const auto x = enc.forward(tp, batch);
  REQUIRE(x.shape() == ghnq::shape({batch.total_nodes(), 32}));
  const ghn::shape_vocab v(10, 11);
  std::int64_t row = 0;
  for (int b = 0; b < batch.size(); ++b)
    for (const auto& nd : batch[b].nodes) {
      const auto ix = v.indices(nd.shape);
      for (std::int64_t j = 0; j < 32; ++j) {
        const auto q = j / 8, c = j % 8;
        const T shape_part = q < 2 ? enc.embed_channel.value()(ix[static_cast<std::size_t>(q)], c)
                                   : enc.embed_spatial.value()(ix[static_cast<std::size_t>(q)], c);
        const T want = enc.embed.value()(static_cast<std::int64_t>(nd.type), j) + shape_part;
        REQUIRE(x.value()(row, j) == Approx(want).margin(1e-6));
      }
      ++row;
    }
  CHECK_THROWS_AS(ghn::shape_encoder<T>(30, 10, 11, g), value_error);
}

TEST_CASE("shape_encoder: gradients of the tables", "[ghn][grad]") {
  rng g(4);
  ghn::shape_encoder<double> enc(8, 10, 11, g);
  graph::graph_batch batch;
  batch.add(small_graph(8, true));
  batch.add(small_graph(5, false));
  test::check_gradients([&](test::dtape& tp, std::vector<test::dvar>& in) {
    enc.embed = in[0];
    enc.embed_channel = in[1];
    enc.embed_spatial = in[2];
    return enc.forward(tp, batch);
  }, enc.parameters());
}

// ---------------------------------------------------------------- GatedGNN

TEST_CASE("gated_gnn: parameter counts and shapes", "[ghn]") {
  rng g(0);
  const ghn::gated_gnn<float> ve(32, true, g);
  CHECK(ve.num_params() == 8480);
  REQUIRE(ve.parameters().size() == 12);
  CHECK(ve.msg.w1.shape() == ghnq::shape({16, 32}));
  CHECK(ve.msg.w2.shape() == ghnq::shape({32, 16}));
  CHECK(ve.msg_ve->w1.shape() == ghnq::shape({16, 32}));
  CHECK(ve.w_ih.shape() == ghnq::shape({96, 32}));
  CHECK(ve.b_hh.shape() == ghnq::shape({96}));
  const ghn::gated_gnn<float> plain(32, false, g);
  CHECK(plain.num_params() == 8448);
  CHECK(plain.parameters().size() == 8);
  CHECK(plain.msg.w1.shape() == ghnq::shape({32, 32}));
  CHECK_FALSE(plain.msg_ve.has_value());
  // init bounds: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  double mx = 0;
  for (std::int64_t i = 0; i < ve.msg.w2.value().numel(); ++i) mx = std::max(mx, std::abs(double(ve.msg.w2.value().flat(i))));
  CHECK(mx <= 0.25);
  CHECK(mx > 0.2);
  CHECK_THROWS_AS(ghn::gated_gnn<float>(31, true, g), value_error);
}

TEMPLATE_TEST_CASE("gated_gnn: batched forward equals the naive per-graph reference", "[ghn]", float, double) {
  using T = TestType;
  std::vector<graph::computational_graph> graphs;
  graphs.push_back(graph::build(arch::resnet20(3, 32, 32, 10, 4), 50));
  graphs.push_back(small_graph(8, true));
  auto dn = deepnets_graph(3);
  if (dn.n_nodes() > 0)
    graphs.push_back(std::move(dn));
  else
    WARN("benchmark file " << kBenchFile << " missing: DeepNets graph skipped");
  const double atol = std::is_same_v<T, float> ? 2e-4 : 1e-11;
  for (const bool ve : {true, false}) {
    INFO("virtual edges " << ve);
    rng g(11);
    const ghn::gated_gnn<T> gnn(16, ve, g);
    graph::graph_batch batch;
    for (const auto& gr : graphs) batch.add(gr);
    auto x = random_var<T>({batch.total_nodes(), 16}, g);
    autograd::tape<T> tp;
    const auto h = gnn.forward(tp, x, batch);
    REQUIRE(h.shape() == x.shape());
    for (int b = 0; b < batch.size(); ++b) {
      INFO("graph " << b << " with " << batch.n_nodes(b) << " nodes");
      const int off = batch.offsets[static_cast<std::size_t>(b)];
      std::vector<vec> h0;
      for (int i = 0; i < batch.n_nodes(b); ++i) h0.push_back(row_of(x.value(), off + i));
      const auto want = ref_gnn(gnn, batch[b], h0);
      require_rows_close(h.value(), off, want, atol);
      // the same graph alone
      graph::graph_batch single;
      single.add(batch.graphs[static_cast<std::size_t>(b)]);
      autograd::var<T> xs(tensor<T>({batch.n_nodes(b), 16}));
      for (int i = 0; i < batch.n_nodes(b); ++i)
        for (int j = 0; j < 16; ++j) xs.value()(i, j) = x.value()(off + i, j);
      const auto hs = gnn.forward(tp, xs, single);
      // equal up to GEMM rounding (different row counts may take different kernel paths)
      std::vector<vec> batched;
      for (int i = 0; i < batch.n_nodes(b); ++i) batched.push_back(row_of(h.value(), off + i));
      require_rows_close(hs.value(), 0, batched, std::is_same_v<T, float> ? 1e-5 : 1e-13);
    }
    // the input is not modified and the state changed
    double moved = 0;
    for (std::int64_t i = 0; i < x.value().numel(); ++i) moved += std::abs(double(h.value().flat(i) - x.value().flat(i)));
    CHECK(moved > 1.0);
  }
}

TEST_CASE("gated_gnn: gradient check of the encoder + GNN chain", "[ghn][grad]") {
  for (const bool ve : {true, false}) {
    INFO("virtual edges " << ve);
    rng g(21);
    ghn::shape_encoder<double> enc(4, 10, 11, g);
    ghn::gated_gnn<double> gnn(4, ve, g);
    graph::graph_batch batch;
    batch.add(small_graph(7, true));
    batch.add(small_graph(4, false));
    batch.add(small_graph(6, false));
    auto params = enc.parameters();
    for (const auto& p : gnn.parameters()) params.push_back(p);
    auto x = random_var<double>({batch.total_nodes(), 4}, g, true);
    params.push_back(x);
    const auto np = gnn.parameters().size();
    test::check_gradients([&](test::dtape& tp, std::vector<test::dvar>& in) {
      enc.embed = in[0];
      enc.embed_channel = in[1];
      enc.embed_spatial = in[2];
      auto& gp = gnn;
      std::size_t k = 3;
      for (auto* p : {&gp.msg.w1, &gp.msg.b1, &gp.msg.w2, &gp.msg.b2}) *p = in[k++];
      if (gp.msg_ve)
        for (auto* p : {&gp.msg_ve->w1, &gp.msg_ve->b1, &gp.msg_ve->w2, &gp.msg_ve->b2}) *p = in[k++];
      for (auto* p : {&gp.w_ih, &gp.w_hh, &gp.b_ih, &gp.b_hh}) *p = in[k++];
      REQUIRE(k == 3 + np);
      return gnn.forward(tp, nn::add(tp, enc.forward(tp, batch), in[k]), batch);
    }, params);
  }
}

TEST_CASE("gated_gnn: graphs without edges and error cases", "[ghn]") {
  rng g(8);
  const ghn::gated_gnn<double> gnn(4, true, g);
  graph::computational_graph one;
  one.nodes.resize(1);
  graph::graph_batch batch;
  batch.add(one);
  auto x = random_var<double>({1, 4}, g);
  autograd::tape<double> tp;
  const auto h = gnn.forward(tp, x, batch);
  // two GRU updates with m = 0
  const auto want = ref_gru(gnn, vec(4, 0.0), ref_gru(gnn, vec(4, 0.0), row_of(x.value(), 0)));
  require_rows_close(h.value(), 0, {want}, 1e-12);
  CHECK_THROWS_AS(gnn.forward(tp, random_var<double>({2, 4}, g), batch), shape_error);
  CHECK_THROWS_AS(gnn.forward(tp, random_var<double>({1, 8}, g), batch), shape_error);
  graph::computational_graph bad = small_graph(3, false);
  bad.edges.push_back({2, 1, 1});
  graph::graph_batch bb;
  bb.add(bad);
  CHECK_THROWS_AS(gnn.forward(tp, random_var<double>({3, 4}, g), bb), value_error);
}

TEST_CASE("ghn encoder + gated_gnn timing (182-node DeepNets net 0, H=32)", "[.bench][ghn]") {
  auto g0 = deepnets_graph(0);
  if (g0.n_nodes() == 0) {
    WARN("benchmark file missing");
    return;
  }
  WARN("net 0: " << g0.n_nodes() << " nodes, " << g0.edges.size() << " edges");
  rng g(0);
  const ghn::shape_encoder<float> enc(32, 10, 11, g);
  const ghn::gated_gnn<float> gnn(32, true, g);
  for (int nb : {1, 8}) {
    graph::graph_batch batch;
    for (int i = 0; i < nb; ++i) batch.add(g0);
    for (int rec = 0; rec < 2; ++rec) {
      std::vector<double> ms;
      for (int it = 0; it < 30; ++it) {
        autograd::tape<float> tp;
        tp.set_recording(rec == 1);
        const auto t0 = std::chrono::steady_clock::now();
        auto h = gnn.forward(tp, enc.forward(tp, batch), batch);
        const auto t1 = std::chrono::steady_clock::now();
        ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      }
      std::sort(ms.begin(), ms.end());
      WARN("batch " << nb << (rec ? " (tape recording)" : " (no grad)") << ": median " << ms[ms.size() / 2]
                    << " ms, min " << ms.front() << " ms");
    }
    std::vector<double> sched_ms, fb_ms;
    for (int it = 0; it < 30; ++it) {
      autograd::tape<float> tp;
      const auto t0 = std::chrono::steady_clock::now();
      const ghn::gnn_schedule<float> sc(batch, true);
      const auto t1 = std::chrono::steady_clock::now();
      auto h = gnn.forward(tp, enc.forward(tp, batch), sc);
      tp.backward(h, tensor<float>::full(h.shape(), 1.0f));
      const auto t2 = std::chrono::steady_clock::now();
      sched_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      fb_ms.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
    }
    std::sort(sched_ms.begin(), sched_ms.end());
    std::sort(fb_ms.begin(), fb_ms.end());
    WARN("batch " << nb << ": schedule median " << sched_ms[15] << " ms; forward + backward median " << fb_ms[15]
                  << " ms");
  }
}
