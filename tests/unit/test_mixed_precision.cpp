// Mixed-precision policies: named policies and specs resolved into per-op bit-widths on hand-built,
// family and sampled networks; the spec parser's errors; model size against hand counts.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "ghnq/arch/builder.hpp"
#include "ghnq/arch/families.hpp"
#include "ghnq/arch/sampler.hpp"
#include "ghnq/exec/mixed_precision.hpp"

using namespace ghnq;
using Catch::Matchers::Contains;

namespace {

/// input 1x8x8 -> a conv3x3(4) -> b conv3x3(8) -> c conv1x1(16) -> d conv3x3(16) -> gap -> flatten
/// -> linear(10). Weights: a 36, b 288, c 128, d 2304, linear 160.
arch::network ladder(int* ids) {
  arch::builder b(1, 8, 8, 10);
  const int a = b.conv(b.input(), 4, 3);
  const int c1 = b.conv(b.relu(a), 8, 3);
  const int c2 = b.conv(b.relu(c1), 16, 1);
  const int c3 = b.conv(b.relu(c2), 16, 3);
  const int lin = b.linear(b.flatten(b.global_avg_pool(b.relu(c3))), 10);
  ids[0] = a, ids[1] = c1, ids[2] = c2, ids[3] = c3, ids[4] = lin;
  return b.finish(lin, "ladder");
}

/// A chain of n conv3x3(4) then gap, flatten, linear: the k-th conv has depth k, the linear n + 1.
arch::network chain(int n, std::vector<int>& ids) {
  arch::builder b(1, 8, 8, 10);
  int x = b.input();
  for (int k = 0; k < n; ++k) {
    x = b.conv(x, 4, 3);
    ids.push_back(x);
    x = b.relu(x);
  }
  const int lin = b.linear(b.flatten(b.global_avg_pool(x)), 10);
  ids.push_back(lin);
  return b.finish(lin, "chain");
}

std::vector<int> w_bits_of(const arch::network& net, const exec::bit_policy& p, const std::vector<int>& ids) {
  const auto plan = exec::plan_quantization(net, exec::apply_policy(net, p));
  std::vector<int> out;
  for (int i : ids) out.push_back(plan[static_cast<std::size_t>(i)].w_bits);
  return out;
}

bool is_quantizable(const arch::op& o) { return o.type == arch::op_type::conv || o.type == arch::op_type::linear; }

std::vector<arch::network> sampled(int n, std::uint64_t seed) {
  arch::sampler_options so;
  so.in_channels = 1;
  so.in_h = so.in_w = 28;
  so.num_classes = 10;
  arch::sampler s(so, seed);
  std::vector<arch::network> out;
  for (int i = 0; i < n; ++i) out.push_back(s.build(s.next(arch::split::test)));
  return out;
}

}  // namespace

TEST_CASE("mixed precision: uniform policies and fp32", "[quant][mixed]") {
  int id[5];
  const auto net = ladder(id);
  const std::vector<int> ids(id, id + 5);
  // plan bits are 0 for float
  CHECK(w_bits_of(net, exec::parse_policy("uniform-4"), ids) == std::vector<int>{8, 4, 4, 4, 8});
  CHECK(w_bits_of(net, exec::parse_policy("uniform-2"), ids) == std::vector<int>{8, 2, 2, 2, 8});
  CHECK(w_bits_of(net, exec::parse_policy("uniform-3-all"), ids) == std::vector<int>{3, 3, 3, 3, 3});
  CHECK(w_bits_of(net, exec::parse_policy("uniform-16"), ids) == std::vector<int>{16, 16, 16, 16, 16});
  CHECK(w_bits_of(net, exec::parse_policy("fp32"), ids) == std::vector<int>{0, 0, 0, 0, 0});
  CHECK(!exec::apply_policy(net, exec::parse_policy("fp32")).enabled());
  CHECK(exec::apply_policy(net, exec::parse_policy("uniform-8")).enabled());

  // The same bits as the study's W4A4 column (global bits, first / last at 8).
  exec::quant_config w4;
  w4.w_bits = w4.a_bits = 4;
  const auto ref = exec::plan_quantization(net, w4);
  const auto mine = exec::plan_quantization(net, exec::apply_policy(net, exec::parse_policy("uniform-4")));
  for (std::size_t i = 0; i < net.ops.size(); ++i) {
    CHECK(mine[i].w_bits == ref[i].w_bits);
    CHECK(mine[i].a_bits == ref[i].a_bits);
    CHECK(mine[i].a_signed == ref[i].a_signed);
  }
}

TEST_CASE("mixed precision: apply_policy keeps the quantizers and overrides every conv / linear", "[quant][mixed]") {
  int id[5];
  const auto net = ladder(id);
  exec::quant_config base;
  base.wq = exec::weight_quantizer::lsq;
  base.aq = exec::act_quantizer::pact;
  base.noise = true;
  base.first_last_bits = 8;
  const auto q = exec::apply_policy(net, exec::parse_policy("3x3:2,1x1:6,linear:5"), base);
  CHECK(q.wq == exec::weight_quantizer::lsq);
  CHECK(q.aq == exec::act_quantizer::pact);
  CHECK(q.noise);
  CHECK(q.first_last_bits == 0);  // the policy decides first / last layers
  CHECK(q.w_bits == 32);          // default: float
  CHECK(q.w_bits_of_op.size() == 5);
  CHECK(q.a_bits_of_op.size() == 5);
  for (const auto& [op, b] : q.w_bits_of_op) CHECK(is_quantizable(net.ops[static_cast<std::size_t>(op)]));
  const std::vector<int> ids(id, id + 5);
  CHECK(w_bits_of(net, exec::parse_policy("3x3:2,1x1:6,linear:5"), ids) == std::vector<int>{2, 2, 6, 2, 5});
}

TEST_CASE("mixed precision: bits by kernel size, precedence of the rules", "[quant][mixed]") {
  int id[5];
  const auto net = ladder(id);
  const std::vector<int> ids(id, id + 5);
  const auto k = exec::parse_policy("k3x3-2_1x1-4");
  CHECK(w_bits_of(net, k, ids) == std::vector<int>{8, 2, 4, 2, 8});
  const auto lb = exec::assign_bits(net, k);
  REQUIRE(lb.size() == 5);
  CHECK(lb[0].rule == "first");
  CHECK(lb[1].rule == "3x3");
  CHECK(lb[2].rule == "1x1");
  CHECK(lb[4].rule == "last");
  // Exact kernel beats kxk beats conv; first / last beat everything; unmatched -> default.
  CHECK(w_bits_of(net, exec::parse_policy("conv:6,kxk:3,1x1:5,default:7"), ids) == std::vector<int>{3, 3, 5, 3, 7});
  CHECK(w_bits_of(net, exec::parse_policy("conv:6,3x3:2,first:16,last:12"), ids) == std::vector<int>{16, 2, 6, 2, 12});
  CHECK(w_bits_of(net, exec::parse_policy("1x1:4"), ids) == std::vector<int>{0, 0, 4, 0, 0});  // default float
  CHECK(w_bits_of(net, exec::parse_policy("all:3,first_last:8"), ids) == std::vector<int>{8, 3, 3, 3, 8});

  // Activation bits: same as the layer's weight bits, or fixed by `act` outside first / last.
  auto a_of = [&](const std::string& s) {
    const auto plan = exec::plan_quantization(net, exec::apply_policy(net, exec::parse_policy(s)));
    std::vector<int> out;
    for (int i : ids) out.push_back(plan[static_cast<std::size_t>(i)].a_bits);
    return out;
  };
  CHECK(a_of("k3x3-2_1x1-4") == std::vector<int>{8, 2, 4, 2, 8});
  CHECK(a_of("3x3:2,kxk:2,1x1:4,linear:8,first_last:8,act:8") == std::vector<int>{8, 8, 8, 8, 8});
  CHECK_THROWS_WITH(exec::parse_policy("k3x3-2_1x1-4,act:8"), Contains("its spec is default:4,first_last:8,1x1:4,3x3:2,kxk:2,linear:8,act:same"));
  CHECK(a_of("3x3:2,1x1:4,linear:8,first_last:8,act:6") == std::vector<int>{8, 6, 6, 6, 8});
  CHECK(a_of("default:3,act:5") == std::vector<int>{5, 5, 5, 5, 5});
}

TEST_CASE("mixed precision: depthwise convs of MobileNetV2", "[quant][mixed]") {
  const auto net = arch::mobilenet_v2(1, 28, 28, 10, 0.5);
  const auto lb = exec::assign_bits(net, exec::parse_policy("dw:8,3x3:3,default:2"));
  int dw = 0, k3 = 0, rest = 0;
  for (const auto& l : lb) {
    const auto& o = net.ops[static_cast<std::size_t>(l.op)];
    const bool depthwise = o.type == arch::op_type::conv && o.groups > 1 && o.groups == o.out_channels;
    if (depthwise) {
      ++dw;
      CHECK(l.w_bits == 8);
      CHECK(l.rule == "dw");
    } else if (o.type == arch::op_type::conv && o.kh == 3 && o.kw == 3) {
      ++k3;
      CHECK(l.w_bits == 3);
    } else {
      ++rest;
      CHECK(l.w_bits == 2);
    }
  }
  CHECK(dw >= 10);
  CHECK(k3 >= 1);  // the stem
  CHECK(rest >= 10);
}

TEST_CASE("mixed precision: depth bands", "[quant][mixed]") {
  std::vector<int> ids;
  const auto net = chain(8, ids);  // depths 1..8, linear 9: u = (d - 1) / 8
  // 4 bands: u < .25 -> 4, < .5 -> 2, < .75 -> 2, else 4; first / last 8.
  CHECK(w_bits_of(net, exec::parse_policy("depth"), ids) == std::vector<int>{8, 4, 2, 2, 2, 2, 4, 4, 8});
  CHECK(w_bits_of(net, exec::parse_policy("depth:6/3"), ids) == std::vector<int>{6, 6, 6, 6, 3, 3, 3, 3, 3});
  CHECK(w_bits_of(net, exec::parse_policy("depth:5"), ids) == std::vector<int>{5, 5, 5, 5, 5, 5, 5, 5, 5});
  // Parallel branches share a depth: resnet20's 1x1 shortcut projections sit at the depth of the
  // block's first conv + 1 at most; every layer gets a band in range.
  const auto r20 = arch::resnet20(1, 28, 28, 10);
  for (const auto& l : exec::assign_bits(r20, exec::parse_policy("depth:2/3/4/5/6/7/8/16")))
    CHECK(((l.w_bits >= 2 && l.w_bits <= 8) || l.w_bits == 16));
  const auto lb = exec::assign_bits(r20, exec::parse_policy("depth:2/3/4/5/6/7/8/16"));
  CHECK(lb.front().w_bits == 2);  // the stem, depth 1
  CHECK(lb.back().w_bits == 16);  // the classifier, the deepest
}

TEST_CASE("mixed precision: size bands and model size against a hand count", "[quant][mixed]") {
  int id[5];
  const auto net = ladder(id);
  const std::vector<int> ids(id, id + 5);
  // Ranked by weights: d 2304, b 288, linear 160, c 128, a 36 -> bands floor(r * 3 / 5): 0 0 1 1 2.
  CHECK(w_bits_of(net, exec::parse_policy("size:2/4/8"), ids) == std::vector<int>{8, 2, 4, 2, 4});
  const auto q = exec::apply_policy(net, exec::parse_policy("size:2/4/8"));
  const auto sz = exec::size_of(net, q);
  CHECK(sz.weights == 36 + 288 + 128 + 2304 + 160);
  CHECK(sz.bits == 36 * 8 + 288 * 2 + 128 * 4 + 2304 * 2 + 160 * 4);
  CHECK(sz.bits_per_weight() == Approx(6624.0 / 2916.0));
  CHECK(sz.float_weights == 0);
  CHECK(sz.megabytes() == Approx(6624.0 / 8e6));
  // Named "size": first / last 8, the rest by bands.
  CHECK(w_bits_of(net, exec::parse_policy("size"), ids) == std::vector<int>{8, 2, 4, 2, 8});
  // uniform-4: first conv and linear at 8, the rest at 4; fp32: 32 bits per weight.
  const auto u4 = exec::size_of(net, exec::apply_policy(net, exec::parse_policy("uniform-4")));
  CHECK(u4.bits == 36 * 8 + (288 + 128 + 2304) * 4 + 160 * 8);
  const auto fp = exec::size_of(net, exec::apply_policy(net, exec::parse_policy("fp32")));
  CHECK(fp.bits == 32 * 2916);
  CHECK(fp.bits_per_weight() == 32.0);
  CHECK(fp.float_weights == 2916);
  // A spec that names only 1x1 convs leaves the rest in float: c (128 weights) at 4 bits.
  const auto only = exec::size_of(net, exec::apply_policy(net, exec::parse_policy("1x1:4")));
  CHECK(only.float_weights == 2916 - 128);
  CHECK(only.bits == (2916 - 128) * 32 + 128 * 4);
}

TEST_CASE("mixed precision: sampled DeepNets-1M networks", "[quant][mixed]") {
  const auto k = exec::parse_policy("k3x3-2_1x1-4");
  const auto d = exec::parse_policy("depth");
  const auto s = exec::parse_policy("size");
  for (const auto& net : sampled(12, 5)) {
    const auto q = exec::apply_policy(net, k);
    const auto plan = exec::plan_quantization(net, q);
    std::int64_t bits = 0;
    for (const auto& pi : arch::parameters(net)) {
      const auto& o = net.ops[static_cast<std::size_t>(pi.op)];
      if (pi.role != arch::param_role::weight || !is_quantizable(o)) continue;
      const bool first = net.ops[static_cast<std::size_t>(o.inputs[0])].type == arch::op_type::input;
      const bool last = pi.op == net.output;
      const int want = (first || last) ? 8 : o.type == arch::op_type::linear ? 8 : (o.kh == 1 && o.kw == 1) ? 4 : 2;
      CHECK(plan[static_cast<std::size_t>(pi.op)].w_bits == want);
      CHECK(plan[static_cast<std::size_t>(pi.op)].a_bits == want);
      bits += pi.shape.numel() * want;
    }
    CHECK(exec::size_of(net, q).bits == bits);
    // depth / size: every layer quantized with a bit-width of the policy; first / last at 8.
    for (const auto* p : {&d, &s}) {
      const auto lb = exec::assign_bits(net, *p);
      for (const auto& l : lb) {
        CHECK((l.w_bits == 2 || l.w_bits == 4 || l.w_bits == 8));
        if (l.op == net.output) CHECK(l.w_bits == 8);
      }
    }
    // size: the single largest layer (unless first / last) is at 2 bits.
    const auto lb = exec::assign_bits(net, s);
    std::int64_t best = -1;
    int best_op = -1;
    for (const auto& pi : arch::parameters(net))
      if (pi.role == arch::param_role::weight && is_quantizable(net.ops[static_cast<std::size_t>(pi.op)]) &&
          pi.shape.numel() > best)
        best = pi.shape.numel(), best_op = pi.op;
    for (const auto& l : lb)
      if (l.op == best_op && l.rule == "size") CHECK(l.w_bits == 2);
  }
}

TEST_CASE("mixed precision: spec round trip and named policies", "[quant][mixed]") {
  for (const auto& name : exec::default_policies()) {
    const auto p = exec::parse_policy(name);
    CHECK(p.name == name);
    CHECK(exec::parse_policy(p.spec()) == p);
  }
  const auto p = exec::parse_policy("3x3:2,1x1:4,linear:8,first_last:8");
  CHECK(p.kernel_bits.at({3, 3}) == 2);
  CHECK(p.kernel_bits.at({1, 1}) == 4);
  CHECK(p.linear_bits == 8);
  CHECK(p.first_bits == 8);
  CHECK(p.last_bits == 8);
  CHECK(p.default_bits == 32);
  CHECK(p.spec() == "default:32,first_last:8,1x1:4,3x3:2,linear:8,act:same");
  const auto q = exec::parse_policy("first:8,last:6,dw:8,7x1:3,kxk:2,conv:4,size:2/3,act:8,default:5");
  CHECK(exec::parse_policy(q.spec()) == q);
  CHECK(q.act_bits == 8);
  CHECK(q.size_bands == std::vector<int>{2, 3});
  CHECK(exec::parse_policy("uniform-4") != exec::parse_policy("uniform-4-all"));
  CHECK(exec::parse_policy("k3x3-3_1x1-6").kernel_bits.at({3, 3}) == 3);
}

TEST_CASE("mixed precision: parser errors", "[quant][mixed]") {
  using E = value_error;
  CHECK_THROWS_AS(exec::parse_policy(""), E);
  CHECK_THROWS_WITH(exec::parse_policy("3x3"), Contains("not a named policy"));
  CHECK_THROWS_WITH(exec::parse_policy("uniform-"), Contains("not a named policy"));
  CHECK_THROWS_WITH(exec::parse_policy("uniform-4-al"), Contains("not a named policy"));
  CHECK_THROWS_WITH(exec::parse_policy("k3x3-2_1x1-"), Contains("not a named policy"));
  CHECK_THROWS_WITH(exec::parse_policy("uniform-1"), Contains("not in [2, 16]"));
  CHECK_THROWS_WITH(exec::parse_policy("uniform-0"), Contains("not in [2, 16]"));
  CHECK_THROWS_WITH(exec::parse_policy("k3x3-2_1x1-24"), Contains("not in [2, 16]"));
  CHECK_THROWS_WITH(exec::parse_policy("3x3:"), Contains("'3x3:'"));
  CHECK_THROWS_WITH(exec::parse_policy("3x3:17"), Contains("not in [2, 16] nor 32"));
  CHECK_THROWS_WITH(exec::parse_policy("3x3:1"), Contains("not in [2, 16] nor 32"));
  CHECK_THROWS_WITH(exec::parse_policy("3x3:x"), Contains("expected a bit-width"));
  CHECK_THROWS_WITH(exec::parse_policy("3x3:-4"), Contains("expected a bit-width"));
  CHECK_THROWS_WITH(exec::parse_policy("3x3: 4"), Contains("expected a bit-width"));
  CHECK_THROWS_WITH(exec::parse_policy("foo:4"), Contains("unknown key 'foo'"));
  CHECK_THROWS_WITH(exec::parse_policy("0x3:4"), Contains("unknown key '0x3'"));
  CHECK_THROWS_WITH(exec::parse_policy("3x3:2,,1x1:4"), Contains("empty item"));
  CHECK_THROWS_WITH(exec::parse_policy("3x3:2,"), Contains("empty item"));
  CHECK_THROWS_WITH(exec::parse_policy("3x3:2,1x1"), Contains("'1x1' is not key:value"));
  CHECK_THROWS_WITH(exec::parse_policy("3x3:2,3x3:4"), Contains("given twice"));
  CHECK_THROWS_WITH(exec::parse_policy("3x3:2,03x3:4"), Contains("given twice"));
  CHECK_THROWS_WITH(exec::parse_policy("first_last:8,first:4"), Contains("given twice"));
  CHECK_THROWS_WITH(exec::parse_policy("last:8,first_last:4"), Contains("given twice"));
  CHECK_THROWS_WITH(exec::parse_policy("all:4,default:2"), Contains("given twice"));
  CHECK_THROWS_WITH(exec::parse_policy("depth:4//2"), Contains("separated by '/'"));
  CHECK_THROWS_WITH(exec::parse_policy("depth:"), Contains("separated by '/'"));
  CHECK_THROWS_WITH(exec::parse_policy("size:2/40"), Contains("not in [2, 16] nor 32"));
  CHECK_THROWS_WITH(exec::parse_policy("depth:4/2,size:2/4"), Contains("exclude each other"));
  CHECK_THROWS_WITH(exec::parse_policy("act:maybe"), Contains("'act:maybe'"));
  // The message names the spec.
  CHECK_THROWS_WITH(exec::parse_policy("3x3:2,foo:1"), Contains("policy '3x3:2,foo:1'"));
}
