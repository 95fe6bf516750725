// Tests of the GHN-2 fast paths against their straightforward references:
//  - nn::gather_tiles (index-free periodic strided gathers) against a naive loop, gradients, errors;
//  - conv_decoder::forward_blocks (only the needed fc rows / block channels) against the full block
//    of conv_decoder::forward, values and gradients, and a central-difference check;
//  - the fused gated_gnn::forward against gated_gnn::forward_reference (composed nn ops), values and
//    gradients of the input and every parameter;
//  - hypernet::predict against hypernet::predict_reference on networks with channels < 64, = 64 and
//    > 64 and kernels 1x1, 3x3, 5x5, 7x1, 1x7, 13x13 (larger than S = 11), values and the gradients of
//    every GHN parameter.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <vector>

#include "ghnq/arch/builder.hpp"
#include "ghnq/arch/families.hpp"
#include "ghnq/ghn/decoder.hpp"
#include "ghnq/ghn/gated_gnn.hpp"
#include "ghnq/arch/sampler.hpp"
#include "ghnq/ghn/hypernet.hpp"
#include "ghnq/nn/concat.hpp"
#include "ghnq/nn/gather.hpp"
#include "ghnq/nn/reshape.hpp"
#include "support/gradcheck.hpp"

using namespace ghnq;
using test::dtape;
using test::dvar;

namespace {

// Runs the tape's closures with dL/dy_k = seeds[k] for several outputs of one tape (the seeds are
// put into the outputs' gradients, then backward from one of them with a zero seed).
template <class T>
void backward_with_seeds(autograd::tape<T>& tp, const std::vector<autograd::var<T>>& ys,
                         const std::vector<tensor<T>>& seeds) {
  REQUIRE(ys.size() == seeds.size());
  const autograd::var<T>* root = nullptr;
  for (std::size_t k = 0; k < ys.size(); ++k) {
    if (!ys[k].requires_grad()) continue;
    ys[k].grad().copy_from(seeds[k]);
    root = &ys[k];
  }
  REQUIRE(root != nullptr);
  tp.backward(*root, tensor<T>::zeros(root->shape()));
}

// All of ys flattened and concatenated (one var for check_gradients).
dvar flat_concat(dtape& tp, const std::vector<dvar>& ys) {
  std::vector<dvar> flat;
  for (const auto& y : ys) flat.push_back(nn::reshape(tp, y, {1, -1}));
  return flat.size() == 1 ? flat[0] : nn::concat(tp, flat, 1);
}

std::vector<tensor<double>> grads_of(const std::vector<dvar>& ps) {
  std::vector<tensor<double>> g;
  for (const auto& p : ps) g.push_back(p.has_grad() ? p.grad().clone() : tensor<double>::zeros(p.shape()));
  return g;
}

}  // namespace

// ---------------------------------------------------------------- gather_tiles

TEST_CASE("gather_tiles: forward against a naive loop (periods, strides, wrap-around, scale)", "[ghn][nn][fastpath]") {
  rng g(5);
  auto x = dvar(test::random_tensor<double>({7, 40}, g));
  std::vector<nn::tile_spec> specs;
  specs.push_back({{5, 9, 3, 4}, 3, {{2, 4, 3, 3}}, {{40, 1, 80, 7}}, 0.5});  // wraps in dims 0, 1, 3
  specs.push_back({{6}, 100, {{4, 1, 1, 1}}, {{2, 0, 0, 0}}, -2.0});           // 1-D with repeats
  specs.push_back({{3, 70}, 0, {{3, 64, 1, 1}}, {{64, 1, 0, 0}}, 1.0});         // rows of 64, wrap in dim 1
  specs.push_back({{2, 2, 2}, 270, {{2, 2, 2, 1}}, {{1, 2, 4, 0}}, 3.0});      // rank 3
  // contiguous sources: runs merged over dims 1..3 (wrap in dim 0), 2..3 (wrap in 1), 3 (wrap in 2)
  specs.push_back({{3, 4, 2, 5}, 10, {{2, 4, 2, 5}}, {{40, 10, 5, 1}}, 1.5});
  specs.push_back({{2, 6, 3, 2}, 0, {{2, 4, 3, 2}}, {{24, 6, 2, 1}}, 1.0});
  specs.push_back({{2, 2, 5, 3}, 0, {{2, 2, 2, 3}}, {{12, 6, 3, 1}}, -1.0});
  specs.push_back({{2, 3, 2, 2}, 100, {{2, 3, 2, 2}}, {{12, 4, 2, 1}}, 2.0});  // no wrap: one run
  dtape tp;
  const auto ys = nn::gather_tiles(tp, x, specs);
  REQUIRE(ys.size() == specs.size());
  for (std::size_t t = 0; t < specs.size(); ++t) {
    const auto& sp = specs[t];
    REQUIRE(ys[t].shape() == sp.shape);
    std::array<std::int64_t, 4> d{1, 1, 1, 1};
    for (int k = 0; k < sp.shape.rank(); ++k) d[static_cast<std::size_t>(k)] = sp.shape[k];
    std::int64_t e = 0;
    for (std::int64_t a = 0; a < d[0]; ++a)
      for (std::int64_t b = 0; b < d[1]; ++b)
        for (std::int64_t c = 0; c < d[2]; ++c)
          for (std::int64_t f = 0; f < d[3]; ++f, ++e) {
            const std::int64_t off = sp.base + (a % sp.period[0]) * sp.stride[0] + (b % sp.period[1]) * sp.stride[1] +
                                     (c % sp.period[2]) * sp.stride[2] + (f % sp.period[3]) * sp.stride[3];
            REQUIRE(ys[t].value().flat(e) == sp.scale * x.value().flat(off));
          }
  }
}

TEST_CASE("gather_tiles: gradients (overlapping and disjoint tiles) and errors", "[ghn][nn][fastpath][gradcheck]") {
  rng g(6);
  auto x = autograd::parameter(test::random_tensor<double>({4, 12}, g), "x");
  for (const bool overlap : {true, false}) {
    INFO("overlapping tiles " << overlap);
    std::vector<nn::tile_spec> specs;
    specs.push_back({{3, 5, 2}, 0, {{2, 3, 2, 1}}, {{12, 1, 3, 0}}, 0.7});
    specs.push_back({{9}, overlap ? 2 : 24, {{4, 1, 1, 1}}, {{1, 0, 0, 0}}, -1.3});
    specs.push_back({{2, 3, 2, 2}, 36, {{1, 3, 2, 2}}, {{0, 4, 2, 1}}, 1.0});
    test::check_gradients([&](dtape& tp, std::vector<dvar>& v) { return flat_concat(tp, nn::gather_tiles(tp, v[0], specs)); },
                          {x});
  }
  dtape tp;
  CHECK_THROWS_AS(nn::gather_tiles(tp, x, {nn::tile_spec{{3}, 46, {{3, 1, 1, 1}}, {{1, 0, 0, 0}}, 1.0}}), value_error);
  CHECK_THROWS_AS(nn::gather_tiles(tp, x, {nn::tile_spec{{3}, 0, {{0, 1, 1, 1}}, {{1, 0, 0, 0}}, 1.0}}), value_error);
  CHECK_THROWS_AS(nn::gather_tiles(tp, x, {nn::tile_spec{{3}, -1, {{3, 1, 1, 1}}, {{1, 0, 0, 0}}, 1.0}}), value_error);
  CHECK_THROWS_AS(nn::gather_tiles(tp, x, {nn::tile_spec{{1, 1, 1, 1, 1}, 0, {{1, 1, 1, 1}}, {{0, 0, 0, 0}}, 1.0}}),
                  shape_error);
  CHECK_THROWS_AS(nn::gather_tiles(tp, x, {nn::tile_spec{{2, 0}, 0, {{1, 1, 1, 1}}, {{0, 0, 0, 0}}, 1.0}}), shape_error);
  // no recording without a gradient
  auto c = dvar(test::random_tensor<double>({4, 12}, g));
  dtape t2;
  const auto ys = nn::gather_tiles(t2, c, {nn::tile_spec{{3}, 0, {{3, 1, 1, 1}}, {{1, 0, 0, 0}}, 1.0}});
  CHECK_FALSE(ys[0].requires_grad());
  CHECK(t2.size() == 0);
}

// ---------------------------------------------------------------- conv_decoder fast path

TEST_CASE("conv_decoder::forward_blocks equals the full block (values and gradients)", "[ghn][decoder][fastpath]") {
  rng g(7);
  const std::int64_t H = 4, S = 5, M0 = 6, M1 = 5;
  ghn::conv_decoder<double> dec(H, {M0, M1, S}, 3, g);
  using req_t = ghn::conv_decoder<double>::block_request;
  // kernels 1x1, 3x3, 7x1, 1x7 (window 1x5), 9x9 (> S: window 5x5); blocks < M, = M, mixed
  const std::vector<req_t> req = {{3, 3, 2, 3}, {1, 1, 6, 5}, {7, 1, 6, 2}, {1, 7, 1, 5}, {3, 3, 6, 5},
                                  {9, 9, 4, 4}, {1, 1, 6, 5}, {3, 3, 2, 3}, {5, 5, 3, 1}};
  const auto n = static_cast<std::int64_t>(req.size());
  auto x = autograd::parameter(test::random_tensor<double>({n, H}, g), "x");
  auto params = dec.parameters();
  params.push_back(x);

  dtape tp;
  const auto bs = dec.forward_blocks(tp, x, req);
  REQUIRE(bs.part.size() == req.size());
  // reference entries: the full block of each node's kernel
  std::vector<dvar> ref(bs.blocks.size());
  std::vector<std::vector<std::int64_t>> idx(bs.blocks.size());
  std::vector<dvar> full;
  for (std::int64_t i = 0; i < n; ++i) {
    const auto& r = req[static_cast<std::size_t>(i)];
    full.push_back(dec.forward(tp, x, r.kh, r.kw));  // [n, M0, M1, h', w'] for all nodes
  }
  for (std::size_t b = 0; b < bs.blocks.size(); ++b) {
    const auto& blk = bs.blocks[b];
    const std::int64_t cols = bs.out[b] * bs.in[b];
    REQUIRE(blk.value().rank() == 1);
    REQUIRE(blk.value().numel() % cols == 0);
    tensor<double> want(blk.shape());
    want.set_zero();
    for (std::int64_t i = 0; i < n; ++i) {
      const auto ui = static_cast<std::size_t>(i);
      if (bs.part[ui] != b) continue;
      REQUIRE(req[ui].out == bs.out[b]);
      REQUIRE(req[ui].in == bs.in[b]);
      const auto& D = full[ui].value();
      const std::int64_t hh = bs.hh[ui], ww = bs.ww[ui];
      REQUIRE(D.dim(3) == hh);
      REQUIRE(D.dim(4) == ww);
      REQUIRE(hh == std::min(S, req[ui].kh));
      for (std::int64_t y = 0; y < hh; ++y)
        for (std::int64_t xx = 0; xx < ww; ++xx)
          for (std::int64_t o = 0; o < bs.out[b]; ++o)
            for (std::int64_t c = 0; c < bs.in[b]; ++c)
              want.flat(cols * bs.row[ui] + (o * bs.in[b] + c) * hh * ww + y * ww + xx) = D(i, o, c, y, xx);
    }
    test::require_close(blk.value(), want, 1e-12, 1e-12);
  }

  // gradients: the same seed on the fast blocks and on the corresponding full-block entries
  rng sg(70);
  std::vector<tensor<double>> seeds;
  for (const auto& blk : bs.blocks) seeds.push_back(test::random_tensor<double>(blk.shape(), sg));
  for (auto& p : params) p.reset_grad();
  {
    dtape t1;
    const auto b1 = dec.forward_blocks(t1, x, req);
    backward_with_seeds(t1, b1.blocks, seeds);
  }
  const auto fast = grads_of(params);
  for (auto& p : params) p.reset_grad();
  {
    dtape t2;
    std::vector<dvar> outs;
    std::vector<tensor<double>> fseeds;
    for (std::int64_t i = 0; i < n; ++i) {
      const auto ui = static_cast<std::size_t>(i);
      const auto D = dec.forward(t2, x, req[ui].kh, req[ui].kw);
      tensor<double> sd = tensor<double>::zeros(D.shape());
      const std::size_t b = bs.part[ui];
      const std::int64_t hh = bs.hh[ui], ww = bs.ww[ui];
      for (std::int64_t y = 0; y < hh; ++y)
        for (std::int64_t xx = 0; xx < ww; ++xx)
          for (std::int64_t o = 0; o < bs.out[b]; ++o)
            for (std::int64_t c = 0; c < bs.in[b]; ++c)
              sd(i, o, c, y, xx) = seeds[b].flat(bs.out[b] * bs.in[b] * bs.row[ui] + (o * bs.in[b] + c) * hh * ww + y * ww + xx);
      outs.push_back(D);
      fseeds.push_back(sd);
    }
    backward_with_seeds(t2, outs, fseeds);
  }
  const auto slow = grads_of(params);
  for (std::size_t k = 0; k < params.size(); ++k) {
    INFO(params[k].name());
    test::require_close(fast[k], slow[k], 1e-11, 1e-10);
  }
}

TEST_CASE("conv_decoder fast path: central-difference check of every parameter and x", "[ghn][decoder][fastpath][gradcheck]") {
  rng g(8);
  ghn::conv_decoder<double> dec(2, {3, 4, 3}, 2, g);
  using req_t = ghn::conv_decoder<double>::block_request;
  const std::vector<req_t> req = {{2, 3, 2, 4}, {1, 1, 3, 4}, {4, 1, 2, 4}, {2, 3, 3, 2}};
  auto x = autograd::parameter(test::random_tensor<double>({4, 2}, g), "x");
  std::vector<dvar> in{x};
  for (auto& p : dec.parameters()) in.push_back(p);
  test::check_gradients(
      [&](dtape& tp, std::vector<dvar>& v) {
        dec.fc_w = v[1];
        dec.fc_b = v[2];
        dec.conv1_w = v[3];
        dec.conv1_b = v[4];
        dec.conv2_w = v[5];
        dec.conv2_b = v[6];
        dec.cls_w = v[7];
        dec.cls_b = v[8];
        auto bs = dec.forward_blocks(tp, v[0], req);
        // the classifier head on the block with out = M0
        std::vector<dvar> ys = bs.blocks;
        for (std::size_t b = 0; b < bs.blocks.size(); ++b)
          if (bs.out[b] == 3 && bs.in[b] == 4) ys.push_back(dec.classify_rows(tp, bs.blocks[b], bs.in[b]));  // 1x1 node only
        return flat_concat(tp, ys);
      },
      in);
}

TEST_CASE("conv_decoder::classify_rows equals classify on the full block", "[ghn][decoder][fastpath]") {
  rng g(9);
  ghn::conv_decoder<double> dec(3, {4, 5, 3}, 3, g);
  auto x = dvar(test::random_tensor<double>({2, 3}, g));
  dtape tp;
  const auto C = dec.classify(tp, dec.forward(tp, x, 1, 1));  // [2, 3, 5, 1, 1]
  for (const std::int64_t in : {2, 5}) {
    const auto bs = dec.forward_blocks(tp, x, {{1, 1, 4, in}, {1, 1, 4, in}});
    REQUIRE(bs.blocks.size() == 1);
    const auto z = dec.classify_rows(tp, bs.blocks[0], in);  // [2 * in, 3], row r * in + i
    REQUIRE(z.shape() == shape({2 * in, 3}));
    for (std::int64_t n = 0; n < 2; ++n)
      for (std::int64_t i = 0; i < in; ++i)
        for (std::int64_t k = 0; k < 3; ++k)
          REQUIRE(z.value()(bs.row[static_cast<std::size_t>(n)] * in + i, k) == Approx(C.value()(n, k, i, 0, 0)).epsilon(1e-12));
  }
  CHECK_THROWS_AS(dec.classify_rows(tp, dvar(tensor<double>::zeros({14})), 2), shape_error);
  CHECK_THROWS_AS(dec.forward_blocks(tp, x, {{1, 1, 5, 1}, {1, 1, 1, 1}}), value_error);  // out > M0
  CHECK_THROWS_AS(dec.forward_blocks(tp, x, {{1, 1, 1, 1}}), value_error);                // 1 request, 2 rows
}

// ---------------------------------------------------------------- GatedGNN fused vs reference

namespace {
graph::computational_graph chain_graph(int n, int extra) {
  graph::computational_graph g;
  g.nodes.resize(static_cast<std::size_t>(n));
  std::vector<graph::edge> flow;
  for (int i = 0; i + 1 < n; ++i) flow.push_back({i, i + 1, 1});
  for (int i = 0; i + extra < n; i += 2) flow.push_back({i, i + extra, 1});
  std::sort(flow.begin(), flow.end(), [](const graph::edge& a, const graph::edge& b) {
    return a.src != b.src ? a.src < b.src : a.dst < b.dst;
  });
  flow.erase(std::unique(flow.begin(), flow.end()), flow.end());
  g.edges = graph::with_virtual_edges(n, flow, 50);
  return g;
}
}  // namespace

TEST_CASE("gated_gnn: fused forward equals the composed reference (values and gradients)", "[ghn][gnn][fastpath]") {
  for (const bool ve : {true, false}) {
    INFO("virtual edges " << ve);
    rng g(12);
    ghn::gated_gnn<double> gnn(6, ve, g);
    graph::graph_batch batch;
    batch.add(graph::build(arch::resnet20(3, 16, 16, 10, 4), 50));
    batch.add(chain_graph(9, 3));
    batch.add(chain_graph(40, 5));  // 40 rows in the first steps: exercises the parallel row loop
    for (int k = 0; k < 40; ++k) batch.add(chain_graph(3 + k % 4, 2));
    auto x = autograd::parameter(test::random_tensor<double>({batch.total_nodes(), 6}, g), "x");
    auto ps = gnn.parameters();
    ps.push_back(x);
    const auto sc = std::make_shared<const ghn::gnn_schedule<double>>(batch, ve);
    const auto seed = test::random_tensor<double>({batch.total_nodes(), 6}, g);
    for (auto& p : ps) p.reset_grad();
    dtape t1;
    const auto h1 = gnn.forward(t1, x, sc);
    t1.backward(h1, seed);
    const auto fast = grads_of(ps);
    for (auto& p : ps) p.reset_grad();
    dtape t2;
    const auto h2 = gnn.forward_reference(t2, x, *sc);
    t2.backward(h2, seed);
    const auto slow = grads_of(ps);
    test::require_close(h1.value(), h2.value(), 1e-12, 1e-12);
    for (std::size_t k = 0; k < ps.size(); ++k) {
      INFO(ps[k].name());
      test::require_close(fast[k], slow[k], 1e-11, 1e-10);
    }
    // no_grad: same values, nothing recorded
    dtape t3;
    autograd::no_grad<dtape> ng(t3);
    const auto h3 = gnn.forward(t3, x, *sc);
    CHECK(t3.size() == 0);
    test::require_close(h3.value(), h1.value(), 1e-13, 1e-13);
  }
}

// ---------------------------------------------------------------- hypernet predict vs reference

namespace {
// Channels < 64, = 64 and > 64; kernels 1x1, 3x3, 5x5 (depthwise), 7x1, 1x7, 13x13 (> S); a
// hidden linear layer with > 64 in/out features and a classifier with > 64 inputs.
arch::network wide_net() {
  arch::builder b(3, 16, 16, 10);
  int x = b.conv(b.input(), 80, 3, 1, -1, 1, 1, true, "stem");
  x = b.relu(b.batch_norm(x, true, "stem_bn"));
  x = b.conv(x, 64, 1, 1, -1, 1, 1, false, "c1");
  x = b.conv(x, 64, 7, 1, 1, 3, 0, 1, 1, false, "c71");
  x = b.conv(x, 64, 1, 7, 1, 0, 3, 1, 1, false, "c17");
  x = b.conv(x, 64, 5, 1, -1, 1, 64, false, "dw");
  x = b.conv(x, 20, 13, 1, -1, 1, 1, false, "c13");
  x = b.relu(b.batch_norm(x, true, "bn2"));
  x = b.conv(x, 130, 1, 1, -1, 1, 1, false, "c1b");
  x = b.global_avg_pool(x);
  x = b.relu(b.linear(x, 70, true, "fc1"));
  x = b.linear(x, 10, true, "classifier");
  return b.finish(x, "wide");
}
}  // namespace

TEMPLATE_TEST_CASE("hypernet: predict equals predict_reference (values)", "[ghn][hypernet][fastpath]", float, double) {
  using T = TestType;
  using cfg = ghn2_config<backend::cpu_t, T, 8>;
  rng g(13);
  hypernet<cfg> ghn(g);
  const auto a = wide_net();
  const auto r = arch::resnet20(3, 16, 16, 10, 4);  // channels 4..16, classifier with 16 inputs
  graph::graph_batch batch;
  batch.add(hypernet<cfg>::graph_of(a));
  batch.add(hypernet<cfg>::graph_of(r));
  autograd::tape<T> tp;
  autograd::no_grad<autograd::tape<T>> ng(tp);
  const auto fast = ghn.predict(tp, {&a, &r}, batch);
  const auto slow = ghn.predict_reference(tp, {&a, &r}, batch);
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  for (std::size_t k = 0; k < 2; ++k) {
    REQUIRE(fast[k].size() == slow[k].size());
    const auto infos = arch::parameters(k == 0 ? a : r);
    for (std::size_t p = 0; p < fast[k].size(); ++p) {
      INFO("net " << k << " " << infos[p].name << " " << infos[p].shape);
      REQUIRE(fast[k][p].shape() == infos[p].shape);
      test::require_close(fast[k][p].value(), slow[k][p].value(), tol, tol);
    }
  }
  CHECK(tp.size() == 0);
}

TEST_CASE("hypernet: fast path on sampled networks equals the reference and is bit-reproducible",
          "[ghn][hypernet][fastpath]") {
  // Sampled networks put many window sizes and block shapes into one decoder call, so node segments
  // straddle the row tiles of the last layer (a segment with one row in a tile must still be laid
  // out with its own stride).
  using cfg = ghn2_config<backend::cpu_t, float, 8>;
  rng g(2);
  hypernet<cfg> ghn(g);
  arch::sampler_options so;
  so.in_channels = 1;
  so.in_h = so.in_w = 12;
  arch::sampler smp(so, 3);
  std::vector<arch::network> nets;
  for (int k = 0; k < 3; ++k) nets.push_back(smp.build(smp.next(arch::split::test)));
  autograd::tape<float> tp;
  autograd::no_grad<autograd::tape<float>> ng(tp);
  for (const auto& net : nets) {
    const auto fast = ghn.predict(tp, net);
    const std::vector<char> shift(977);  // other allocations between the calls
    const auto again = ghn.predict(tp, net);
    const auto slow = ghn.predict_reference(tp, net);
    const auto infos = arch::parameters(net);
    for (std::size_t p = 0; p < fast.size(); ++p) {
      INFO(infos[p].name << " " << infos[p].shape);
      test::require_close(fast[p].value(), slow[p].value(), 1e-5, 1e-5);
      REQUIRE(fast[p].value().to_vector() == again[p].value().to_vector());
    }
  }
}

TEST_CASE("hypernet: predict and predict_reference give the same GHN gradients (double)", "[ghn][hypernet][fastpath]") {
  using cfg = ghn2_config<backend::cpu_t, double, 8>;
  rng g(14);
  hypernet<cfg> ghn(g);
  const auto a = wide_net();
  const auto r = arch::resnet20(3, 16, 16, 10, 4);
  graph::graph_batch batch;
  batch.add(hypernet<cfg>::graph_of(a));
  batch.add(hypernet<cfg>::graph_of(r));
  auto ps = ghn.parameters();
  rng sg(15);
  std::vector<tensor<double>> seeds;
  for (const auto* net : {&a, &r})
    for (const auto& pi : arch::parameters(*net)) seeds.push_back(test::random_tensor<double>(pi.shape, sg));
  auto run = [&](bool fast) {
    for (auto& p : ps) p.reset_grad();
    dtape tp;
    const auto pred = fast ? ghn.predict(tp, {&a, &r}, batch) : ghn.predict_reference(tp, {&a, &r}, batch);
    std::vector<dvar> ys;
    for (const auto& net : pred) ys.insert(ys.end(), net.begin(), net.end());
    backward_with_seeds(tp, ys, seeds);
    return grads_of(ps);
  };
  const auto gf = run(true), gs = run(false);
  for (std::size_t k = 0; k < ps.size(); ++k) {
    INFO(ps[k].name());
    double mx = 0;
    for (std::int64_t i = 0; i < gs[k].numel(); ++i) mx = std::max(mx, std::abs(gs[k].flat(i)));
    test::require_close(gf[k], gs[k], 1e-10 * std::max(1.0, mx), 1e-9);
  }
}
