// Integer export and the integer-only executor: code packing, fixed-point multipliers, the int
// convolution kernel, int_model files (round trip and every kind of corruption), export rules
// (equal to the executor's fake quantization), per-op exactness of the integer graph, and
// integer vs fake-quant agreement on sampled networks at W8A8 / W4A4 / W2A2.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <unistd.h>

#include "ghnq/arch/builder.hpp"
#include "ghnq/arch/families.hpp"
#include "ghnq/arch/sampler.hpp"
#include "ghnq/exec/int_executor.hpp"

using namespace ghnq;

namespace {

tensor<float> randn(const ghnq::shape& s, std::uint64_t seed, double sd = 1.0) {
  tensor<float> t(s);
  rng g(seed);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<float>(g.normal(0.0, sd));
  return t;
}

std::vector<tensor<float>> calib_of(const arch::network& net, int k, std::int64_t batch, std::uint64_t seed) {
  std::vector<tensor<float>> out;
  for (int i = 0; i < k; ++i) out.push_back(randn({batch, net.in_channels, net.in_h, net.in_w}, seed + static_cast<std::uint64_t>(i)));
  return out;
}

/// He-initialized parameters with non-trivial BN affine parameters.
std::vector<autograd::var<float>> params_of(const arch::network& net, std::uint64_t seed) {
  exec::executor<backend::cpu_t, float> ex(net);
  rng g(seed);
  auto ps = ex.init_parameters(g);
  for (std::size_t k = 0; k < ps.size(); ++k) {
    const auto& info = ex.params()[k];
    if (net.ops[static_cast<std::size_t>(info.op)].type != arch::op_type::batch_norm) continue;
    for (std::int64_t i = 0; i < ps[k].value().numel(); ++i)
      ps[k].value().data()[i] += static_cast<float>(g.uniform(-0.2, 0.2));
  }
  return ps;
}

/// Every op type the integer executor supports, with a folded and an unfolded BN, padding, groups,
/// dilation, per-axis strides, an SE gate (hardswish + channel_scale), zero / shift / subsample.
arch::network all_ops_net(bool with_sigmoid = false) {
  arch::builder b(2, 12, 12, 10);
  const int c1 = b.conv2(b.input(), 8, 3, 3, 1, 2, 1, 1, 1, 1, true, "c1");  // 12x6, signed input
  const int r1 = b.relu(b.batch_norm(c1, true, "bn1"));                       // folded
  const int mp = b.max_pool(r1, 3, 1, 1, "mp");
  const int ap = b.avg_pool(r1, 3, 1, 1, "ap");
  const int bn2 = b.batch_norm(b.concat({mp, ap}, "cat"), true, "bn2");        // not folded
  const int gconv = b.conv(bn2, 16, 3, 1, 1, 1, 2, false, "grouped");
  const int dw = b.conv(gconv, 16, 3, 1, 2, 2, 16, false, "depthwise");        // dilation 2
  const int h = b.hardswish(dw, "hs");
  const int f1 = b.linear(b.global_avg_pool(h, "squeeze"), 8, true, "fc1");
  const int f2 = b.linear(b.relu(f1, "fc_relu"), 16, true, "fc2");
  const int gate = with_sigmoid ? b.sigmoid(f2, "gate") : b.hardswish(f2, "gate");
  const int cs = b.channel_scale(h, gate, "mul");
  const int sm = b.identity(b.sum({cs, b.zero(cs, 1, "none"), dw}, "add"), "skip");
  const int c3 = b.conv(b.shift(sm, "shift"), 8, 1, 2, 0, 1, 1, true, "c3");  // 11x5 -> 6x3
  const int cat2 = b.concat({c3, b.subsample(sm, 2, "stride")}, "cat2");
  const int out = b.linear(b.dropout(b.flatten(b.relu(cat2, "r2"), "flat"), 0.5, "drop"), 10, true, "classifier");
  return b.finish(out, "all_ops");
}

/// Small DeepNets-1M test-split networks (C = 8, 1 x 16 x 16, few cells).
std::vector<arch::network> sampled_nets(int count, std::uint64_t seed) {
  arch::sampler_options so;
  so.in_channels = 1;
  so.in_h = so.in_w = 16;
  arch::sampler s(so, seed);
  std::vector<arch::network> out;
  for (int i = 0; static_cast<int>(out.size()) < count; ++i) {
    auto a = s.next(arch::split::test);
    a.C = 8;
    a.fc_dim = 32;
    a.n_cells = 2 + i % 2;
    try {
      auto net = s.build(a);
      net.name = "sampled-" + std::to_string(i);
      out.push_back(std::move(net));
    } catch (const value_error&) {  // fewer cells can leave the output cut off by `none` ops
    }
  }
  return out;
}

exec::quant_config qc(const char* name, exec::weight_quantizer wq = exec::weight_quantizer::uniform,
                      exec::act_quantizer aq = exec::act_quantizer::uniform) {
  exec::quant_config base;
  base.wq = wq;
  base.aq = aq;
  return exec::parse_quant_name(name, base);
}

/// Per-op check of the integer graph: every op's int32 value (dequantized) against the float
/// reference op evaluated on the dequantized integer values of its inputs (a layer gets the codes the
/// integer executor requantized its input to). Returns the worst error in units of the local
/// tolerance: tensor_scale[op] (rounding into the int32 value) + half the largest bias step
/// w_scale[c] a_scale 2^-bias_shift (int32 bias rounding) + 2e-6 max |value| (float rounding of the reference).
double local_error(const exec::int_model& m, const tensor<float>& x) {
  const auto& net = m.net;
  const exec::int_executor ie(m);
  const exec::fake_quant_reference ref(m);
  const std::int64_t nb = x.dim(0);
  std::vector<std::vector<std::int32_t>> iv(net.ops.size());
  ie.forward_int(x, nullptr, [&](int op, const std::vector<std::int32_t>& v) { iv[static_cast<std::size_t>(op)] = v; });
  double worst = 0.0;
  for (std::size_t i = 1; i < net.ops.size(); ++i) {
    if (iv[i].empty()) continue;
    const auto& o = net.ops[i];
    std::vector<tensor<float>> ins;
    for (int in : o.inputs) {
      const auto& io = net.ops[static_cast<std::size_t>(in)];
      const ghnq::shape s = in == 0 ? ghnq::shape{nb, net.in_channels, net.in_h, net.in_w}
                            : io.h == 0 && io.w == 0 ? ghnq::shape{nb, io.c}
                                                     : ghnq::shape{nb, io.c, io.h, io.w};
      tensor<float> t(s);
      REQUIRE(static_cast<std::int64_t>(iv[static_cast<std::size_t>(in)].size()) == t.numel());
      for (std::int64_t k = 0; k < t.numel(); ++k)
        t.data()[k] = static_cast<float>(iv[static_cast<std::size_t>(in)][static_cast<std::size_t>(k)]) *
                      m.tensor_scale[static_cast<std::size_t>(in)];
      ins.push_back(std::move(t));
    }
    double tol = m.tensor_scale[i];
    if (const auto* l = m.layer_of(static_cast<int>(i))) {
      const int in = o.inputs[0];
      const auto fm = exec::quantize_multiplier(static_cast<double>(m.tensor_scale[static_cast<std::size_t>(in)]) / l->a_scale);
      for (std::int64_t k = 0; k < ins[0].numel(); ++k) {
        const std::int64_t q = std::min<std::int64_t>(
            std::max<std::int64_t>(exec::apply_multiplier(iv[static_cast<std::size_t>(in)][static_cast<std::size_t>(k)], fm) +
                                       l->a_zero_point,
                                   l->a_qmin()),
            l->a_qmax());
        ins[0].data()[k] = static_cast<float>(q - l->a_zero_point) * l->a_scale;
      }
      double mw = 0.0;
      for (float w : l->w_scale) mw = std::max(mw, static_cast<double>(w));
      tol += std::ldexp(0.5 * mw * l->a_scale, -l->bias_shift);
    }
    const auto r = ref.op_value(static_cast<int>(i), ins, nb);
    REQUIRE(static_cast<std::int64_t>(iv[i].size()) == r.numel());
    double mx = 0.0;
    for (std::int64_t k = 0; k < r.numel(); ++k) mx = std::max(mx, static_cast<double>(std::abs(r.data()[k])));
    tol += 2e-6 * mx;
    for (std::int64_t k = 0; k < r.numel(); ++k) {
      const double d = std::abs(static_cast<double>(iv[i][static_cast<std::size_t>(k)]) * m.tensor_scale[i] - r.data()[k]);
      if (d / tol > worst) {
        worst = d / tol;
        if (worst > 1.0) UNSCOPED_INFO("op " << i << " (" << arch::to_string(o.type) << ") element " << k << ": integer "
                                             << iv[i][static_cast<std::size_t>(k)] * m.tensor_scale[i] << ", reference "
                                             << r.data()[k]);
      }
    }
  }
  return worst;
}

struct agreement {
  double argmax = 0.0;    ///< fraction of images with the same arg-max
  double rel_mean = 0.0;  ///< mean |a - b| / mean |a|
};
agreement compare(const tensor<float>& a, const tensor<float>& b) {
  REQUIRE(a.shape() == b.shape());
  agreement r;
  double d = 0.0, s = 0.0;
  for (std::int64_t k = 0; k < a.numel(); ++k) {
    d += std::abs(static_cast<double>(a.data()[k]) - b.data()[k]);
    s += std::abs(static_cast<double>(a.data()[k]));
  }
  r.rel_mean = d / std::max(s, 1e-30);
  std::int64_t same = 0;
  for (std::int64_t i = 0; i < a.dim(0); ++i) {
    std::int64_t ia = 0, ib = 0;
    for (std::int64_t c = 1; c < a.dim(1); ++c) {
      if (a(i, c) > a(i, ia)) ia = c;
      if (b(i, c) > b(i, ib)) ib = c;
    }
    same += ia == ib;
  }
  r.argmax = static_cast<double>(same) / static_cast<double>(a.dim(0));
  return r;
}

/// Rewrites a safetensors file with a change to its records / metadata.
void rewrite(const std::string& in, const std::string& out,
             const std::function<void(std::vector<io::st_tensor>&, std::map<std::string, std::string>&)>& change) {
  const auto f = io::safetensors_file::load(in);
  std::vector<io::st_tensor> recs;
  for (const auto& n : f.names()) recs.push_back(f.record(n));
  auto meta = f.metadata();
  change(recs, meta);
  io::safetensors_writer w;
  for (auto& r : recs) w.add(r);
  for (const auto& [k, v] : meta) w.set_metadata(k, v);
  w.save(out);
}

io::st_tensor* find_rec(std::vector<io::st_tensor>& recs, const std::string& name) {
  for (auto& r : recs)
    if (r.name == name) return &r;
  FAIL("no record " << name);
  return nullptr;
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("ghnq_test_int_" + std::to_string(::getpid()) + "_" + name)).string();
}

/// Expects `f` to throw io_error whose message names `path` and contains `what`.
template <class F>
void expect_io_error(F&& f, const std::string& path, const std::string& what) {
  try {
    f();
    FAIL("no exception; expected io_error containing '" << what << "'");
  } catch (const io_error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find(path) != std::string::npos);
    CHECK(msg.find(what) != std::string::npos);
  }
}

}  // namespace

// ---- packing --------------------------------------------------------------------------------------

TEST_CASE("int codes: pack / unpack round trips for 2..8 bits, including negative codes", "[int][pack]") {
  CHECK(exec::pack_codes({-8, 7, 3}, 4) == std::vector<std::uint8_t>{0x78, 0x03});
  CHECK(exec::pack_codes({-2, -1, 0, 1}, 2) == std::vector<std::uint8_t>{0x4E});
  CHECK(exec::pack_codes({-128, 127, -1}, 8) == std::vector<std::uint8_t>{0x80, 0x7F, 0xFF});
  rng g(1);
  for (int bits = 2; bits <= 8; ++bits) {
    for (std::int64_t n : {0, 1, 2, 3, 4, 5, 7, 8, 33, 1000}) {
      const int lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
      std::vector<std::int8_t> codes(static_cast<std::size_t>(n));
      for (auto& c : codes) c = static_cast<std::int8_t>(lo + static_cast<int>(g.uniform(0.0, 1.0) * (hi - lo + 1) * 0.9999));
      if (n >= 2) {
        codes[0] = static_cast<std::int8_t>(lo);
        codes[1] = static_cast<std::int8_t>(hi);
      }
      const auto bytes = exec::pack_codes(codes, bits);
      const int per = bits > 4 ? 1 : bits > 2 ? 2 : 4;
      CHECK(static_cast<std::int64_t>(bytes.size()) == (n + per - 1) / per);
      CHECK(exec::packed_bytes(n, bits) == static_cast<std::int64_t>(bytes.size()));
      CHECK(exec::unpack_codes(bytes.data(), static_cast<std::int64_t>(bytes.size()), n, bits) == codes);
    }
  }
  CHECK_THROWS_AS(exec::pack_codes({8}, 4), value_error);
  CHECK_THROWS_AS(exec::pack_codes({-3}, 2), value_error);
  CHECK_THROWS_AS(exec::pack_codes({4}, 3), value_error);
  const std::uint8_t seven = 0x07;  // 3-bit codes live in nibbles: 7 is not a 3-bit code
  CHECK_THROWS_WITH(exec::unpack_codes(&seven, 1, 1, 3), Catch::Contains("outside"));
  const std::uint8_t pad = 0x10;  // one 4-bit code, non-zero padding
  CHECK_THROWS_WITH(exec::unpack_codes(&pad, 1, 1, 4), Catch::Contains("unused bits"));
  CHECK_THROWS_AS(exec::unpack_codes(&pad, 1, 3, 4), value_error);  // 3 nibbles need 2 bytes
}

// ---- fixed-point arithmetic -----------------------------------------------------------------------

TEST_CASE("int arithmetic: fixed-point multipliers round exactly and stay within their bound", "[int][fixed]") {
  rng g(2);
  for (int t = 0; t < 2000; ++t) {
    const double M = std::ldexp(1.0 + g.uniform(0.0, 1.0), static_cast<int>(g.uniform(-40.0, 20.0)));
    const auto f = exec::quantize_multiplier(M);
    REQUIRE(f.m >= (1 << 30));
    CHECK(std::abs(f.value() - M) <= M * std::ldexp(1.0, -31));
    for (int r = 0; r < 20; ++r) {
      const auto x = static_cast<std::int64_t>(g.uniform(-2147483648.0, 2147483647.0));
      const std::int64_t y = exec::apply_multiplier(x, f);
      // independent exact reference: |x m| < 2^62 fits a long double mantissa; std::round rounds half away
      const long double exact = std::ldexp(static_cast<long double>(x) * f.m, -f.shift);
      CHECK(static_cast<long double>(y) == std::round(exact));
      CHECK(std::abs(static_cast<long double>(y) - static_cast<long double>(x) * M) <=
            0.5L + std::abs(static_cast<long double>(x)) * M * std::ldexp(1.0L, -31) + 1e-9L);
      CHECK(exec::apply_multiplier(-x, f) == -y);
      if (x >= -2147483647 && x <= 2147483647)  // the 64-bit fast path for int32 values gives the same
        CHECK(exec::apply_multiplier(static_cast<std::int32_t>(x), f) == y);
      // 64-bit inputs (products up to 2^61, below the int64 saturation)
      const auto xw = static_cast<std::int64_t>(g.uniform(-1.0, 1.0) * std::ldexp(1.0, 61) / std::max(1.0, 2.0 * M));
      const long double yw = static_cast<long double>(exec::apply_multiplier(xw, f));
      CHECK(std::abs(yw - static_cast<long double>(xw) * M) <= 0.5L + std::abs(static_cast<long double>(xw)) * M * std::ldexp(1.0L, -31) + 1e-6L);
      CHECK(exec::apply_multiplier_wide(static_cast<exec::int128_t>(xw), f) == exec::apply_multiplier(xw, f));
    }
  }
  // exact cases
  const auto one = exec::quantize_multiplier(1.0);
  for (std::int64_t x : {0LL, 1LL, -1LL, 123456789LL, -2147483648LL, 2147483647LL}) CHECK(exec::apply_multiplier(x, one) == x);
  const auto half = exec::quantize_multiplier(0.5);
  CHECK(exec::apply_multiplier(3, half) == 2);    // 1.5 -> 2 (half away from zero)
  CHECK(exec::apply_multiplier(-3, half) == -2);  // -1.5 -> -2
  CHECK(exec::apply_multiplier(5, half) == 3);
  CHECK(exec::quantize_multiplier(0.0).m == 0);
  CHECK(exec::quantize_multiplier(1e-40).m == 0);  // below 2^-95: zero
  CHECK_THROWS_AS(exec::quantize_multiplier(std::ldexp(1.0, 31)), value_error);
  CHECK_THROWS_AS(exec::quantize_multiplier(-1.0), value_error);
  CHECK(exec::apply_multiplier_wide(-(static_cast<exec::int128_t>(1) << 90), one) == std::numeric_limits<std::int64_t>::min());
  CHECK(exec::saturate_i32(std::int64_t{1} << 40) == 2147483647);
  CHECK(exec::saturate_i32(-(std::int64_t{1} << 40)) == -2147483647 - 1);
  CHECK(exec::rounded_div(3, 2) == 2);
  CHECK(exec::rounded_div(-3, 2) == -2);
  CHECK(exec::rounded_div(-1, 3) == 0);
  CHECK(exec::rounded_div(7, 9) == 1);
}

// ---- the int conv kernel --------------------------------------------------------------------------

TEST_CASE("int arithmetic: int8 x int8 -> int32 convolution equals a naive loop", "[int][conv]") {
  struct cfg {
    std::int64_t n, c, h, w, o;
    int kh, kw, sh, sw, ph, pw, dil, groups;
  };
  const std::vector<cfg> cases = {{2, 3, 7, 6, 4, 3, 3, 1, 1, 1, 1, 1, 1},  {3, 4, 9, 8, 6, 3, 5, 2, 1, 1, 2, 1, 2},
                                  {2, 6, 8, 8, 6, 3, 3, 1, 1, 2, 2, 2, 6},  {1, 5, 5, 5, 7, 1, 1, 1, 1, 0, 0, 1, 1},
                                  {2, 8, 6, 7, 4, 1, 7, 1, 2, 0, 3, 1, 1},  {4, 16, 1, 1, 10, 1, 1, 1, 1, 0, 0, 1, 1},
                                  {1, 4, 10, 10, 8, 5, 5, 2, 2, 2, 2, 1, 4},  {2, 4, 9, 7, 4, 3, 3, 2, 3, 1, 1, 1, 4},
                                  {1, 3, 6, 9, 3, 5, 5, 1, 2, 4, 4, 2, 3}};
  rng g(3);
  for (const auto& k : cases) {
    exec::int_conv_geometry geo;
    geo.n = k.n, geo.c = k.c, geo.h = k.h, geo.w = k.w, geo.o = k.o;
    geo.kh = k.kh, geo.kw = k.kw, geo.stride_h = k.sh, geo.stride_w = k.sw, geo.pad_h = k.ph, geo.pad_w = k.pw;
    geo.dilation = k.dil, geo.groups = k.groups;
    geo.ho = (k.h + 2 * k.ph - k.dil * (k.kh - 1) - 1) / k.sh + 1;
    geo.wo = (k.w + 2 * k.pw - k.dil * (k.kw - 1) - 1) / k.sw + 1;
    const std::int64_t cg = k.c / k.groups, og = k.o / k.groups;
    std::vector<std::int16_t> x(static_cast<std::size_t>(k.n * k.c * k.h * k.w)), w(static_cast<std::size_t>(k.o * cg * k.kh * k.kw));
    std::vector<std::int32_t> bias(static_cast<std::size_t>(k.o));
    for (auto& v : x) v = static_cast<std::int16_t>(g.uniform(-255.0, 255.99));
    for (auto& v : w) v = static_cast<std::int16_t>(g.uniform(-128.0, 127.99));
    for (auto& v : bias) v = static_cast<std::int32_t>(g.uniform(-1e6, 1e6));
    std::vector<std::int32_t> y(static_cast<std::size_t>(k.n * k.o * geo.ho * geo.wo));
    exec::int_conv2d(x.data(), w.data(), bias.data(), y.data(), geo);
    bool all = true;
    for (std::int64_t n = 0; n < k.n; ++n)
      for (std::int64_t o = 0; o < k.o; ++o)
        for (std::int64_t i = 0; i < geo.ho; ++i)
          for (std::int64_t j = 0; j < geo.wo; ++j) {
            std::int64_t s = bias[static_cast<std::size_t>(o)];
            const std::int64_t gi = o / og;
            for (std::int64_t ci = 0; ci < cg; ++ci)
              for (int ky = 0; ky < k.kh; ++ky)
                for (int kx = 0; kx < k.kw; ++kx) {
                  const std::int64_t yy = i * k.sh - k.ph + ky * k.dil, xx = j * k.sw - k.pw + kx * k.dil;
                  if (yy < 0 || yy >= k.h || xx < 0 || xx >= k.w) continue;
                  s += std::int64_t{w[static_cast<std::size_t>(((o * cg + ci) * k.kh + ky) * k.kw + kx)]} *
                       x[static_cast<std::size_t>(((n * k.c + gi * cg + ci) * k.h + yy) * k.w + xx)];
                }
            all = all && y[static_cast<std::size_t>(((n * k.o + o) * geo.ho + i) * geo.wo + j)] == s;
          }
    INFO("case c=" << k.c << " o=" << k.o << " k=" << k.kh << "x" << k.kw << " groups=" << k.groups);
    CHECK(all);
  }
}

// ---- export rules -----------------------------------------------------------------------------------

TEST_CASE("int export: the per-batch reference equals the executor's fake quantization (BN folded)", "[int][export]") {
  // The exported weights are exactly the executor's fake-quantized (folded) weights: running the
  // exported model with the executor's per-batch activation rule reproduces executor::forward.
  struct setup {
    arch::network net;
    const char* q;
    exec::weight_quantizer wq;
    exec::act_quantizer aq;
    bool factors;
  };
  auto nets = sampled_nets(1, 21);
  const std::vector<setup> cases = {
      {all_ops_net(), "W8A8", exec::weight_quantizer::uniform, exec::act_quantizer::uniform, false},
      {all_ops_net(), "W4A4", exec::weight_quantizer::lsq, exec::act_quantizer::pact, true},
      {all_ops_net(), "W3A5", exec::weight_quantizer::lsq, exec::act_quantizer::lsq, true},
      {all_ops_net(), "W2A2", exec::weight_quantizer::ternary, exec::act_quantizer::uniform, false},
      {all_ops_net(), "W1A4", exec::weight_quantizer::binary, exec::act_quantizer::uniform, false},
      {nets[0], "W4A4", exec::weight_quantizer::uniform, exec::act_quantizer::uniform, false},
      {arch::resnet20(1, 8, 8, 10, 4), "W8A8", exec::weight_quantizer::lsq, exec::act_quantizer::pact, true}};
  for (const auto& cs : cases) {
    INFO(cs.net.name << " " << cs.q << " " << exec::to_string(cs.wq) << "/" << exec::to_string(cs.aq));
    const auto ps = params_of(cs.net, 7);
    const auto q = qc(cs.q, cs.wq, cs.aq);
    exec::quant_factors<float, backend::cpu_t> qf;
    if (cs.factors) {  // predicted log-factors: per-channel weight factors, scalar input factors
      rng g(9);
      const auto infos = arch::parameters(cs.net);
      qf.weight.resize(cs.net.ops.size());
      qf.input.resize(cs.net.ops.size());
      for (const auto& p : infos)
        if (p.role == arch::param_role::weight && (cs.net.ops[static_cast<std::size_t>(p.op)].type == arch::op_type::conv ||
                                                  cs.net.ops[static_cast<std::size_t>(p.op)].type == arch::op_type::linear)) {
          tensor<float> fw({p.shape[0]});
          for (std::int64_t c = 0; c < fw.numel(); ++c) fw.data()[c] = static_cast<float>(g.uniform(-0.3, 0.3));
          qf.weight[static_cast<std::size_t>(p.op)] = autograd::var<float>(fw, false);
          qf.input[static_cast<std::size_t>(p.op)] =
              autograd::var<float>(tensor<float>::full({1}, static_cast<float>(g.uniform(-0.3, 0.3))), false);
        }
    }
    const auto calib = calib_of(cs.net, 2, 8, 100);
    const auto m = exec::make_int_model(cs.net, ps, q, calib, cs.factors ? &qf : nullptr);
    exec::executor<backend::cpu_t, float> ex(cs.net);
    std::vector<autograd::var<float>> cv;
    for (const auto& t : calib) cv.emplace_back(t, false);
    ex.calibrate(ps, cv);
    autograd::tape<float> tp;
    autograd::no_grad<autograd::tape<float>> ng(tp);
    exec::run_options ro;
    ro.bn = exec::bn_mode::running_stats;
    ro.fold_bn = true;
    ro.quant = &q;
    const auto x = randn({6, cs.net.in_channels, cs.net.in_h, cs.net.in_w}, 55);
    const auto ye = ex.forward(tp, autograd::var<float>(x, false), ps, ro, cs.factors ? &qf : nullptr).value();
    const exec::fake_quant_reference ref(m);
    const auto yr = ref.forward(x, exec::act_scales::per_batch, cs.factors ? &qf : nullptr);
    double d = 0.0, mx = 0.0;
    for (std::int64_t k = 0; k < ye.numel(); ++k) {
      d = std::max(d, static_cast<double>(std::abs(ye.data()[k] - yr.data()[k])));
      mx = std::max(mx, static_cast<double>(std::abs(ye.data()[k])));
    }
    CHECK(d <= 1e-5 * mx);
    // codes within their bit-width; scales positive; the image quantizer is the first layer's
    for (const auto& l : m.layers) {
      const int want = cs.wq == exec::weight_quantizer::binary || cs.wq == exec::weight_quantizer::ternary
                           ? 2 : std::max(2, exec::plan_quantization(cs.net, q)[static_cast<std::size_t>(l.op)].w_bits);
      CHECK(l.w_bits == want);
      for (auto c : l.w_codes) CHECK((c >= l.w_qmin() && c <= l.w_qmax()));
      if (cs.wq == exec::weight_quantizer::ternary || cs.wq == exec::weight_quantizer::binary)
        for (auto c : l.w_codes) CHECK((c >= -1 && c <= 1));
    }
    CHECK(m.tensor_scale[0] == m.layer_of(m.input_layer)->a_scale);
  }
}

TEST_CASE("int export: fixed activation scales follow the calibration rule", "[int][export]") {
  const auto net = all_ops_net();
  const auto ps = params_of(net, 3);
  const auto calib = calib_of(net, 3, 8, 300);
  const auto q = qc("W8A8");
  exec::export_options mm, mean;
  mean.rule = exec::calib_rule::mean;
  const auto a = exec::make_int_model(net, ps, q, calib, nullptr, mm);
  const auto b = exec::make_int_model(net, ps, q, calib, nullptr, mean);
  // The first layer reads the image: its symmetric range is max |x| over all batches (min_max) or
  // the mean of the per-batch extremes (mean).
  double all = 0.0, sum_hi = 0.0, sum_lo = 0.0;
  for (const auto& t : calib) {
    double lo = 0.0, hi = 0.0;
    for (std::int64_t k = 0; k < t.numel(); ++k) {
      lo = std::min(lo, static_cast<double>(t.data()[k]));
      hi = std::max(hi, static_cast<double>(t.data()[k]));
    }
    all = std::max(all, std::max(-lo, hi));
    sum_hi += hi;
    sum_lo += lo;
  }
  const auto* la = a.layer_of(a.input_layer);
  const auto* lb = b.layer_of(b.input_layer);
  CHECK(la->a_signed);
  CHECK(la->a_zero_point == 0);
  CHECK(la->a_scale == Approx(all / 127.5).epsilon(1e-6));
  CHECK(lb->a_scale == Approx(std::max(-sum_lo, sum_hi) / 3.0 / 127.5).epsilon(1e-6));
  CHECK(a.calib_batches == 3);
  // unsigned inputs (after ReLU / pooling) use zero point 0 and the full unsigned range
  for (const auto& l : a.layers)
    if (!l.a_signed) CHECK((l.a_zero_point == 0 && l.a_qmax() == 255));
}

TEST_CASE("int export: unsupported ops, float layers and wide bit-widths are refused", "[int][export]") {
  const auto net = all_ops_net(true);
  const auto ps = params_of(net, 1);
  const auto calib = calib_of(net, 1, 4, 10);
  CHECK_THROWS_WITH(exec::make_int_model(net, ps, qc("W8A8"), calib), Catch::Contains("sigmoid") && Catch::Contains("gate"));
  const auto ok = all_ops_net();
  const auto pk = params_of(ok, 1);
  auto q = qc("W8A8");
  q.w_bits_of_op[static_cast<int>(ok.ops.size()) - 1] = 32;  // a float classifier
  CHECK_THROWS_WITH(exec::make_int_model(ok, pk, q, calib), Catch::Contains("classifier") && Catch::Contains("not quantized"));
  CHECK_THROWS_WITH(exec::make_int_model(ok, pk, qc("W8A16"), calib), Catch::Contains("at most 8"));
  auto noisy = qc("W8A8");
  noisy.noise = true;
  CHECK_THROWS_AS(exec::make_int_model(ok, pk, noisy, calib), value_error);
  CHECK_THROWS_AS(exec::make_int_model(ok, pk, qc("FP32"), calib), value_error);
  CHECK_THROWS_AS(exec::make_int_model(ok, pk, qc("W8A8"), {}), value_error);
  auto short_ps = pk;
  short_ps.pop_back();
  CHECK_THROWS_AS(exec::make_int_model(ok, short_ps, qc("W8A8"), calib), shape_error);
  // an in-memory model whose network gained a sigmoid is refused by the executor
  auto m = exec::make_int_model(ok, pk, qc("W8A8"), calib);
  for (auto& o : m.net.ops)
    if (o.name == "gate") o.type = arch::op_type::sigmoid;
  CHECK_THROWS_WITH(exec::int_executor(m), Catch::Contains("sigmoid"));
}

// ---- files ------------------------------------------------------------------------------------------

TEST_CASE("int model files: save / load round trip at 8, 4 and 2 bits", "[int][io]") {
  const auto net = all_ops_net();
  const auto ps = params_of(net, 4);
  const auto calib = calib_of(net, 2, 8, 40);
  const auto x = randn({5, 2, 12, 12}, 41);
  for (const char* qn : {"W8A8", "W4A4", "W2A8", "W3A3"}) {
    INFO(qn);
    auto m = exec::make_int_model(net, ps, qc(qn), calib);
    m.info["dataset"] = "fashion-mnist";
    const std::string path = temp_path(std::string(qn) + ".safetensors");
    exec::save_int_model(path, m);
    const auto back = exec::load_int_model(path);
    REQUIRE(back.layers.size() == m.layers.size());
    for (std::size_t i = 0; i < m.layers.size(); ++i) {
      const auto &a = m.layers[i], &b = back.layers[i];
      CHECK((a.op == b.op && a.w_bits == b.w_bits && a.a_bits == b.a_bits && a.a_signed == b.a_signed));
      CHECK(a.w_shape == b.w_shape);
      CHECK(a.w_codes == b.w_codes);
      CHECK(a.w_scale == b.w_scale);
      CHECK(a.bias == b.bias);
      CHECK(a.bias_shift == b.bias_shift);
      CHECK(a.bias_float == b.bias_float);
      CHECK((a.a_scale == b.a_scale && a.a_zero_point == b.a_zero_point));
    }
    REQUIRE(back.norms.size() == m.norms.size());
    for (std::size_t i = 0; i < m.norms.size(); ++i)
      CHECK((back.norms[i].mean == m.norms[i].mean && back.norms[i].var == m.norms[i].var &&
             back.norms[i].gamma == m.norms[i].gamma && back.norms[i].beta == m.norms[i].beta));
    CHECK(back.folded_bn == m.folded_bn);
    CHECK(back.tensor_scale == m.tensor_scale);
    CHECK(back.input_layer == m.input_layer);
    CHECK(back.quant.name() == m.quant.name());
    CHECK(back.info == m.info);
    CHECK(arch::to_json(back.net) == arch::to_json(m.net));
    // the packed storage is what the file says
    const auto f = io::safetensors_file::load(path);
    const auto& l0 = m.layers[1];
    const auto& info = f.info("ops." + std::to_string(l0.op) + ".weight");
    CHECK(info.dtype == (l0.w_bits > 4 ? io::st_dtype::i8 : io::st_dtype::u8));
    CHECK(static_cast<std::int64_t>(info.nbytes()) == exec::packed_bytes(l0.w_shape.numel(), l0.w_bits));
    // identical integer results
    const auto y0 = exec::int_executor(m).forward(x), y1 = exec::int_executor(back).forward(x);
    CHECK(y0.to_vector() == y1.to_vector());
    std::filesystem::remove(path);
  }
}

TEST_CASE("int model files: corrupted or mismatched files throw io_error naming the file and the tensor", "[int][io]") {
  const auto net = all_ops_net();
  const auto ps = params_of(net, 5);
  const auto calib = calib_of(net, 1, 8, 50);
  const auto m = exec::make_int_model(net, ps, qc("W3A3"), calib);
  const std::string good = temp_path("good.safetensors"), bad = temp_path("bad.safetensors");
  exec::save_int_model(good, m);
  const int op = m.layers[1].op;
  const std::string pre = "ops." + std::to_string(op) + ".";
  auto load_bad = [&]() { (void)exec::load_int_model(bad); };

  expect_io_error([&]() { (void)exec::load_int_model(temp_path("missing.safetensors")); }, "missing.safetensors", "cannot open");
  rewrite(good, bad, [&](auto& recs, auto&) { recs.erase(recs.begin() + 1); });
  expect_io_error(load_bad, bad, "missing tensor");
  rewrite(good, bad, [&](auto& recs, auto&) {
    auto* r = find_rec(recs, pre + "bias");
    r->dtype = io::st_dtype::f32;  // same size, wrong type
  });
  expect_io_error(load_bad, bad, "tensor '" + pre + "bias' has dtype F32, expected I32");
  rewrite(good, bad, [&](auto& recs, auto&) {
    auto* r = find_rec(recs, pre + "weight_scale");
    r->shape[0] += 1;
    r->bytes.resize(r->bytes.size() + 4, 0);
  });
  expect_io_error(load_bad, bad, "tensor '" + pre + "weight_scale' has shape");
  rewrite(good, bad, [&](auto& recs, auto&) {
    auto* r = find_rec(recs, pre + "weight_scale");
    const float neg = -1.0f;
    std::memcpy(r->bytes.data(), &neg, 4);
  });
  expect_io_error(load_bad, bad, pre + "weight_scale'[0]");
  rewrite(good, bad, [&](auto& recs, auto&) {
    auto* r = find_rec(recs, pre + "weight");  // 3-bit codes in nibbles: 7 is out of range
    r->bytes[0] = static_cast<std::uint8_t>((r->bytes[0] & 0xF0) | 0x07);
  });
  expect_io_error(load_bad, bad, "tensor '" + pre + "weight'");
  rewrite(good, bad, [&](auto& recs, auto&) {
    auto* r = find_rec(recs, pre + "input_zero_point");
    const std::int32_t z = 1000;
    std::memcpy(r->bytes.data(), &z, 4);
  });
  expect_io_error(load_bad, bad, pre + "input_zero_point");
  rewrite(good, bad, [&](auto& recs, auto&) {
    io::st_tensor extra;
    extra.name = "stray";
    extra.dtype = io::st_dtype::u8;
    extra.shape = {1};
    extra.bytes = {0};
    recs.push_back(extra);
  });
  expect_io_error(load_bad, bad, "unexpected tensor 'stray'");
  rewrite(good, bad, [&](auto&, auto& meta) { meta.erase(exec::kIntModelMetaKey); });
  expect_io_error(load_bad, bad, exec::kIntModelMetaKey);
  rewrite(good, bad, [&](auto&, auto& meta) { meta[exec::kIntModelMetaKey] = "{not json"; });
  expect_io_error(load_bad, bad, "not valid JSON");
  rewrite(good, bad, [&](auto&, auto& meta) {  // the architecture of another network
    auto j = nlohmann::json::parse(meta[exec::kIntModelMetaKey]);
    j["arch"] = arch::to_json(arch::family("vgg11", 2, 12, 12, 10));
    meta[exec::kIntModelMetaKey] = j.dump();
  });
  expect_io_error(load_bad, bad, bad);
  rewrite(good, bad, [&](auto&, auto& meta) {  // bits that contradict the quantization plan
    auto j = nlohmann::json::parse(meta[exec::kIntModelMetaKey]);
    j["layers"][1]["a_bits"] = 8;
    meta[exec::kIntModelMetaKey] = j.dump();
  });
  expect_io_error(load_bad, bad, "quantization plan");
  rewrite(good, bad, [&](auto&, auto& meta) {  // a bias shift out of range
    auto j = nlohmann::json::parse(meta[exec::kIntModelMetaKey]);
    j["layers"][1]["bias_shift"] = exec::kMaxBiasShift + 1;
    meta[exec::kIntModelMetaKey] = j.dump();
  });
  expect_io_error(load_bad, bad, "bias_shift");
  rewrite(good, bad, [&](auto&, auto& meta) {  // a bias shift the accumulator has no room for
    auto j = nlohmann::json::parse(meta[exec::kIntModelMetaKey]);
    j["layers"][0]["bias_shift"] = exec::kMaxBiasShift;  // the first layer has 8-bit codes
    meta[exec::kIntModelMetaKey] = j.dump();
  });
  expect_io_error(load_bad, bad, "could overflow the int32 accumulator");
  rewrite(good, bad, [&](auto&, auto& meta) {  // format 1 (no bias_shift) read as shift 0 only
    auto j = nlohmann::json::parse(meta[exec::kIntModelMetaKey]);
    j["format"] = "ghnq-int/1";
    meta[exec::kIntModelMetaKey] = j.dump();
  });
  {
    const auto v1 = exec::load_int_model(bad);
    for (const auto& l : v1.layers) CHECK(l.bias_shift == 0);
  }
  rewrite(good, bad, [&](auto&, auto& meta) {
    auto j = nlohmann::json::parse(meta[exec::kIntModelMetaKey]);
    j["format"] = "ghnq-int/3";
    meta[exec::kIntModelMetaKey] = j.dump();
  });
  expect_io_error(load_bad, bad, "format");
  {  // truncated file
    std::ifstream in(good, std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream out(bad, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size() - 7));
  }
  expect_io_error(load_bad, bad, "bad.safetensors");
  CHECK_NOTHROW(exec::load_int_model(good));
  std::filesystem::remove(good);
  std::filesystem::remove(bad);
}

// ---- integer vs fake quantization -------------------------------------------------------------------

TEST_CASE("int executor: every op of the integer graph matches the float op on the same inputs", "[int][exec]") {
  auto nets = sampled_nets(3, 31);
  nets.push_back(all_ops_net());
  nets.push_back(arch::mobilenet_v2(1, 12, 12, 10, 0.5));
  for (const auto& net : nets)
    for (const char* qn : {"W8A8", "W4A4", "W2A2"})
      for (int max_shift : {exec::kMaxBiasShift, 0}) {  // finer biases, and TFLite's convention
        INFO(net.name << " " << qn << " max_bias_shift " << max_shift);
        exec::export_options eo;
        eo.max_bias_shift = max_shift;
        const auto m = exec::make_int_model(net, params_of(net, 6), qc(qn), calib_of(net, 2, 8, 60), nullptr, eo);
        int shifted = 0;
        for (const auto& l : m.layers) {
          CHECK(l.bias_shift <= max_shift);
          shifted += l.bias_shift > 0;
        }
        if (max_shift > 0) CHECK(shifted > 0);
        CHECK(local_error(m, randn({4, net.in_channels, net.in_h, net.in_w}, 61)) <= 1.0);
      }
}

TEST_CASE("int executor: logits agree with fake quantization at the same fixed scales", "[int][exec]") {
  // Random networks are chaotic under quantization (a 1e-4 perturbation of the input moves their
  // logits by several per cent). Against the reference whose biases are the int32 biases
  // (everything else float): >= 99 % arg-max agreement and a small mean deviation. Against pure
  // fake quantization (float biases): >= 99 % with the default bias_shift, while biases rounded to
  // the accumulator's step (max_bias_shift 0, TFLite's convention) lose agreement at 4 bits.
  auto nets = sampled_nets(5, 11);
  nets.push_back(arch::resnet20(1, 16, 16, 10, 8));
  nets.push_back(all_ops_net());
  const std::int64_t n_img = 128;
  for (const char* qn : {"W8A8", "W4A4"}) {
    double agree = 0.0, agree_float = 0.0, agree_tflite = 0.0;
    for (const auto& net : nets) {
      const auto calib = calib_of(net, 3, 16, 70);
      const auto params = params_of(net, 8);
      const auto m = exec::make_int_model(net, params, qc(qn), calib);
      exec::export_options e0;
      e0.max_bias_shift = 0;
      const auto m0 = exec::make_int_model(net, params, qc(qn), calib, nullptr, e0);
      const auto x = randn({n_img, net.in_channels, net.in_h, net.in_w}, 71);
      const auto yi = exec::int_executor(m).forward(x);
      const auto a = compare(exec::fake_quant_reference(m, true).forward(x), yi);
      const auto af = compare(exec::fake_quant_reference(m).forward(x), yi);
      const auto a0 = compare(exec::fake_quant_reference(m0).forward(x), exec::int_executor(m0).forward(x));
      INFO(net.name << " " << qn << ": argmax " << a.argmax << " (float biases " << af.argmax << ", TFLite biases "
                    << a0.argmax << "), mean rel " << a.rel_mean);
      CHECK(a.rel_mean <= (std::string(qn) == "W8A8" ? 0.01 : 0.05));
      agree += a.argmax;
      agree_float += af.argmax;
      agree_tflite += a0.argmax;
    }
    const auto k = static_cast<double>(nets.size());
    agree /= k;
    agree_float /= k;
    agree_tflite /= k;
    INFO(qn << ": mean argmax agreement " << agree << ", with float biases " << agree_float << " (TFLite biases "
            << agree_tflite << ")");
    CHECK(agree >= 0.99);
    CHECK(agree_float >= 0.99);
    CHECK(agree_float >= agree_tflite);
  }
}

TEST_CASE("int executor: results do not depend on the thread count or the batch split", "[int][exec]") {
  const auto net = sampled_nets(1, 5)[0];
  const auto m = exec::make_int_model(net, params_of(net, 2), qc("W8A8"), calib_of(net, 2, 8, 80));
  const exec::int_executor ie(m);
  const auto x = randn({6, 1, 16, 16}, 81);
  const auto y = ie.forward(x).to_vector();
  std::vector<float> y1;
  {
    ghnq::thread_limit one(1);
    y1 = ie.forward(x).to_vector();
  }
  CHECK(y == y1);
  const auto head = ie.forward(x.slice(0, 0, 2).contiguous()).to_vector();
  CHECK(std::vector<float>(y.begin(), y.begin() + static_cast<std::ptrdiff_t>(head.size())) == head);
  CHECK_THROWS_AS(ie.forward(randn({2, 1, 15, 16}, 1)), shape_error);
}
