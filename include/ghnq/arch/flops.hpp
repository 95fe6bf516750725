/// \file
/// \brief FLOP counts of a network IR: conv and linear layers of the ops that reach the output.
///
/// Convention (the usual one for CNN throughput, e.g. fvcore / ptflops times two):
///  - Only conv and linear layers count; one multiply-add is 2 FLOPs, biases, batch norm,
///    activations, pooling, sums and concatenation are not counted.
///      conv:   2 N Cout Ho Wo (Cin / groups) kh kw   (Ho, Wo: the op's inferred output size)
///      linear: 2 N in out
///  - Only ops on a path to `network::output` count: the executor skips the others (e.g. the
///    modules of a DeepNets-1M cell fed by `zero` placeholders), so they cost nothing.
///  - Training (`training_flops`) = 3 x forward: the forward GEMM, the data gradient (dx) and the
///    weight gradient (dw) each cost one forward's worth of multiply-adds. The first conv's dx is
///    counted too (the executor computes it only when the input requires a gradient), so this is
///    the conventional figure, not an exact count of one step.
///
/// Shapes come from the ops (`c`, `h`, `w`) when the network is inferred (every op has c > 0),
/// otherwise arch::infer_shapes runs on a copy (which validates the network and throws on errors).
#pragma once
#include <cstdint>
#include <vector>

#include "ghnq/arch/network.hpp"
#include "ghnq/arch/params.hpp"
#include "ghnq/arch/shape_inference.hpp"
#include "ghnq/core/error.hpp"

namespace ghnq::arch {

namespace detail {

/// live[i] is true when op i is on a path to `net.output` (the executor's rule).
inline std::vector<bool> ops_reaching_output(const network& net) {
  const int n_ops = static_cast<int>(net.ops.size());
  GHNQ_CHECK(net.output >= 0 && net.output < n_ops, shape_error, net_prefix(net), "output ", net.output,
             " is not an op index (the network has ", n_ops, " ops)");
  std::vector<bool> live(net.ops.size(), false);
  live[static_cast<std::size_t>(net.output)] = true;
  for (std::size_t i = net.ops.size(); i-- > 0;)
    if (live[i])
      for (int in : net.ops[i].inputs) live[static_cast<std::size_t>(in)] = true;
  return live;
}

/// Forward FLOPs of one inferred conv / linear op per sample (0 for every other type).
inline std::int64_t op_forward_flops_per_sample(const network& net, const op& o) {
  if (o.type != op_type::conv && o.type != op_type::linear) return 0;
  const op& x = net.ops[static_cast<std::size_t>(o.inputs.at(0))];
  const std::int64_t cin = x.c;
  if (o.type == op_type::linear) return 2 * cin * o.out_channels;
  return 2 * std::int64_t{o.out_channels} * o.h * o.w * (cin / o.groups) * o.kh * o.kw;
}

}  // namespace detail

/// FLOPs of one forward pass on a batch of `batch` samples: sum over the conv and linear ops that
/// reach the output of 2 x multiply-adds (see the file comment for the formulas). Throws
/// value_error for batch < 1, and what infer_shapes throws for an invalid, not yet inferred network.
/// \code
/// auto f = ghnq::arch::forward_flops(ghnq::arch::resnet20(3, 32, 32, 10));   // 81,626,368
/// \endcode
inline std::int64_t forward_flops(const network& net, std::int64_t batch = 1) {
  GHNQ_CHECK(batch >= 1, value_error, "arch::forward_flops: batch must be >= 1, got ", batch);
  network tmp;
  const network& n = detail::inferred(net, tmp);
  const std::vector<bool> live = detail::ops_reaching_output(n);
  std::int64_t per_sample = 0;
  for (std::size_t i = 0; i < n.ops.size(); ++i)
    if (live[i]) per_sample += detail::op_forward_flops_per_sample(n, n.ops[i]);
  return per_sample * batch;
}

/// FLOPs of one training step (forward + backward) on `batch` samples by the usual convention:
/// 3 x forward_flops (forward, data gradient, weight gradient of every conv / linear layer).
/// \code
/// double gflops_per_s = ghnq::arch::training_flops(net, 64) * steps_per_s * 1e-9;
/// \endcode
inline std::int64_t training_flops(const network& net, std::int64_t batch = 1) {
  GHNQ_CHECK(batch >= 1, value_error, "arch::training_flops: batch must be >= 1, got ", batch);
  return 3 * forward_flops(net, batch);
}

}  // namespace ghnq::arch
