/// \file
/// \brief `int_executor`: integer-only reference executor of an exported `int_model`
/// (exec/int_export.hpp), and its arithmetic: fixed-point multipliers and the int8 x int8 -> int32
/// convolution kernel.
///
/// Arithmetic (no float in the forward pass except quantizing the image and dequantizing logits):
///  - Image: codes q = clamp(nearbyint(x * (1/s)) + z, q_min, q_max) with the input quantizer of
///    `int_model::input_layer` (bit-identical to quant::fake_quant); the input op's int32 value is
///    q - z at scale s.
///  - Every other value is int32 v at the per-tensor scale tensor_scale[op] (zero point 0).
///  - Rescaling by a real factor M > 0 (ratio of scales, fixed at construction): M = m 2^-n with
///    m in [2^30, 2^31) (quantize_multiplier), and x * M = round-half-away-from-zero(x m / 2^n),
///    computed exactly (64-bit products for int32 x, 128-bit otherwise) with one rounding, then saturated (int32 values saturate to
///    [-2^31, 2^31 - 1]). |result - x M| <= 1/2 + |x| M 2^-31.
///  - conv / linear: the input value v is requantized to the layer's codes
///    q = clamp((v * M_in) + z, q_min, q_max), M_in = s_v / a_scale, and centered as q - z (int16;
///    zero padding is q = z, i.e. 0 after centering); acc[c] = bias[c] + 2^bias_shift sum w_code
///    (q - z) in int32 (cannot overflow: checked at export), then out = acc * M_c,
///    M_c = w_scale[c] a_scale 2^-bias_shift / s_out.
///  - relu: max(v, 0). max_pool: max over the window clipped to the image. avg_pool (padding not
///    counted), global_avg_pool: the int64 sum divided by the count, rounded half away from zero.
///    flatten, identity, dropout (evaluation), one-input concat, folded BN: the same values.
///    shift / subsample: index maps. zero: 0.
///  - sum: sat(sum_k v_k * M_k), M_k = s_k / s_out (int64 partial sums); concat: each input
///    rescaled by s_k / s_out.
///  - batch norm (not folded): sat(v * M_c + B_c), M_c = gamma_c / sqrt(var_c + eps) s_in / s_out,
///    B_c = nearbyint((beta_c - mean_c gamma_c / sqrt(var_c + eps)) / s_out).
///  - hardswish: relu6(x + 3) at the fixed scale 2^-22: r = clamp(v * M_r + 3 2^22, 0, 6 2^22),
///    M_r = s 2^22 (for s >= 2^8, r is 0 or 6 2^22 by the sign of v: |x| >= 256 there), then
///    out = sat((v r) * M) with M = s 2^-22 / (6 s_out) (128-bit product).
///  - channel_scale: out = sat((x g) * M), M = s_x s_g / s_out.
///  - sigmoid: not supported (value_error naming the op at construction).
///  - Logits: out_value * tensor_scale[output] in float.
/// Parallel with ghnq::parallel_for over images x groups (convolutions), images x channels
/// (depthwise convolutions, BN, pools, rescales) or elements (requantization, ReLU, sum); results
/// do not depend on the thread count (integer arithmetic, no reductions across tasks).
/// \code
/// ghnq::exec::int_executor ie(ghnq::exec::load_int_model("net_w8a8.safetensors"));
/// ghnq::tensor<float> logits = ie.forward(images);   // [N, classes]
/// \endcode
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ghnq/arch/network.hpp"
#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/core/error.hpp"
#include "ghnq/exec/int_export.hpp"
#include "ghnq/tensor/tensor.hpp"

namespace ghnq::exec {

__extension__ typedef __int128 int128_t;

// ---- fixed-point multipliers ----------------------------------------------------------------------

/// A real factor M = m * 2^-shift with m in [2^30, 2^31) (m = 0: M = 0).
struct fixed_multiplier {
  std::int32_t m = 0;
  int shift = 0;  ///< in [0, 126]
  /// M as a double (for reports and tests).
  double value() const { return std::ldexp(static_cast<double>(m), -shift); }
};

/// The fixed-point form of M >= 0 (finite): m = nearbyint(frac(M) 2^31) with M = frac 2^e,
/// frac in [1/2, 1). M below 2^-95 gives the zero multiplier; M >= 2^31 throws value_error.
inline fixed_multiplier quantize_multiplier(double M) {
  GHNQ_CHECK(std::isfinite(M) && M >= 0.0, value_error, "quantize_multiplier: factor ", M,
             " is not finite and non-negative");
  if (M == 0.0) return {};
  int e = 0;
  const double frac = std::frexp(M, &e);
  auto m = static_cast<std::int64_t>(std::nearbyint(std::ldexp(frac, 31)));
  if (m == (std::int64_t{1} << 31)) {
    m >>= 1;
    ++e;
  }
  const int shift = 31 - e;
  GHNQ_CHECK(shift >= 0, value_error, "quantize_multiplier: factor ", M, " is too large (at most 2^31)");
  if (shift > 126) return {};
  return {static_cast<std::int32_t>(m), shift};
}

/// round-half-away-from-zero(x * f.m / 2^f.shift), exact (128-bit), saturated to int64.
inline std::int64_t apply_multiplier(std::int64_t x, const fixed_multiplier& f) {
  if (f.m == 0 || x == 0) return 0;
  const int128_t p = static_cast<int128_t>(x) * f.m;
  int128_t r;
  if (f.shift == 0) {
    r = p;
  } else {
    const int128_t half = static_cast<int128_t>(1) << (f.shift - 1);
    r = p >= 0 ? (p + half) >> f.shift : -((-p + half) >> f.shift);
  }
  constexpr auto lo = std::numeric_limits<std::int64_t>::min(), hi = std::numeric_limits<std::int64_t>::max();
  return r < lo ? lo : r > hi ? hi : static_cast<std::int64_t>(r);
}

/// apply_multiplier for an int32 x (the hot loops): 64-bit arithmetic when f.shift <= 62, the
/// same result.
inline std::int64_t apply_multiplier(std::int32_t x, const fixed_multiplier& f) {
  if (f.shift > 62 || f.shift == 0) return apply_multiplier(static_cast<std::int64_t>(x), f);
  const std::int64_t p = static_cast<std::int64_t>(x) * f.m;  // |p| < 2^62
  const std::int64_t half = std::int64_t{1} << (f.shift - 1);
  return p >= 0 ? (p + half) >> f.shift : -((-p + half) >> f.shift);
}

/// round-half-away-from-zero(x * f.m / 2^f.shift) for a 128-bit x (|x| < 2^94), saturated to int64.
inline std::int64_t apply_multiplier_wide(int128_t x, const fixed_multiplier& f) {
  if (f.m == 0 || x == 0) return 0;
  const bool neg = x < 0;
  const auto ax = static_cast<unsigned __int128>(neg ? -x : x);
  unsigned __int128 p = ax * static_cast<unsigned __int128>(f.m);
  if (f.shift > 0) p = (p + (static_cast<unsigned __int128>(1) << (f.shift - 1))) >> f.shift;
  const auto cap = static_cast<unsigned __int128>(std::numeric_limits<std::int64_t>::max());
  if (p > cap) return neg ? std::numeric_limits<std::int64_t>::min() : std::numeric_limits<std::int64_t>::max();
  const auto r = static_cast<std::int64_t>(p);
  return neg ? -r : r;
}

/// Clamp to [-2^31, 2^31 - 1].
inline std::int32_t saturate_i32(std::int64_t v) {
  return static_cast<std::int32_t>(std::min<std::int64_t>(std::max<std::int64_t>(v, std::numeric_limits<std::int32_t>::min()),
                                                          std::numeric_limits<std::int32_t>::max()));
}

/// round-half-away-from-zero(a / b) for b > 0.
inline std::int64_t rounded_div(std::int64_t a, std::int64_t b) {
  return a >= 0 ? (a + b / 2) / b : -((-a + b / 2) / b);
}

// ---- integer convolution ---------------------------------------------------------------------------

/// Geometry of an integer convolution (a linear layer is a 1x1 convolution of a 1x1 image).
struct int_conv_geometry {
  std::int64_t n = 1, c = 1, h = 1, w = 1;  ///< input [N, C, H, W]
  std::int64_t o = 1, ho = 1, wo = 1;       ///< output [N, O, Ho, Wo]
  int kh = 1, kw = 1, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dilation = 1, groups = 1;
};

/// Dot product of two int16 vectors of length kp (a multiple of 32) in int32; the fixed inner
/// length lets the compiler use packed multiply-add instructions at -O2.
inline std::int32_t int_dot32(const std::int16_t* a, const std::int16_t* b, std::int64_t kp) {
  std::int32_t s = 0;
  for (std::int64_t kk = 0; kk < kp; kk += 32) {
    std::int32_t t = 0;
    for (int j = 0; j < 32; ++j) t += static_cast<std::int32_t>(a[kk + j]) * static_cast<std::int32_t>(b[kk + j]);
    s += t;
  }
  return s;
}

/// y[n, o, i, j] = bias[o] + sum_{ci, ky, kx} w[o, ci, ky, kx] * x[n, g C/G + ci, i sh - ph + ky d,
/// j sw - pw + kx d] with x = 0 outside the image (x holds centered codes q - z), in int32. w is
/// [O, C / G, kh, kw]; bias may be null. Depthwise convolutions (one input and one output channel
/// per group) loop over the taps directly; others, per image and group, im2col into rows of the
/// fan-in (padded with zeros to a multiple of 32), then one int16 dot product per output. Parallel
/// over images x groups (images x channels when depthwise). The caller guarantees that no sum overflows int32 (make_int_model checks the bound).
inline void int_conv2d(const std::int16_t* x, const std::int16_t* w, const std::int32_t* bias, std::int32_t* y,
                       const int_conv_geometry& g) {
  const std::int64_t cg = g.c / g.groups, og = g.o / g.groups, k = cg * g.kh * g.kw, p = g.ho * g.wo;
  const std::int64_t kp = (k + 31) / 32 * 32, hw = g.h * g.w;
  if (cg == 1 && og == 1) {  // depthwise: direct loops over the taps, contiguous output rows
    parallel_for(0, g.n * g.o, std::max<std::int64_t>(1, 4096 / std::max<std::int64_t>(1, p * k)), [&](std::int64_t t0, std::int64_t t1) {
      for (std::int64_t t = t0; t < t1; ++t) {
        const std::int64_t c = t % g.o;
        const std::int16_t* xc = x + t * hw;
        const std::int16_t* wc = w + c * k;
        std::int32_t* yr = y + t * p;
        std::fill(yr, yr + p, bias != nullptr ? bias[c] : 0);
        for (int ky = 0; ky < g.kh; ++ky)
          for (int kx = 0; kx < g.kw; ++kx) {
            const std::int32_t wv = wc[ky * g.kw + kx];
            if (wv == 0) continue;
            const std::int64_t ox = std::int64_t{kx} * g.dilation - g.pad_w;  // xx = j * sw + ox
            const std::int64_t j0 = ox >= 0 ? 0 : (-ox + g.stride_w - 1) / g.stride_w;
            const std::int64_t j1 = std::min<std::int64_t>(g.wo, g.w - 1 - ox < 0 ? 0 : (g.w - 1 - ox) / g.stride_w + 1);
            for (std::int64_t i = 0; i < g.ho; ++i) {
              const std::int64_t yy = i * g.stride_h - g.pad_h + std::int64_t{ky} * g.dilation;
              if (yy < 0 || yy >= g.h) continue;
              const std::int16_t* xr = xc + yy * g.w + ox;
              std::int32_t* yo = yr + i * g.wo;
              if (g.stride_w == 1)
                for (std::int64_t j = j0; j < j1; ++j) yo[j] += wv * static_cast<std::int32_t>(xr[j]);
              else
                for (std::int64_t j = j0; j < j1; ++j) yo[j] += wv * static_cast<std::int32_t>(xr[j * g.stride_w]);
            }
          }
      }
    });
    return;
  }
  std::vector<std::int16_t> wp(static_cast<std::size_t>(g.o * kp), 0);
  for (std::int64_t o = 0; o < g.o; ++o) std::copy(w + o * k, w + (o + 1) * k, wp.begin() + o * kp);
  const bool direct = g.kh == 1 && g.kw == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h == 0 && g.pad_w == 0 &&
                      g.ho == g.h && g.wo == g.w;
  parallel_for(0, g.n * g.groups, 1, [&](std::int64_t t0, std::int64_t t1) {
    std::vector<std::int16_t> col(static_cast<std::size_t>(p * kp), 0);  // the padding columns stay 0
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t ni = t / g.groups, gi = t % g.groups;
      const std::int16_t* xg = x + (ni * g.c + gi * cg) * hw;
      // col[pos][kk], kk = (ci * kh + ky) * kw + kx, as the weight layout
      if (direct) {
        for (std::int64_t ci = 0; ci < cg; ++ci)
          for (std::int64_t pos = 0; pos < p; ++pos) col[static_cast<std::size_t>(pos * kp + ci)] = xg[ci * hw + pos];
      } else {
        for (std::int64_t i = 0; i < g.ho; ++i)
          for (std::int64_t j = 0; j < g.wo; ++j) {
            std::int16_t* cp = col.data() + (i * g.wo + j) * kp;
            const std::int64_t x0 = j * g.stride_w - g.pad_w;
            const bool inside = x0 >= 0 && x0 + std::int64_t{g.kw - 1} * g.dilation < g.w;
            for (std::int64_t ci = 0; ci < cg; ++ci)
              for (int ky = 0; ky < g.kh; ++ky) {
                const std::int64_t yy = i * g.stride_h - g.pad_h + std::int64_t{ky} * g.dilation;
                if (yy < 0 || yy >= g.h) {
                  std::fill(cp, cp + g.kw, std::int16_t(0));
                  cp += g.kw;
                  continue;
                }
                const std::int16_t* xr = xg + ci * hw + yy * g.w;
                if (inside) {
                  for (int kx = 0; kx < g.kw; ++kx) *cp++ = xr[x0 + std::int64_t{kx} * g.dilation];
                } else {
                  for (int kx = 0; kx < g.kw; ++kx) {
                    const std::int64_t xx = x0 + std::int64_t{kx} * g.dilation;
                    *cp++ = (xx >= 0 && xx < g.w) ? xr[xx] : std::int16_t(0);
                  }
                }
              }
          }
      }
      for (std::int64_t oo = 0; oo < og; ++oo) {
        const std::int64_t oc = gi * og + oo;
        const std::int16_t* wr = wp.data() + oc * kp;
        const std::int32_t b = bias != nullptr ? bias[oc] : 0;
        std::int32_t* yr = y + (ni * g.o + oc) * p;
        for (std::int64_t pos = 0; pos < p; ++pos) yr[pos] = b + int_dot32(wr, col.data() + pos * kp, kp);
      }
    }
  });
}

// ---- the executor --------------------------------------------------------------------------------

/// Integer-only executor of an int_model (see the file comment). Thread-safe: forward() is const
/// and keeps its state on the stack.
class int_executor {
 public:
  /// Validates the model (validate_int_model: value_error, e.g. for a sigmoid) and prepares the
  /// fixed-point multipliers and int16 weights.
  explicit int_executor(int_model m) : m_(std::move(m)) {
    validate_int_model(m_);
    const auto& net = m_.net;
    const std::size_t n = net.ops.size();
    live_ = detail::int_live_ops(net);
    rt_.resize(n);
    last_.assign(n, -1);
    for (std::size_t i = 0; i < n; ++i)
      if (live_[i])
        for (int in : net.ops[i].inputs) last_[static_cast<std::size_t>(in)] = static_cast<int>(i);
    last_[static_cast<std::size_t>(net.output)] = static_cast<int>(n);
    auto scale = [&](int op) { return static_cast<double>(m_.tensor_scale[static_cast<std::size_t>(op)]); };
    auto is_zero = [&](int op) { return net.ops[static_cast<std::size_t>(op)].type == arch::op_type::zero; };
    constexpr double eps = nn::batch_norm_options{}.eps;
    for (std::size_t i = 0; i < n; ++i) {
      if (!live_[i]) continue;
      const auto& o = net.ops[i];
      auto& r = rt_[i];
      const double so = scale(static_cast<int>(i));
      switch (o.type) {
        case arch::op_type::conv:
        case arch::op_type::linear: {
          const int_layer* l = m_.layer_of(static_cast<int>(i));
          r.layer = l;
          r.w16.assign(l->w_codes.begin(), l->w_codes.end());
          r.in_mult.push_back(is_zero(o.inputs[0]) ? fixed_multiplier{} : quantize_multiplier(scale(o.inputs[0]) / l->a_scale));
          for (float ws : l->w_scale)  // the accumulator's step is w_scale[c] a_scale 2^-bias_shift
            r.ch_mult.push_back(
                quantize_multiplier(std::ldexp(static_cast<double>(ws) * static_cast<double>(l->a_scale) / so, -l->bias_shift)));
          break;
        }
        case arch::op_type::batch_norm: {
          if (m_.is_folded(static_cast<int>(i))) break;
          const int_norm* nm = m_.norm_of(static_cast<int>(i));
          const double si = scale(o.inputs[0]);
          for (std::size_t c = 0; c < nm->mean.size(); ++c) {
            const double a = static_cast<double>(nm->gamma[c]) / std::sqrt(static_cast<double>(nm->var[c]) + eps);
            const double b = static_cast<double>(nm->beta[c]) - static_cast<double>(nm->mean[c]) * a;
            fixed_multiplier fm = quantize_multiplier(std::abs(a) * si / so);
            if (a < 0) fm.m = -fm.m;
            r.ch_mult.push_back(fm);
            const double off = std::nearbyint(b / so);
            GHNQ_CHECK(std::abs(off) < std::ldexp(1.0, 62), value_error, "int_executor: batch norm ",
                       detail::int_op_label(net, static_cast<int>(i)), " shift does not fit 64 bits at scale ", so);
            r.offset.push_back(static_cast<std::int64_t>(off));
          }
          break;
        }
        case arch::op_type::sum:
        case arch::op_type::concat:
          for (int in : o.inputs) r.in_mult.push_back(is_zero(in) ? fixed_multiplier{} : quantize_multiplier(scale(in) / so));
          break;
        case arch::op_type::hardswish: {
          // relu6(x + 3) at the fixed scale 2^-kHswBits: r = clamp(v * M_r + 3 2^k, 0, 6 2^k), M_r = s 2^k
          // (when s 2^k >= 2^30, any v != 0 has |x| >= 256 and r is 0 or 6 2^k by the sign of v)
          const double si = scale(o.inputs[0]), mr = std::ldexp(si, kHswBits);
          r.t3 = std::int64_t{3} << kHswBits;
          r.t6 = std::int64_t{6} << kHswBits;
          r.in_mult.push_back(mr < std::ldexp(1.0, 30) ? quantize_multiplier(mr) : fixed_multiplier{});
          r.in_mult.push_back(quantize_multiplier(std::ldexp(si, -kHswBits) / (6.0 * so)));
          r.sign_rule = !(mr < std::ldexp(1.0, 30));
          break;
        }
        case arch::op_type::channel_scale:
          r.in_mult.push_back(quantize_multiplier(scale(o.inputs[0]) * scale(o.inputs[1]) / so));
          break;
        default: break;
      }
    }
    const int_layer* il = m_.layer_of(m_.input_layer);
    img_scale_ = il->a_scale;
    img_zp_ = il->a_zero_point;
    img_qmin_ = il->a_qmin();
    img_qmax_ = il->a_qmax();
  }

  const int_model& model() const noexcept { return m_; }

  /// Logits [N, classes] (float: out_value * tensor_scale[output]) of normalized images x [N, C, H, W].
  tensor<float> forward(const tensor<float>& x) const {
    std::int64_t nb = 0;
    const auto out = forward_int(x, &nb);
    const auto& net = m_.net;
    const auto& o = net.ops[static_cast<std::size_t>(net.output)];
    const std::int64_t feat = o.c * detail::int_spatial(o);
    tensor<float> y({nb, feat});
    const float s = m_.tensor_scale[static_cast<std::size_t>(net.output)];
    for (std::int64_t k = 0; k < y.numel(); ++k) y.data()[k] = static_cast<float>((*out)[static_cast<std::size_t>(k)]) * s;
    return y;
  }

  /// Called with (op index, int32 value at scale tensor_scale[op]) for every op that runs.
  using hook = std::function<void(int, const std::vector<std::int32_t>&)>;

  /// The int32 output values (scale tensor_scale[output]); `batch` receives N; `on_value` (optional)
  /// sees every op's value (debugging, tests).
  std::shared_ptr<const std::vector<std::int32_t>> forward_int(const tensor<float>& x, std::int64_t* batch = nullptr,
                                                               const hook& on_value = hook()) const {
    const auto& net = m_.net;
    GHNQ_CHECK(x.rank() == 4 && x.dim(1) == net.in_channels && x.dim(2) == net.in_h && x.dim(3) == net.in_w,
               shape_error, "int_executor: input ", x.shape(), " does not match the network's input [N, ",
               net.in_channels, ", ", net.in_h, ", ", net.in_w, "]");
    const std::int64_t nb = x.dim(0);
    if (batch != nullptr) *batch = nb;
    const std::size_t n = net.ops.size();
    std::vector<value_t> v(n);
    for (std::size_t i = 0; i < n; ++i) {
      if (!live_[i]) continue;
      v[i] = run_op(i, x, nb, v);
      if (on_value) on_value(static_cast<int>(i), *v[i]);
      for (int in : net.ops[i].inputs)
        if (last_[static_cast<std::size_t>(in)] == static_cast<int>(i)) v[static_cast<std::size_t>(in)].reset();
    }
    return v[static_cast<std::size_t>(net.output)];
  }

 private:
  using value_t = std::shared_ptr<const std::vector<std::int32_t>>;

  struct op_rt {
    const int_layer* layer = nullptr;
    std::vector<std::int16_t> w16;
    std::vector<fixed_multiplier> in_mult, ch_mult;
    std::vector<std::int64_t> offset;
    std::int64_t t3 = 0, t6 = 0;
    bool sign_rule = false;
  };
  static constexpr int kHswBits = 22;

  static std::int64_t grain(std::int64_t per_item) { return std::max<std::int64_t>(1, (1 << 15) / std::max<std::int64_t>(1, per_item)); }

  value_t run_op(std::size_t i, const tensor<float>& x, std::int64_t nb, const std::vector<value_t>& v) const {
    const auto& net = m_.net;
    const arch::op& o = net.ops[i];
    const op_rt& r = rt_[i];
    auto in = [&](std::size_t k) -> const std::vector<std::int32_t>& { return *v[static_cast<std::size_t>(o.inputs[k])]; };
    auto in_op = [&](std::size_t k) -> const arch::op& { return net.ops[static_cast<std::size_t>(o.inputs[k])]; };
    const std::int64_t S = detail::int_spatial(o), C = o.c;
    auto make = [&](std::int64_t count) { return std::make_shared<std::vector<std::int32_t>>(static_cast<std::size_t>(count)); };
    using arch::op_type;
    switch (o.type) {
      case op_type::input: {
        const auto xc = x.contiguous();
        auto y = make(xc.numel());
        const float s = img_scale_, inv = 1.0f / s, z = static_cast<float>(img_zp_);
        const float qmin = static_cast<float>(img_qmin_), qmax = static_cast<float>(img_qmax_);
        const float* xd = xc.data();
        std::int32_t* yd = y->data();
        parallel_for(0, xc.numel(), 1 << 15, [&](std::int64_t b, std::int64_t e) {
          for (std::int64_t k = b; k < e; ++k)
            yd[k] = static_cast<std::int32_t>(std::min(std::max(std::nearbyint(xd[k] * inv) + z, qmin), qmax) - z);
        });
        return y;
      }
      case op_type::conv:
      case op_type::linear: {
        const int_layer& l = *r.layer;
        const arch::op& io = in_op(0);
        int_conv_geometry g;
        g.n = nb;
        g.c = io.c;
        g.h = o.type == op_type::linear ? 1 : io.h;
        g.w = o.type == op_type::linear ? 1 : io.w;
        g.o = l.out_channels();
        g.ho = o.type == op_type::linear ? 1 : o.h;
        g.wo = o.type == op_type::linear ? 1 : o.w;
        if (o.type == op_type::conv) {
          g.kh = o.kh;
          g.kw = o.kw;
          g.stride_h = o.stride;
          g.stride_w = o.stride_width();
          g.pad_h = o.pad_h;
          g.pad_w = o.pad_w;
          g.dilation = o.dilation;
          g.groups = o.groups;
        }
        // requantize the input to the layer's centered codes
        const auto& src = in(0);
        std::vector<std::int16_t> xc(src.size());
        const fixed_multiplier mi = r.in_mult[0];
        const std::int64_t z = l.a_zero_point, qmin = l.a_qmin(), qmax = l.a_qmax();
        parallel_for(0, static_cast<std::int64_t>(src.size()), 1 << 15, [&](std::int64_t b, std::int64_t e) {
          for (std::int64_t k = b; k < e; ++k) {
            const std::int64_t q = std::min(std::max(apply_multiplier(src[static_cast<std::size_t>(k)], mi) + z, qmin), qmax);
            xc[static_cast<std::size_t>(k)] = static_cast<std::int16_t>(q - z);
          }
        });
        const std::int64_t p = g.ho * g.wo;
        auto y = std::make_shared<std::vector<std::int32_t>>(static_cast<std::size_t>(nb * g.o * p));
        int_conv2d(xc.data(), r.w16.data(), nullptr, y->data(), g);
        std::int32_t* yd = y->data();
        const std::int32_t scale_up = std::int32_t{1} << l.bias_shift;
        parallel_for(0, nb * g.o, grain(p), [&](std::int64_t b, std::int64_t e) {
          for (std::int64_t t = b; t < e; ++t) {
            const auto c = static_cast<std::size_t>(t % g.o);
            const fixed_multiplier& fm = r.ch_mult[c];
            const std::int32_t bc = l.bias[c];
            // acc = bias + 2^bias_shift sum w q: within int32 (validate_int_model checks the bound)
            for (std::int64_t k = t * p; k < (t + 1) * p; ++k)
              yd[k] = saturate_i32(apply_multiplier(static_cast<std::int32_t>(yd[k] * scale_up + bc), fm));
          }
        });
        return y;
      }
      case op_type::batch_norm: {
        if (r.ch_mult.empty()) return v[static_cast<std::size_t>(o.inputs[0])];  // folded: identity
        const auto& src = in(0);
        auto y = make(static_cast<std::int64_t>(src.size()));
        parallel_for(0, nb * C, grain(S), [&](std::int64_t b, std::int64_t e) {
          for (std::int64_t t = b; t < e; ++t) {
            const auto c = static_cast<std::size_t>(t % C);
            fixed_multiplier fm = r.ch_mult[c];
            const bool neg = fm.m < 0;
            if (neg) fm.m = -fm.m;
            for (std::int64_t k = t * S; k < (t + 1) * S; ++k) {
              const std::int64_t a = apply_multiplier(src[static_cast<std::size_t>(k)], fm);
              (*y)[static_cast<std::size_t>(k)] = saturate_i32((neg ? -a : a) + r.offset[c]);
            }
          }
        });
        return y;
      }
      case op_type::relu: {
        const auto& src = in(0);
        auto y = make(static_cast<std::int64_t>(src.size()));
        std::int32_t* yd = y->data();
        parallel_for(0, static_cast<std::int64_t>(src.size()), 1 << 16, [&](std::int64_t b, std::int64_t e) {
          for (std::int64_t k = b; k < e; ++k) yd[k] = std::max(src[static_cast<std::size_t>(k)], 0);
        });
        return y;
      }
      case op_type::hardswish: {
        const auto& src = in(0);
        auto y = make(static_cast<std::int64_t>(src.size()));
        for (std::size_t k = 0; k < src.size(); ++k) {
          const std::int64_t t = src[k];
          const std::int64_t a = r.sign_rule ? (t > 0 ? r.t6 : t < 0 ? -r.t6 : 0) : apply_multiplier(t, r.in_mult[0]);
          const std::int64_t rr = std::min(std::max(a + r.t3, std::int64_t{0}), r.t6);
          (*y)[k] = saturate_i32(apply_multiplier_wide(static_cast<int128_t>(t) * rr, r.in_mult[1]));
        }
        return y;
      }
      case op_type::max_pool:
      case op_type::avg_pool: {
        const arch::op& io = in_op(0);
        const auto& src = in(0);
        const std::int64_t H = io.h, W = io.w, Ho = o.h, Wo = o.w;
        auto y = make(nb * C * Ho * Wo);
        const bool is_max = o.type == op_type::max_pool;
        parallel_for(0, nb * C, grain(Ho * Wo * o.kh * o.kh), [&](std::int64_t b, std::int64_t e) {
          for (std::int64_t t = b; t < e; ++t) {
            const std::int32_t* xs = src.data() + t * H * W;
            std::int32_t* ys = y->data() + t * Ho * Wo;
            for (std::int64_t i = 0; i < Ho; ++i)
              for (std::int64_t j = 0; j < Wo; ++j) {
                const std::int64_t y0 = std::max<std::int64_t>(i * o.stride - o.pad_h, 0),
                                   y1 = std::min<std::int64_t>(i * o.stride - o.pad_h + o.kh, H);
                const std::int64_t x0 = std::max<std::int64_t>(j * o.stride - o.pad_h, 0),
                                   x1 = std::min<std::int64_t>(j * o.stride - o.pad_h + o.kh, W);
                std::int64_t acc = is_max ? std::numeric_limits<std::int64_t>::min() : 0;
                for (std::int64_t yy = y0; yy < y1; ++yy)
                  for (std::int64_t xx = x0; xx < x1; ++xx)
                    acc = is_max ? std::max<std::int64_t>(acc, xs[yy * W + xx]) : acc + xs[yy * W + xx];
                ys[i * Wo + j] = is_max ? static_cast<std::int32_t>(acc)
                                        : saturate_i32(rounded_div(acc, (y1 - y0) * (x1 - x0)));
              }
          }
        });
        return y;
      }
      case op_type::global_avg_pool: {
        const arch::op& io = in_op(0);
        const auto& src = in(0);
        const std::int64_t hw = detail::int_spatial(io);
        auto y = make(nb * C);
        for (std::int64_t t = 0; t < nb * C; ++t) {
          std::int64_t acc = 0;
          for (std::int64_t k = t * hw; k < (t + 1) * hw; ++k) acc += src[static_cast<std::size_t>(k)];
          (*y)[static_cast<std::size_t>(t)] = saturate_i32(rounded_div(acc, hw));
        }
        return y;
      }
      case op_type::flatten:
      case op_type::identity:
      case op_type::dropout: return v[static_cast<std::size_t>(o.inputs[0])];
      case op_type::sum: {
        auto y = make(nb * C * S);
        std::int32_t* yd = y->data();
        parallel_for(0, nb * C * S, 1 << 14, [&](std::int64_t b, std::int64_t e) {
          for (std::int64_t t = b; t < e; ++t) {
            std::int64_t acc = 0;  // |acc| < inputs * 2^31 * 2^20: no overflow
            for (std::size_t k = 0; k < o.inputs.size(); ++k)
              if (r.in_mult[k].m != 0) acc += apply_multiplier(in(k)[static_cast<std::size_t>(t)], r.in_mult[k]);
            yd[t] = saturate_i32(acc);
          }
        });
        return y;
      }
      case op_type::concat: {
        if (o.inputs.size() == 1) return v[static_cast<std::size_t>(o.inputs[0])];
        auto y = make(nb * C * S);
        std::int64_t off = 0;
        for (std::size_t k = 0; k < o.inputs.size(); ++k) {
          const std::int64_t ck = in_op(k).c;
          if (r.in_mult[k].m != 0) {
            const auto& src = in(k);
            const fixed_multiplier fm = r.in_mult[k];
            std::int32_t* yd = y->data();
            parallel_for(0, nb, grain(ck * S), [&](std::int64_t b, std::int64_t e) {
              for (std::int64_t ni = b; ni < e; ++ni)
                for (std::int64_t q = 0; q < ck * S; ++q)
                  yd[(ni * C + off) * S + q] = saturate_i32(apply_multiplier(src[static_cast<std::size_t>(ni * ck * S + q)], fm));
            });
          }
          off += ck;
        }
        return y;
      }
      case op_type::zero: return make(nb * C * S);
      case op_type::shift:
      case op_type::subsample: {
        const arch::op& io = in_op(0);
        const auto& src = in(0);
        const std::int64_t H = io.h, W = io.w, Ho = o.h, Wo = o.w;
        const std::int64_t st = o.type == op_type::shift ? 1 : o.stride, off = o.type == op_type::shift ? 1 : 0;
        auto y = make(nb * C * Ho * Wo);
        for (std::int64_t t = 0; t < nb * C; ++t)
          for (std::int64_t i = 0; i < Ho; ++i)
            for (std::int64_t j = 0; j < Wo; ++j)
              (*y)[static_cast<std::size_t>((t * Ho + i) * Wo + j)] =
                  src[static_cast<std::size_t>(t * H * W + (i * st + off) * W + (j * st + off))];
        return y;
      }
      case op_type::channel_scale: {
        const auto& xs = in(0);
        const auto& gs = in(1);
        auto y = make(nb * C * S);
        for (std::int64_t t = 0; t < nb * C; ++t) {
          const std::int64_t gv = gs[static_cast<std::size_t>(t)];
          for (std::int64_t k = t * S; k < (t + 1) * S; ++k)
            (*y)[static_cast<std::size_t>(k)] =
                saturate_i32(apply_multiplier_wide(static_cast<int128_t>(xs[static_cast<std::size_t>(k)]) * gv, r.in_mult[0]));
        }
        return y;
      }
      case op_type::sigmoid: break;
    }
    throw value_error("int_executor: " + detail::int_op_label(net, static_cast<int>(i)) + " is not supported");
  }

  int_model m_;
  std::vector<bool> live_;
  std::vector<int> last_;
  std::vector<op_rt> rt_;
  float img_scale_ = 1.0f;
  std::int32_t img_zp_ = 0;
  int img_qmin_ = 0, img_qmax_ = 0;
};

}  // namespace ghnq::exec
