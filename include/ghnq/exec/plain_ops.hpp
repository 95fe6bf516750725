/// \file plain_ops.hpp
/// The one dispatch of parameter-free ops (activations, pooling, flatten, sum, concat, zero,
/// identity, shift, subsample, channel_scale) shared by every float runner of an arch::network:
/// exec::executor and exec::fake_quant_reference, and the conv parameters of a conv op. Ops with parameters, quantizers or state (input,
/// conv, linear, batch_norm, dropout) stay with their runner.
#pragma once
#include <cstdint>
#include <vector>

#include "ghnq/arch/network.hpp"
#include "ghnq/autograd/tape.hpp"
#include "ghnq/nn.hpp"

namespace ghnq::exec::detail {

/// The nn::conv2d_params of conv op `o` (per-axis strides and padding, dilation, groups).
inline nn::conv2d_params conv_params_of(const arch::op& o) {
  nn::conv2d_params cp;
  cp.stride_h = o.stride;
  cp.stride_w = o.stride_width();
  cp.pad_h = o.pad_h;
  cp.pad_w = o.pad_w;
  cp.dilation_h = cp.dilation_w = o.dilation;
  cp.groups = o.groups;
  return cp;
}

/// Runs parameter-free op `o` on its inputs (`in(k)` returns the k-th input var) for a batch of
/// `batch` samples. Throws value_error for input, conv, linear, batch_norm and dropout.
template <class T, class Backend, class In>
autograd::var<T, Backend> run_plain_op(autograd::tape<T, Backend>& tp, const arch::op& o, std::int64_t batch,
                                       In&& in) {
  using arch::op_type;
  using var_t = autograd::var<T, Backend>;
  auto all_inputs = [&] {
    std::vector<var_t> xs;
    xs.reserve(o.inputs.size());
    for (std::size_t k = 0; k < o.inputs.size(); ++k) xs.push_back(in(k));
    return xs;
  };
  switch (o.type) {
    case op_type::relu: return nn::relu(tp, in(0));
    case op_type::hardswish: return nn::hardswish(tp, in(0));
    case op_type::sigmoid: return nn::sigmoid(tp, in(0));
    case op_type::max_pool: return nn::max_pool2d(tp, in(0), nn::pool2d_params{o.kh, o.stride, o.pad_h});
    case op_type::avg_pool: return nn::avg_pool2d(tp, in(0), nn::pool2d_params{o.kh, o.stride, o.pad_h});
    case op_type::global_avg_pool: return nn::global_avg_pool(tp, in(0));
    case op_type::flatten: return nn::flatten(tp, in(0));
    case op_type::sum: return nn::sum(tp, all_inputs());
    case op_type::concat: return o.inputs.size() == 1 ? in(0) : nn::concat(tp, all_inputs(), 1);
    case op_type::zero:
      return o.h == 0 && o.w == 0 ? nn::zeros<T, Backend>({batch, o.c}) : nn::zeros<T, Backend>({batch, o.c, o.h, o.w});
    case op_type::identity: return in(0);
    case op_type::shift: return nn::crop(tp, in(0), 1, 1);
    case op_type::subsample: return nn::subsample(tp, in(0), o.stride);
    case op_type::channel_scale: return nn::channel_scale(tp, in(0), in(1));
    case op_type::input:
    case op_type::conv:
    case op_type::linear:
    case op_type::batch_norm:
    case op_type::dropout: break;  // no default: a new op type must be placed here (-Wswitch)
  }
  throw value_error("run_plain_op: op '" + o.name + "' has parameters or state (not a plain op)");
}

}  // namespace ghnq::exec::detail
