/// \file
/// \brief Parameter tensors of a network IR: names, PyTorch shapes, registration order, counts.
///
/// Parameters per op (PyTorch layouts):
///  - conv: weight [out, in / groups, kh, kw]; bias [out] when `bias`.
///  - linear: weight [out, in]; bias [out] when `bias`.
///  - batch_norm with `bias` (= affine): weight [C], bias [C]. Non-affine batch norm has none.
/// Names are `op.name + ".weight"` / `op.name + ".bias"`.
///
/// Order: `network::param_order` when non-empty (it must list every parameter of the network
/// exactly once), otherwise derived: for each op in op order, its weight, then its bias.
///
/// Shapes: the functions below use the shapes stored in the ops when every op has `c > 0` (as
/// after the builder, from_json or infer_shapes), and otherwise run infer_shapes on a copy. After
/// editing the attributes of an already inferred network, call infer_shapes again.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ghnq/arch/network.hpp"
#include "ghnq/arch/shape_inference.hpp"
#include "ghnq/core/error.hpp"
#include "ghnq/tensor/shape.hpp"

namespace ghnq::arch {

/// One parameter tensor: its name, PyTorch shape, owning op and role.
struct param_info {
  std::string name;    ///< "layer1.0.conv1.weight"
  ghnq::shape shape;   ///< e.g. [64, 64, 3, 3]
  int op = -1;         ///< index of the owning op
  param_role role = param_role::weight;
};

/// "weight" or "bias".
inline const char* to_string(param_role r) { return r == param_role::weight ? "weight" : "bias"; }

/// True when op `o` owns a parameter of role `r` (see the file comment).
inline bool has_param(const op& o, param_role r) {
  switch (o.type) {
    case op_type::conv:
    case op_type::linear: return r == param_role::weight || o.bias;
    case op_type::batch_norm: return o.bias;
    default: return false;
  }
}

/// The parameters of op `o` in derived order (weight, then bias), as refs to op index `i`.
inline void append_op_params(const op& o, int i, std::vector<param_ref>& out) {
  if (has_param(o, param_role::weight)) out.push_back({i, param_role::weight});
  if (has_param(o, param_role::bias)) out.push_back({i, param_role::bias});
}

/// The derived order of `net`: for each op in op order, weight then bias.
inline std::vector<param_ref> derived_param_order(const network& net) {
  std::vector<param_ref> out;
  for (int i = 0; i < static_cast<int>(net.ops.size()); ++i) append_op_params(net.ops[static_cast<std::size_t>(i)], i, out);
  return out;
}

/// Checks `net.param_order` (when non-empty): every entry names an existing op that has that
/// parameter, no entry repeats, and every parameter of the network is listed. Throws value_error
/// naming the entry index, the op and the role.
inline void check_param_order(const network& net) {
  if (net.param_order.empty()) return;
  const int n_ops = static_cast<int>(net.ops.size());
  std::vector<unsigned char> seen(static_cast<std::size_t>(n_ops) * 2, 0);
  const std::string pre = detail::net_prefix(net);
  for (std::size_t k = 0; k < net.param_order.size(); ++k) {
    const param_ref& r = net.param_order[k];
    GHNQ_CHECK(r.op >= 0 && r.op < n_ops, value_error, pre, "param_order[", k, "] refers to op ", r.op,
               ", which does not exist (the network has ", n_ops, " ops)");
    const op& o = net.ops[static_cast<std::size_t>(r.op)];
    GHNQ_CHECK(has_param(o, r.role), value_error, pre, "param_order[", k, "]: ", op_label(net, r.op), " has no ",
               to_string(r.role), " parameter");
    unsigned char& s = seen[static_cast<std::size_t>(r.op) * 2 + (r.role == param_role::bias ? 1 : 0)];
    GHNQ_CHECK(!s, value_error, pre, "param_order[", k, "]: the ", to_string(r.role), " of ", op_label(net, r.op),
               " is listed twice");
    s = 1;
  }
  for (const param_ref& r : derived_param_order(net))
    GHNQ_CHECK(seen[static_cast<std::size_t>(r.op) * 2 + (r.role == param_role::bias ? 1 : 0)], value_error, pre,
               "param_order misses the ", to_string(r.role), " of ", op_label(net, r.op));
}

/// The effective parameter order: `net.param_order` (validated) or the derived order.
inline std::vector<param_ref> param_refs(const network& net) {
  if (net.param_order.empty()) return derived_param_order(net);
  check_param_order(net);
  return net.param_order;
}

namespace detail {
inline ghnq::shape param_shape_inferred(const network& net, const param_ref& r) {
  const op& o = net.ops[static_cast<std::size_t>(r.op)];
  const std::int64_t in_c = o.inputs.empty() ? 0 : net.ops[static_cast<std::size_t>(o.inputs[0])].c;
  if (r.role == param_role::bias) return ghnq::shape{o.type == op_type::batch_norm ? o.c : o.out_channels};
  switch (o.type) {
    case op_type::conv: return ghnq::shape{o.out_channels, in_c / o.groups, o.kh, o.kw};
    case op_type::linear: return ghnq::shape{o.out_channels, in_c};
    default: return ghnq::shape{o.c};  // batch_norm weight
  }
}

/// `net` itself when its shapes are inferred, otherwise an inferred copy stored in `tmp`.
inline const network& inferred(const network& net, network& tmp) {
  bool ok = !net.ops.empty();
  for (const op& o : net.ops) ok = ok && o.c > 0;
  if (ok) return net;
  tmp = net;
  infer_shapes(tmp);
  return tmp;
}
}  // namespace detail

/// Shape of one parameter (PyTorch layout, see the file comment). Runs shape inference on a copy
/// when `net` has not been inferred yet.
inline ghnq::shape param_shape(const network& net, const param_ref& r) {
  network tmp;
  const network& n = detail::inferred(net, tmp);
  GHNQ_CHECK(r.op >= 0 && r.op < static_cast<int>(n.ops.size()) && has_param(n.ops[static_cast<std::size_t>(r.op)], r.role),
             value_error, detail::net_prefix(n), op_label(n, r.op), " has no ", to_string(r.role), " parameter");
  return detail::param_shape_inferred(n, r);
}

/// All parameter tensors of `net` in registration order (param_order, or derived when empty),
/// with names and PyTorch shapes. Runs shape inference on a copy when `net` is not inferred.
/// Throws value_error on an invalid param_order.
/// \code
/// for (const auto& p : ghnq::arch::parameters(net)) std::cout << p.name << ' ' << p.shape << '\n';
/// \endcode
inline std::vector<param_info> parameters(const network& net) {
  network tmp;
  const network& n = detail::inferred(net, tmp);
  std::vector<param_info> out;
  for (const param_ref& r : param_refs(n)) {
    const op& o = n.ops[static_cast<std::size_t>(r.op)];
    out.push_back({o.name + (r.role == param_role::weight ? ".weight" : ".bias"), detail::param_shape_inferred(n, r),
                   r.op, r.role});
  }
  return out;
}

/// Total number of scalar parameters of `net` (sum of numel over parameters()).
/// \code auto n = ghnq::arch::num_params(ghnq::arch::resnet20(3, 32, 32, 10));   // 272474 \endcode
inline std::int64_t num_params(const network& net) {
  network tmp;
  const network& nt = detail::inferred(net, tmp);
  std::int64_t n = 0;
  for (const param_ref& r : param_refs(nt)) n += detail::param_shape_inferred(nt, r).numel();
  return n;
}

}  // namespace ghnq::arch
