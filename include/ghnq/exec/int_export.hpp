/// \file
/// \brief Integer export of a predicted, quantized network: `int_model` (integer weight codes,
/// scales, zero points, int32 biases, BN folded), `make_int_model` (from float parameters, exactly
/// as the fake-quant executor quantizes them), safetensors I/O (`save_int_model` / `load_int_model`)
/// and `fake_quant_reference`, the float fake-quant network with the model's fixed scales.
///
/// What an int_model holds (conventions of the file format "ghnq-int/2"):
///  - The architecture (arch JSON) and the quant_config it was exported with.
///  - Per live conv / linear op (a "layer"): signed weight codes of `w_bits` bits (2..8; binary and
///    ternary weights are 2-bit codes in {-1, 0, 1}), one scale per output channel:
///    w[c, ...] = w_scale[c] * code (symmetric, zero point 0); the input quantizer: `a_bits`
///    (1..8), signedness, scale and zero point: x = a_scale * (code - a_zero_point); the bias as
///    int32 at scale w_scale[c] * a_scale * 2^-bias_shift, and the float bias it came from. With
///    bias_shift = 0 this is TFLite's convention (the bias at the accumulator's step); a shift of s
///    gives the bias s fraction bits below that step, and the accumulator is bias + 2^s sum w q.
///  - BatchNorm: a live BN whose input is a conv read by nothing else is folded into that conv
///    (run_options::fold_bn's rule and formula) and runs as an identity; other live BNs are kept as
///    running-statistics affine maps (mean, var, gamma, beta; eps 1e-5).
///  - One scale per live op, `tensor_scale[op]`: the integer executor holds every intermediate
///    value as int32 v with x = tensor_scale[op] * v (zero point 0). Ops that cannot change a
///    scale (ReLU, pools, flatten, identity, dropout, shift, subsample, a folded BN, a one-input
///    concat) have their input's scale; the network input has the image quantizer's scale.
///
/// Export rules (make_int_model):
///  - BN running statistics: given (executor::bn_states() after executor::calibrate), or computed
///    by the convenience overload from the calibration batches in float (as eval_bn::calibrate_fold).
///  - Weights: BN folded first, then `quantize_weight` (the executor's code path, with the GHN's
///    predicted log-factors when given); the codes are nearbyint(w_hat / s_c) with the quantizer's
///    own per-channel scale s_c (uniform: symmetric min-max; lsq: exp(f_w) 2 mean|w_c| / sqrt(Q_P);
///    binary: mean|w_c|; ternary: 1.4 mean|w_c|), so w_scale[c] * code == w_hat.
///  - Activation scales are fixed from K calibration batches. The network is run in float with
///    the executor's per-batch quantization (act_scales::per_batch, which equals
///    executor::forward with fold_bn and the same quant_config) and, at each conv / linear input,
///    the statistics the executor's quantizer uses are recorded per batch and combined:
///      uniform: range [m, M] = (min of the batch minima, max of the batch maxima) with
///               calib_rule::min_max (default), or (mean of the minima, mean of the maxima) with
///               calib_rule::mean; then make_uniform_params (symmetric for signed inputs,
///               asymmetric for unsigned ones, so z = 0 after widening to contain 0);
///      lsq:     s = exp(f_a) * 2 mean_k(mean|x|_k) / sqrt(Q_P), floored at kScaleEps;
///      pact:    alpha = exp(f_a) * (max or mean of the batch maxima), s = alpha / (2^b - 1), z = 0.
///  - Glue scales: for an op that makes a new value (conv, linear, unfolded BN, sum, concat,
///    hardswish, channel_scale), s = R / 2^glue_bits with R the largest |value| seen in calibration
///    (default glue_bits = 22: 2^-22 relative precision, 2^9 headroom before int32 saturation),
///    raised where needed so that every rescale factor into it is <= 2^20 (e.g. never below the
///    largest accumulator step / 2^20); a `zero` op gets scale 1 (its value is 0).
///  - Biases: b_q = nearbyint(b / (w_scale[c] a_scale)). Should |b_q| exceed 2^30 (a channel with
///    almost zero weights and a large bias), w_scale[c] is raised to |b| / (a_scale 2^30) and that
///    channel's codes are recomputed, so accumulators never overflow: export also checks
///    A = K 2^(w_bits-1) (q_max - q_min) < 2^30 for every layer (K = fan-in). Then bias_shift is
///    the largest s <= export_options::max_bias_shift (default kMaxBiasShift = 16) with A 2^s < 2^30 and every |nearbyint(2^s b / (w_scale[c]
///    a_scale))| <= 2^30 (so bias + 2^s sum w q fits int32), and the biases are stored at that
///    finer step. Why: at 4 bits the step w_scale[c] a_scale is a sizeable fraction of the next
///    layer's activation step, so rounding the bias to it flips activation codes, and through a
///    deep network, predictions (an integer model then disagrees with fake quantization, whose
///    bias is float, on ~10% of the images; with the shift, the disagreement is at float-rounding level).
///  - Not supported: `sigmoid` (value_error naming the op), float (unquantized) conv / linear ops,
///    bit-widths above 8, pseudo-quantization noise.
///
/// File layout (safetensors, tensors named by op index i): "ops.<i>.weight" (I8 with the weight's
/// shape for 5..8-bit codes; U8 [ceil(numel / per_byte)] packed for 2..4-bit codes, see
/// pack_codes), "ops.<i>.weight_scale" F32 [O], "ops.<i>.bias" I32 [O] (at bias_shift), "ops.<i>.bias_float" F32
/// [O], "ops.<i>.input_scale" F32 [1], "ops.<i>.input_zero_point" I32 [1]; unfolded BNs
/// "ops.<j>.bn_mean" / "bn_var" / "bn_gamma" / "bn_beta" F32 [C]; "tensor_scales" F32 [ops];
/// metadata "ghnq.int_model" (JSON: format, arch, quant, calibration, layers with bits / signedness /
/// storage / bias_shift, folded_bn, input_layer, conventions) and "info.<key>" free-form entries.
/// Files of format "ghnq-int/1" (no bias_shift: 0) still load.
/// \code
/// ghnq::exec::quant_config q = ghnq::exec::parse_quant_name("W8A8", {});
/// auto m = ghnq::exec::make_int_model(net, params, q, calib_batches, &factors);
/// ghnq::exec::save_int_model("net_w8a8.safetensors", m);
/// auto back = ghnq::exec::load_int_model("net_w8a8.safetensors");
/// ghnq::exec::fake_quant_reference ref(back);
/// auto logits = ref.forward(images);        // float fake-quant with the model's fixed scales
/// \endcode
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "ghnq/arch/json.hpp"
#include "ghnq/arch/network.hpp"
#include "ghnq/arch/params.hpp"
#include "ghnq/arch/shape_inference.hpp"
#include "ghnq/autograd/tape.hpp"
#include "ghnq/core/error.hpp"
#include "ghnq/exec/executor.hpp"
#include "ghnq/exec/plain_ops.hpp"
#include "ghnq/exec/quant_plan.hpp"
#include "ghnq/exec/quantize.hpp"
#include "ghnq/io/safetensors.hpp"
#include "ghnq/nn.hpp"
#include "ghnq/quant.hpp"

namespace ghnq::exec {

/// Format string of the integer model files, and the metadata key holding the description.
/// Version 2 added int_layer::bias_shift; version-1 files (bias at the accumulator's step) still load.
inline constexpr const char* kIntModelFormat = "ghnq-int/2";
inline constexpr const char* kIntModelMetaKey = "ghnq.int_model";
/// Largest int_layer::bias_shift: the bias and the accumulator get up to 16 fraction bits below the
/// step w_scale[c] * a_scale.
inline constexpr int kMaxBiasShift = 16;

// ---- code packing ------------------------------------------------------------------------------

/// Bits one stored code occupies: 8 for 5..8-bit codes, 4 for 3..4, 2 for 1..2 (value_error
/// outside 1..8).
inline int packed_width(int bits) {
  GHNQ_CHECK(bits >= 1 && bits <= 8, value_error, "packed_width: code bit-width ", bits, " is outside [1, 8]");
  return bits > 4 ? 8 : bits > 2 ? 4 : 2;
}

/// Bytes that n codes of `bits` bits take: n for 8-bit storage, ceil(n / 2) for 4, ceil(n / 4) for 2.
inline std::int64_t packed_bytes(std::int64_t n, int bits) {
  const int per = 8 / packed_width(bits);
  return (n + per - 1) / per;
}

/// Packs signed `bits`-bit codes (2..8, two's complement, each in [-2^(bits-1), 2^(bits-1) - 1])
/// into bytes: code i goes to byte i / per at bit offset (i % per) * width (the first code in the
/// low bits), width = packed_width(bits), per = 8 / width; unused high bits of the last byte are 0.
/// value_error for a code out of range.
/// \code auto bytes = ghnq::exec::pack_codes({-8, 7, 3}, 4);   // {0x78, 0x03} \endcode
inline std::vector<std::uint8_t> pack_codes(const std::vector<std::int8_t>& codes, int bits) {
  GHNQ_CHECK(bits >= 2 && bits <= 8, value_error, "pack_codes: signed codes need 2..8 bits, got ", bits);
  const int width = packed_width(bits), per = 8 / width;
  const int lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
  const unsigned mask = (1u << width) - 1u;
  std::vector<std::uint8_t> out(static_cast<std::size_t>(packed_bytes(static_cast<std::int64_t>(codes.size()), bits)), 0);
  for (std::size_t i = 0; i < codes.size(); ++i) {
    const int c = codes[i];
    GHNQ_CHECK(c >= lo && c <= hi, value_error, "pack_codes: code ", c, " at index ", i, " is outside [", lo, ", ",
               hi, "] for ", bits, "-bit codes");
    const unsigned u = static_cast<unsigned>(c) & mask;
    out[i / static_cast<std::size_t>(per)] |= static_cast<std::uint8_t>(u << ((i % static_cast<std::size_t>(per)) * width));
  }
  return out;
}

/// Inverse of pack_codes: n codes from `nbytes` bytes (must equal packed_bytes(n, bits)),
/// sign-extended from the storage width. value_error naming the index when a code is outside the
/// `bits`-bit range (e.g. 7 for 3-bit codes stored in nibbles) or when the padding bits of the last
/// byte are not zero.
inline std::vector<std::int8_t> unpack_codes(const std::uint8_t* bytes, std::int64_t nbytes, std::int64_t n, int bits) {
  GHNQ_CHECK(bits >= 2 && bits <= 8, value_error, "unpack_codes: signed codes need 2..8 bits, got ", bits);
  GHNQ_CHECK(n >= 0 && nbytes == packed_bytes(n, bits), value_error, "unpack_codes: ", nbytes, " bytes for ", n, " ",
             bits, "-bit codes, expected ", packed_bytes(n, bits));
  const int width = packed_width(bits), per = 8 / width;
  const int lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
  const unsigned mask = (1u << width) - 1u, sign = 1u << (width - 1);
  std::vector<std::int8_t> out(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const unsigned u = (static_cast<unsigned>(bytes[i / per]) >> ((i % per) * width)) & mask;
    const int c = static_cast<int>(u) - ((u & sign) ? static_cast<int>(mask) + 1 : 0);
    GHNQ_CHECK(c >= lo && c <= hi, value_error, "unpack_codes: code ", c, " at index ", i, " is outside [", lo, ", ",
               hi, "] for ", bits, "-bit codes");
    out[static_cast<std::size_t>(i)] = static_cast<std::int8_t>(c);
  }
  const std::int64_t used = n % per;
  if (used != 0 && nbytes > 0) {
    const unsigned rest = static_cast<unsigned>(bytes[nbytes - 1]) >> (used * width);
    GHNQ_CHECK(rest == 0, value_error, "unpack_codes: the unused bits of the last byte are not zero (byte ",
               static_cast<unsigned>(bytes[nbytes - 1]), ")");
  }
  return out;
}

// ---- the model ---------------------------------------------------------------------------------

/// How the activation statistics of K calibration batches are combined (see the file comment).
enum class calib_rule : std::uint8_t {
  min_max,  ///< extremes over all batches (PyTorch MinMaxObserver)
  mean,     ///< mean of the per-batch extremes (the executor's typical per-batch range)
};
inline const char* to_string(calib_rule r) { return r == calib_rule::min_max ? "min_max" : "mean"; }
/// Parse "min_max" | "mean" (value_error otherwise).
inline calib_rule parse_calib_rule(const std::string& s) {
  if (s == "min_max") return calib_rule::min_max;
  if (s == "mean") return calib_rule::mean;
  throw value_error("unknown calibration rule '" + s + "' (min_max, mean)");
}

/// Options of make_int_model.
struct export_options {
  calib_rule rule = calib_rule::min_max;
  int glue_bits = 22;  ///< precision of the int32 intermediate values: scale = range / 2^glue_bits, in [8, 28]
  /// Largest bias_shift to use, in [0, kMaxBiasShift]; 0 keeps every bias at the accumulator's step
  /// (TFLite's convention, for runtimes that expect it).
  int max_bias_shift = kMaxBiasShift;
};

/// One conv / linear op in integer form (see the file comment for the conventions).
struct int_layer {
  int op = -1;                      ///< index of the op in the network
  int w_bits = 8;                   ///< signed weight code bits, 2..8
  int a_bits = 8;                   ///< input code bits, 1..8 (2..8 when signed)
  bool a_signed = true;             ///< signed input codes
  ghnq::shape w_shape;              ///< [O, I / groups, kh, kw] or [O, I]
  std::vector<std::int8_t> w_codes; ///< numel(w_shape) codes, row-major
  std::vector<float> w_scale;       ///< [O], > 0: w = w_scale[c] * code
  float a_scale = 1.0f;             ///< > 0: x = a_scale * (code - a_zero_point)
  std::int32_t a_zero_point = 0;    ///< in [a_qmin, a_qmax]
  std::vector<std::int32_t> bias;   ///< [O] at scale w_scale[c] * a_scale * 2^-bias_shift
  std::vector<float> bias_float;    ///< [O] the float (folded) bias of the fake-quant network
  int bias_shift = 0;               ///< in [0, kMaxBiasShift]: extra fraction bits of the bias and accumulator

  /// Bound on |sum w_code (q - z)| over the fan-in (the accumulator without its bias).
  double acc_bound() const {
    return static_cast<double>(fan_in()) * std::ldexp(1.0, w_bits - 1) * static_cast<double>(a_qmax() - a_qmin());
  }

  std::int64_t out_channels() const { return w_shape.rank() > 0 ? w_shape[0] : 0; }
  std::int64_t fan_in() const { return out_channels() > 0 ? w_shape.numel() / out_channels() : 0; }
  int w_qmin() const { return -(1 << (w_bits - 1)); }
  int w_qmax() const { return (1 << (w_bits - 1)) - 1; }
  int a_qmin() const { return a_signed ? -(1 << (a_bits - 1)) : 0; }
  int a_qmax() const { return a_signed ? (1 << (a_bits - 1)) - 1 : (1 << a_bits) - 1; }
};

/// A batch norm that is not folded: y = (x - mean) / sqrt(var + 1e-5) * gamma + beta per channel.
struct int_norm {
  int op = -1;
  std::vector<float> mean, var, gamma, beta;  ///< [C] each
};

/// An exported integer network (see the file comment).
struct int_model {
  arch::network net;                  ///< shapes inferred
  quant_config quant;                 ///< the configuration it was exported with
  std::vector<int_layer> layers;      ///< one per live conv / linear op, in op order
  std::vector<int_norm> norms;        ///< live batch norms that are not folded, in op order
  std::vector<int> folded_bn;         ///< live batch norms folded into their conv (identity), in op order
  std::vector<float> tensor_scale;    ///< [ops]: scale of each live op's int32 value (0: not run)
  int input_layer = -1;               ///< op index of the layer whose input quantizer quantizes the image
  int calib_batches = 0;              ///< K
  calib_rule rule = calib_rule::min_max;
  int glue_bits = 22;
  std::map<std::string, std::string> info;  ///< free-form description (dataset, normalization, source ...)

  /// The layer of conv / linear op `op`, or null.
  const int_layer* layer_of(int op) const {
    for (const auto& l : layers)
      if (l.op == op) return &l;
    return nullptr;
  }
  const int_norm* norm_of(int op) const {
    for (const auto& n : norms)
      if (n.op == op) return &n;
    return nullptr;
  }
  bool is_folded(int op) const { return std::find(folded_bn.begin(), folded_bn.end(), op) != folded_bn.end(); }
};

namespace detail {

/// Ops that reach the network output (the ops any executor runs).
inline std::vector<bool> int_live_ops(const arch::network& net) {
  const std::size_t n = net.ops.size();
  std::vector<bool> live(n, false);
  GHNQ_CHECK(net.output >= 0 && static_cast<std::size_t>(net.output) < n, value_error, "int export: network output ",
             net.output, " is not an op index");
  live[static_cast<std::size_t>(net.output)] = true;
  for (std::size_t i = n; i-- > 0;)
    if (live[i])
      for (int in : net.ops[i].inputs) live[static_cast<std::size_t>(in)] = true;
  return live;
}

/// For each live batch norm, the conv it is folded into (executor rule: its input is a conv that no
/// other live op reads), else -1.
inline std::vector<int> int_fold_targets(const arch::network& net, const std::vector<bool>& live) {
  const std::size_t n = net.ops.size();
  std::vector<int> readers(n, 0), fold(n, -1);
  for (std::size_t i = 0; i < n; ++i)
    if (live[i])
      for (int in : net.ops[i].inputs) ++readers[static_cast<std::size_t>(in)];
  for (std::size_t j = 0; j < n; ++j) {
    if (!live[j] || net.ops[j].type != arch::op_type::batch_norm) continue;
    const auto c = static_cast<std::size_t>(net.ops[j].inputs.at(0));
    if (net.ops[c].type == arch::op_type::conv && readers[c] == 1) fold[j] = static_cast<int>(c);
  }
  return fold;
}

/// True for op types whose value has the scale of their (first) input in the integer executor.
inline bool int_keeps_scale(const arch::op& o) {
  using arch::op_type;
  switch (o.type) {
    case op_type::relu:
    case op_type::max_pool:
    case op_type::avg_pool:
    case op_type::global_avg_pool:
    case op_type::flatten:
    case op_type::identity:
    case op_type::dropout:
    case op_type::shift:
    case op_type::subsample: return true;
    case op_type::concat: return o.inputs.size() == 1;
    default: return false;
  }
}

inline std::string int_op_label(const arch::network& net, int i) {
  const auto& o = net.ops[static_cast<std::size_t>(i)];
  return "op " + std::to_string(i) + " ('" + o.name + "', " + arch::to_string(o.type) + ")";
}

/// value_error when a live op cannot run on integers (the list names every such op).
inline void int_check_supported(const arch::network& net, const std::vector<bool>& live, const char* who) {
  std::string bad;
  for (std::size_t i = 0; i < net.ops.size(); ++i)
    if (live[i] && net.ops[i].type == arch::op_type::sigmoid)
      bad += (bad.empty() ? "" : ", ") + int_op_label(net, static_cast<int>(i));
  GHNQ_CHECK(bad.empty(), value_error, who, ": the integer executor does not support ", bad,
             " (integer ops: conv, linear, batch_norm, relu, hardswish, max_pool, avg_pool, global_avg_pool, "
             "flatten, sum, concat, zero, identity, subsample, dropout, channel_scale, shift)");
}

/// Spatial size of op i's value (1 for flat values).
inline std::int64_t int_spatial(const arch::op& o) { return o.h == 0 && o.w == 0 ? 1 : std::int64_t{o.h} * o.w; }

/// value_error unless the layer's numbers are consistent (bits, sizes, ranges, finite positive
/// scales, accumulator bound).
inline void int_check_layer(const arch::network& net, const int_layer& l) {
  const std::string w = "int_model: layer " + int_op_label(net, l.op);
  const auto& o = net.ops[static_cast<std::size_t>(l.op)];
  GHNQ_CHECK(o.type == arch::op_type::conv || o.type == arch::op_type::linear, value_error, w,
             " is not a conv or linear op");
  GHNQ_CHECK(l.w_bits >= 2 && l.w_bits <= 8, value_error, w, ": w_bits = ", l.w_bits, " is outside [2, 8]");
  GHNQ_CHECK(l.a_bits >= (l.a_signed ? 2 : 1) && l.a_bits <= 8, value_error, w, ": a_bits = ", l.a_bits,
             " is outside [", l.a_signed ? 2 : 1, ", 8]");
  const std::int64_t oc = o.type == arch::op_type::linear ? o.c : o.out_channels;
  GHNQ_CHECK(l.out_channels() == oc && static_cast<std::int64_t>(l.w_codes.size()) == l.w_shape.numel() &&
                 static_cast<std::int64_t>(l.w_scale.size()) == oc && static_cast<std::int64_t>(l.bias.size()) == oc &&
                 static_cast<std::int64_t>(l.bias_float.size()) == oc,
             value_error, w, ": sizes do not match its ", oc, " output channels");
  for (std::size_t k = 0; k < l.w_codes.size(); ++k)
    GHNQ_CHECK(l.w_codes[k] >= l.w_qmin() && l.w_codes[k] <= l.w_qmax(), value_error, w, ": weight code ",
               int(l.w_codes[k]), " at ", k, " is outside [", l.w_qmin(), ", ", l.w_qmax(), "]");
  for (std::size_t c = 0; c < l.w_scale.size(); ++c) {
    GHNQ_CHECK(std::isfinite(l.w_scale[c]) && l.w_scale[c] > 0.0f, value_error, w, ": weight_scale[", c, "] = ",
               l.w_scale[c], " is not finite and positive");
    GHNQ_CHECK(std::isfinite(l.bias_float[c]), value_error, w, ": bias_float[", c, "] is not finite");
    GHNQ_CHECK(std::abs(static_cast<std::int64_t>(l.bias[c])) <= (std::int64_t{1} << 30), value_error, w, ": bias[", c,
               "] = ", l.bias[c], " exceeds 2^30 in magnitude");
  }
  GHNQ_CHECK(l.bias_shift >= 0 && l.bias_shift <= kMaxBiasShift, value_error, w, ": bias_shift = ", l.bias_shift,
             " is outside [0, ", kMaxBiasShift, "]");
  GHNQ_CHECK(std::isfinite(l.a_scale) && l.a_scale > 0.0f, value_error, w, ": input_scale = ", l.a_scale,
             " is not finite and positive");
  GHNQ_CHECK(l.a_zero_point >= l.a_qmin() && l.a_zero_point <= l.a_qmax(), value_error, w, ": input_zero_point = ",
             l.a_zero_point, " is outside [", l.a_qmin(), ", ", l.a_qmax(), "]");
  GHNQ_CHECK(std::ldexp(l.acc_bound(), l.bias_shift) < std::ldexp(1.0, 30), value_error, w, ": fan-in ", l.fan_in(),
             " with ", l.w_bits, "-bit weights, ", l.a_bits, "-bit inputs and bias_shift ", l.bias_shift,
             " could overflow the int32 accumulator");
}

}  // namespace detail

/// value_error unless `m` is a consistent integer model: every live conv / linear has a layer (and
/// nothing else does), folded / unfolded batch norms follow the folding rule, bit-widths, code
/// ranges, scales and sizes are valid, pass-through ops keep their input's scale, and no live op
/// is unsupported.
inline void validate_int_model(const int_model& m) {
  const auto& net = m.net;
  const auto live = detail::int_live_ops(net);
  detail::int_check_supported(net, live, "int_model");
  const auto fold = detail::int_fold_targets(net, live);
  std::size_t li = 0, ni = 0, fi = 0;
  GHNQ_CHECK(m.tensor_scale.size() == net.ops.size(), value_error, "int_model: ", m.tensor_scale.size(),
             " tensor scales for ", net.ops.size(), " ops");
  for (std::size_t i = 0; i < net.ops.size(); ++i) {
    const auto& o = net.ops[i];
    const int ii = static_cast<int>(i);
    if (!live[i]) continue;
    GHNQ_CHECK(std::isfinite(m.tensor_scale[i]) && m.tensor_scale[i] > 0.0f, value_error, "int_model: tensor scale of ",
               detail::int_op_label(net, ii), " is ", m.tensor_scale[i], ", not finite and positive");
    if (o.type == arch::op_type::conv || o.type == arch::op_type::linear) {
      GHNQ_CHECK(li < m.layers.size() && m.layers[li].op == ii, value_error, "int_model: no layer for live ",
                 detail::int_op_label(net, ii), " (layers must list the live conv / linear ops in op order)");
      detail::int_check_layer(net, m.layers[li]);
      ++li;
    } else if (o.type == arch::op_type::batch_norm) {
      if (fold[i] >= 0) {
        GHNQ_CHECK(fi < m.folded_bn.size() && m.folded_bn[fi] == ii, value_error, "int_model: ",
                   detail::int_op_label(net, ii), " must be listed as folded");
        ++fi;
      } else {
        GHNQ_CHECK(ni < m.norms.size() && m.norms[ni].op == ii, value_error, "int_model: no running statistics for ",
                   detail::int_op_label(net, ii));
        const auto& nm = m.norms[ni];
        const auto c = static_cast<std::size_t>(o.c);
        GHNQ_CHECK(nm.mean.size() == c && nm.var.size() == c && nm.gamma.size() == c && nm.beta.size() == c,
                   value_error, "int_model: batch norm ", detail::int_op_label(net, ii), " needs ", c, " values per statistic");
        for (std::size_t k = 0; k < c; ++k)
          GHNQ_CHECK(std::isfinite(nm.mean[k]) && std::isfinite(nm.var[k]) && nm.var[k] >= 0.0f &&
                         std::isfinite(nm.gamma[k]) && std::isfinite(nm.beta[k]),
                     value_error, "int_model: batch norm ", detail::int_op_label(net, ii), ": channel ", k,
                     " has a non-finite statistic or a negative variance");
        ++ni;
      }
    }
    const bool same = detail::int_keeps_scale(o) || (o.type == arch::op_type::batch_norm && fold[i] >= 0);
    if (same)
      GHNQ_CHECK(m.tensor_scale[i] == m.tensor_scale[static_cast<std::size_t>(o.inputs[0])], value_error,
                 "int_model: ", detail::int_op_label(net, ii), " cannot change the scale of its input");
  }
  GHNQ_CHECK(li == m.layers.size() && ni == m.norms.size() && fi == m.folded_bn.size(), value_error,
             "int_model: layers / norms / folded_bn list ops that are not live conv / linear / batch-norm ops");
  const int_layer* in = m.input_layer >= 0 ? m.layer_of(m.input_layer) : nullptr;
  GHNQ_CHECK(in != nullptr && net.ops[static_cast<std::size_t>(m.input_layer)].inputs[0] == 0, value_error,
             "int_model: input_layer ", m.input_layer, " is not a layer reading the network input");
  GHNQ_CHECK(m.tensor_scale[0] == in->a_scale, value_error, "int_model: the input's tensor scale ", m.tensor_scale[0],
             " differs from the image quantizer's scale ", in->a_scale);
  GHNQ_CHECK(m.glue_bits >= 8 && m.glue_bits <= 28, value_error, "int_model: glue_bits = ", m.glue_bits,
             " is outside [8, 28]");
}

// ---- float fake-quant reference ------------------------------------------------------------------

/// Where the activation quantizers of the reference take their scales from.
enum class act_scales : std::uint8_t {
  fixed,      ///< the model's fixed scales and zero points (what the integer executor uses)
  per_batch,  ///< the executor's rule: statistics of the current batch (exec::quantize_input)
};

/// The exported network in float with fake quantization: weights w_scale[c] * code, float biases,
/// unfolded BNs with running statistics, activations fake-quantized at every conv / linear input
/// (fixed: x_hat = s (clamp(nearbyint(x (1/s)) + z, q_min, q_max) - z); per_batch: exactly
/// exec::quantize_input with the model's quant_config and optional predicted factors, so that
/// forward(x, per_batch, qf) equals executor::forward with fold_bn, running statistics and the same
/// quant_config). Everything else runs the nn ops the executor runs. Holds a pointer to `m`, which
/// must outlive it; forward() may be called from several threads at once.
class fake_quant_reference {
 public:
  using var_t = autograd::var<float>;
  using tape_t = autograd::tape<float>;
  /// Called with (op index, value): the output of every op that runs, or the (unquantized) input of
  /// every layer.
  using hook = std::function<void(int, const tensor<float>&)>;

  /// \param int_bias use the int32 biases (bias[c] * w_scale[c] * a_scale * 2^-bias_shift) instead of bias_float:
  ///                 separates the effect of bias quantization from the rest of the integer arithmetic.
  explicit fake_quant_reference(const int_model& m, bool int_bias = false) : m_(&m) {
    const auto& net = m.net;
    live_ = detail::int_live_ops(net);
    const std::size_t n = net.ops.size();
    w_.assign(n, var_t());
    b_.assign(n, var_t());
    gamma_.assign(n, var_t());
    beta_.assign(n, var_t());
    layer_.assign(n, nullptr);
    bn_.resize(n);
    for (const auto& l : m.layers) {
      tensor<float> w(l.w_shape);
      const std::int64_t per = l.fan_in();
      for (std::int64_t k = 0; k < w.numel(); ++k)
        w.data()[k] = static_cast<float>(l.w_codes[static_cast<std::size_t>(k)]) * l.w_scale[static_cast<std::size_t>(k / per)];
      w_[static_cast<std::size_t>(l.op)] = var_t(w, false);
      std::vector<float> b = l.bias_float;
      if (int_bias)
        for (std::size_t c = 0; c < b.size(); ++c)
          b[c] = static_cast<float>(std::ldexp(static_cast<double>(l.bias[c]) * l.w_scale[c] * static_cast<double>(l.a_scale),
                                               -l.bias_shift));
      b_[static_cast<std::size_t>(l.op)] = var_t(tensor<float>::from({l.out_channels()}, b), false);
      layer_[static_cast<std::size_t>(l.op)] = &l;
    }
    for (const auto& nm : m.norms) {
      const auto c = static_cast<std::int64_t>(nm.mean.size());
      auto& st = bn_[static_cast<std::size_t>(nm.op)];
      st.running_mean = tensor<float>::from({c}, nm.mean);
      st.running_var = tensor<float>::from({c}, nm.var);
      gamma_[static_cast<std::size_t>(nm.op)] = var_t(tensor<float>::from({c}, nm.gamma), false);
      beta_[static_cast<std::size_t>(nm.op)] = var_t(tensor<float>::from({c}, nm.beta), false);
    }
    folded_.assign(n, false);
    for (int j : m.folded_bn) folded_[static_cast<std::size_t>(j)] = true;
  }

  /// Logits [N, classes] of normalized images x [N, C, H, W].
  tensor<float> forward(const tensor<float>& x, act_scales mode = act_scales::fixed,
                        const quant_factors<float, backend::cpu_t>* qf = nullptr) const {
    return run(x, mode, qf, hook(), hook());
  }

  /// The value of op `i` alone from given values of its inputs (in the order of the op's inputs;
  /// `batch` sizes a `zero` op). For checking one op of another executor against this reference.
  tensor<float> op_value(int i, const std::vector<tensor<float>>& inputs, std::int64_t batch,
                         act_scales mode = act_scales::fixed) const {
    const auto& o = m_->net.ops.at(static_cast<std::size_t>(i));
    GHNQ_CHECK(inputs.size() == o.inputs.size() && o.type != arch::op_type::input, value_error,
               "fake_quant_reference::op_value: ", inputs.size(), " inputs for ", detail::int_op_label(m_->net, i));
    tape_t tp;
    autograd::no_grad<tape_t> ng(tp);
    std::vector<var_t> v(m_->net.ops.size());
    for (std::size_t k = 0; k < inputs.size(); ++k) v[static_cast<std::size_t>(o.inputs[k])] = var_t(inputs[k].contiguous(), false);
    const var_t x(tensor<float>::zeros({batch, 1, 1, 1}), false);
    return run_op(tp, static_cast<std::size_t>(i), x, v, mode, nullptr, hook()).value();
  }

  /// forward() with observation hooks (calibration).
  tensor<float> run(const tensor<float>& x, act_scales mode, const quant_factors<float, backend::cpu_t>* qf,
                    const hook& on_output, const hook& on_layer_input) const {
    const auto& net = m_->net;
    GHNQ_CHECK(x.rank() == 4 && x.dim(1) == net.in_channels && x.dim(2) == net.in_h && x.dim(3) == net.in_w,
               shape_error, "fake_quant_reference: input ", x.shape(), " does not match the network's input [N, ",
               net.in_channels, ", ", net.in_h, ", ", net.in_w, "]");
    tape_t tp;
    autograd::no_grad<tape_t> ng(tp);
    const std::size_t n = net.ops.size();
    std::vector<var_t> v(n);
    std::vector<int> last(n, -1);
    for (std::size_t i = 0; i < n; ++i)
      if (live_[i])
        for (int in : net.ops[i].inputs) last[static_cast<std::size_t>(in)] = static_cast<int>(i);
    const var_t xin(x.contiguous(), false);
    for (std::size_t i = 0; i < n; ++i) {
      if (!live_[i]) continue;
      v[i] = run_op(tp, i, xin, v, mode, qf, on_layer_input);
      if (on_output) on_output(static_cast<int>(i), v[i].value());
      if (static_cast<int>(i) != net.output)
        for (int in : net.ops[i].inputs)
          if (last[static_cast<std::size_t>(in)] == static_cast<int>(i) && in != net.output) v[static_cast<std::size_t>(in)] = var_t();
    }
    return v[static_cast<std::size_t>(net.output)].value();
  }

 private:
  var_t quant_in(tape_t& tp, std::size_t i, const var_t& x, act_scales mode,
                 const quant_factors<float, backend::cpu_t>* qf) const {
    const int_layer& l = *layer_[i];
    if (mode == act_scales::fixed) {
      quant::uniform_params<float> p;
      p.scale = {l.a_scale};
      p.zero_point = {static_cast<float>(l.a_zero_point)};
      p.q_min = l.a_qmin();
      p.q_max = l.a_qmax();
      return quant::fake_quant(tp, x.value().is_contiguous() ? x : var_t(x.value().contiguous(), false), p);
    }
    op_quant pq;
    pq.w_bits = l.w_bits;
    pq.a_bits = l.a_bits;
    pq.a_signed = l.a_signed;
    quant_config q = m_->quant;
    q.noise = false;
    const var_t f = qf != nullptr && !qf->input.empty() ? qf->input[i] : var_t();
    return quantize_input(tp, x.value().is_contiguous() ? x : var_t(x.value().contiguous(), false), pq, q, f);
  }

  var_t run_op(tape_t& tp, std::size_t i, const var_t& x, const std::vector<var_t>& v, act_scales mode,
               const quant_factors<float, backend::cpu_t>* qf, const hook& on_layer_input) const {
    const arch::op& o = m_->net.ops[i];
    auto in = [&](std::size_t k) -> const var_t& { return v[static_cast<std::size_t>(o.inputs[k])]; };
    using arch::op_type;
    switch (o.type) {
      case op_type::input: return x;
      case op_type::conv: {
        const nn::conv2d_params cp = detail::conv_params_of(o);
        if (on_layer_input) on_layer_input(static_cast<int>(i), in(0).value());
        return nn::conv2d(tp, quant_in(tp, i, in(0), mode, qf), w_[i], b_[i], cp);
      }
      case op_type::linear:
        if (on_layer_input) on_layer_input(static_cast<int>(i), in(0).value());
        return nn::linear(tp, quant_in(tp, i, in(0), mode, qf), w_[i], b_[i]);
      case op_type::batch_norm: {
        if (folded_[i]) return in(0);
        nn::batch_norm_options bo;
        bo.training = false;
        return nn::batch_norm2d(tp, in(0), gamma_[i], beta_[i], &bn_[i], bo);
      }
      case op_type::dropout: return in(0);
      default:  // parameter-free: the shared dispatch (whose switch lists every op type)
        return detail::run_plain_op(tp, o, x.shape()[0], in);
    }
  }

  const int_model* m_;
  std::vector<bool> live_, folded_;
  std::vector<var_t> w_, b_, gamma_, beta_;
  std::vector<const int_layer*> layer_;
  mutable std::vector<nn::batch_norm_state<float>> bn_;  // read only (eval mode); non-const for the nn API
};

// ---- export --------------------------------------------------------------------------------------

namespace detail {

/// Per-op calibration statistics.
struct int_calib_stats {
  std::vector<double> out_absmax;                   ///< max |value| over all batches, per op
  std::vector<std::vector<double>> in_lo, in_hi, in_mean_abs;  ///< per layer op: one entry per batch
};

inline double int_combine(const std::vector<double>& v, calib_rule r, bool lower) {
  if (v.empty()) return 0.0;
  if (r == calib_rule::mean) {
    double s = 0.0;
    for (double x : v) s += x;
    return s / static_cast<double>(v.size());
  }
  return lower ? *std::min_element(v.begin(), v.end()) : *std::max_element(v.begin(), v.end());
}

inline double int_log_factor(const autograd::var<float>& f) {
  if (!f.defined()) return 0.0;
  const auto h = f.value().to_vector();
  GHNQ_CHECK(h.size() == 1, shape_error, "make_int_model: an input log-factor must hold one value, got ", f.shape());
  return static_cast<double>(h[0]);
}

}  // namespace detail

/// Integer model of `net` with float parameters `params` (one var per arch::parameters(net), as the
/// GHN predicts them), batch-norm running statistics `bn` (one per batch-norm op in op order, e.g.
/// executor::bn_states() after executor::calibrate), quantization `q`, calibration images `calib`
/// (K >= 1 normalized batches [B, C, H, W]) and optional predicted log-factors `qf`
/// (hypernet::predict_quant). Rules: see the file comment. Throws value_error for a float conv /
/// linear op, bit-widths above 8, noise, an unsupported op (sigmoid), no layer reading the input;
/// shape_error for parameters that do not match the network.
inline int_model make_int_model(const arch::network& net_in, const std::vector<autograd::var<float>>& params,
                                const std::vector<nn::batch_norm_state<float>>& bn, const quant_config& q,
                                const std::vector<tensor<float>>& calib,
                                const quant_factors<float, backend::cpu_t>* qf = nullptr,
                                const export_options& opt = {}) {
  using arch::op_type;
  using var_t = autograd::var<float>;
  arch::network net = net_in;
  arch::infer_shapes(net);
  const auto infos = arch::parameters(net);
  GHNQ_CHECK(params.size() == infos.size(), shape_error, "make_int_model: ", params.size(),
             " parameter tensors given, the network has ", infos.size());
  const std::size_t n = net.ops.size();
  std::vector<int> wi(n, -1), bi(n, -1), bn_index(n, -1);
  for (std::size_t k = 0; k < infos.size(); ++k) {
    GHNQ_CHECK(params[k].defined() && params[k].shape() == infos[k].shape, shape_error, "make_int_model: parameter ", k,
               " (", infos[k].name, ") has shape ", params[k].defined() ? params[k].shape() : ghnq::shape{},
               ", expected ", infos[k].shape);
    (infos[k].role == arch::param_role::weight ? wi : bi)[static_cast<std::size_t>(infos[k].op)] = static_cast<int>(k);
  }
  int nbn = 0;
  for (std::size_t i = 0; i < n; ++i)
    if (net.ops[i].type == op_type::batch_norm) bn_index[i] = nbn++;
  GHNQ_CHECK(static_cast<int>(bn.size()) == nbn, value_error, "make_int_model: ", bn.size(),
             " batch-norm states given, the network has ", nbn, " batch norms");
  GHNQ_CHECK(q.enabled(), value_error, "make_int_model: quant_config ", q.name(), " quantizes nothing");
  GHNQ_CHECK(!q.noise, value_error, "make_int_model: pseudo-quantization noise is a training mode; export rounds");
  GHNQ_CHECK(!calib.empty(), value_error, "make_int_model: needs at least one calibration batch");
  GHNQ_CHECK(opt.max_bias_shift >= 0 && opt.max_bias_shift <= kMaxBiasShift, value_error,
             "make_int_model: max_bias_shift = ", opt.max_bias_shift, " is outside [0, ", kMaxBiasShift, "]");
  GHNQ_CHECK(opt.glue_bits >= 8 && opt.glue_bits <= 28, value_error, "make_int_model: glue_bits = ", opt.glue_bits,
             " is outside [8, 28]");
  GHNQ_CHECK(qf == nullptr || ((qf->weight.empty() || qf->weight.size() == n) && (qf->input.empty() || qf->input.size() == n)),
             shape_error, "make_int_model: quant_factors must hold one entry per op (", n, ")");
  const auto plan = plan_quantization(net, q);
  const auto live = detail::int_live_ops(net);
  detail::int_check_supported(net, live, "make_int_model");
  const auto fold = detail::int_fold_targets(net, live);
  std::vector<int> folded_from(n, -1);  // conv -> its folded BN
  for (std::size_t j = 0; j < n; ++j)
    if (fold[j] >= 0) folded_from[static_cast<std::size_t>(fold[j])] = static_cast<int>(j);

  auto host = [](const var_t& v, std::int64_t count, float fill) {
    if (!v.defined()) return std::vector<float>(static_cast<std::size_t>(count), fill);
    return v.value().contiguous().to_vector();
  };

  int_model m;
  m.net = net;
  m.quant = q;
  m.calib_batches = static_cast<int>(calib.size());
  m.rule = opt.rule;
  m.glue_bits = opt.glue_bits;
  constexpr double eps = nn::batch_norm_options{}.eps;
  for (std::size_t i = 0; i < n; ++i) {
    const auto& o = net.ops[i];
    if (!live[i]) continue;
    if (o.type == op_type::batch_norm) {
      if (fold[i] >= 0) {
        m.folded_bn.push_back(static_cast<int>(i));
        continue;
      }
      const auto& st = bn[static_cast<std::size_t>(bn_index[i])];
      int_norm nm;
      nm.op = static_cast<int>(i);
      nm.mean = st.running_mean.contiguous().to_vector();
      nm.var = st.running_var.contiguous().to_vector();
      nm.gamma = host(wi[i] >= 0 ? params[static_cast<std::size_t>(wi[i])] : var_t(), o.c, 1.0f);
      nm.beta = host(bi[i] >= 0 ? params[static_cast<std::size_t>(bi[i])] : var_t(), o.c, 0.0f);
      GHNQ_CHECK(static_cast<int>(nm.mean.size()) == o.c && static_cast<int>(nm.var.size()) == o.c, shape_error,
                 "make_int_model: running statistics of ", detail::int_op_label(net, static_cast<int>(i)),
                 " do not have ", o.c, " channels");
      m.norms.push_back(std::move(nm));
      continue;
    }
    if (o.type != op_type::conv && o.type != op_type::linear) continue;
    const auto& p = plan[i];
    const std::string label = detail::int_op_label(net, static_cast<int>(i));
    GHNQ_CHECK(p.w_bits > 0 && p.a_bits > 0, value_error, "make_int_model: ", label,
               " is not quantized (weights ", p.w_bits ? std::to_string(p.w_bits) : std::string("float"), ", inputs ",
               p.a_bits ? std::to_string(p.a_bits) : std::string("float"),
               "); the integer executor needs quantized weights and inputs on every conv / linear");
    const bool extreme = q.wq == weight_quantizer::binary || q.wq == weight_quantizer::ternary;
    GHNQ_CHECK(extreme || p.w_bits <= 8, value_error, "make_int_model: ", label, ": ", p.w_bits,
               "-bit weights; integer export supports at most 8");
    GHNQ_CHECK(p.a_bits <= 8, value_error, "make_int_model: ", label, ": ", p.a_bits,
               "-bit inputs; integer export supports at most 8");
    // The float weight and bias the executor quantizes (BN folded as run_options::fold_bn does).
    tensor<float> w = params[static_cast<std::size_t>(wi[i])].value().contiguous().clone();
    const std::int64_t oc = w.dim(0), per = w.numel() / oc;
    std::vector<float> b = host(bi[i] >= 0 ? params[static_cast<std::size_t>(bi[i])] : var_t(), oc, 0.0f);
    if (folded_from[i] >= 0) {
      const auto j = static_cast<std::size_t>(folded_from[i]);
      const auto& st = bn[static_cast<std::size_t>(bn_index[j])];
      const auto mean = st.running_mean.contiguous().to_vector(), var = st.running_var.contiguous().to_vector();
      const auto g = host(wi[j] >= 0 ? params[static_cast<std::size_t>(wi[j])] : var_t(), oc, 1.0f);
      const auto beta = host(bi[j] >= 0 ? params[static_cast<std::size_t>(bi[j])] : var_t(), oc, 0.0f);
      for (std::int64_t k = 0; k < oc; ++k) {
        const auto kk = static_cast<std::size_t>(k);
        const double sc = static_cast<double>(g[kk]) / std::sqrt(static_cast<double>(var[kk]) + eps);
        for (std::int64_t e = 0; e < per; ++e) w.data()[k * per + e] = static_cast<float>(w.data()[k * per + e] * sc);
        b[kk] = static_cast<float>((static_cast<double>(b[kk]) - static_cast<double>(mean[kk])) * sc +
                                   static_cast<double>(beta[kk]));
      }
    }
    // Fake-quantized weight, exactly as the executor computes it, and its per-channel step.
    autograd::tape<float> tp;
    autograd::no_grad<autograd::tape<float>> ng(tp);
    const var_t wv(w, false);
    const var_t fw = qf != nullptr && !qf->weight.empty() ? qf->weight[i] : var_t();
    const auto w_hat = quantize_weight(tp, wv, p, q, fw).value().contiguous().to_vector();
    std::vector<float> s(static_cast<std::size_t>(oc));
    int code_bits = std::max(2, p.w_bits);
    switch (q.wq) {
      case weight_quantizer::binary:
      case weight_quantizer::ternary: {
        code_bits = 2;
        const double f = q.wq == weight_quantizer::binary ? 1.0 : quant::kTernaryFactor;
        s = quant::mean_abs(tp, wv, quant::per_channel, f).value().to_vector();
        break;
      }
      case weight_quantizer::lsq: {
        const auto [qmin, qmax] = quant::code_limits(code_bits, true);
        (void)qmin;
        const auto stat = detail::detached_mean_abs(wv, quant::per_channel, 2.0 / std::sqrt(static_cast<double>(qmax)));
        const auto sv = detail::scaled(tp, fw, stat).value().to_vector();
        for (std::int64_t k = 0; k < oc; ++k) s[static_cast<std::size_t>(k)] = sv[sv.size() == 1 ? 0 : static_cast<std::size_t>(k)];
        break;
      }
      case weight_quantizer::uniform:
      default: {
        const auto [qmin, qmax] = quant::code_limits(code_bits, true);
        quant::observer obs(quant::observer_kind::current, quant::per_channel, 0.1, "weight");
        obs.observe(w);
        s = quant::make_uniform_params<float>(obs.lo(), obs.hi(), qmin, qmax, quant::mode::symmetric).scale;
      }
    }
    int_layer l;
    l.op = static_cast<int>(i);
    l.w_bits = code_bits;
    l.a_signed = p.a_signed;
    l.a_bits = p.a_signed ? std::max(2, p.a_bits) : p.a_bits;
    l.w_shape = w.shape();
    l.w_codes.resize(static_cast<std::size_t>(w.numel()));
    l.w_scale.resize(static_cast<std::size_t>(oc));
    for (std::int64_t k = 0; k < oc; ++k) {
      const auto kk = static_cast<std::size_t>(k);
      const float sc = std::max(s[kk], static_cast<float>(quant::kScaleEps));
      l.w_scale[kk] = sc;
      for (std::int64_t e = 0; e < per; ++e) {
        const float wh = w_hat[static_cast<std::size_t>(k * per + e)];
        const float c = std::min(std::max(std::nearbyint(wh / sc), static_cast<float>(l.w_qmin())), static_cast<float>(l.w_qmax()));
        GHNQ_CHECK(std::abs(c * sc - wh) <= 1e-3f * sc, value_error, "make_int_model: ", label,
                   ": the fake-quantized weight ", wh, " is not a multiple of the channel step ", sc,
                   " (internal error)");
        l.w_codes[static_cast<std::size_t>(k * per + e)] = static_cast<std::int8_t>(c);
      }
    }
    l.bias_float = b;
    l.bias.assign(static_cast<std::size_t>(oc), 0);
    m.layers.push_back(std::move(l));
    if (o.inputs[0] == 0 && m.input_layer < 0) m.input_layer = static_cast<int>(i);
  }
  GHNQ_CHECK(m.input_layer >= 0, value_error,
             "make_int_model: no conv / linear op reads the network input, so there is no image quantizer");

  // Calibration: the executor's per-batch quantization on K batches; statistics of every value.
  detail::int_calib_stats st;
  st.out_absmax.assign(n, 0.0);
  st.in_lo.resize(n);
  st.in_hi.resize(n);
  st.in_mean_abs.resize(n);
  {
    fake_quant_reference ref(m);
    auto on_out = [&](int op, const tensor<float>& v) {
      double a = 0.0;
      const float* d = v.data();
      for (std::int64_t k = 0; k < v.numel(); ++k) a = std::max(a, static_cast<double>(std::abs(d[k])));
      GHNQ_CHECK(std::isfinite(a), value_error, "make_int_model: calibration: ", detail::int_op_label(net, op),
                 " produced a non-finite value");
      st.out_absmax[static_cast<std::size_t>(op)] = std::max(st.out_absmax[static_cast<std::size_t>(op)], a);
    };
    auto on_in = [&](int op, const tensor<float>& v) {
      const auto c = v.contiguous();
      double lo = std::numeric_limits<double>::infinity(), hi = -lo, sa = 0.0;
      for (std::int64_t k = 0; k < c.numel(); ++k) {
        const double x = c.data()[k];
        lo = std::min(lo, x);
        hi = std::max(hi, x);
        sa += std::abs(x);
      }
      st.in_lo[static_cast<std::size_t>(op)].push_back(lo);
      st.in_hi[static_cast<std::size_t>(op)].push_back(hi);
      st.in_mean_abs[static_cast<std::size_t>(op)].push_back(sa / static_cast<double>(std::max<std::int64_t>(1, c.numel())));
    };
    for (const auto& xb : calib) ref.run(xb, act_scales::per_batch, qf, on_out, on_in);
  }

  // Fixed input quantizers.
  for (auto& l : m.layers) {
    const auto i = static_cast<std::size_t>(l.op);
    const act_quantizer kind = (q.aq == act_quantizer::pact && l.a_signed) ? act_quantizer::lsq : q.aq;
    const double f = qf != nullptr && !qf->input.empty() ? detail::int_log_factor(qf->input[i]) : 0.0;
    const int qmin = l.a_qmin(), qmax = l.a_qmax();
    const double eps_s = quant::kScaleEps;
    switch (kind) {
      case act_quantizer::lsq: {
        const double stat = detail::int_combine(st.in_mean_abs[i], calib_rule::mean, false) * 2.0 /
                            std::sqrt(static_cast<double>(qmax));
        l.a_scale = static_cast<float>(std::max(std::exp(f) * stat, eps_s));
        l.a_zero_point = 0;
        break;
      }
      case act_quantizer::pact: {
        const double hi = std::max(detail::int_combine(st.in_hi[i], m.rule, false), eps_s);
        const double alpha = std::max(std::exp(f) * hi, eps_s);
        l.a_scale = static_cast<float>(alpha / static_cast<double>((1 << l.a_bits) - 1));
        l.a_zero_point = 0;
        break;
      }
      case act_quantizer::uniform:
      default: {
        const double lo = detail::int_combine(st.in_lo[i], m.rule, true);
        const double hi = detail::int_combine(st.in_hi[i], m.rule, false);
        const auto up = quant::make_uniform_params<float>({lo}, {hi}, qmin, qmax,
                                                          l.a_signed ? quant::mode::symmetric : quant::mode::asymmetric);
        l.a_scale = up.scale[0];
        l.a_zero_point = static_cast<std::int32_t>(up.zero_point[0]);
      }
    }
    // Room for the int32 biases: 2^30 headroom at the accumulator's step (see the file comment).
    const std::int64_t oc = l.out_channels(), per = l.fan_in();
    const double lim = std::ldexp(1.0, 30);
    for (std::int64_t c = 0; c < oc; ++c) {
      const auto cc = static_cast<std::size_t>(c);
      const double bf = l.bias_float[cc];
      if (std::abs(std::nearbyint(bf / (static_cast<double>(l.w_scale[cc]) * static_cast<double>(l.a_scale)))) > lim) {
        const float old = l.w_scale[cc];
        float ns = static_cast<float>(std::abs(bf) / (static_cast<double>(l.a_scale) * lim));
        while (std::abs(std::nearbyint(bf / (static_cast<double>(ns) * l.a_scale))) > lim) ns = std::nextafter(ns, 1e30f);
        l.w_scale[cc] = ns;
        for (std::int64_t e = 0; e < per; ++e) {
          auto& code = l.w_codes[static_cast<std::size_t>(c * per + e)];
          const float v = std::nearbyint(static_cast<float>(code) * old / ns);
          code = static_cast<std::int8_t>(std::min(std::max(v, static_cast<float>(l.w_qmin())), static_cast<float>(l.w_qmax())));
        }
      }
    }
    // The finest bias step that keeps bias + 2^s sum w q within int32 (see the file comment).
    auto bias_code = [&](std::size_t c, int sh) {
      return std::nearbyint(std::ldexp(static_cast<double>(l.bias_float[c]) /
                                           (static_cast<double>(l.w_scale[c]) * static_cast<double>(l.a_scale)), sh));
    };
    auto fits = [&](int sh) {
      if (!(std::ldexp(l.acc_bound(), sh) < lim)) return false;
      for (std::size_t c = 0; c < l.bias_float.size(); ++c)
        if (std::abs(bias_code(c, sh)) > lim) return false;
      return true;
    };
    l.bias_shift = 0;
    while (l.bias_shift < opt.max_bias_shift && fits(l.bias_shift + 1)) ++l.bias_shift;
    for (std::size_t c = 0; c < l.bias.size(); ++c) l.bias[c] = static_cast<std::int32_t>(bias_code(c, l.bias_shift));
  }

  // Scales of the int32 values.
  m.tensor_scale.assign(n, 0.0f);
  const double unit = std::ldexp(1.0, -opt.glue_bits), floor_ratio = std::ldexp(1.0, -20);
  for (std::size_t i = 0; i < n; ++i) {
    if (!live[i]) continue;
    const auto& o = net.ops[i];
    auto sc = [&](int k) { return static_cast<double>(m.tensor_scale[static_cast<std::size_t>(o.inputs[static_cast<std::size_t>(k)])]); };
    const double r = st.out_absmax[i] * unit;
    double s = 0.0;
    if (o.type == op_type::input) {
      s = m.layer_of(m.input_layer)->a_scale;
    } else if (detail::int_keeps_scale(o) || (o.type == op_type::batch_norm && fold[i] >= 0)) {
      s = sc(0);
    } else {
      double lo = 0.0;  // the scale must not be finer than this (rescale factors into it <= 2^20)
      switch (o.type) {
        case op_type::conv:
        case op_type::linear: {
          const auto* l = m.layer_of(static_cast<int>(i));
          for (float ws : l->w_scale) lo = std::max(lo, static_cast<double>(ws) * l->a_scale * floor_ratio);
          break;
        }
        case op_type::batch_norm: {
          const auto* nm = m.norm_of(static_cast<int>(i));
          for (std::size_t c = 0; c < nm->mean.size(); ++c)
            lo = std::max(lo, std::abs(static_cast<double>(nm->gamma[c])) / std::sqrt(static_cast<double>(nm->var[c]) + eps) *
                                  sc(0) * floor_ratio);
          break;
        }
        case op_type::sum:
        case op_type::concat:
          for (std::size_t k = 0; k < o.inputs.size(); ++k)
            if (net.ops[static_cast<std::size_t>(o.inputs[k])].type != op_type::zero)
              lo = std::max(lo, sc(static_cast<int>(k)) * floor_ratio);
          break;
        case op_type::hardswish: lo = sc(0) * floor_ratio; break;
        case op_type::channel_scale: lo = sc(0) * sc(1) * floor_ratio; break;
        case op_type::zero: lo = 1.0; break;
        default: break;
      }
      s = std::max(r, lo);
      if (!(s > 0.0)) s = unit;
    }
    m.tensor_scale[i] = static_cast<float>(s);
    if (o.type == op_type::input) continue;
    if (!(m.tensor_scale[i] > 0.0f) || !std::isfinite(m.tensor_scale[i])) m.tensor_scale[i] = static_cast<float>(unit);
  }
  validate_int_model(m);
  return m;
}

/// make_int_model with the batch-norm running statistics computed first from the same calibration
/// batches in float (executor::calibrate: cumulative average of the batch statistics), which is
/// eval_bn::calibrate_fold's protocol.
inline int_model make_int_model(const arch::network& net, const std::vector<autograd::var<float>>& params,
                                const quant_config& q, const std::vector<tensor<float>>& calib,
                                const quant_factors<float, backend::cpu_t>* qf = nullptr,
                                const export_options& opt = {}) {
  executor<backend::cpu_t, float> ex(net);
  std::vector<autograd::var<float>> xs;
  for (const auto& t : calib) xs.emplace_back(t, false);
  ex.calibrate(params, xs);
  return make_int_model(net, params, ex.bn_states(), q, calib, qf, opt);
}

// ---- safetensors I/O -----------------------------------------------------------------------------

namespace detail {

inline nlohmann::json int_quant_json(const quant_config& q) {
  nlohmann::json j;
  j["name"] = q.name();
  j["w_bits"] = q.w_bits;
  j["a_bits"] = q.a_bits;
  j["first_last_bits"] = q.first_last_bits;
  j["wq"] = to_string(q.wq);
  j["aq"] = to_string(q.aq);
  auto ov = [](const std::map<int, int>& mp) {
    auto a = nlohmann::json::array();
    for (const auto& [k, v] : mp) a.push_back({k, v});
    return a;
  };
  j["w_bits_of_op"] = ov(q.w_bits_of_op);
  j["a_bits_of_op"] = ov(q.a_bits_of_op);
  return j;
}

inline std::string int_tensor_name(int op, const char* field) { return "ops." + std::to_string(op) + "." + field; }

}  // namespace detail

/// Writes `m` to `path` atomically (safetensors; layout in the file comment). value_error when the
/// model is inconsistent (validate_int_model), io_error naming the file when it cannot be written.
inline void save_int_model(const std::string& path, const int_model& m) {
  validate_int_model(m);
  io::safetensors_writer w;
  nlohmann::json meta;
  meta["format"] = kIntModelFormat;
  meta["arch"] = arch::to_json(m.net);
  meta["quant"] = detail::int_quant_json(m.quant);
  meta["calibration"] = {{"batches", m.calib_batches}, {"rule", to_string(m.rule)}, {"glue_bits", m.glue_bits}};
  meta["input_layer"] = m.input_layer;
  meta["folded_bn"] = m.folded_bn;
  auto layers = nlohmann::json::array();
  for (const auto& l : m.layers) {
    const int width = packed_width(l.w_bits);
    layers.push_back({{"op", l.op}, {"w_bits", l.w_bits}, {"a_bits", l.a_bits}, {"a_signed", l.a_signed},
                      {"storage", width == 8 ? "I8" : width == 4 ? "U8x2" : "U8x4"}, {"bias_shift", l.bias_shift}});
    const std::string wname = detail::int_tensor_name(l.op, "weight");
    if (width == 8) {
      w.add(wname, tensor<std::int8_t>::from(l.w_shape, l.w_codes));
    } else {
      const auto bytes = pack_codes(l.w_codes, l.w_bits);
      w.add_raw(wname, io::st_dtype::u8, {static_cast<std::int64_t>(bytes.size())}, bytes.data(), bytes.size());
    }
    const std::int64_t oc = l.out_channels();
    w.add(detail::int_tensor_name(l.op, "weight_scale"), tensor<float>::from({oc}, l.w_scale));
    w.add(detail::int_tensor_name(l.op, "bias"), tensor<std::int32_t>::from({oc}, l.bias));
    w.add(detail::int_tensor_name(l.op, "bias_float"), tensor<float>::from({oc}, l.bias_float));
    w.add(detail::int_tensor_name(l.op, "input_scale"), tensor<float>::from({1}, {l.a_scale}));
    w.add(detail::int_tensor_name(l.op, "input_zero_point"), tensor<std::int32_t>::from({1}, {l.a_zero_point}));
  }
  meta["layers"] = layers;
  for (const auto& nm : m.norms) {
    const auto c = static_cast<std::int64_t>(nm.mean.size());
    w.add(detail::int_tensor_name(nm.op, "bn_mean"), tensor<float>::from({c}, nm.mean));
    w.add(detail::int_tensor_name(nm.op, "bn_var"), tensor<float>::from({c}, nm.var));
    w.add(detail::int_tensor_name(nm.op, "bn_gamma"), tensor<float>::from({c}, nm.gamma));
    w.add(detail::int_tensor_name(nm.op, "bn_beta"), tensor<float>::from({c}, nm.beta));
  }
  w.add("tensor_scales", tensor<float>::from({static_cast<std::int64_t>(m.tensor_scale.size())}, m.tensor_scale));
  meta["conventions"] = {
      {"weight", "w[c, ...] = weight_scale[c] * code; signed two's complement codes of w_bits bits, zero point 0"},
      {"packing", "I8: one code per byte, the weight's shape. U8x2 / U8x4: 2 / 4 codes per byte, code i in bits "
                  "[(i % per) * width, +width) of byte i / per (first code in the low bits), sign-extended from the "
                  "storage width; unused bits 0"},
      {"activation", "x = input_scale * (code - input_zero_point), codes of a_bits bits, signed or unsigned"},
      {"bias", "int32 at scale weight_scale[c] * input_scale * 2^-bias_shift; the accumulator is bias + 2^bias_shift "
               "sum code * (input code - zero point); bias_float is the float (BN-folded) bias"},
      {"glue", "every op's value is int32 v with x = tensor_scales[op] * v (zero point 0)"},
      {"rescale", "x * M as round-half-away-from-zero(x * m / 2^n), m in [2^30, 2^31), one rounding"},
      {"batch_norm", "folded_bn: folded into the preceding conv (identity); others: running statistics, eps 1e-5"}};
  w.set_metadata(kIntModelMetaKey, meta.dump());
  for (const auto& [k, v] : m.info) w.set_metadata("info." + k, v);
  w.save(path);
}

/// Reads and validates an integer model. Every problem throws io_error naming `path` and the
/// tensor or metadata field at fault: not a safetensors file, missing / malformed metadata, an
/// architecture that does not parse, layers that do not match the architecture's live conv /
/// linear ops or its quantization plan, a missing, extra, wrongly typed or wrongly shaped tensor,
/// codes out of range or non-zero packing bits, non-finite or non-positive scales, zero points out
/// of range, an inconsistent model (validate_int_model).
inline int_model load_int_model(const std::string& path) {
  const auto f = io::safetensors_file::load(path);
  auto fail = [&](const std::string& what) -> void { throw io_error(path, what); };
  if (!f.has_metadata(kIntModelMetaKey))
    fail(std::string("no metadata entry '") + kIntModelMetaKey + "': not a ghnq integer model");
  nlohmann::json meta;
  try {
    meta = nlohmann::json::parse(f.metadata(kIntModelMetaKey));
  } catch (const nlohmann::json::exception& e) {
    fail(std::string("metadata '") + kIntModelMetaKey + "' is not valid JSON: " + e.what());
  }
  int_model m;
  std::set<std::string> used;
  try {
    const std::string format = meta.is_object() ? meta.value("format", std::string()) : std::string();
    const bool v1 = format == "ghnq-int/1";  // before bias_shift: biases at the accumulator's step
    if (format != kIntModelFormat && !v1)
      fail(std::string("metadata: format is not \"") + kIntModelFormat + "\" (nor \"ghnq-int/1\")");
    try {
      m.net = arch::from_json(meta.at("arch"));
    } catch (const ghnq::error& e) {
      fail(std::string("metadata 'arch': ") + e.what());
    }
    const auto& qj = meta.at("quant");
    m.quant.w_bits = qj.at("w_bits").get<int>();
    m.quant.a_bits = qj.at("a_bits").get<int>();
    m.quant.first_last_bits = qj.at("first_last_bits").get<int>();
    m.quant.wq = parse_weight_quantizer(qj.at("wq").get<std::string>());
    m.quant.aq = parse_act_quantizer(qj.at("aq").get<std::string>());
    for (const auto& e : qj.at("w_bits_of_op")) m.quant.w_bits_of_op[e.at(0).get<int>()] = e.at(1).get<int>();
    for (const auto& e : qj.at("a_bits_of_op")) m.quant.a_bits_of_op[e.at(0).get<int>()] = e.at(1).get<int>();
    const auto& cj = meta.at("calibration");
    m.calib_batches = cj.at("batches").get<int>();
    m.rule = parse_calib_rule(cj.at("rule").get<std::string>());
    m.glue_bits = cj.at("glue_bits").get<int>();
    m.input_layer = meta.at("input_layer").get<int>();
    m.folded_bn = meta.at("folded_bn").get<std::vector<int>>();
    const auto plan = plan_quantization(m.net, m.quant);
    const auto live = detail::int_live_ops(m.net);
    const auto nops = static_cast<int>(m.net.ops.size());
    auto tensor_of = [&](const std::string& name, io::st_dtype dt, const std::vector<std::int64_t>& shape) {
      if (!f.contains(name)) fail("missing tensor '" + name + "'");
      const auto& in = f.info(name);
      if (in.dtype != dt)
        fail("tensor '" + name + "' has dtype " + io::st_dtype_name(in.dtype) + ", expected " + io::st_dtype_name(dt));
      if (in.shape != shape)
        fail("tensor '" + name + "' has shape " + io::detail::st_shape_string(in.shape) + ", expected " +
             io::detail::st_shape_string(shape));
      used.insert(name);
    };
    auto floats = [&](const std::string& name, std::int64_t count, bool positive) {
      tensor_of(name, io::st_dtype::f32, {count});
      auto v = f.get<float>(name).to_vector();
      for (std::size_t k = 0; k < v.size(); ++k)
        if (!std::isfinite(v[k]) || (positive && !(v[k] > 0.0f)))
          fail("tensor '" + name + "'[" + std::to_string(k) + "] = " + std::to_string(v[k]) + " is not " +
               (positive ? "finite and positive" : "finite"));
      return v;
    };
    for (const auto& lj : meta.at("layers")) {
      int_layer l;
      l.op = lj.at("op").get<int>();
      if (l.op < 0 || l.op >= nops) fail("metadata: layer op " + std::to_string(l.op) + " is not an op of the network");
      const auto& o = m.net.ops[static_cast<std::size_t>(l.op)];
      const std::string label = detail::int_op_label(m.net, l.op);
      if (o.type != arch::op_type::conv && o.type != arch::op_type::linear) fail("metadata: layer " + label + " is not a conv or linear");
      l.bias_shift = v1 ? 0 : lj.at("bias_shift").get<int>();
      if (l.bias_shift < 0 || l.bias_shift > kMaxBiasShift)
        fail("metadata: layer " + label + " bias_shift " + std::to_string(l.bias_shift) + " is outside [0, " +
             std::to_string(kMaxBiasShift) + "]");
      l.w_bits = lj.at("w_bits").get<int>();
      l.a_bits = lj.at("a_bits").get<int>();
      l.a_signed = lj.at("a_signed").get<bool>();
      const auto& pq = plan[static_cast<std::size_t>(l.op)];
      if (l.a_signed != pq.a_signed || l.a_bits != (pq.a_signed ? std::max(2, pq.a_bits) : pq.a_bits))
        fail("metadata: layer " + label + " input (" + std::to_string(l.a_bits) + " bits, " +
             (l.a_signed ? "signed" : "unsigned") + ") does not match the quantization plan of the architecture");
      if (l.w_bits < 2 || l.w_bits > 8) fail("metadata: layer " + label + " w_bits " + std::to_string(l.w_bits) + " is outside [2, 8]");
      if (l.a_bits < 1 || l.a_bits > 8) fail("metadata: layer " + label + " a_bits " + std::to_string(l.a_bits) + " is outside [1, 8]");
      const auto infos = arch::parameters(m.net);
      for (const auto& pi : infos)
        if (pi.op == l.op && pi.role == arch::param_role::weight) l.w_shape = pi.shape;
      const std::int64_t oc = l.w_shape[0];
      const std::string wname = detail::int_tensor_name(l.op, "weight");
      const int width = packed_width(l.w_bits);
      const std::string storage = lj.at("storage").get<std::string>();
      if (storage != (width == 8 ? "I8" : width == 4 ? "U8x2" : "U8x4"))
        fail("metadata: layer " + label + " storage '" + storage + "' does not fit " + std::to_string(l.w_bits) + "-bit codes");
      if (width == 8) {
        tensor_of(wname, io::st_dtype::i8, l.w_shape.to_vector());
        l.w_codes = f.get<std::int8_t>(wname).to_vector();
      } else {
        const std::int64_t nb = packed_bytes(l.w_shape.numel(), l.w_bits);
        tensor_of(wname, io::st_dtype::u8, {nb});
        try {
          l.w_codes = unpack_codes(f.raw_data(wname), nb, l.w_shape.numel(), l.w_bits);
        } catch (const value_error& e) {
          fail("tensor '" + wname + "': " + e.what());
        }
      }
      for (std::size_t k = 0; k < l.w_codes.size(); ++k)
        if (l.w_codes[k] < l.w_qmin() || l.w_codes[k] > l.w_qmax())
          fail("tensor '" + wname + "': code " + std::to_string(int(l.w_codes[k])) + " at index " + std::to_string(k) +
               " is outside [" + std::to_string(l.w_qmin()) + ", " + std::to_string(l.w_qmax()) + "]");
      l.w_scale = floats(detail::int_tensor_name(l.op, "weight_scale"), oc, true);
      l.bias_float = floats(detail::int_tensor_name(l.op, "bias_float"), oc, false);
      const std::string bname = detail::int_tensor_name(l.op, "bias");
      tensor_of(bname, io::st_dtype::i32, {oc});
      l.bias = f.get<std::int32_t>(bname).to_vector();
      l.a_scale = floats(detail::int_tensor_name(l.op, "input_scale"), 1, true)[0];
      const std::string zname = detail::int_tensor_name(l.op, "input_zero_point");
      tensor_of(zname, io::st_dtype::i32, {1});
      l.a_zero_point = f.get<std::int32_t>(zname).to_vector()[0];
      if (l.a_zero_point < l.a_qmin() || l.a_zero_point > l.a_qmax())
        fail("tensor '" + zname + "' = " + std::to_string(l.a_zero_point) + " is outside [" + std::to_string(l.a_qmin()) +
             ", " + std::to_string(l.a_qmax()) + "]");
      m.layers.push_back(std::move(l));
    }
    const auto fold = detail::int_fold_targets(m.net, live);
    for (int j = 0; j < nops; ++j) {
      if (!live[static_cast<std::size_t>(j)] || m.net.ops[static_cast<std::size_t>(j)].type != arch::op_type::batch_norm ||
          fold[static_cast<std::size_t>(j)] >= 0)
        continue;
      int_norm nm;
      nm.op = j;
      const std::int64_t c = m.net.ops[static_cast<std::size_t>(j)].c;
      nm.mean = floats(detail::int_tensor_name(j, "bn_mean"), c, false);
      nm.var = floats(detail::int_tensor_name(j, "bn_var"), c, false);
      nm.gamma = floats(detail::int_tensor_name(j, "bn_gamma"), c, false);
      nm.beta = floats(detail::int_tensor_name(j, "bn_beta"), c, false);
      m.norms.push_back(std::move(nm));
    }
    m.tensor_scale = f.get<float>((tensor_of("tensor_scales", io::st_dtype::f32, {nops}), "tensor_scales")).to_vector();
    for (const auto& name : f.names())
      if (used.count(name) == 0) fail("unexpected tensor '" + name + "'");
    for (const auto& [k, v] : f.metadata())
      if (k.rfind("info.", 0) == 0) m.info[k.substr(5)] = v;
    validate_int_model(m);
  } catch (const io_error&) {
    throw;
  } catch (const nlohmann::json::exception& e) {
    fail(std::string("metadata '") + kIntModelMetaKey + "': " + e.what());
  } catch (const ghnq::error& e) {
    fail(e.what());
  }
  return m;
}

}  // namespace ghnq::exec
