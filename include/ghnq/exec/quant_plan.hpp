/// \file
/// \brief Where quantizers sit in a target network (spec quantization.md, "Where quantizers sit"):
/// `quant_config` (global bit-widths, quantizer kinds, first/last-layer rule, per-op overrides for
/// mixed precision) and `plan_quantization`, which resolves it into one `op_quant` per op.
///
/// Rules:
///  - Every conv and linear op quantizes its weight (symmetric, per output channel by default)
///    and its input activation. Other ops run in float; biases and BN parameters stay float.
///  - An input is quantized with unsigned codes when it is provably non-negative: produced by a
///    ReLU, or by ops that keep non-negativity (max / avg / global-average pooling, flatten,
///    dropout, identity, subsample, shift, zero, concat or sum of non-negative inputs,
///    channel_scale of a non-negative input by a sigmoid gate). The image and everything else
///    (BatchNorm outputs, hardswish, sums with a signed term) use signed codes.
///  - The first layer (every conv or linear reading the network input directly) and the last
///    layer (the op producing the output) use `first_last_bits` for weights and inputs when it
///    is > 0 (default 8, standard practice in LSQ and PACT), else the global bit-widths.
///  - `w_bits_of_op` / `a_bits_of_op` override any op by index (mixed precision), after the rule
///    above. A bit-width of 0 or >= 32 means "float": no quantizer.
/// \code
/// ghnq::exec::quant_config q;  q.w_bits = 4;  q.a_bits = 4;
/// const auto plan = ghnq::exec::plan_quantization(net, q);   // plan[i].w_bits, .a_bits, .a_signed
/// \endcode
#pragma once
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "ghnq/arch/network.hpp"
#include "ghnq/arch/params.hpp"
#include "ghnq/core/error.hpp"

namespace ghnq::exec {

/// How predicted weights are quantized.
enum class weight_quantizer : std::uint8_t {
  uniform,  ///< symmetric min-max per output channel (clipped STE)
  lsq,      ///< learned step (LSQ), per output channel, step = factor x LSQ-init statistic
  binary,   ///< sign(w) x mean|w| per output channel (1 bit)
  ternary,  ///< {-1, 0, 1} x s per output channel
};
/// How conv / linear inputs are quantized.
enum class act_quantizer : std::uint8_t {
  uniform,  ///< min-max of the current batch, per tensor (clipped STE)
  lsq,      ///< learned step, per tensor, step = factor x LSQ-init statistic of the batch
  pact,     ///< learned clip alpha = factor x max of the batch (unsigned inputs; signed ones use lsq)
};

inline const char* to_string(weight_quantizer q) {
  switch (q) {
    case weight_quantizer::uniform: return "uniform";
    case weight_quantizer::lsq: return "lsq";
    case weight_quantizer::binary: return "binary";
    case weight_quantizer::ternary: return "ternary";
  }
  return "?";
}
inline const char* to_string(act_quantizer q) {
  switch (q) {
    case act_quantizer::uniform: return "uniform";
    case act_quantizer::lsq: return "lsq";
    case act_quantizer::pact: return "pact";
  }
  return "?";
}

/// Parse "uniform" | "lsq" | "binary" | "ternary" (value_error otherwise).
inline weight_quantizer parse_weight_quantizer(const std::string& s) {
  for (auto q : {weight_quantizer::uniform, weight_quantizer::lsq, weight_quantizer::binary, weight_quantizer::ternary})
    if (s == to_string(q)) return q;
  throw value_error("unknown weight quantizer '" + s + "' (uniform, lsq, binary, ternary)");
}
/// Parse "uniform" | "lsq" | "pact" (value_error otherwise).
inline act_quantizer parse_act_quantizer(const std::string& s) {
  for (auto q : {act_quantizer::uniform, act_quantizer::lsq, act_quantizer::pact})
    if (s == to_string(q)) return q;
  throw value_error("unknown activation quantizer '" + s + "' (uniform, lsq, pact)");
}

/// Quantization of a whole network. Default: everything float (w_bits = a_bits = 32).
struct quant_config {
  int w_bits = 32;             ///< weight bit-width (0 or >= 32: float)
  int a_bits = 32;             ///< activation bit-width (0 or >= 32: float)
  int first_last_bits = 8;     ///< first / last layer bit-width (0: use w_bits / a_bits)
  weight_quantizer wq = weight_quantizer::uniform;
  act_quantizer aq = act_quantizer::uniform;
  bool noise = false;          ///< pseudo-quantization noise x + s u, u ~ U(-1/2, 1/2), instead of rounding
  std::map<int, int> w_bits_of_op;  ///< per-op weight bit-width overrides (op index -> bits)
  std::map<int, int> a_bits_of_op;  ///< per-op activation bit-width overrides

  /// True when some op is quantized.
  bool enabled() const noexcept {
    auto q = [](int b) { return b > 0 && b < 32; };
    if (q(w_bits) || q(a_bits)) return true;
    for (const auto& [k, v] : w_bits_of_op)
      if (q(v)) return true;
    for (const auto& [k, v] : a_bits_of_op)
      if (q(v)) return true;
    return false;
  }
  /// "W4A4", "W8A8", "FP32", "W2A8" ...
  std::string name() const {
    auto q = [](int b) { return b > 0 && b < 32; };
    if (!q(w_bits) && !q(a_bits)) return "FP32";
    return "W" + (q(w_bits) ? std::to_string(w_bits) : std::string("32")) + "A" +
           (q(a_bits) ? std::to_string(a_bits) : std::string("32"));
  }
};

/// Parse "FP32" | "W<b>A<b>" (e.g. "W4A8"; 32 means float) into the bit-widths of a copy of `base`.
inline quant_config parse_quant_name(const std::string& s, quant_config base) {
  if (s == "FP32" || s == "fp32") {
    base.w_bits = base.a_bits = 32;
    return base;
  }
  int w = 0, a = 0, n = 0;
  GHNQ_CHECK(std::sscanf(s.c_str(), "W%dA%d%n", &w, &a, &n) == 2 && n == static_cast<int>(s.size()) && w >= 1 &&
                 w <= 32 && a >= 1 && a <= 32,
             value_error, "quantization '", s, "': expected FP32 or W<bits>A<bits> (e.g. W4A4, W2A8)");
  base.w_bits = w;
  base.a_bits = a;
  return base;
}

/// The resolved quantization of one op (only conv / linear ops are ever quantized).
struct op_quant {
  int w_bits = 0;        ///< 0: weight stays float
  int a_bits = 0;        ///< 0: input stays float
  bool a_signed = true;  ///< signed codes for the input
  bool first = false;    ///< reads the network input
  bool last = false;     ///< produces the network output
  bool quantized() const noexcept { return w_bits > 0 || a_bits > 0; }
};

namespace detail {
inline int effective_bits(int b) { return b > 0 && b < 32 ? b : 0; }
}  // namespace detail

/// Whether each op's output is provably non-negative (see the file comment).
inline std::vector<bool> nonnegative_outputs(const arch::network& net) {
  using arch::op_type;
  std::vector<bool> nn(net.ops.size(), false);
  for (std::size_t i = 0; i < net.ops.size(); ++i) {
    const auto& o = net.ops[i];
    auto all_inputs = [&]() {
      if (o.inputs.empty()) return false;
      for (int j : o.inputs)
        if (!nn[static_cast<std::size_t>(j)]) return false;
      return true;
    };
    switch (o.type) {
      case op_type::relu: nn[i] = true; break;
      case op_type::max_pool:
      case op_type::avg_pool:
      case op_type::global_avg_pool:
      case op_type::flatten:
      case op_type::dropout:
      case op_type::identity:
      case op_type::subsample:
      case op_type::shift:
      case op_type::zero:
      case op_type::sum:
      case op_type::concat: nn[i] = all_inputs(); break;
      case op_type::channel_scale: nn[i] = !o.inputs.empty() && nn[static_cast<std::size_t>(o.inputs[0])]; break;
      default: nn[i] = false;
    }
  }
  return nn;
}

/// One op_quant per op of `net` (see the file comment). Throws value_error for an override that
/// names an op that does not exist or is not a conv / linear, or a bit-width outside [0, 32].
inline std::vector<op_quant> plan_quantization(const arch::network& net, const quant_config& q) {
  using arch::op_type;
  auto check_bits = [](int b, const char* what) {
    GHNQ_CHECK(b >= 0 && b <= 32, value_error, "quant_config.", what, " = ", b, " must be in [0, 32] (0 or 32: float)");
  };
  check_bits(q.w_bits, "w_bits");
  check_bits(q.a_bits, "a_bits");
  check_bits(q.first_last_bits, "first_last_bits");
  const auto nonneg = nonnegative_outputs(net);
  std::vector<op_quant> plan(net.ops.size());
  const int w = detail::effective_bits(q.w_bits), a = detail::effective_bits(q.a_bits);
  const int fl = detail::effective_bits(q.first_last_bits);
  for (std::size_t i = 0; i < net.ops.size(); ++i) {
    const auto& o = net.ops[i];
    if (o.type != op_type::conv && o.type != op_type::linear) continue;
    auto& p = plan[i];
    const auto in = static_cast<std::size_t>(o.inputs.at(0));
    p.first = net.ops[in].type == op_type::input;
    p.last = static_cast<int>(i) == net.output;
    p.a_signed = !nonneg[in];
    p.w_bits = w;
    p.a_bits = a;
    if ((p.first || p.last) && q.first_last_bits > 0) {
      p.w_bits = w > 0 ? fl : 0;  // a float network stays float
      p.a_bits = a > 0 ? fl : 0;
    }
  }
  auto apply = [&](const std::map<int, int>& m, bool weight) {
    for (const auto& [k, b] : m) {
      GHNQ_CHECK(k >= 0 && k < static_cast<int>(net.ops.size()), value_error, "quant_config: override for op ", k,
                 " but the network has ", net.ops.size(), " ops");
      const auto& o = net.ops[static_cast<std::size_t>(k)];
      GHNQ_CHECK(o.type == op_type::conv || o.type == op_type::linear, value_error, "quant_config: override for op ",
                 k, " ('", o.name, "'), a ", arch::to_string(o.type), ": only conv and linear ops are quantized");
      check_bits(b, weight ? "w_bits_of_op" : "a_bits_of_op");
      (weight ? plan[static_cast<std::size_t>(k)].w_bits : plan[static_cast<std::size_t>(k)].a_bits) =
          detail::effective_bits(b);
    }
  };
  apply(q.w_bits_of_op, true);
  apply(q.a_bits_of_op, false);
  return plan;
}

/// Model size in bits of the conv / linear weights under a plan (float weights count 32 bits);
/// biases and norm parameters are not counted.
inline std::int64_t weight_bits(const arch::network& net, const std::vector<op_quant>& plan) {
  GHNQ_CHECK(plan.size() == net.ops.size(), value_error, "weight_bits: plan of ", plan.size(), " ops for a network of ",
             net.ops.size());
  std::int64_t bits = 0;
  for (const auto& p : arch::parameters(net)) {
    const auto& o = net.ops[static_cast<std::size_t>(p.op)];
    if (p.role != arch::param_role::weight || (o.type != arch::op_type::conv && o.type != arch::op_type::linear))
      continue;
    const int b = plan[static_cast<std::size_t>(p.op)].w_bits;
    bits += p.shape.numel() * (b > 0 ? b : 32);
  }
  return bits;
}

}  // namespace ghnq::exec
