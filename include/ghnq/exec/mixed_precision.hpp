/// \file
/// \brief Mixed precision: named per-layer bit-width policies (uniform, by kernel size, by depth,
/// by layer size, or any "key:bits,..." spec) resolved for a network into a quant_config with
/// per-op overrides (`w_bits_of_op` / `a_bits_of_op`, exec/quant_plan.hpp), and the model size
/// in bits that results (exec::weight_bits).
///
/// A policy assigns every conv / linear op a weight bit-width; the op's input gets the same
/// bit-width ("W = A per layer", what the QAT-mixed GHN trains with) unless `act` fixes one
/// activation bit-width for every layer the first / last rules do not cover. 32 means float.
/// The first rule that matches an op decides its bits:
///   1. `first` / `last`   the first layer (reads the network input) / the last one (produces the
///                         output), as plan_quantization defines them; weights and inputs both
///                         (an op that is both takes the larger); `first_last` sets both rules
///   2. `dw`               depthwise convs (one input channel per group, groups > 1)
///   3. `<kh>x<kw>`        convs with exactly that kernel ("3x3", "1x1", "7x1", ...)
///   4. `kxk`              the other convs whose kernel is not 1x1
///   5. `conv` / `linear`  any conv / any linear op
///   6. `depth:b1/../bk`   k bands of equal width over the normalized depth u = (d - 1) / (D - 1),
///                         d the op's depth (conv / linear ops on the longest path from the input,
///                         itself included), D the largest; band min(k - 1, floor(u k))
///      `size:b1/../bk`    k bands over the conv / linear ops ranked by weight count, largest
///                         first (ties: op order); rank r of n goes to band floor(r k / n), so the
///                         largest layers get b1 (`depth` and `size` exclude each other)
///   7. `default`          everything else (float when the spec does not name it)
///
/// Named policies (parse_policy):
///   fp32                 every layer float
///   uniform-<b>          b bits everywhere, first / last layer max(b, 8) (the study's W b A b)
///   uniform-<b>-all      b bits everywhere, first and last layer included
///   k3x3-<b>_1x1-<c>     3x3 and larger kernels b, 1x1 c, linear 8, first / last 8 (default c)
///   depth                depth:4/2/2/4, first / last 8 (more bits early and late)
///   size                 size:2/4/8, first / last 8 (the largest third of the layers at 2 bits)
/// Anything else is read as a spec: comma-separated `key:value` items with the keys above,
/// `default` (alias `all`) and `act` (`same`, the default, or bits); bit-widths are 2..16 (what the
/// quantizers accept; 1-bit weights are the binary weight quantizer's business) or 32 (float); e.g.
/// "3x3:2,1x1:4,linear:8,first_last:8,default:4". Malformed specs throw value_error naming the
/// spec and the offending item.
/// \code
/// const auto pol = ghnq::exec::parse_policy("k3x3-2_1x1-4");
/// ghnq::exec::quant_config base;   base.wq = ghnq::exec::weight_quantizer::uniform;
/// const auto q = ghnq::exec::apply_policy(net, pol, base);   // per-op overrides for `net`
/// const auto sz = ghnq::exec::size_of(net, q);               // sz.bits, sz.bits_per_weight(), sz.megabytes()
/// \endcode
#pragma once
#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "ghnq/arch/network.hpp"
#include "ghnq/arch/params.hpp"
#include "ghnq/core/error.hpp"
#include "ghnq/exec/quant_plan.hpp"

namespace ghnq::exec {

/// A per-layer bit-width policy (see the file comment for the rules and their precedence).
/// Bit-widths are in [2, 16] or 32 (float); 0 means "no such rule".
struct bit_policy {
  std::string name;                              ///< label: the named policy, or the spec as given
  int default_bits = 32;                         ///< `default`: layers no other rule matches
  int first_bits = 0, last_bits = 0;             ///< `first`, `last` (`first_last` sets both)
  int depthwise_bits = 0;                        ///< `dw`
  std::map<std::pair<int, int>, int> kernel_bits;  ///< `<kh>x<kw>`: (kh, kw) -> bits
  int spatial_bits = 0;                          ///< `kxk`: other convs with a kernel other than 1x1
  int conv_bits = 0;                             ///< `conv`
  int linear_bits = 0;                           ///< `linear`
  std::vector<int> depth_bands;                  ///< `depth:b1/../bk`
  std::vector<int> size_bands;                   ///< `size:b1/../bk`, largest layers first
  int act_bits = 0;                              ///< `act`: 0 = the layer's weight bits ("same")

  /// The canonical spec (keys in a fixed order), which parse_policy reads back to an equal policy.
  std::string spec() const {
    std::string s;
    auto item = [&s](const std::string& k, const std::string& v) { s += (s.empty() ? "" : ",") + k + ":" + v; };
    auto bands = [](const std::vector<int>& b) {
      std::string o;
      for (std::size_t i = 0; i < b.size(); ++i) o += (i ? "/" : "") + std::to_string(b[i]);
      return o;
    };
    item("default", std::to_string(default_bits));
    if (first_bits > 0 && first_bits == last_bits) {
      item("first_last", std::to_string(first_bits));
    } else {
      if (first_bits > 0) item("first", std::to_string(first_bits));
      if (last_bits > 0) item("last", std::to_string(last_bits));
    }
    if (depthwise_bits > 0) item("dw", std::to_string(depthwise_bits));
    for (const auto& [k, b] : kernel_bits) item(std::to_string(k.first) + "x" + std::to_string(k.second), std::to_string(b));
    if (spatial_bits > 0) item("kxk", std::to_string(spatial_bits));
    if (conv_bits > 0) item("conv", std::to_string(conv_bits));
    if (linear_bits > 0) item("linear", std::to_string(linear_bits));
    if (!depth_bands.empty()) item("depth", bands(depth_bands));
    if (!size_bands.empty()) item("size", bands(size_bands));
    item("act", act_bits > 0 ? std::to_string(act_bits) : std::string("same"));
    return s;
  }
  friend bool operator==(const bit_policy& a, const bit_policy& b) {
    return a.default_bits == b.default_bits && a.first_bits == b.first_bits && a.last_bits == b.last_bits &&
           a.depthwise_bits == b.depthwise_bits && a.kernel_bits == b.kernel_bits &&
           a.spatial_bits == b.spatial_bits && a.conv_bits == b.conv_bits && a.linear_bits == b.linear_bits &&
           a.depth_bands == b.depth_bands && a.size_bands == b.size_bands && a.act_bits == b.act_bits;
  }
  friend bool operator!=(const bit_policy& a, const bit_policy& b) { return !(a == b); }
};

namespace detail {

[[noreturn]] inline void policy_fail(const std::string& spec, const std::string& what) {
  throw value_error("mixed-precision policy '" + spec + "': " + what);
}

/// Whole-string non-negative decimal integer of at most 9 digits (no sign, no spaces).
inline bool parse_int(const std::string& s, int& out) {
  if (s.empty() || s.size() > 9) return false;
  int v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  out = v;
  return true;
}

/// A policy bit-width: 2..16 (what the quantizers accept) or 32 (float).
inline int policy_bits(const std::string& spec, const std::string& key, const std::string& v) {
  int b = 0;
  if (!parse_int(v, b))
    policy_fail(spec, "'" + key + ":" + v + "': expected a bit-width (an integer in [2, 16], or 32 for float)");
  if (!((b >= 2 && b <= 16) || b == 32))
    policy_fail(spec, "'" + key + ":" + v + "': bit-width " + std::to_string(b) + " is not in [2, 16] nor 32 (float)");
  return b;
}

inline std::vector<int> policy_bands(const std::string& spec, const std::string& key, const std::string& v) {
  std::vector<int> out;
  std::size_t start = 0;
  for (;;) {
    const std::size_t slash = v.find('/', start);
    const std::string part = v.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (part.empty()) policy_fail(spec, "'" + key + ":" + v + "': expected bit-widths separated by '/' (e.g. 4/2/2/4)");
    out.push_back(policy_bits(spec, key, part));
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return out;
}

/// "<kh>x<kw>" with positive integers.
inline bool parse_kernel(const std::string& k, std::pair<int, int>& out) {
  const std::size_t x = k.find('x');
  if (x == std::string::npos) return false;
  int h = 0, w = 0;
  if (!parse_int(k.substr(0, x), h) || !parse_int(k.substr(x + 1), w)) return false;
  if (h < 1 || w < 1) return false;
  out = {h, w};
  return true;
}

/// Conv / linear ops of `net` in op order.
inline std::vector<int> quantizable_ops(const arch::network& net) {
  std::vector<int> out;
  for (std::size_t i = 0; i < net.ops.size(); ++i)
    if (net.ops[i].type == arch::op_type::conv || net.ops[i].type == arch::op_type::linear)
      out.push_back(static_cast<int>(i));
  return out;
}

}  // namespace detail

/// Parse a named policy or a `key:value,...` spec (see the file comment). value_error for an empty
/// spec, an empty item, a missing ':', an unknown key, a repeated key, a bit-width that is not an
/// integer in [2, 16] or 32, malformed bands, or `depth` together with `size`.
/// \code
/// auto p = ghnq::exec::parse_policy("3x3:2,1x1:4,linear:8,first_last:8");
/// auto u = ghnq::exec::parse_policy("uniform-4");
/// \endcode
inline bit_policy parse_policy(const std::string& spec) {
  bit_policy p;
  p.name = spec;
  if (spec.empty()) detail::policy_fail(spec, "empty spec (a named policy or key:bits items)");
  // Named policies.
  if (spec == "fp32" || spec == "FP32") return p;
  auto digits_at = [&spec](std::size_t pos, std::size_t& end) {  // the run of digits at pos, "" if none
    end = pos;
    while (end < spec.size() && spec[end] >= '0' && spec[end] <= '9') ++end;
    return spec.substr(pos, end - pos);
  };
  if (spec.compare(0, 8, "uniform-") == 0) {
    std::size_t end = 0;
    const std::string d = digits_at(8, end);
    const std::string rest = spec.substr(end);
    if (!d.empty() && (rest.empty() || rest == "-all")) {
      p.default_bits = detail::policy_bits(spec, "uniform", d);
      if (rest.empty() && p.default_bits < 32) p.first_bits = p.last_bits = std::max(p.default_bits, 8);
      return p;
    }
  }
  if (spec.compare(0, 5, "k3x3-") == 0) {
    std::size_t e1 = 0, e2 = 0;
    const std::string b = digits_at(5, e1);
    if (!b.empty() && spec.compare(e1, 5, "_1x1-") == 0) {
      const std::string c = digits_at(e1 + 5, e2);
      if (!c.empty() && e2 == spec.size()) {
        p.kernel_bits[{3, 3}] = p.spatial_bits = detail::policy_bits(spec, "3x3", b);
        p.kernel_bits[{1, 1}] = p.default_bits = detail::policy_bits(spec, "1x1", c);
        p.linear_bits = 8;
        p.first_bits = p.last_bits = 8;
        return p;
      }
    }
  }
  if (spec == "depth") {
    p.depth_bands = {4, 2, 2, 4};
    p.first_bits = p.last_bits = 8;
    p.default_bits = 4;
    return p;
  }
  if (spec == "size") {
    p.size_bands = {2, 4, 8};
    p.first_bits = p.last_bits = 8;
    p.default_bits = 4;
    return p;
  }
  if (spec.find(':') == std::string::npos)
    detail::policy_fail(spec, "not a named policy (fp32, uniform-<b>, uniform-<b>-all, k3x3-<b>_1x1-<c>, depth, size) "
                              "nor a spec of key:bits items (e.g. 3x3:2,1x1:4,linear:8,first_last:8)");
  // key:value items.
  std::vector<std::string> seen;
  std::size_t start = 0;
  for (;;) {
    const std::size_t comma = spec.find(',', start);
    const std::string it = spec.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (it.empty()) detail::policy_fail(spec, "empty item (two commas, or a comma at an end)");
    const std::size_t colon = it.find(':');
    if (colon == std::string::npos) {
      std::string named;
      try {
        named = parse_policy(it).spec();  // no ':' in `it`: no recursion into this loop
      } catch (const value_error&) {
      }
      if (!named.empty())
        detail::policy_fail(spec, "the named policy '" + it + "' cannot be combined with key:bits items; its spec is " +
                                      named);
      detail::policy_fail(spec, "item '" + it + "' is not key:value");
    }
    std::string key = it.substr(0, colon);
    const std::string v = it.substr(colon + 1);
    if (key == "all") key = "default";
    std::pair<int, int> kern;
    const bool is_kernel = detail::parse_kernel(key, kern);
    const std::string canon = is_kernel ? std::to_string(kern.first) + "x" + std::to_string(kern.second) : key;
    auto clash = [&](const std::string& k) { return std::find(seen.begin(), seen.end(), k) != seen.end(); };
    if (clash(canon) || ((canon == "first" || canon == "last") && clash("first_last")) ||
        (canon == "first_last" && (clash("first") || clash("last"))))
      detail::policy_fail(spec, "key '" + key + "' is given twice");
    seen.push_back(canon);
    if (key == "default") p.default_bits = detail::policy_bits(spec, key, v);
    else if (key == "first") p.first_bits = detail::policy_bits(spec, key, v);
    else if (key == "last") p.last_bits = detail::policy_bits(spec, key, v);
    else if (key == "first_last") p.first_bits = p.last_bits = detail::policy_bits(spec, key, v);
    else if (key == "dw") p.depthwise_bits = detail::policy_bits(spec, key, v);
    else if (key == "kxk") p.spatial_bits = detail::policy_bits(spec, key, v);
    else if (key == "conv") p.conv_bits = detail::policy_bits(spec, key, v);
    else if (key == "linear") p.linear_bits = detail::policy_bits(spec, key, v);
    else if (key == "depth") p.depth_bands = detail::policy_bands(spec, key, v);
    else if (key == "size") p.size_bands = detail::policy_bands(spec, key, v);
    else if (key == "act") p.act_bits = v == "same" ? 0 : detail::policy_bits(spec, key, v);
    else if (is_kernel) p.kernel_bits[kern] = detail::policy_bits(spec, key, v);
    else
      detail::policy_fail(spec, "unknown key '" + key +
                                    "' (default, all, first, last, first_last, dw, <kh>x<kw>, kxk, conv, linear, "
                                    "depth, size, act)");
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (!p.depth_bands.empty() && !p.size_bands.empty())
    detail::policy_fail(spec, "'depth' and 'size' exclude each other (both decide the remaining layers)");
  return p;
}

/// The named policies of the mixed-precision study, in plot order.
inline std::vector<std::string> default_policies() {
  return {"fp32", "uniform-8", "uniform-4", "uniform-3", "uniform-2", "k3x3-2_1x1-4", "depth", "size"};
}

/// Bits of one conv / linear op under a policy, and the rule that decided them.
struct layer_bits {
  int op = -1;
  int w_bits = 32;   ///< 32: float
  int a_bits = 32;   ///< 32: float
  std::string rule;  ///< "first", "last", "dw", "3x3", "kxk", "conv", "linear", "depth", "size", "default"
};

/// The bit-widths of every conv / linear op of `net` (in op order) under `p` (file comment).
inline std::vector<layer_bits> assign_bits(const arch::network& net, const bit_policy& p) {
  using arch::op_type;
  const auto ops = detail::quantizable_ops(net);
  const auto infos = arch::parameters(net);
  std::vector<std::int64_t> numel(net.ops.size(), 0);
  std::vector<std::int64_t> in_per_group(net.ops.size(), 0);
  for (const auto& pi : infos)
    if (pi.role == arch::param_role::weight && pi.op >= 0) {
      numel[static_cast<std::size_t>(pi.op)] = pi.shape.numel();
      if (pi.shape.rank() >= 2) in_per_group[static_cast<std::size_t>(pi.op)] = pi.shape[1];
    }
  // Depth: conv / linear ops on the longest path from the input, the op itself included.
  std::vector<int> depth(net.ops.size(), 0);
  int max_depth = 0;
  for (std::size_t i = 0; i < net.ops.size(); ++i) {
    int d = 0;
    for (int j : net.ops[i].inputs) d = std::max(d, depth[static_cast<std::size_t>(j)]);
    const bool q = net.ops[i].type == op_type::conv || net.ops[i].type == op_type::linear;
    depth[i] = d + (q ? 1 : 0);
    if (q) max_depth = std::max(max_depth, depth[i]);
  }
  // Size rank: largest weight first, ties in op order.
  std::vector<int> by_size = ops;
  std::stable_sort(by_size.begin(), by_size.end(), [&](int a, int b) {
    return numel[static_cast<std::size_t>(a)] > numel[static_cast<std::size_t>(b)];
  });
  std::vector<std::int64_t> size_rank(net.ops.size(), 0);
  for (std::size_t r = 0; r < by_size.size(); ++r) size_rank[static_cast<std::size_t>(by_size[r])] = static_cast<std::int64_t>(r);

  std::vector<layer_bits> out;
  out.reserve(ops.size());
  const auto n = static_cast<std::int64_t>(ops.size());
  for (int i : ops) {
    const auto& o = net.ops[static_cast<std::size_t>(i)];
    const bool first = !o.inputs.empty() && net.ops[static_cast<std::size_t>(o.inputs[0])].type == op_type::input;
    const bool last = i == net.output;
    layer_bits lb;
    lb.op = i;
    int b = 0;
    bool edge = false;
    if (first && p.first_bits > 0) b = p.first_bits, lb.rule = "first", edge = true;
    if (last && p.last_bits > 0 && p.last_bits > b) b = p.last_bits, lb.rule = "last", edge = true;
    if (b == 0 && o.type == op_type::conv) {
      const bool dw = o.groups > 1 && in_per_group[static_cast<std::size_t>(i)] == 1;
      const auto k = p.kernel_bits.find({o.kh, o.kw});
      if (dw && p.depthwise_bits > 0) b = p.depthwise_bits, lb.rule = "dw";
      else if (k != p.kernel_bits.end()) b = k->second, lb.rule = std::to_string(o.kh) + "x" + std::to_string(o.kw);
      else if ((o.kh != 1 || o.kw != 1) && p.spatial_bits > 0) b = p.spatial_bits, lb.rule = "kxk";
      else if (p.conv_bits > 0) b = p.conv_bits, lb.rule = "conv";
    }
    if (b == 0 && o.type == op_type::linear && p.linear_bits > 0) b = p.linear_bits, lb.rule = "linear";
    if (b == 0 && !p.depth_bands.empty()) {
      const auto k = static_cast<int>(p.depth_bands.size());
      const double u = max_depth > 1 ? static_cast<double>(depth[static_cast<std::size_t>(i)] - 1) / (max_depth - 1) : 0.0;
      b = p.depth_bands[static_cast<std::size_t>(std::min(k - 1, static_cast<int>(u * k)))];
      lb.rule = "depth";
    }
    if (b == 0 && !p.size_bands.empty()) {
      const auto k = static_cast<std::int64_t>(p.size_bands.size());
      b = p.size_bands[static_cast<std::size_t>(size_rank[static_cast<std::size_t>(i)] * k / n)];
      lb.rule = "size";
    }
    if (b == 0) b = p.default_bits, lb.rule = "default";
    lb.w_bits = b;
    lb.a_bits = (edge || p.act_bits == 0) ? b : p.act_bits;
    out.push_back(lb);
  }
  return out;
}

/// A copy of `base` (quantizer kinds, noise) whose bit-widths follow `p` on `net`: every conv /
/// linear op gets explicit w_bits_of_op / a_bits_of_op entries (32: float), the global
/// w_bits = a_bits = p.default_bits, and first_last_bits = 0 (the policy decides the first and last
/// layers). The overrides name op indices of `net`: use the result with this network only.
inline quant_config apply_policy(const arch::network& net, const bit_policy& p, quant_config base = {}) {
  base.w_bits = base.a_bits = p.default_bits;
  base.first_last_bits = 0;
  base.w_bits_of_op.clear();
  base.a_bits_of_op.clear();
  for (const auto& lb : assign_bits(net, p)) {
    base.w_bits_of_op[lb.op] = lb.w_bits;
    base.a_bits_of_op[lb.op] = lb.a_bits;
  }
  return base;
}

/// Size of the conv / linear weights of a network under a quantization (biases and norm
/// parameters not counted; float weights count 32 bits).
struct model_size {
  std::int64_t weights = 0;        ///< conv / linear weight count
  std::int64_t float_weights = 0;  ///< of which left in float (32 bits each)
  std::int64_t bits = 0;           ///< exec::weight_bits under the plan
  /// Mean bits per weight (0 for a network without weights).
  double bits_per_weight() const noexcept {
    return weights > 0 ? static_cast<double>(bits) / static_cast<double>(weights) : 0.0;
  }
  /// Megabytes, 10^6 bytes of 8 bits.
  double megabytes() const noexcept { return static_cast<double>(bits) / 8e6; }
};

/// weight_bits(net, plan_quantization(net, q)), the weight count and the float weight count.
inline model_size size_of(const arch::network& net, const quant_config& q) {
  model_size s;
  const auto plan = plan_quantization(net, q);
  for (const auto& pi : arch::parameters(net)) {
    const auto& o = net.ops[static_cast<std::size_t>(pi.op)];
    if (pi.role != arch::param_role::weight || (o.type != arch::op_type::conv && o.type != arch::op_type::linear))
      continue;
    s.weights += pi.shape.numel();
    if (plan[static_cast<std::size_t>(pi.op)].w_bits == 0) s.float_weights += pi.shape.numel();
  }
  s.bits = weight_bits(net, plan);
  return s;
}

}  // namespace ghnq::exec
