/// \file
/// \brief The network IR: a runtime description of a CNN as a DAG of ops with named parameters.
///
/// Contract:
///  - `ops` is in a valid execution order: every input index of op i is < i. `ops[0]` is the
///    single `op_type::input`. `output` is the op whose value is the logits [N, num_classes].
///  - Every op has a `name` (a module path such as "cells.0._ops.1.op.1"); the parameters of a
///    conv / linear / batch_norm op are named `name + ".weight"` and `name + ".bias"`.
///  - `param_order` lists the parameter tensors in *registration order* (the order a PyTorch
///    module's named_parameters() would give); the GHN and the executor exchange parameter sets
///    in this order. When empty, `parameters()` derives it from op order (weight, then bias).
///  - Output shapes (`c`, `h`, `w`) are filled by `infer_shapes` (arch/shape_inference.hpp);
///    `h == 0 && w == 0` marks a flat [N, c] value (after global pooling, flatten, linear).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ghnq/tensor/shape.hpp"

namespace ghnq::arch {

/// Kinds of ops in the IR.
enum class op_type : std::uint8_t {
  input,            ///< the image batch [N, in_channels, in_h, in_w]
  conv,             ///< conv2d: out_channels, kh x kw, stride (stride_w), padding, dilation, groups, bias
  linear,           ///< fully connected on [N, c]: out_channels, bias
  batch_norm,       ///< BatchNorm over channels of [N,C,H,W] or [N,C]; `bias` = affine
  relu,             ///< max(x, 0)
  hardswish,        ///< x * relu6(x + 3) / 6
  sigmoid,          ///< 1 / (1 + exp(-x))
  max_pool,         ///< kh x kw window (kh == kw), stride, padding (pad_h)
  avg_pool,         ///< as max_pool; padding excluded from the count
  global_avg_pool,  ///< [N,C,H,W] -> [N,C]
  flatten,          ///< [N,C,H,W] -> [N, C*H*W]
  sum,              ///< elementwise sum of all inputs (same shapes)
  concat,           ///< channel concatenation of all inputs (same spatial size)
  zero,             ///< the "none" op: zeros shaped like its input, spatially strided by `stride`
  identity,         ///< skip connection (pass-through)
  subsample,        ///< x[:, :, ::stride, ::stride] (DARTS "Stride" op)
  dropout,          ///< inverted dropout with probability p (identity at evaluation)
  channel_scale,    ///< inputs (x [N,C,H,W], s [N,C]): x * s broadcast over H, W (SE gating)
  shift,            ///< x[:, :, 1:, 1:]: drops the first row and column (FactorizedReduce's 2nd path)
};

/// Name of an op type as written in the JSON schema ("conv", "max_pool", ...).
inline const char* to_string(op_type t) {
  switch (t) {
    case op_type::input: return "input";
    case op_type::conv: return "conv";
    case op_type::linear: return "linear";
    case op_type::batch_norm: return "batch_norm";
    case op_type::relu: return "relu";
    case op_type::hardswish: return "hardswish";
    case op_type::sigmoid: return "sigmoid";
    case op_type::max_pool: return "max_pool";
    case op_type::avg_pool: return "avg_pool";
    case op_type::global_avg_pool: return "global_avg_pool";
    case op_type::flatten: return "flatten";
    case op_type::sum: return "sum";
    case op_type::concat: return "concat";
    case op_type::zero: return "zero";
    case op_type::identity: return "identity";
    case op_type::subsample: return "subsample";
    case op_type::dropout: return "dropout";
    case op_type::channel_scale: return "channel_scale";
    case op_type::shift: return "shift";
  }
  return "?";
}

/// One op of the IR.
struct op {
  op_type type = op_type::identity;
  std::vector<int> inputs;  ///< indices of earlier ops
  std::string name;         ///< module path; parameter names append ".weight" / ".bias"

  // conv / linear
  int out_channels = 0;
  int kh = 1, kw = 1;
  int stride = 1;           ///< conv, pools, zero, subsample
  int stride_w = 0;         ///< conv only: horizontal stride; 0 = same as `stride` (which is then the vertical stride)
  int pad_h = 0, pad_w = 0;
  int dilation = 1;
  int groups = 1;
  bool bias = false;        ///< conv / linear: has a bias; batch_norm: affine (weight and bias)
  double p = 0.0;           ///< dropout probability

  // filled by infer_shapes
  int c = 0, h = 0, w = 0;

  /// Effective horizontal stride of a conv: `stride_w` when set (> 0), else `stride`.
  int stride_width() const { return stride_w > 0 ? stride_w : stride; }

  bool has_params() const {
    return type == op_type::conv || type == op_type::linear || (type == op_type::batch_norm && bias);
  }
};

/// Role of a parameter tensor within its op.
enum class param_role : std::uint8_t { weight, bias };

/// One parameter tensor of a network.
struct param_ref {
  int op = -1;
  param_role role = param_role::weight;
};

/// A CNN: input description, ops, output, parameter order.
struct network {
  int in_channels = 3, in_h = 32, in_w = 32;
  int num_classes = 10;
  std::vector<op> ops;
  int output = -1;
  std::vector<param_ref> param_order;  ///< registration order; empty = derived from op order
  std::string name;                    ///< optional label ("resnet20", "deepnets#3", ...)
};

}  // namespace ghnq::arch
