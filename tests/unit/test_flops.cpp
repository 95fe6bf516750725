// FLOP counter of the network IR (arch/flops.hpp): hand-computed counts on a small builder
// network and on ResNet-20, dead ops excluded (builder and DeepNets-1M), training = 3 x forward.
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>

#include "ghnq/arch/builder.hpp"
#include "ghnq/arch/deepnets.hpp"
#include "ghnq/arch/families.hpp"
#include "ghnq/arch/flops.hpp"

using namespace ghnq;
using namespace ghnq::arch;

namespace {

/// 2 x multiply-adds of every conv / linear op, reachable or not (a naive reference).
std::int64_t all_layer_flops(const network& net) {
  std::int64_t f = 0;
  for (const op& o : net.ops) {
    const op& x = o.inputs.empty() ? o : net.ops[static_cast<std::size_t>(o.inputs[0])];
    if (o.type == op_type::conv)
      f += std::int64_t{2} * o.c * o.h * o.w * (x.c / o.groups) * o.kh * o.kw;
    else if (o.type == op_type::linear)
      f += std::int64_t{2} * x.c * o.c;
  }
  return f;
}

/// A 3x16x16 -> 5 network with a strided depthwise conv, a dilated grouped conv, two linear
/// layers and two dead ops (a conv and a linear that do not reach the output).
network small_net() {
  builder b(3, 16, 16, 5);
  const int c1 = b.conv(b.input(), 8, 3, 1, 1, 1, 1, false, "c1");          // 8x16x16
  const int c2 = b.conv(c1, 8, 3, 2, 1, 1, 8, false, "c2");                 // depthwise, 8x8x8
  const int c3 = b.conv(c2, 16, 1, 1, 0, 1, 1, true, "c3");                 // 16x8x8
  b.conv(c2, 32, 3, 1, 1, 1, 1, false, "dead_conv");                        // not used
  const int c4 = b.conv(c3, 16, 3, 1, 2, 2, 2, false, "c4");                // dilation 2, groups 2, 16x8x8
  const int g = b.global_avg_pool(b.relu(b.sum({c3, c4})));
  b.linear(g, 7, true, "dead_fc");                                          // not used
  const int out = b.linear(b.relu(b.linear(g, 12, true, "fc1")), 5, true, "fc2");
  return b.finish(out, "small");
}

}  // namespace

TEST_CASE("flops: hand-computed counts of a small builder network, dead ops excluded", "[arch][flops]") {
  const network net = small_net();
  // multiply-adds per sample (Cout Ho Wo Cin/groups kh kw; in out):
  //   c1 8*16*16*3*9 = 55296, c2 8*8*8*1*9 = 4608, c3 16*8*8*8 = 8192, c4 16*8*8*8*9 = 73728,
  //   fc1 16*12 = 192, fc2 12*5 = 60   -> 142076 MACs = 284152 FLOPs
  //   dead: dead_conv 32*8*8*8*9 = 147456, dead_fc 16*7 = 112
  constexpr std::int64_t kLive = 2 * (55296 + 4608 + 8192 + 73728 + 192 + 60);
  constexpr std::int64_t kDead = 2 * (147456 + 112);
  CHECK(forward_flops(net) == kLive);
  CHECK(forward_flops(net, 4) == 4 * kLive);
  CHECK(training_flops(net, 4) == 12 * kLive);
  CHECK(all_layer_flops(net) == kLive + kDead);  // the dead ops exist and are skipped

  SECTION("a network whose shapes are not filled is inferred on a copy") {
    network raw = net;
    for (op& o : raw.ops) o.c = o.h = o.w = 0;
    CHECK(forward_flops(raw, 3) == 3 * kLive);
    CHECK(raw.ops[1].c == 0);  // the argument is left untouched
  }
}

TEST_CASE("flops: errors", "[arch][flops]") {
  const network net = small_net();
  CHECK_THROWS_AS(forward_flops(net, 0), value_error);
  CHECK_THROWS_AS(training_flops(net, -1), value_error);
  network bad = net;
  bad.output = 1000;
  CHECK_THROWS_AS(forward_flops(bad), shape_error);
  network broken = net;
  for (op& o : broken.ops) o.c = o.h = o.w = 0;
  broken.ops[2].groups = 3;  // 8 channels are not divisible by 3: infer_shapes on the copy throws
  CHECK_THROWS_AS(forward_flops(broken), shape_error);
}

TEST_CASE("flops: ResNet-20 on CIFAR-10 (hand-computed)", "[arch][flops]") {
  // Per image, multiply-adds:
  //   conv1 3->16 @32x32: 16*1024*27                          =    442368
  //   stage 1: 6 x 16->16 3x3 @32x32: 6 * 16*1024*144          =  14155776
  //   stage 2: 16->32 s2 @16x16: 32*256*144 = 1179648; 5 x 32*256*288 = 11796480;
  //            shortcut 1x1 16->32: 32*256*16 = 131072
  //   stage 3: 32->64 s2 @8x8: 64*64*288 = 1179648; 5 x 64*64*576 = 11796480;
  //            shortcut 1x1 32->64: 64*64*32 = 131072
  //   linear 64*10 = 640
  // total 40813184 MACs (the usual 40.55 M of option-A ResNet-20 plus the two 1x1 projections).
  constexpr std::int64_t kMacs = 442368 + 14155776 + 1179648 + 11796480 + 131072 + 1179648 + 11796480 + 131072 + 640;
  static_assert(kMacs == 40813184, "hand sum");
  const network net = resnet20(3, 32, 32, 10);
  CHECK(forward_flops(net) == 2 * kMacs);
  CHECK(forward_flops(net, 64) == 64 * 2 * kMacs);
  CHECK(training_flops(net, 64) == 3 * 64 * 2 * kMacs);
  // 1x28x28: 28 -> 14 -> 7 maps; every op reaches the output, so the naive count agrees
  const network mnist = resnet20(1, 28, 28, 10);
  CHECK(forward_flops(mnist) == all_layer_flops(mnist));
  CHECK(forward_flops(mnist) < forward_flops(net));
}

TEST_CASE("flops: DeepNets-1M modules fed by none ops are not counted", "[arch][flops][deepnets]") {
  // Normal cell: step 0 = none + none (a None state), step 1 = conv_3x3(state 2) (dead: reads the
  // None state) + sep_conv_3x3(state 1); nothing reads state 0, so preprocess0 is dead too.
  net_args a;
  a.geno.normal = {{"none", 0}, {"none", 1}, {"conv_3x3", 2}, {"sep_conv_3x3", 1}};
  a.geno.reduce = {{"max_pool_3x3", 0}, {"conv_1x1", 1}, {"skip_connect", 2}, {"none", 0}};
  a.geno.normal_concat = a.geno.reduce_concat = {2, 3};
  a.n_cells = 4;  // cells 1 and 2 reduce
  a.C = 16;
  a.C_mult = 1;
  a.ks = 3;
  a.stem_type = 0;
  a.stem_pool = false;
  a.norm = "bnorm";
  a.preproc = true;
  a.fc_layers = 1;
  a.fc_dim = 32;
  a.glob_avg = true;
  const network net = deepnets_network(a);
  // Dead convs (2 x Cout Ho Wo Cin/groups kh kw):
  //   cells.0.preprocess0.op.1  1x1 48->16 @32x32: 2*16*1024*48      = 1572864
  //   cells.0._ops.2.op.1       3x3 16->16 @32x32: 2*16*1024*16*9    = 4718592
  //   cells.3.preprocess0.conv_1 / conv_2 (FactorizedReduce, 32->8, 1x1 s2 @8x8): 2 x 2*8*64*32 = 65536
  //   cells.3._ops.2.op.1       3x3 16->16 @8x8:   2*16*64*16*9      = 294912
  constexpr std::int64_t kDead = 1572864 + 4718592 + 65536 + 294912;
  CHECK(forward_flops(net) == all_layer_flops(net) - kDead);
  CHECK(training_flops(net, 2) == 6 * forward_flops(net));
}
