/// \file
/// \brief Shape inference and validation of the network IR: fills `c`, `h`, `w` of every op and
/// throws a clear error (naming the op index, its name and type, and the shapes at fault) on any
/// structural problem.
///
/// Shape rules (N, the batch, is implicit; a "flat" value [N, C] has `h == w == 0`):
///
/// | op              | inputs | input shape           | output shape                                         |
/// |-----------------|--------|-----------------------|------------------------------------------------------|
/// | input           | 0      | -                     | [in_channels, in_h, in_w]                            |
/// | conv            | 1      | [C, H, W]             | [out, Ho, Wo], Ho = floor((H + 2 ph - d (kh-1) - 1) / s) + 1 |
/// |                 |        |                       | Wo likewise with pw, kw and stride_width()           |
/// | linear          | 1      | flat [C]              | flat [out]                                           |
/// | batch_norm      | 1      | [C, H, W] or [C]      | same                                                 |
/// | relu, hardswish, sigmoid, identity, dropout | 1 | any | same                                            |
/// | max/avg_pool    | 1      | [C, H, W]             | [C, Ho, Wo], Ho = floor((H + 2 p - k) / s) + 1       |
/// | global_avg_pool | 1      | [C, H, W]             | flat [C]                                             |
/// | flatten         | 1      | [C, H, W] or [C]      | flat [C H W] (or [C])                                |
/// | sum             | >= 1   | all equal             | same                                                 |
/// | concat          | >= 1   | equal H, W (or flat)  | [sum of C, H, W]                                     |
/// | zero, subsample | 1      | [C, H, W] or [C]      | [C, ceil(H / s), ceil(W / s)] (x[:, :, ::s, ::s])    |
/// | channel_scale   | 2      | x [C, H, W], s flat [C] | [C, H, W]                                          |
/// | shift           | 1      | [C, H, W]             | [C, H - 1, W - 1] (x[:, :, 1:, 1:])                  |
///
/// Attributes: conv out_channels, kh, kw, stride, dilation, groups >= 1, stride_w >= 0 (0: same
/// as stride), pad >= 0, C and out divisible by groups; linear out_channels >= 1; pools square
/// (kh == kw, pad_h == pad_w) with kernel, stride >= 1 and 0 <= pad <= kernel / 2 (PyTorch's
/// rule); zero / subsample stride >= 1; dropout p in [0, 1). Every computed spatial extent must
/// be >= 1.
///
/// Errors: ghnq::shape_error for wiring and shape problems (input count, index out of range, an
/// input that is not earlier — a cycle or forward reference —, channel or spatial mismatch, empty
/// output, logits not [N, num_classes]); ghnq::value_error for bad attribute values, a misplaced
/// `input` op, duplicate parameter names and bad network-level fields.
#pragma once
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <unordered_set>
#include <vector>

#include "ghnq/arch/network.hpp"
#include "ghnq/core/error.hpp"

namespace ghnq::arch {

/// True when op `o` (after shape inference) holds a flat [N, C] value.
inline bool is_flat(const op& o) noexcept { return o.h == 0 && o.w == 0; }

/// "[N, 16, 32, 32]" or "[N, 10]" (flat): the inferred shape of `o` for messages.
inline std::string shape_string(const op& o) {
  std::ostringstream os;
  os << "[N, " << o.c;
  if (!is_flat(o)) os << ", " << o.h << ", " << o.w;
  os << ']';
  return os.str();
}

/// "op 5 'layer1.0.conv1' (conv)": how errors name an op.
inline std::string op_label(const network& net, int i) {
  std::ostringstream os;
  os << "op " << i;
  if (i >= 0 && i < static_cast<int>(net.ops.size())) {
    const op& o = net.ops[static_cast<std::size_t>(i)];
    os << " '" << o.name << "' (" << to_string(o.type) << ")";
  }
  return os.str();
}

namespace detail {

inline std::string net_prefix(const network& net) {
  return net.name.empty() ? std::string("arch: ") : "arch: network '" + net.name + "': ";
}

/// Floor division for a possibly negative numerator and a positive denominator.
inline std::int64_t floor_div(std::int64_t a, std::int64_t b) {
  const std::int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

/// `where()` names the op (called only on failure).
template <class Where>
int checked_extent(std::int64_t v, const Where& where, const char* axis) {
  GHNQ_CHECK(v <= std::numeric_limits<int>::max(), shape_error, where(), ": ", axis, " extent ", v, " is too large");
  return static_cast<int>(v);
}

}  // namespace detail

/// Validates op `i` of `net` against its inputs (which must already have shapes) and fills its
/// `c`, `h`, `w`. Ops before `i` are assumed inferred; the builder calls this after each append.
/// Throws as described in the file comment; the message starts with "arch: op <i> '<name>' (<type>)".
/// \code for (int i = 0; i < (int)net.ops.size(); ++i) ghnq::arch::infer_op_shape(net, i); \endcode
inline void infer_op_shape(network& net, int i) {
  const int n_ops = static_cast<int>(net.ops.size());
  GHNQ_ASSERT(i >= 0 && i < n_ops);
  op& o = net.ops[static_cast<std::size_t>(i)];
  // Built only when a check fails (shape inference runs for every sampled architecture).
  auto where = [&net, i] { return detail::net_prefix(net) + op_label(net, i); };
  const auto n_in = static_cast<int>(o.inputs.size());

  // Wiring: every input must be an existing, earlier op.
  for (int k = 0; k < n_in; ++k) {
    const int j = o.inputs[static_cast<std::size_t>(k)];
    GHNQ_CHECK(j >= 0 && j < n_ops, shape_error, where(), ": input ", k, " refers to op ", j,
               ", which does not exist (dangling input; the network has ", n_ops, " ops)");
    GHNQ_CHECK(j < i, shape_error, where(), ": input ", k, " refers to op ", j, ", which is ",
               j == i ? "the op itself (a cycle)" : "a later op (a cycle or forward reference)",
               "; ops must be listed in execution order with inputs before their consumers");
  }
  auto in = [&](int k) -> const op& {
    return net.ops[static_cast<std::size_t>(o.inputs[static_cast<std::size_t>(k)])];
  };
  auto in_label = [&](int k) {
    return "input " + std::to_string(k) + " (" + op_label(net, o.inputs[static_cast<std::size_t>(k)]) + ") " +
           shape_string(in(k));
  };
  auto expect_inputs = [&](int lo, int hi) {
    if (n_in >= lo && n_in <= hi) return;
    std::ostringstream os;
    if (lo == hi) os << "exactly " << lo;
    else os << "at least " << lo;
    GHNQ_CHECK(false, shape_error, where(), ": needs ", os.str(), " input", (lo == 1 && hi == 1 ? "" : "s"), ", got ",
               n_in);
  };
  auto need_spatial = [&](int k) {
    GHNQ_CHECK(!is_flat(in(k)), shape_error, where(), ": needs a spatial [N, C, H, W] input, got flat ", in_label(k));
  };
  auto need_positive = [&](std::int64_t v, const char* what) {
    GHNQ_CHECK(v >= 1, shape_error, where(), ": spatial size below 1: output ", what, " would be ", v, " for ",
               in_label(0));
  };
  constexpr int kMany = std::numeric_limits<int>::max();

  switch (o.type) {
    case op_type::input: {
      GHNQ_CHECK(i == 0, value_error, where(), ": only op 0 may be the network input");
      expect_inputs(0, 0);
      GHNQ_CHECK(net.in_channels >= 1 && net.in_h >= 1 && net.in_w >= 1, value_error, where(),
                 ": input shape must be positive, got [N, ", net.in_channels, ", ", net.in_h, ", ", net.in_w, "]");
      o.c = net.in_channels;
      o.h = net.in_h;
      o.w = net.in_w;
      return;
    }
    case op_type::conv: {
      expect_inputs(1, 1);
      GHNQ_CHECK(o.out_channels >= 1, value_error, where(), ": out_channels must be >= 1, got ", o.out_channels);
      GHNQ_CHECK(o.kh >= 1 && o.kw >= 1, value_error, where(), ": kernel must be >= 1, got ", o.kh, "x", o.kw);
      GHNQ_CHECK(o.stride >= 1, value_error, where(), ": stride must be >= 1, got ", o.stride);
      GHNQ_CHECK(o.stride_w >= 0, value_error, where(), ": stride_w must be >= 0 (0 = same as stride), got ",
                 o.stride_w);
      GHNQ_CHECK(o.dilation >= 1, value_error, where(), ": dilation must be >= 1, got ", o.dilation);
      GHNQ_CHECK(o.pad_h >= 0 && o.pad_w >= 0, value_error, where(), ": padding must be >= 0, got ", o.pad_h, "x",
                 o.pad_w);
      GHNQ_CHECK(o.groups >= 1, value_error, where(), ": groups must be >= 1, got ", o.groups);
      need_spatial(0);
      const op& x = in(0);
      GHNQ_CHECK(x.c % o.groups == 0, shape_error, where(), ": channel mismatch: ", x.c, " input channels of ",
                 in_label(0), " are not divisible by groups = ", o.groups);
      GHNQ_CHECK(o.out_channels % o.groups == 0, shape_error, where(), ": channel mismatch: out_channels ",
                 o.out_channels, " is not divisible by groups = ", o.groups);
      const std::int64_t ho =
          detail::floor_div(std::int64_t{x.h} + 2 * o.pad_h - std::int64_t{o.dilation} * (o.kh - 1) - 1, o.stride) + 1;
      const std::int64_t wo =
          detail::floor_div(std::int64_t{x.w} + 2 * o.pad_w - std::int64_t{o.dilation} * (o.kw - 1) - 1,
                            o.stride_width()) + 1;
      need_positive(ho, "height");
      need_positive(wo, "width");
      o.c = o.out_channels;
      o.h = static_cast<int>(ho);
      o.w = static_cast<int>(wo);
      return;
    }
    case op_type::linear: {
      expect_inputs(1, 1);
      GHNQ_CHECK(o.out_channels >= 1, value_error, where(), ": out_channels must be >= 1, got ", o.out_channels);
      GHNQ_CHECK(is_flat(in(0)), shape_error, where(), ": needs a flat [N, C] input (add flatten or global_avg_pool), got ",
                 in_label(0));
      o.c = o.out_channels;
      o.h = o.w = 0;
      return;
    }
    case op_type::batch_norm:
    case op_type::relu:
    case op_type::hardswish:
    case op_type::sigmoid:
    case op_type::identity:
    case op_type::dropout: {
      expect_inputs(1, 1);
      if (o.type == op_type::dropout)
        GHNQ_CHECK(o.p >= 0.0 && o.p < 1.0, value_error, where(), ": dropout p must be in [0, 1), got ", o.p);
      o.c = in(0).c;
      o.h = in(0).h;
      o.w = in(0).w;
      return;
    }
    case op_type::max_pool:
    case op_type::avg_pool: {
      expect_inputs(1, 1);
      GHNQ_CHECK(o.kh >= 1 && o.kh == o.kw, value_error, where(), ": pooling kernel must be square and >= 1, got ", o.kh,
                 "x", o.kw);
      GHNQ_CHECK(o.stride >= 1, value_error, where(), ": stride must be >= 1, got ", o.stride);
      GHNQ_CHECK(o.pad_h == o.pad_w && o.pad_h >= 0 && 2 * o.pad_h <= o.kh, value_error, where(),
                 ": padding must be equal in both directions and in [0, kernel / 2], got ", o.pad_h, "x", o.pad_w,
                 " for kernel ", o.kh);
      need_spatial(0);
      const op& x = in(0);
      const std::int64_t ho = detail::floor_div(std::int64_t{x.h} + 2 * o.pad_h - o.kh, o.stride) + 1;
      const std::int64_t wo = detail::floor_div(std::int64_t{x.w} + 2 * o.pad_w - o.kw, o.stride) + 1;
      need_positive(ho, "height");
      need_positive(wo, "width");
      o.c = x.c;
      o.h = static_cast<int>(ho);
      o.w = static_cast<int>(wo);
      return;
    }
    case op_type::global_avg_pool: {
      expect_inputs(1, 1);
      need_spatial(0);
      o.c = in(0).c;
      o.h = o.w = 0;
      return;
    }
    case op_type::flatten: {
      expect_inputs(1, 1);
      const op& x = in(0);
      const std::int64_t n = is_flat(x) ? std::int64_t{x.c} : std::int64_t{x.c} * x.h * x.w;
      o.c = detail::checked_extent(n, where, "channel");
      o.h = o.w = 0;
      return;
    }
    case op_type::sum: {
      expect_inputs(1, kMany);
      for (int k = 1; k < n_in; ++k)
        GHNQ_CHECK(in(k).c == in(0).c && in(k).h == in(0).h && in(k).w == in(0).w, shape_error, where(),
                   ": shape mismatch: ", in_label(k), " differs from ", in_label(0));
      o.c = in(0).c;
      o.h = in(0).h;
      o.w = in(0).w;
      return;
    }
    case op_type::concat: {
      expect_inputs(1, kMany);
      std::int64_t c = 0;
      for (int k = 0; k < n_in; ++k) {
        GHNQ_CHECK(in(k).h == in(0).h && in(k).w == in(0).w, shape_error, where(), ": spatial size mismatch: ",
                   in_label(k), " differs from ", in_label(0), " (concat joins channels)");
        c += in(k).c;
      }
      o.c = detail::checked_extent(c, where, "channel");
      o.h = in(0).h;
      o.w = in(0).w;
      return;
    }
    case op_type::zero:
    case op_type::subsample: {
      expect_inputs(1, 1);
      GHNQ_CHECK(o.stride >= 1, value_error, where(), ": stride must be >= 1, got ", o.stride);
      const op& x = in(0);
      GHNQ_CHECK(o.stride == 1 || !is_flat(x), shape_error, where(), ": stride ", o.stride, " needs a spatial input, got ",
                 in_label(0));
      o.c = x.c;
      o.h = is_flat(x) ? 0 : (x.h + o.stride - 1) / o.stride;
      o.w = is_flat(x) ? 0 : (x.w + o.stride - 1) / o.stride;
      return;
    }
    case op_type::channel_scale: {
      expect_inputs(2, 2);
      GHNQ_CHECK(is_flat(in(1)) && in(1).c == in(0).c, shape_error, where(),
                 ": the scale (input 1) must be flat [N, C] with the channels of input 0: ", in_label(1), " vs ",
                 in_label(0));
      o.c = in(0).c;
      o.h = in(0).h;
      o.w = in(0).w;
      return;
    }
    case op_type::shift: {
      expect_inputs(1, 1);
      need_spatial(0);
      need_positive(std::int64_t{in(0).h} - 1, "height");
      need_positive(std::int64_t{in(0).w} - 1, "width");
      o.c = in(0).c;
      o.h = in(0).h - 1;
      o.w = in(0).w - 1;
      return;
    }
  }
  GHNQ_CHECK(false, value_error, where(), ": unknown op type code ", static_cast<int>(o.type));
}

/// Checks that `net.output` names an op whose value is flat [N, num_classes] (shapes inferred).
inline void check_output(const network& net) {
  const int n_ops = static_cast<int>(net.ops.size());
  GHNQ_CHECK(net.output >= 0 && net.output < n_ops, shape_error, detail::net_prefix(net), "output ", net.output,
             " is not an op index (the network has ", n_ops, " ops)");
  const op& o = net.ops[static_cast<std::size_t>(net.output)];
  GHNQ_CHECK(is_flat(o) && o.c == net.num_classes, shape_error, detail::net_prefix(net), "output ",
             op_label(net, net.output), " must be flat [N, num_classes] = [N, ", net.num_classes, "], got ",
             shape_string(o));
}

/// Checks that no two parameterized ops (conv, linear, affine batch_norm) share a name, so that
/// parameter names (`name + ".weight"`) are unique. Throws value_error naming both ops.
inline void check_param_names(const network& net) {
  std::unordered_set<std::string> seen;
  for (int i = 0; i < static_cast<int>(net.ops.size()); ++i) {
    const op& o = net.ops[static_cast<std::size_t>(i)];
    if (!o.has_params()) continue;
    GHNQ_CHECK(!o.name.empty(), value_error, detail::net_prefix(net), op_label(net, i),
               ": an op with parameters needs a name");
    if (!seen.insert(o.name).second) {
      int first = 0;
      while (net.ops[static_cast<std::size_t>(first)].name != o.name || !net.ops[static_cast<std::size_t>(first)].has_params())
        ++first;
      GHNQ_CHECK(false, value_error, detail::net_prefix(net), op_label(net, i), ": duplicate parameter name '", o.name,
                 "' (also used by ", op_label(net, first), ")");
    }
  }
}

/// Fills `c`, `h`, `w` of every op and validates the whole network: network-level fields
/// (in_channels, in_h, in_w, num_classes >= 1, ops[0] is the input), every op (see the file
/// comment), unique parameter names, and the output (flat [N, num_classes]).
/// Throws shape_error / value_error whose message names the op index, name, type and shapes.
/// \code
/// ghnq::arch::network net = ...;   // e.g. read from JSON
/// ghnq::arch::infer_shapes(net);   // net.ops[i].c / h / w are now set
/// \endcode
inline void infer_shapes(network& net) {
  GHNQ_CHECK(net.num_classes >= 1, value_error, detail::net_prefix(net), "num_classes must be >= 1, got ",
             net.num_classes);
  GHNQ_CHECK(!net.ops.empty(), value_error, detail::net_prefix(net), "the network has no ops (op 0 must be the input)");
  GHNQ_CHECK(net.ops[0].type == op_type::input, value_error, detail::net_prefix(net), op_label(net, 0),
             ": op 0 must be the network input");
  for (int i = 0; i < static_cast<int>(net.ops.size()); ++i) infer_op_shape(net, i);
  check_param_names(net);
  check_output(net);
}

}  // namespace ghnq::arch
