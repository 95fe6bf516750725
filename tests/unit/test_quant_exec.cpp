// Quantization inside target networks: the placement plan (signedness, first/last layer,
// overrides, model size) and the per-op weight / input fake quantization with its gradients.
#include <catch2/catch.hpp>

#include <cmath>
#include <set>

#include "ghnq/arch/builder.hpp"
#include "ghnq/arch/families.hpp"
#include "ghnq/exec/executor.hpp"
#include "ghnq/exec/quantize.hpp"

using namespace ghnq;

namespace {

/// input -> conv a (signed input) -> bn -> relu -> maxpool -> conv b (unsigned) ; bn -> conv c
/// (signed); concat(relu, bn) -> conv d (signed); gap -> flatten -> linear (output, unsigned).
arch::network small_net(int* ids) {
  arch::builder b(1, 8, 8, 10);
  const int a = b.conv(b.input(), 4, 3, 1, 1);
  const int bn = b.batch_norm(a);
  const int r = b.relu(bn);
  const int mp = b.max_pool(r, 3, 1, 1);
  const int cb = b.conv(mp, 4, 1);
  const int cc = b.conv(bn, 4, 1);
  const int cat = b.concat({r, bn});
  const int cd = b.conv(cat, 4, 1);
  const int s = b.sum({cb, cc, cd});
  const int rr = b.relu(s);
  const int gp = b.global_avg_pool(rr);
  const int fl = b.flatten(gp);
  const int lin = b.linear(fl, 10);
  ids[0] = a, ids[1] = cb, ids[2] = cc, ids[3] = cd, ids[4] = lin;
  return b.finish(lin, "small");
}

tensor<double> random_t(const ghnq::shape& s, std::uint64_t seed, double lo = -1, double hi = 1) {
  tensor<double> t(s);
  rng g(seed);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data()[i] = g.uniform(lo, hi);
  return t;
}

}  // namespace

TEST_CASE("quant plan: signedness, first / last layer, overrides and model size", "[quant][plan]") {
  int id[5];
  const auto net = small_net(id);
  exec::quant_config q;
  CHECK(!q.enabled());
  CHECK(q.name() == "FP32");
  for (const auto& p : exec::plan_quantization(net, q)) CHECK(!p.quantized());

  q.w_bits = 4;
  q.a_bits = 4;
  CHECK(q.enabled());
  CHECK(q.name() == "W4A4");
  auto plan = exec::plan_quantization(net, q);
  const auto& pa = plan[static_cast<std::size_t>(id[0])];
  CHECK(pa.first);
  CHECK(pa.a_signed);  // the image
  CHECK(pa.w_bits == 8);
  CHECK(pa.a_bits == 8);
  CHECK(!plan[static_cast<std::size_t>(id[1])].a_signed);  // relu -> max_pool
  CHECK(plan[static_cast<std::size_t>(id[1])].w_bits == 4);
  CHECK(plan[static_cast<std::size_t>(id[2])].a_signed);  // batch norm output
  CHECK(plan[static_cast<std::size_t>(id[3])].a_signed);  // concat of relu and bn
  const auto& pl = plan[static_cast<std::size_t>(id[4])];
  CHECK(pl.last);
  CHECK(!pl.a_signed);  // relu -> gap -> flatten
  CHECK(pl.w_bits == 8);
  for (std::size_t i = 0; i < net.ops.size(); ++i) {
    const bool qop = net.ops[i].type == arch::op_type::conv || net.ops[i].type == arch::op_type::linear;
    CHECK(plan[i].quantized() == qop);
  }
  // Model size: first conv 4*1*3*3 at 8 bits, three 1x1 convs (4*4, 4*4, 4*8) at 4, linear 10*4 at 8.
  CHECK(exec::weight_bits(net, plan) == 36 * 8 + (16 + 16 + 32) * 4 + 40 * 8);

  q.first_last_bits = 0;
  plan = exec::plan_quantization(net, q);
  CHECK(plan[static_cast<std::size_t>(id[0])].w_bits == 4);
  CHECK(plan[static_cast<std::size_t>(id[4])].a_bits == 4);

  q.w_bits_of_op[id[2]] = 2;
  q.a_bits_of_op[id[3]] = 32;
  plan = exec::plan_quantization(net, q);
  CHECK(plan[static_cast<std::size_t>(id[2])].w_bits == 2);
  CHECK(plan[static_cast<std::size_t>(id[3])].a_bits == 0);
  CHECK(plan[static_cast<std::size_t>(id[3])].w_bits == 4);

  // W8 only: activations stay float everywhere, also in the first and last layers.
  exec::quant_config w8;
  w8.w_bits = 8;
  CHECK(w8.name() == "W8A32");
  for (const auto& p : exec::plan_quantization(net, w8)) CHECK(p.a_bits == 0);

  exec::quant_config bad = q;
  bad.w_bits_of_op = {{2, 4}};  // op 2 is the batch norm
  CHECK_THROWS_WITH(exec::plan_quantization(net, bad), Catch::Contains("only conv and linear"));
  bad.w_bits_of_op = {{999, 4}};
  CHECK_THROWS_AS(exec::plan_quantization(net, bad), value_error);
  bad = q;
  bad.a_bits = 33;
  CHECK_THROWS_AS(exec::plan_quantization(net, bad), value_error);
}

TEST_CASE("quant plan: works for the families", "[quant][plan]") {
  exec::quant_config q;
  q.w_bits = 2;
  q.a_bits = 2;
  for (const char* f : {"resnet20", "resnet18", "vgg11", "mobilenet_v2"}) {
    const auto net = arch::family(f, 1, 28, 28, 10);
    const auto plan = exec::plan_quantization(net, q);
    int first = 0, last = 0, low = 0;
    for (const auto& p : plan) {
      first += p.first;
      last += p.last;
      low += p.w_bits == 2;
    }
    INFO(f);
    CHECK(first == 1);
    CHECK(last == 1);
    CHECK(low > 5);
  }
}

TEST_CASE("quantize_weight: per-channel symmetric uniform with STE", "[quant][exec]") {
  exec::op_quant p;
  p.w_bits = 3;
  exec::quant_config q;
  q.w_bits = 3;
  const auto w = autograd::parameter(random_t({4, 3, 3, 3}, 1));
  autograd::tape<double> tp;
  const auto y = exec::quantize_weight(tp, w, p, q, autograd::var<double>());
  for (std::int64_t c = 0; c < 4; ++c) {
    double m = 0;
    for (std::int64_t i = 0; i < 27; ++i) m = std::max(m, std::abs(w.value().data()[c * 27 + i]));
    const double s = m / 3.5;  // (q_max - q_min) / 2 = 3.5 for 3-bit signed codes
    std::set<long> levels;
    for (std::int64_t i = 0; i < 27; ++i) {
      const double x = w.value().data()[c * 27 + i];
      const double want = s * std::clamp(std::nearbyint(x * (1.0 / s)), -4.0, 3.0);
      REQUIRE(y.value().data()[c * 27 + i] == Approx(want).margin(1e-15));
      levels.insert(std::lround(y.value().data()[c * 27 + i] / s));
    }
    CHECK(levels.size() <= 8);
  }
  // STE: the gradient passes where the code is not clipped (the channel maximum clips to q_max = 3).
  tp.backward(y, tensor<double>::full(y.shape(), 1.0));
  for (std::int64_t i = 0; i < w.value().numel(); ++i) {
    const double s_c = [&] {
      const std::int64_t c = i / 27;
      double m = 0;
      for (std::int64_t k = 0; k < 27; ++k) m = std::max(m, std::abs(w.value().data()[c * 27 + k]));
      return m / 3.5;
    }();
    const double code = std::nearbyint(w.value().data()[i] * (1.0 / s_c));
    CHECK(w.grad().data()[i] == (code >= -4 && code <= 3 ? 1.0 : 0.0));
  }
  // Float passes through untouched.
  exec::op_quant fp;
  CHECK(exec::quantize_weight(tp, w, fp, q, autograd::var<double>()).value().data() == w.value().data());
}

TEST_CASE("quantize_weight: LSQ step = exp(f) x LSQ init, gradient into the predicted log-factor", "[quant][exec]") {
  exec::op_quant p;
  p.w_bits = 4;
  exec::quant_config q;
  q.wq = exec::weight_quantizer::lsq;
  const auto wt = random_t({3, 5}, 2);
  const auto w = autograd::parameter(wt);
  const auto f = autograd::parameter(tensor<double>::from({3}, {0.0, std::log(2.0), -0.5}));
  autograd::tape<double> tp;
  const auto y = exec::quantize_weight(tp, w, p, q, f);
  const auto up = random_t({3, 5}, 3);
  tp.backward(y, up);
  // Reference: lsq_quant with the explicit step s_c = exp(f_c) * 2 mean|w_c| / sqrt(7).
  std::vector<double> s(3);
  for (int c = 0; c < 3; ++c) {
    double m = 0;
    for (int i = 0; i < 5; ++i) m += std::abs(wt.data()[c * 5 + i]) / 5;
    s[static_cast<std::size_t>(c)] = std::exp(f.value().data()[c]) * 2 * m / std::sqrt(7.0);
  }
  const auto sv = autograd::parameter(tensor<double>::from({3}, s));
  const auto w2 = autograd::parameter(wt);
  autograd::tape<double> tp2;
  const auto y2 = quant::lsq_quant(tp2, w2, sv, 8, 7, 1.0 / std::sqrt(5.0 * 7));
  tp2.backward(y2, up);
  for (std::int64_t i = 0; i < 15; ++i) {
    CHECK(y.value().data()[i] == Approx(y2.value().data()[i]).margin(1e-14));
    CHECK(w.grad().data()[i] == Approx(w2.grad().data()[i]).margin(1e-14));  // the statistic is a constant
  }
  for (int c = 0; c < 3; ++c) CHECK(f.grad().data()[c] == Approx(sv.grad().data()[c] * s[static_cast<std::size_t>(c)]).margin(1e-12));
}

TEST_CASE("quantize_input: uniform per batch, PACT for unsigned inputs, LSQ fallback for signed", "[quant][exec]") {
  exec::op_quant p;
  p.a_bits = 2;
  p.a_signed = false;
  exec::quant_config q;
  const auto x = autograd::parameter(random_t({2, 3, 4, 4}, 4, 0.0, 3.0));
  autograd::tape<double> tp;
  // Uniform, unsigned: levels {0, 1, 2, 3} * max / 3.
  double mx = 0;
  for (std::int64_t i = 0; i < x.value().numel(); ++i) mx = std::max(mx, x.value().data()[i]);
  auto y = exec::quantize_input(tp, x, p, q, autograd::var<double>());
  for (std::int64_t i = 0; i < x.value().numel(); ++i) {
    const double code = y.value().data()[i] / (mx / 3);
    CHECK(std::abs(code - std::nearbyint(code)) < 1e-9);
    CHECK(code >= -1e-9);
    CHECK(code <= 3 + 1e-9);
  }
  // PACT: alpha = exp(f) * max; with f = log(0.5) everything above max / 2 clips to alpha.
  q.aq = exec::act_quantizer::pact;
  const auto f = autograd::parameter(tensor<double>::from({1}, {std::log(0.5)}));
  y = exec::quantize_input(tp, x, p, q, f);
  std::int64_t clipped = 0;
  for (std::int64_t i = 0; i < x.value().numel(); ++i) {
    CHECK(y.value().data()[i] <= mx / 2 + 1e-12);
    clipped += x.value().data()[i] >= mx / 2;
  }
  tp.backward(y, tensor<double>::full(y.shape(), 1.0));
  // d alpha / d f = alpha; d y / d alpha = 1 for every clipped element.
  CHECK(f.grad().data()[0] == Approx(static_cast<double>(clipped) * mx / 2));
  // Signed inputs with PACT use LSQ: negative values survive.
  p.a_signed = true;
  const auto xs = autograd::parameter(random_t({2, 8}, 5));
  autograd::tape<double> tp2;
  const auto ys = exec::quantize_input(tp2, xs, p, q, autograd::var<double>());
  bool negative = false;
  for (std::int64_t i = 0; i < ys.value().numel(); ++i) negative = negative || ys.value().data()[i] < 0;
  CHECK(negative);
}

TEST_CASE("quantize_weight / quantize_input: binary, ternary and noise", "[quant][exec]") {
  exec::op_quant p;
  p.w_bits = 1;
  p.a_bits = 4;
  exec::quant_config q;
  q.wq = exec::weight_quantizer::binary;
  const auto w = autograd::parameter(random_t({2, 6}, 6));
  autograd::tape<double> tp;
  auto y = exec::quantize_weight(tp, w, p, q, autograd::var<double>());
  for (int c = 0; c < 2; ++c) {
    double m = 0;
    for (int i = 0; i < 6; ++i) m += std::abs(w.value().data()[c * 6 + i]) / 6;
    for (int i = 0; i < 6; ++i) CHECK(std::abs(y.value().data()[c * 6 + i]) == Approx(m));
  }
  q.wq = exec::weight_quantizer::ternary;
  y = exec::quantize_weight(tp, w, p, q, autograd::var<double>());
  for (int c = 0; c < 2; ++c) {
    std::set<long> lv;
    double m = 0;
    for (int i = 0; i < 6; ++i) m += std::abs(w.value().data()[c * 6 + i]) / 6;
    for (int i = 0; i < 6; ++i) lv.insert(std::lround(y.value().data()[c * 6 + i] / (1.4 * m)));
    for (long l : lv) CHECK(std::abs(l) <= 1);
  }
  // Noise: seeded, within half a step of x, and not the rounded value.
  q.noise = true;
  q.aq = exec::act_quantizer::uniform;
  p.a_signed = true;
  const auto x = autograd::parameter(random_t({4, 16}, 7));
  rng g1(3), g2(3);
  const auto n1 = exec::quantize_input(tp, x, p, q, autograd::var<double>(), &g1);
  const auto n2 = exec::quantize_input(tp, x, p, q, autograd::var<double>(), &g2);
  q.noise = false;
  const auto r = exec::quantize_input(tp, x, p, q, autograd::var<double>());
  double mx = 0;
  for (std::int64_t i = 0; i < x.value().numel(); ++i) mx = std::max(mx, std::abs(x.value().data()[i]));
  const double s = mx / 7.5;
  bool differs = false;
  for (std::int64_t i = 0; i < x.value().numel(); ++i) {
    CHECK(n1.value().data()[i] == n2.value().data()[i]);
    CHECK(std::abs(n1.value().data()[i] - x.value().data()[i]) <= s / 2 + 1e-12);
    differs = differs || n1.value().data()[i] != r.value().data()[i];
  }
  CHECK(differs);
}

TEST_CASE("executor: quantized forward = the same network with manually fake-quantized weights and inputs",
          "[quant][exec]") {
  int id[5];
  const auto net = small_net(id);
  exec::executor<backend::cpu_t, double> ex(net);
  rng g(3);
  auto ps = ex.init_parameters(g);
  const autograd::var<double> x(random_t({4, 1, 8, 8}, 8));
  exec::quant_config q;
  q.w_bits = 4;
  q.a_bits = 4;
  autograd::tape<double> tp;
  exec::run_options ro;
  ro.quant = &q;
  const auto yq = ex.forward(tp, x, ps, ro);
  const auto yf = ex.forward(tp, x, ps);
  // Reference: the first conv with its input and weight quantized at 8 bits (first layer) by hand.
  const auto plan = exec::plan_quantization(net, q);
  const auto& p0 = plan[static_cast<std::size_t>(id[0])];
  const auto xin = exec::quantize_input(tp, x, p0, q, autograd::var<double>());
  bool moved = false;
  for (std::int64_t i = 0; i < x.value().numel(); ++i) moved = moved || xin.value().data()[i] != x.value().data()[i];
  CHECK(moved);
  double diff = 0;
  for (std::int64_t i = 0; i < yq.value().numel(); ++i) diff += std::abs(yq.value().data()[i] - yf.value().data()[i]);
  CHECK(diff > 1e-6);  // quantization changes the logits
  // Every weight the executor sees is on the 4-bit (or 8-bit) grid: compare with a network whose
  // parameters are pre-quantized and whose activations are quantized the same way.
  auto pq = ps;
  for (const auto& info : ex.params()) {
    const auto op = static_cast<std::size_t>(info.op);
    if (info.role != arch::param_role::weight || !plan[op].quantized()) continue;
    const std::size_t k = static_cast<std::size_t>(&info - ex.params().data());
    pq[k] = autograd::var<double>(exec::quantize_weight(tp, ps[k], plan[op], q, autograd::var<double>()).value(), false);
  }
  exec::quant_config acts_only = q;
  acts_only.w_bits = 32;
  exec::run_options ra;
  ra.quant = &acts_only;
  const auto ym = ex.forward(tp, x, pq, ra);
  for (std::int64_t i = 0; i < yq.value().numel(); ++i) CHECK(ym.value().data()[i] == Approx(yq.value().data()[i]).margin(1e-9));
}

TEST_CASE("executor: quantized calibration takes BN statistics through the quantized network", "[quant][exec]") {
  const auto net = arch::family("resnet20", 1, 12, 12, 10);
  exec::executor<backend::cpu_t, double> ex(net);
  rng g(4);
  auto ps = ex.init_parameters(g);
  const auto x = autograd::var<double>(random_t({8, 1, 12, 12}, 9));
  exec::quant_config q;
  q.w_bits = q.a_bits = 2;
  q.first_last_bits = 0;  // the stem conv at 2 bits too
  const auto plan = exec::plan_quantization(net, q);
  const auto& stem_info = ex.params()[0];
  REQUIRE(stem_info.role == arch::param_role::weight);
  const auto stem_op = static_cast<std::size_t>(stem_info.op);
  REQUIRE(plan[stem_op].quantized());
  autograd::tape<double> tp;
  autograd::no_grad<autograd::tape<double>> ng(tp);
  // The stem conv's output on the quantized input with the quantized weight, computed directly.
  const auto xq = exec::quantize_input(tp, x, plan[stem_op], q, autograd::var<double>());
  const auto wq = exec::quantize_weight(tp, ps[0], plan[stem_op], q, autograd::var<double>());
  const auto stem = nn::conv2d(tp, xq, wq, autograd::var<double>(), nn::conv2d_params::square(1, 1));
  const auto stem_f = nn::conv2d(tp, x, ps[0], autograd::var<double>(), nn::conv2d_params::square(1, 1));
  const std::int64_t hw = 144;
  double max_gap = 0;  // between the quantized and the float statistics
  ex.calibrate(ps, std::vector<autograd::var<double>>{x}, &q);
  for (std::int64_t c = 0; c < stem.shape()[1]; ++c) {
    double s = 0, sf = 0;
    for (std::int64_t n = 0; n < 8; ++n)
      for (std::int64_t i = 0; i < hw; ++i) {
        s += stem.value().select(n).select(c).flat(i);
        sf += stem_f.value().select(n).select(c).flat(i);
      }
    CHECK(ex.bn_states()[0].running_mean.flat(c) == Approx(s / (8 * hw)).epsilon(1e-9));
    max_gap = std::max(max_gap, std::abs(s - sf) / (8 * hw));
  }
  CHECK(max_gap > 1e-3);  // 2-bit quantization moves the statistics: the check above can tell them apart
  // Without a config (or a disabled one) calibration is the float one.
  ex.calibrate(ps, std::vector<autograd::var<double>>{x});
  const auto float_mean = ex.bn_states()[0].running_mean.clone();
  exec::quant_config off;
  ex.calibrate(ps, std::vector<autograd::var<double>>{x}, &off);
  for (std::int64_t c = 0; c < float_mean.numel(); ++c)
    CHECK(ex.bn_states()[0].running_mean.flat(c) == float_mean.flat(c));
}

TEST_CASE("executor: BN folding equals running-statistics evaluation in float", "[quant][exec]") {
  for (const char* f : {"resnet20", "mobilenet_v2"}) {
    const auto net = arch::family(f, 1, 12, 12, 10);
    exec::executor<backend::cpu_t, double> ex(net);
    rng g(4);
    auto ps = ex.init_parameters(g);
    for (auto& p : ps)  // non-trivial BN affine parameters
      for (std::int64_t i = 0; i < p.value().numel(); ++i) p.value().data()[i] += g.uniform(-0.1, 0.1);
    std::vector<autograd::var<double>> calib = {autograd::var<double>(random_t({8, 1, 12, 12}, 9)),
                                                autograd::var<double>(random_t({8, 1, 12, 12}, 10))};
    ex.calibrate(ps, calib);
    autograd::tape<double> tp;
    autograd::no_grad<autograd::tape<double>> ng(tp);
    exec::run_options rs;
    rs.bn = exec::bn_mode::running_stats;
    const auto x = autograd::var<double>(random_t({3, 1, 12, 12}, 11));
    const auto y = ex.forward(tp, x, ps, rs);
    rs.fold_bn = true;
    const auto yf = ex.forward(tp, x, ps, rs);
    INFO(f);
    for (std::int64_t i = 0; i < y.value().numel(); ++i) CHECK(yf.value().data()[i] == Approx(y.value().data()[i]).margin(1e-9));
    exec::run_options bad;
    bad.fold_bn = true;  // batch statistics
    CHECK_THROWS_AS(ex.forward(tp, x, ps, bad), value_error);
  }
}
