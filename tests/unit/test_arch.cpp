// Tests of the network IR utilities: shape inference and validation, parameters, builder,
// ready-made families, JSON schema and the canonical hash.
#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "ghnq/arch/builder.hpp"
#include "ghnq/arch/families.hpp"
#include "ghnq/arch/hash.hpp"
#include "ghnq/arch/json.hpp"
#include "ghnq/arch/params.hpp"
#include "ghnq/arch/shape_inference.hpp"
#include "support/temp_dir.hpp"

using namespace ghnq;
using namespace ghnq::arch;
namespace fs = std::filesystem;

namespace {

/// input(0) -> conv 3x3 pad 1 (1) -> bn (2) -> relu (3) -> gap (4) -> linear (5): 3x8x8, 4 classes.
network small_net() {
  builder b(3, 8, 8, 4);
  int x = b.conv(b.input(), 6, 3, 1, 1, 1, 1, true, "conv");
  x = b.relu(b.batch_norm(x, true, "bn"));
  x = b.linear(b.global_avg_pool(x), 4, true, "fc");
  return b.finish(x, "small");
}

/// Runs infer_shapes on `net` expecting exception E whose message contains every fragment.
template <class E>
void expect_error(network net, const std::vector<std::string>& fragments) {
  try {
    infer_shapes(net);
  } catch (const E& e) {
    const std::string msg = e.what();
    INFO(msg);
    for (const auto& f : fragments) CHECK(msg.find(f) != std::string::npos);
    return;
  } catch (const std::exception& e) {
    FAIL("wrong exception type: " << e.what());
  }
  FAIL("no exception; expected one mentioning " << fragments.front());
}

op make_op(op_type t, std::vector<int> inputs, std::string name) {
  op o;
  o.type = t;
  o.inputs = std::move(inputs);
  o.name = std::move(name);
  return o;
}

/// The ResNet-20 parameter count by formula (conv weights, BN weight + bias, fc with bias,
/// 1x1 conv + BN projection at the first block of stages 2 and 3).
std::int64_t resnet20_formula(std::int64_t in_c, std::int64_t w, std::int64_t classes) {
  std::int64_t n = 9 * in_c * w + 2 * w;  // stem conv + bn
  std::int64_t cin = w;
  for (int s = 0; s < 3; ++s) {
    const std::int64_t ws = w << s;
    for (int k = 0; k < 3; ++k) {
      n += 9 * cin * ws + 9 * ws * ws + 4 * ws;
      if (cin != ws) n += cin * ws + 2 * ws;
      cin = ws;
    }
  }
  return n + cin * classes + classes;
}

/// A fresh directory under the system temp dir, removed with its contents at scope exit.
using ghnq::test::temp_dir;

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Shape inference

TEST_CASE("infer_shapes: shapes of every op type", "[arch]") {
  network n = small_net();
  CHECK(n.ops[1].c == 6);
  CHECK(n.ops[1].h == 8);
  CHECK(n.ops[4].h == 0);
  CHECK(n.ops[4].w == 0);
  CHECK(n.ops[5].c == 4);

  builder b(2, 7, 9, 3);
  const int x = b.input();
  // PyTorch conv formula with stride, dilation and asymmetric kernel / padding.
  const int c1 = b.conv(x, 4, 3, 5, 2, 1, 0, 2, 2, false, "c1");  // H: (7+2-4-1)/2+1 = 3, W: (9-8-1)/2+1 = 1
  CHECK(b.channels(c1) == 4);
  CHECK(b.height(c1) == 3);
  CHECK(b.width(c1) == 1);
  const int same = b.conv(x, 5, 5, 1, -1, 2);  // "same" padding d (k-1)/2 = 4
  CHECK(b.height(same) == 7);
  CHECK(b.width(same) == 9);
  CHECK(b.at(same).pad_h == 4);
  const int mp = b.max_pool(x, 3, 2, 1);  // (7+2-3)/2+1 = 4, (9+2-3)/2+1 = 5
  CHECK(b.height(mp) == 4);
  CHECK(b.width(mp) == 5);
  const int ap = b.avg_pool(x, 2);  // stride defaults to the kernel: 3 x 4
  CHECK(b.height(ap) == 3);
  CHECK(b.width(ap) == 4);
  const int z = b.zero(x, 2);  // ceil: 4 x 5
  CHECK(b.height(z) == 4);
  CHECK(b.width(z) == 5);
  const int ss = b.subsample(x, 3);  // 3 x 3
  CHECK(b.height(ss) == 3);
  CHECK(b.width(ss) == 3);
  const int sh = b.shift(x);
  CHECK(b.height(sh) == 6);
  CHECK(b.width(sh) == 8);
  const int cat = b.concat({x, b.relu(x), b.sigmoid(x)});
  CHECK(b.channels(cat) == 6);
  CHECK(b.height(cat) == 7);
  const int sm = b.sum({x, b.hardswish(x), b.identity(x), b.dropout(x, 0.5)});
  CHECK(b.channels(sm) == 2);
  const int fl = b.flatten(x);
  CHECK(b.channels(fl) == 2 * 7 * 9);
  CHECK(b.flat(fl));
  const int g = b.global_avg_pool(x);
  const int bnf = b.batch_norm(g, true, "bnf");  // BN on a flat value
  CHECK(b.flat(bnf));
  const int se = b.channel_scale(x, b.sigmoid(bnf));
  CHECK(b.channels(se) == 2);
  CHECK(b.height(se) == 7);
  const int cflat = b.concat({g, bnf});
  CHECK(b.channels(cflat) == 4);
  CHECK(b.flat(cflat));
  const int out = b.linear(cflat, 3, false, "fc");
  network net = b.finish(out);
  // infer_shapes on a copy with the shapes cleared gives the same shapes.
  network again = net;
  for (auto& o : again.ops) o.c = o.h = o.w = 0;
  infer_shapes(again);
  for (std::size_t i = 0; i < net.ops.size(); ++i) {
    CHECK(again.ops[i].c == net.ops[i].c);
    CHECK(again.ops[i].h == net.ops[i].h);
    CHECK(again.ops[i].w == net.ops[i].w);
  }
}

TEST_CASE("infer_shapes: wiring errors name the op", "[arch]") {
  SECTION("dangling input") {
    network n = small_net();
    n.ops[2].inputs = {17};
    expect_error<shape_error>(n, {"op 2 'bn' (batch_norm)", "refers to op 17", "does not exist"});
    n.ops[2].inputs = {-1};
    expect_error<shape_error>(n, {"op 2", "does not exist"});
  }
  SECTION("cycles and forward references") {
    network n = small_net();
    n.ops[3].inputs = {3};
    expect_error<shape_error>(n, {"op 3", "cycle"});
    n = small_net();
    n.ops[2].inputs = {4};
    expect_error<shape_error>(n, {"op 2", "refers to op 4", "cycle or forward reference"});
  }
  SECTION("wrong input counts") {
    network n = small_net();
    n.ops[3].inputs = {2, 2};
    expect_error<shape_error>(n, {"op 3", "(relu)", "exactly 1 input", "got 2"});
    n = small_net();
    n.ops[1].inputs = {};
    expect_error<shape_error>(n, {"op 1", "(conv)", "got 0"});
    n = small_net();
    n.ops[3] = make_op(op_type::sum, {}, "s");
    expect_error<shape_error>(n, {"op 3", "(sum)", "at least 1"});
    n.ops[3] = make_op(op_type::concat, {}, "s");
    expect_error<shape_error>(n, {"op 3", "(concat)", "at least 1"});
    n.ops[3] = make_op(op_type::channel_scale, {2}, "s");
    expect_error<shape_error>(n, {"op 3", "(channel_scale)", "exactly 2"});
    n = small_net();
    n.ops[0].inputs = {0};
    expect_error<shape_error>(n, {"op 0", "(input)"});
  }
  SECTION("misplaced input op, empty network, missing input op") {
    network n = small_net();
    n.ops[3] = make_op(op_type::input, {}, "x");
    expect_error<value_error>(n, {"op 3", "only op 0"});
    n = small_net();
    n.ops[0].type = op_type::relu;
    expect_error<value_error>(n, {"op 0", "must be the network input"});
    n.ops.clear();
    expect_error<value_error>(n, {"no ops"});
  }
}

TEST_CASE("infer_shapes: channel and spatial mismatches", "[arch]") {
  SECTION("conv groups") {
    network n = small_net();
    n.ops[1].groups = 2;  // 3 input channels
    expect_error<shape_error>(n, {"op 1 'conv' (conv)", "channel mismatch", "3 input channels", "groups = 2"});
    n.ops[1].groups = 3;  // 6 out channels: fine
    infer_shapes(n);
    n.ops[1].out_channels = 7;
    n.ops[5].inputs = {4};
    expect_error<shape_error>(n, {"op 1", "out_channels 7", "groups = 3"});
  }
  SECTION("sum, concat, channel_scale") {
    builder b(3, 8, 8, 4);
    const int a = b.conv(b.input(), 4, 3, 1, 1, 1, 1, false, "a");
    const int c = b.conv(b.input(), 4, 3, 2, 1, 1, 1, false, "c");  // 4x4x4
    const int d = b.conv(b.input(), 5, 3, 1, 1, 1, 1, false, "d");  // 5x8x8
    CHECK_THROWS_AS(b.sum({a, c}), shape_error);
    try {
      b.sum({a, d});
      FAIL("no exception");
    } catch (const shape_error& e) {
      const std::string m = e.what();
      CHECK(m.find("op 4") != std::string::npos);
      CHECK(m.find("[N, 5, 8, 8]") != std::string::npos);
      CHECK(m.find("[N, 4, 8, 8]") != std::string::npos);
    }
    CHECK(b.size() == 4);  // the failed op was rolled back
    try {
      b.concat({a, c});
      FAIL("no exception");
    } catch (const shape_error& e) {
      const std::string m = e.what();
      CHECK(m.find("op 4") != std::string::npos);
      CHECK(m.find("spatial size mismatch") != std::string::npos);
      CHECK(m.find("[N, 4, 4, 4]") != std::string::npos);
    }
    CHECK(b.channels(b.concat({a, d})) == 9);
    const int g = b.global_avg_pool(d);  // [N, 5]
    CHECK_THROWS_AS(b.channel_scale(a, g), shape_error);   // 4 vs 5 channels
    CHECK_THROWS_AS(b.channel_scale(a, c), shape_error);   // scale not flat
    CHECK(b.channels(b.channel_scale(d, g)) == 5);
    CHECK_THROWS_AS(b.conv(g, 3, 1), shape_error);        // conv on a flat value
    CHECK_THROWS_AS(b.max_pool(g, 2), shape_error);
    CHECK_THROWS_AS(b.global_avg_pool(g), shape_error);
    CHECK_THROWS_AS(b.shift(g), shape_error);
    CHECK_THROWS_AS(b.zero(g, 2), shape_error);
    CHECK(b.flat(b.zero(g, 1)));
  }
  SECTION("linear needs a flat input") {
    network n = small_net();
    n.ops[5].inputs = {3};
    expect_error<shape_error>(n, {"op 5 'fc' (linear)", "flat", "[N, 6, 8, 8]"});
  }
  SECTION("spatial size below 1") {
    network n = small_net();
    n.ops[1].kh = n.ops[1].kw = 11;  // (8 + 2 - 10 - 1) / 1 + 1 = 0
    expect_error<shape_error>(n, {"op 1 'conv' (conv)", "spatial size below 1", "height would be 0"});
    n.ops[1].kh = n.ops[1].kw = 3;
    n.ops[1].dilation = 6;  // 8 + 2 - 12 - 1 = -3 -> -3 + 1 = -2
    expect_error<shape_error>(n, {"op 1", "would be -2"});
    builder b(1, 3, 3, 2);
    CHECK_THROWS_AS(b.max_pool(b.input(), 4, 1, 0), shape_error);
    try {
      b.avg_pool(b.shift(b.shift(b.input())), 2);
      FAIL("no exception");
    } catch (const shape_error& e) {
      const std::string m = e.what();
      CHECK(m.find("op 3") != std::string::npos);
      CHECK(m.find("(avg_pool)") != std::string::npos);
      CHECK(m.find("would be 0") != std::string::npos);
    }
    CHECK_THROWS_AS(b.shift(b.shift(b.shift(b.input()))), shape_error);
  }
}

TEST_CASE("infer_shapes: bad attributes are value errors naming the op", "[arch]") {
  auto with = [](auto mutate) {
    network n = small_net();
    mutate(n.ops[1]);
    return n;
  };
  expect_error<value_error>(with([](op& o) { o.kh = 0; }), {"op 1", "kernel must be >= 1"});
  expect_error<value_error>(with([](op& o) { o.stride = 0; }), {"op 1", "stride"});
  expect_error<value_error>(with([](op& o) { o.dilation = 0; }), {"op 1", "dilation"});
  expect_error<value_error>(with([](op& o) { o.pad_w = -1; }), {"op 1", "padding"});
  expect_error<value_error>(with([](op& o) { o.groups = 0; }), {"op 1", "groups"});
  expect_error<value_error>(with([](op& o) { o.out_channels = 0; }), {"op 1", "out_channels"});

  network n = small_net();
  n.ops[3] = make_op(op_type::dropout, {2}, "drop");
  n.ops[3].p = 1.0;
  expect_error<value_error>(n, {"op 3 'drop' (dropout)", "[0, 1)"});
  n.ops[3].p = -0.1;
  expect_error<value_error>(n, {"op 3", "[0, 1)"});
  n.ops[3].p = 0.0;
  infer_shapes(n);

  n.ops[3] = make_op(op_type::max_pool, {2}, "pool");
  n.ops[3].kh = 3;
  n.ops[3].kw = 2;
  expect_error<value_error>(n, {"op 3", "square"});
  n.ops[3].kw = 3;
  n.ops[3].pad_h = n.ops[3].pad_w = 2;  // > kernel / 2
  expect_error<value_error>(n, {"op 3", "padding"});
  n.ops[3].pad_h = n.ops[3].pad_w = 1;
  n.ops[3].stride = 0;
  expect_error<value_error>(n, {"op 3", "stride"});
  n.ops[3] = make_op(op_type::subsample, {2}, "sub");
  n.ops[3].stride = 0;
  expect_error<value_error>(n, {"op 3", "(subsample)", "stride"});
  n.ops[3] = make_op(op_type::linear, {2}, "lin");
  expect_error<value_error>(n, {"op 3", "out_channels"});

  n = small_net();
  n.num_classes = 0;
  expect_error<value_error>(n, {"num_classes"});
  n = small_net();
  n.in_h = 0;
  expect_error<value_error>(n, {"op 0", "input shape"});
}

TEST_CASE("infer_shapes: output checks and duplicate parameter names", "[arch]") {
  network n = small_net();
  n.output = 9;
  expect_error<shape_error>(n, {"output 9", "not an op index"});
  n.output = -1;
  expect_error<shape_error>(n, {"output -1"});
  n.output = 3;
  expect_error<shape_error>(n, {"op 3", "[N, 4]", "[N, 6, 8, 8]"});
  n.output = 4;  // flat [N, 6], but 4 classes
  expect_error<shape_error>(n, {"op 4", "[N, 6]"});
  n = small_net();
  n.ops[5].name = "conv";
  expect_error<value_error>(n, {"op 5", "duplicate parameter name 'conv'", "op 1"});
  n.ops[5].name = "";
  expect_error<value_error>(n, {"op 5", "needs a name"});
  n = small_net();
  n.ops[3].name = "conv";  // relu has no parameters: names may repeat
  infer_shapes(n);
  n.name = "mynet";
  n.ops[3].inputs = {9};
  expect_error<shape_error>(n, {"network 'mynet'", "op 3 'conv' (relu)"});
}

// ------------------------------------------------------------------------------------------------
// Builder and parameters

TEST_CASE("builder: names, rollback, param order", "[arch]") {
  builder b(3, 8, 8, 4);
  const int a = b.conv(b.input(), 4, 3);
  CHECK(b.at(a).name == "op1");
  CHECK(b.at(a).pad_h == 1);  // same padding by default
  const int r = b.relu(a);
  CHECK(b.at(r).name == "op2");
  CHECK_THROWS_AS(b.conv(r, 4, 3, 1, 1, 1, 1, false, "op1"), value_error);  // clashes with the auto name
  CHECK_THROWS_AS(b.batch_norm(r, true, "op1"), value_error);
  CHECK(b.size() == 3);
  CHECK_THROWS_AS(b.relu(7), shape_error);
  CHECK_THROWS_AS(b.channels(7), shape_error);
  const int bn = b.batch_norm(r, false, "bn_plain");  // no parameters: name not reserved
  CHECK_FALSE(b.at(bn).has_params());
  const int bn2 = b.batch_norm(bn, false, "bn_plain");
  const int fc = b.linear(b.flatten(bn2), 4, true, "fc");
  CHECK(b.channels(fc) == 4);
  CHECK_THROWS_AS(b.finish(a), shape_error);
  CHECK_THROWS_AS(b.add_param_order(r, param_role::weight), value_error);
  b.add_param_order(fc);
  b.add_param_order(a, param_role::weight);
  const network n = b.finish(fc, "t");
  CHECK(n.name == "t");
  CHECK(n.output == fc);
  const auto ps = parameters(n);
  REQUIRE(ps.size() == 3);
  CHECK(ps[0].name == "fc.weight");
  CHECK(ps[0].shape == shape({4, 4 * 8 * 8}));
  CHECK(ps[1].name == "fc.bias");
  CHECK(ps[1].role == param_role::bias);
  CHECK(ps[2].name == "op1.weight");
  CHECK(ps[2].shape == shape({4, 3, 3, 3}));
  CHECK(ps[2].op == a);
  CHECK(num_params(n) == 4 * 256 + 4 + 4 * 27);
}

TEST_CASE("parameters: PyTorch shapes, derived order, param_order validation", "[arch]") {
  builder b(4, 6, 6, 3);
  const int dw = b.conv(b.input(), 8, 3, 5, 2, 1, 2, 1, 4, true, "dw");  // grouped, bias
  const int bn = b.batch_norm(dw, true, "bn");
  const int fc = b.linear(b.global_avg_pool(bn), 3, false, "fc");
  network n = b.finish(fc);
  const auto ps = parameters(n);
  REQUIRE(ps.size() == 5);
  CHECK(ps[0].name == "dw.weight");
  CHECK(ps[0].shape == shape({8, 1, 3, 5}));
  CHECK(ps[1].name == "dw.bias");
  CHECK(ps[1].shape == shape({8}));
  CHECK(ps[2].name == "bn.weight");
  CHECK(ps[2].shape == shape({8}));
  CHECK(ps[3].name == "bn.bias");
  CHECK(ps[4].name == "fc.weight");
  CHECK(ps[4].shape == shape({3, 8}));
  CHECK(num_params(n) == 8 * 15 + 8 + 16 + 24);
  CHECK(param_shape(n, {fc, param_role::weight}) == shape({3, 8}));
  CHECK_THROWS_AS(param_shape(n, {fc, param_role::bias}), value_error);

  // Not yet inferred: parameters() infers on a copy.
  network raw = n;
  for (auto& o : raw.ops) o.c = o.h = o.w = 0;
  CHECK(num_params(raw) == num_params(n));

  auto msg_of = [](const network& net) {
    try {
      parameters(net);
    } catch (const value_error& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  network m = n;
  m.param_order = {{bn, param_role::bias}, {dw, param_role::weight}, {dw, param_role::bias}, {bn, param_role::weight},
                   {fc, param_role::weight}};
  const auto mp = parameters(m);
  CHECK(mp[0].name == "bn.bias");
  CHECK(mp[4].name == "fc.weight");
  m.param_order[0] = {42, param_role::weight};
  CHECK(msg_of(m).find("param_order[0] refers to op 42") != std::string::npos);
  m.param_order[0] = {fc, param_role::bias};
  CHECK(msg_of(m).find("op 4 'fc' (linear) has no bias") != std::string::npos);
  m.param_order[0] = {dw, param_role::weight};
  CHECK(msg_of(m).find("listed twice") != std::string::npos);
  m.param_order[0] = {bn, param_role::bias};
  m.param_order.pop_back();
  CHECK(msg_of(m).find("misses the weight of op 4") != std::string::npos);
}

// ------------------------------------------------------------------------------------------------
// Families

TEST_CASE("families build for 1x28x28 and 3x32x32 inputs", "[arch]") {
  for (const auto& name : family_names()) {
    for (int in_c : {1, 3}) {
      const int s = in_c == 1 ? 28 : 32;
      INFO(name << " " << in_c << "x" << s << "x" << s);
      network n = family(name, in_c, s, s, 10);
      CHECK(n.name == name);
      network again = n;
      infer_shapes(again);
      const op& out = n.ops[static_cast<std::size_t>(n.output)];
      CHECK(out.c == 10);
      CHECK(is_flat(out));
      // The op before global pooling is spatial and at least 1x1; parameter names are unique.
      std::set<std::string> names;
      for (const auto& p : parameters(n)) CHECK(names.insert(p.name).second);
      CHECK(num_params(n) > 0);
    }
  }
  try {
    family("resnet50", 3, 32, 32, 10);
    FAIL("no exception");
  } catch (const value_error& e) {
    const std::string m = e.what();
    CHECK(m.find("resnet50") != std::string::npos);
    for (const auto& k : family_names()) CHECK(m.find(k) != std::string::npos);
  }
}

TEST_CASE("families: parameter counts", "[arch]") {
  CHECK(resnet20_formula(3, 16, 10) == 272474);
  CHECK(num_params(resnet20(3, 32, 32, 10)) == 272474);
  CHECK(num_params(resnet20(1, 28, 28, 10)) == resnet20_formula(1, 16, 10));
  CHECK(num_params(resnet20(3, 32, 32, 100, 8)) == resnet20_formula(3, 8, 100));
  // Well-known counts: the CIFAR ResNet-18 / VGG-11-BN (kuangliu/pytorch-cifar),
  // torchvision's resnet18 and mobilenet_v2 (ImageNet), torchvision mobilenet_v2(num_classes=10).
  CHECK(num_params(resnet18(3, 32, 32, 10)) == 11173962);
  CHECK(num_params(resnet18(3, 224, 224, 1000)) == 11689512);
  CHECK(num_params(vgg(3, 32, 32, 10, vgg11_config())) == 9231114);
  CHECK(num_params(mobilenet_v2(3, 224, 224, 1000)) == 3504872);
  CHECK(num_params(mobilenet_v2(3, 32, 32, 10)) == 2236682);
  // Changing the input channels changes only the stem conv.
  CHECK(num_params(resnet18(3, 32, 32, 10)) - num_params(resnet18(1, 28, 28, 10)) == 2 * 9 * 64);
  CHECK(num_params(mobilenet_v2(3, 32, 32, 10)) - num_params(mobilenet_v2(1, 28, 28, 10)) == 2 * 9 * 32);
  // VGG without batch norm: 2 C per conv fewer.
  CHECK(num_params(vgg(3, 32, 32, 10, vgg11_config())) - num_params(vgg(3, 32, 32, 10, vgg11_config(), false)) ==
        2 * (64 + 128 + 256 * 2 + 512 * 4));
}

TEST_CASE("families: structure", "[arch]") {
  const network r = resnet20(3, 32, 32, 10);
  const auto ps = parameters(r);
  CHECK(ps.front().name == "conv1.weight");
  CHECK(ps.back().name == "linear.bias");
  int projections = 0, sums = 0;
  for (const auto& o : r.ops) {
    if (o.type == op_type::conv && o.kh == 1) ++projections;
    if (o.type == op_type::sum) ++sums;
  }
  CHECK(projections == 2);
  CHECK(sums == 9);
  // Spatial sizes at the head: resnet20 8x8 (32) / 7x7 (28); mobilenet 4x4 for both.
  auto pre_gap = [](const network& n) {
    for (const auto& o : n.ops)
      if (o.type == op_type::global_avg_pool) return n.ops[static_cast<std::size_t>(o.inputs[0])];
    return op{};
  };
  CHECK(pre_gap(r).h == 8);
  CHECK(pre_gap(resnet20(1, 28, 28, 10)).h == 7);
  CHECK(pre_gap(mobilenet_v2(3, 32, 32, 10)).h == 4);
  CHECK(pre_gap(mobilenet_v2(1, 28, 28, 10)).h == 4);
  CHECK(pre_gap(mobilenet_v2(3, 224, 224, 10)).h == 7);
  CHECK(pre_gap(vgg(1, 28, 28, 10, vgg11_config())).h == 1);
  const network mb = mobilenet_v2(3, 32, 32, 10);
  int depthwise = 0, residual = 0;
  for (const auto& o : mb.ops) {
    if (o.type == op_type::conv && o.groups > 1 && o.groups == o.out_channels) ++depthwise;
    if (o.type == op_type::sum) ++residual;
  }
  CHECK(depthwise == 17);
  CHECK(residual == 10);
  CHECK(num_params(mobilenet_v2(3, 32, 32, 10, 0.5)) < num_params(mb));
  CHECK_THROWS_AS(mobilenet_v2(3, 32, 32, 10, 0.0), value_error);
  CHECK_THROWS_AS(vgg(3, 32, 32, 10, {kVggPool}), value_error);
  CHECK_THROWS_AS(vgg(3, 32, 32, 10, {64, -1}), value_error);
}

// ------------------------------------------------------------------------------------------------
// JSON

TEST_CASE("json: round trip of the families and a network with every op type", "[arch]") {
  std::vector<network> nets;
  for (const auto& name : family_names()) {
    nets.push_back(family(name, 1, 28, 28, 10));
    nets.push_back(family(name, 3, 32, 32, 10));
  }
  builder b(2, 7, 9, 3);
  const int x = b.input();
  const int c = b.conv(x, 4, 1, 7, 1, 0, 3, 1, 2, true, "c17");
  const int s = b.sum({c, b.zero(c), b.identity(c), b.dropout(c, 0.25)});
  const int cat = b.concat({b.max_pool(s, 3, 1, 1), b.avg_pool(s, 3, 1, 1), b.subsample(s, 1), b.hardswish(s)});
  const int g = b.sigmoid(b.linear(b.relu(b.global_avg_pool(cat)), 16, false, "se"));
  const int y = b.channel_scale(cat, g);
  const int z = b.batch_norm(b.shift(y), false, "bnz");
  const int out = b.linear(b.flatten(b.zero(z, 2)), 3, true, "fc");
  b.add_param_order(out);
  b.add_param_order(c);
  b.add_param_order(g - 1);
  nets.push_back(b.finish(out, "all_ops"));

  temp_dir d;
  for (const auto& n : nets) {
    INFO(n.name);
    const nlohmann::json j = to_json(n);
    CHECK(j["format"] == "ghnq.arch");
    CHECK(j["version"] == 1);
    const network back = from_json(j);
    CHECK(to_json(back) == j);
    CHECK(canonical_hash(back) == canonical_hash(n));
    CHECK(back.param_order.size() == n.param_order.size());
    const auto p0 = parameters(n), p1 = parameters(back);
    REQUIRE(p0.size() == p1.size());
    for (std::size_t i = 0; i < p0.size(); ++i) {
      CHECK(p0[i].name == p1[i].name);
      CHECK(p0[i].shape == p1[i].shape);
    }
    // Through a file (atomic save), and from the text.
    const std::string path = d / (n.name + ".json");
    save_json(n, path);
    CHECK(to_json(load_json(path)) == j);
    CHECK(to_json(from_json(nlohmann::json::parse(j.dump()))) == j);
    save_json(back, path);  // overwrite in place
    CHECK(to_json(load_json(path)) == j);
  }
  for (const auto& e : fs::directory_iterator(d.path)) CHECK(e.path().extension() == ".json");  // no temp files left
}

TEST_CASE("json: defaults for optional fields", "[arch]") {
  const auto j = nlohmann::json::parse(R"({
    "format": "ghnq.arch", "version": 1,
    "input": {"channels": 1, "height": 5, "width": 5}, "num_classes": 2,
    "ops": [{"type": "input"},
            {"type": "conv", "inputs": [0], "name": "c", "out_channels": 3, "kernel": 3},
            {"type": "max_pool", "inputs": [1], "kernel": [2, 2]},
            {"type": "flatten", "inputs": [2]},
            {"type": "linear", "inputs": [3], "name": "fc", "out_channels": 2}],
    "output": 4})");
  const network n = from_json(j);
  CHECK(n.name.empty());
  CHECK(n.ops[1].stride == 1);
  CHECK(n.ops[1].pad_h == 0);
  CHECK(n.ops[1].h == 3);
  CHECK_FALSE(n.ops[1].bias);
  CHECK(n.ops[2].stride == 2);  // PyTorch default: the kernel size
  CHECK(n.ops[2].name == "op2");
  CHECK(n.ops[3].c == 3);
  CHECK(n.ops[4].bias);
  CHECK(num_params(n) == 27 + 6 + 2);
}

TEST_CASE("json: reading errors name the op and the field", "[arch]") {
  const nlohmann::json good = to_json(small_net());
  auto expect = [&](auto mutate, const std::vector<std::string>& fragments) {
    nlohmann::json j = good;
    mutate(j);
    try {
      from_json(j);
    } catch (const error& e) {
      const std::string m = e.what();
      INFO(m);
      for (const auto& f : fragments) CHECK(m.find(f) != std::string::npos);
      return;
    }
    FAIL("no exception; expected " << fragments.front());
  };
  using J = nlohmann::json;
  expect([](J& j) { j["ops"][1]["type"] = "conv3d"; }, {"op 1 'conv'", "field 'type'", "unknown op type \"conv3d\""});
  expect([](J& j) { j["ops"][1]["type"] = 5; }, {"op 1", "field 'type'", "expected a string"});
  expect([](J& j) { j["ops"][1].erase("type"); }, {"op 1", "'type'", "missing"});
  expect([](J& j) { j["ops"][1]["out_channels"] = "16"; }, {"op 1 'conv' (conv)", "'out_channels'", "integer"});
  expect([](J& j) { j["ops"][1]["out_channels"] = 0; }, {"op 1", "'out_channels'", ">= 1"});
  expect([](J& j) { j["ops"][1]["out_channels"] = 1e12; }, {"op 1", "'out_channels'"});
  expect([](J& j) { j["ops"][1]["out_channels"] = 5000000000LL; }, {"op 1", "'out_channels'", "out of range"});
  expect([](J& j) { j["ops"][1].erase("out_channels"); }, {"op 1", "'out_channels'", "missing"});
  expect([](J& j) { j["ops"][1]["kernel"] = {3, 3, 3}; }, {"op 1", "'kernel'", "pair"});
  expect([](J& j) { j["ops"][1]["padding"] = {1, -1}; }, {"op 1", "'padding[1]'", ">= 0"});
  expect([](J& j) { j["ops"][1]["stide"] = 2; }, {"op 1", "'stide'", "unknown field"});
  expect([](J& j) { j["ops"][1]["bias"] = 1; }, {"op 1", "'bias'", "true or false"});
  expect([](J& j) { j["ops"][2]["name"] = 7; }, {"op 2", "'name'", "string"});
  expect([](J& j) { j["ops"][3].erase("inputs"); }, {"op 3", "'inputs'", "missing"});
  expect([](J& j) { j["ops"][3]["inputs"] = {"a"}; }, {"op 3", "'inputs[0]'"});
  expect([](J& j) { j["ops"][3]["inputs"] = {9}; }, {"op 3", "refers to op 9"});
  expect([](J& j) { j["ops"][3] = 1; }, {"op 3", "must be an object"});
  expect([](J& j) { j["ops"][3] = {{"type", "dropout"}, {"inputs", {2}}, {"p", 1.5}}; }, {"op 3", "'p'", "[0, 1)"});
  expect([](J& j) { j["ops"][3] = {{"type", "dropout"}, {"inputs", {2}}}; }, {"op 3", "'p'", "missing"});
  expect([](J& j) { j.erase("num_classes"); }, {"'num_classes'", "missing"});
  expect([](J& j) { j["num_classes"] = 5; }, {"output", "[N, 5]"});
  expect([](J& j) { j["input"]["height"] = 0; }, {"input", "'height'"});
  expect([](J& j) { j["input"].erase("width"); }, {"input", "'width'", "missing"});
  expect([](J& j) { j["format"] = "onnx"; }, {"'format'", "ghnq.arch"});
  expect([](J& j) { j["version"] = 2; }, {"'version'", "unsupported version 2"});
  expect([](J& j) { j["extra"] = true; }, {"'extra'", "unknown field"});
  expect([](J& j) { j["ops"] = J::array(); }, {"'ops'", "non-empty"});
  expect([](J& j) { j["output"] = 2.5; }, {"'output'", "integer"});
  expect([](J& j) { j["param_order"] = {{1, "gamma"}}; }, {"param_order[0][1]", "gamma"});
  expect([](J& j) { j["param_order"] = {{3, "weight"}}; }, {"param_order[0]", "op 3", "no weight"});
  expect([](J& j) { j["param_order"] = {{1, "weight"}}; }, {"param_order misses"});
  expect([](J& j) { j["param_order"] = {1}; }, {"param_order[0]", "expected [op"});
}

TEST_CASE("json: files: corrupted, missing, invalid network", "[arch]") {
  temp_dir d;
  const std::string good = d / "good.json";
  save_json(small_net(), good);
  std::ifstream in(good);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(to_json(load_json(good)) == to_json(small_net()));

  auto expect_io = [](const std::string& path, const std::vector<std::string>& fragments) {
    try {
      load_json(path);
    } catch (const io_error& e) {
      const std::string m = e.what();
      INFO(m);
      CHECK(e.file() == path);
      CHECK(m.find(path) != std::string::npos);
      for (const auto& f : fragments) CHECK(m.find(f) != std::string::npos);
      return;
    }
    FAIL("no io_error for " << path);
  };
  const std::string trunc = d / "truncated.json";
  write_file(trunc, text.substr(0, text.size() / 2));
  expect_io(trunc, {"invalid JSON"});
  expect_io(d / "missing.json", {"cannot open"});

  // A valid document describing an invalid network: channel mismatch at op 1.
  nlohmann::json j = to_json(small_net());
  j["ops"][1]["groups"] = 2;
  const std::string bad = d / "bad_groups.json";
  write_file(bad, j.dump());
  expect_io(bad, {"op 1 'conv' (conv)", "groups = 2"});
  j = to_json(small_net());
  j["ops"][2]["type"] = "layer_norm";
  const std::string unknown = d / "unknown_op.json";
  write_file(unknown, j.dump());
  expect_io(unknown, {"op 2 'bn'", "unknown op type \"layer_norm\""});
  CHECK_THROWS_AS(save_json(small_net(), (d.path / "no_such_dir" / "x.json").string()), io_error);
}

// ------------------------------------------------------------------------------------------------
// Canonical hash

TEST_CASE("canonical_hash: ignores names, sees structure", "[arch]") {
  arch::detail::fnv1a64 f;
  f.byte('a');
  CHECK(f.h == 0xaf63dc4c8601ec8cull);  // FNV-1a 64 test vector

  const network base = small_net();
  const std::uint64_t h = canonical_hash(base);
  // Pinned value: the serialization is part of the split contract and must not drift across
  // platforms or versions (changing it reshuffles train / val / test splits).
  CHECK(h == 0x8cebe4c5c756407cull);
  CHECK(h == canonical_hash(from_json(to_json(base))));

  network renamed = base;
  renamed.name = "other";
  for (auto& o : renamed.ops) o.name += "_x";
  CHECK(canonical_hash(renamed) == h);
  network ordered = base;
  ordered.param_order = {{5, param_role::bias}, {5, param_role::weight}, {2, param_role::weight},
                         {2, param_role::bias}, {1, param_role::bias},   {1, param_role::weight}};
  CHECK(canonical_hash(ordered) == h);
  network junk = base;
  junk.ops[3].stride = 5;  // irrelevant attribute of a relu
  CHECK(canonical_hash(junk) == h);

  std::vector<network> variants;
  auto vary = [&](auto mutate) {
    network n = base;
    mutate(n);
    variants.push_back(n);
  };
  vary([](network& n) { n.ops[1].kh = n.ops[1].kw = 5; });
  vary([](network& n) { n.ops[1].kw = 1; });
  vary([](network& n) { n.ops[1].stride = 2; });
  vary([](network& n) { n.ops[1].out_channels = 7; });
  vary([](network& n) { n.ops[1].bias = false; });
  vary([](network& n) { n.ops[1].dilation = 2; });
  vary([](network& n) { n.ops[1].pad_w = 0; });
  vary([](network& n) { n.ops[1].groups = 3; });
  vary([](network& n) { n.ops[2].bias = false; });
  vary([](network& n) { n.ops[3].type = op_type::sigmoid; });
  vary([](network& n) { n.ops[3].inputs = {1}; });
  vary([](network& n) { n.ops[5].bias = false; });
  vary([](network& n) { n.num_classes = 5; });
  vary([](network& n) { n.in_h = 9; });
  vary([](network& n) { n.in_channels = 1; });
  vary([](network& n) { n.output = 4; });
  vary([](network& n) { n.ops.push_back(n.ops[3]); });
  std::set<std::uint64_t> seen = {h};
  for (const auto& v : variants) CHECK(seen.insert(canonical_hash(v)).second);

  network d1 = base, d2 = base;
  d1.ops[3] = make_op(op_type::dropout, {2}, "d");
  d2.ops[3] = d1.ops[3];
  d1.ops[3].p = 0.1;
  d2.ops[3].p = 0.2;
  CHECK(canonical_hash(d1) != canonical_hash(d2));

  std::set<std::uint64_t> fam;
  for (const auto& name : family_names())
    for (int c : {1, 3}) CHECK(fam.insert(canonical_hash(family(name, c, 28 + 4 * (c == 3), 28 + 4 * (c == 3), 10))).second);
  CHECK(fam.insert(canonical_hash(resnet20(3, 32, 32, 10, 8))).second);
}

TEST_CASE("per-axis conv strides (stride_w): shapes, builder, JSON, hash", "[arch]") {
  builder b(2, 7, 9, 3);
  const int x = b.input();
  // 1x7 kernel, stride (1, 2), padding (0, 3): H = 7, W = (9 + 6 - 6 - 1) / 2 + 1 = 5
  const int c17 = b.conv2(x, 4, 1, 7, 1, 2, 0, 3, 1, 1, false, "c17");
  CHECK(b.at(c17).stride == 1);
  CHECK(b.at(c17).stride_w == 2);
  CHECK(b.at(c17).stride_width() == 2);
  CHECK(b.height(c17) == 7);
  CHECK(b.width(c17) == 5);
  // 7x1 kernel, stride (2, 1), padding (3, 0): H = (7 + 6 - 6 - 1) / 2 + 1 = 4, W = 5
  const int c71 = b.conv2(c17, 6, 7, 1, 2, 1, 3, 0, 1, 2, true, "c71");
  CHECK(b.at(c71).stride == 2);
  CHECK(b.at(c71).stride_w == 1);
  CHECK(b.height(c71) == 4);
  CHECK(b.width(c71) == 5);
  // equal strides are stored as stride_w = 0 (the symmetric form the kh, kw conv produces)
  const int sym = b.conv2(c71, 6, 3, 3, 2, 2, 1, 1, 1, 1, false, "sym");
  CHECK(b.at(sym).stride_w == 0);
  CHECK(b.at(sym).stride_width() == 2);
  CHECK(b.at(b.conv(c71, 6, 3, 3, 2, 1, 1, 1, 1, false, "sym2")).stride_w == 0);
  CHECK(b.height(sym) == 2);
  CHECK(b.width(sym) == 3);
  // vertical stride 1, horizontal 3 on a 3x3 kernel
  const int c33 = b.conv2(x, 2, 3, 3, 1, 3, 1, 1, 1, 1, false, "c33");
  CHECK(b.height(c33) == 7);
  CHECK(b.width(c33) == 3);  // (9 + 2 - 3) / 3 + 1
  const int out = b.linear(b.global_avg_pool(c71), 3, true, "fc");
  const network net = b.finish(out, "strides");

  // infer_shapes from scratch agrees; stride_w < 0 is a value error; a too large horizontal
  // stride still gives size >= 1; the horizontal formula really uses stride_w
  network again = net;
  for (auto& o : again.ops) o.c = o.h = o.w = 0;
  infer_shapes(again);
  for (std::size_t i = 0; i < net.ops.size(); ++i) {
    CHECK(again.ops[i].h == net.ops[i].h);
    CHECK(again.ops[i].w == net.ops[i].w);
  }
  network bad = net;
  bad.ops[static_cast<std::size_t>(c17)].stride_w = -1;
  expect_error<value_error>(bad, {"op 1 'c17' (conv)", "stride_w must be >= 0"});
  network zero_w = net;
  zero_w.ops[static_cast<std::size_t>(c33)].stride_w = 0;  // 0: same as stride (1)
  infer_shapes(zero_w);
  CHECK(zero_w.ops[static_cast<std::size_t>(c33)].w == 9);
  network wide = net;
  wide.ops[static_cast<std::size_t>(c33)].stride_w = 100;
  infer_shapes(wide);
  CHECK(wide.ops[static_cast<std::size_t>(c33)].w == 1);
  CHECK(wide.ops[static_cast<std::size_t>(c33)].h == 7);

  // JSON: "stride_w" only where it differs from "stride"; exact round trip
  const nlohmann::json j = to_json(net);
  CHECK(j["ops"][1]["stride"] == 1);
  CHECK(j["ops"][1]["stride_w"] == 2);
  CHECK(j["ops"][2]["stride"] == 2);
  CHECK(j["ops"][2]["stride_w"] == 1);
  CHECK_FALSE(j["ops"][3].contains("stride_w"));
  CHECK_FALSE(j["ops"][4].contains("stride_w"));
  CHECK_FALSE(to_json(small_net())["ops"][1].contains("stride_w"));
  const network back = from_json(j);
  CHECK(to_json(back) == j);
  CHECK(canonical_hash(back) == canonical_hash(net));
  for (std::size_t i = 0; i < net.ops.size(); ++i) {
    CHECK(back.ops[i].stride_width() == net.ops[i].stride_width());
    CHECK(back.ops[i].w == net.ops[i].w);
  }
  CHECK(to_json(from_json(nlohmann::json::parse(to_json_text(net)))) == j);
  // reading: a stride_w equal to stride is accepted and not written back; bad values name the field
  nlohmann::json same = to_json(small_net());
  same["ops"][1]["stride_w"] = 1;
  CHECK(from_json(same).ops[1].stride_width() == 1);
  CHECK(to_json(from_json(same)) == to_json(small_net()));
  auto read_error = [&](const nlohmann::json& v, const std::vector<std::string>& fragments) {
    nlohmann::json jj = j;
    jj["ops"][1]["stride_w"] = v;
    try {
      from_json(jj);
    } catch (const value_error& e) {
      const std::string m = e.what();
      INFO(m);
      for (const auto& f : fragments) CHECK(m.find(f) != std::string::npos);
      return;
    }
    FAIL("no exception for stride_w = " << v.dump());
  };
  read_error(0, {"op 1 'c17' (conv)", "'stride_w'", ">= 1"});
  read_error(-2, {"op 1", "'stride_w'", ">= 1"});
  read_error("2", {"op 1", "'stride_w'", "integer"});
  nlohmann::json on_pool = to_json(small_net());
  on_pool["ops"][3] = {{"type", "max_pool"}, {"inputs", {2}}, {"kernel", 1}, {"stride_w", 2}};
  CHECK_THROWS_AS(from_json(on_pool), value_error);  // conv only

  // hash: symmetric convs hash as before (the pinned value of small_net holds, and an explicit
  // stride_w equal to stride changes nothing); any distinct horizontal stride is seen
  const network base = small_net();
  const std::uint64_t h = canonical_hash(base);
  CHECK(h == 0x8cebe4c5c756407cull);
  network explicit_w = base;
  explicit_w.ops[1].stride_w = 1;
  CHECK(canonical_hash(explicit_w) == h);
  std::set<std::uint64_t> seen = {h};
  for (int stride : {1, 2})
    for (int sw : {1, 2, 3})
      for (bool bias : {false, true}) {
        network v = base;
        v.ops[1].stride = stride;
        v.ops[1].stride_w = sw;
        v.ops[1].bias = bias;
        if (stride == 1 && sw == 1 && bias) continue;  // that is `base`
        INFO("stride " << stride << " stride_w " << sw << " bias " << bias);
        CHECK(seen.insert(canonical_hash(v)).second);
      }
  // 1x7 at (1, 2) then 7x1 at (2, 1) differs from the single-stride form (1 then 2 both ways)
  network single = net;
  single.ops[static_cast<std::size_t>(c17)].stride_w = 0;
  single.ops[static_cast<std::size_t>(c71)].stride_w = 0;
  CHECK(canonical_hash(single) != canonical_hash(net));
}
