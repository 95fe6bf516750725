/// \file
/// \brief `ghnq::arch::builder`: constructs a network IR op by op, inferring and validating shapes
/// as it goes (errors surface at the call that adds the faulty op).
///
/// Every adder returns the index of the new op; pass it as the input of later ops. Ops are named
/// by the caller (module paths such as "layer1.0.conv1", giving parameter names
/// "layer1.0.conv1.weight") or automatically "op<i>". Ops with parameters must have unique names.
/// \code
/// ghnq::arch::builder b(3, 32, 32, 10);
/// int x = b.conv(b.input(), 16, 3, 1, 1, 1, 1, false, "conv1");   // 3x3, stride 1, pad 1
/// x = b.relu(b.batch_norm(x, true, "bn1"));
/// x = b.linear(b.global_avg_pool(x), 10, true, "fc");
/// ghnq::arch::network net = b.finish(x, "tiny");
/// \endcode
#pragma once
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ghnq/arch/network.hpp"
#include "ghnq/arch/params.hpp"
#include "ghnq/arch/shape_inference.hpp"
#include "ghnq/core/error.hpp"

namespace ghnq::arch {

/// Incremental network constructor (see the file comment).
///
/// Contract: each adder validates its inputs (indices of ops already added) and attributes and
/// infers the new op's shape immediately (shape_error / value_error naming the op as
/// infer_shapes would). `finish` checks the output and the parameter order.
class builder {
 public:
  /// Starts a network for inputs [N, in_channels, in_h, in_w] and `num_classes` logits; op 0 is
  /// the input. Throws value_error on non-positive sizes.
  builder(int in_channels, int in_h, int in_w, int num_classes) {
    GHNQ_CHECK(in_channels >= 1 && in_h >= 1 && in_w >= 1, value_error,
               "arch::builder: input shape must be positive, got [N, ", in_channels, ", ", in_h, ", ", in_w, "]");
    GHNQ_CHECK(num_classes >= 1, value_error, "arch::builder: num_classes must be >= 1, got ", num_classes);
    net_.in_channels = in_channels;
    net_.in_h = in_h;
    net_.in_w = in_w;
    net_.num_classes = num_classes;
    op o;
    o.type = op_type::input;
    o.name = "input";
    add(std::move(o));
  }

  /// Index of the input op (always 0).
  int input() const noexcept { return 0; }
  /// Number of ops added so far (including the input).
  int size() const noexcept { return static_cast<int>(net_.ops.size()); }
  /// The network built so far (shapes inferred; output not set until finish).
  const network& net() const noexcept { return net_; }
  /// Read access to op `i` built so far.
  const op& at(int i) const {
    check_index(i, "at");
    return net_.ops[static_cast<std::size_t>(i)];
  }

  /// Channels, height, width of op `i` so far (height == width == 0 for flat [N, C] values).
  int channels(int i) const { return at(i).c; }
  int height(int i) const { return at(i).h; }
  int width(int i) const { return at(i).w; }
  /// True when op `i` holds a flat [N, C] value.
  bool flat(int i) const { return is_flat(at(i)); }

  /// Convolution with a kh x kw kernel: output [out, Ho, Wo] (PyTorch's formula), weight
  /// [out, C / groups, kh, kw], optional bias [out].
  int conv(int x, int out, int kh, int kw, int stride, int pad_h, int pad_w, int dilation = 1, int groups = 1,
           bool bias = false, std::string name = {}) {
    return conv2(x, out, kh, kw, stride, stride, pad_h, pad_w, dilation, groups, bias, std::move(name));
  }

  /// Convolution with per-axis strides: as the kh x kw `conv`, with vertical stride `stride_h`
  /// and horizontal stride `stride_w` (PyTorch's `stride=(stride_h, stride_w)`). Stored as
  /// op::stride = stride_h and op::stride_w = stride_w, or 0 when both are equal.
  /// \code int y = b.conv2(x, 16, 1, 7, 1, 2, 0, 3);   // 1x7 kernel, stride (1, 2), padding (0, 3) \endcode
  int conv2(int x, int out, int kh, int kw, int stride_h, int stride_w, int pad_h, int pad_w, int dilation = 1,
            int groups = 1, bool bias = false, std::string name = {}) {
    op o = make(op_type::conv, {x}, std::move(name));
    o.out_channels = out;
    o.kh = kh;
    o.kw = kw;
    o.stride = stride_h;
    o.stride_w = stride_w == stride_h ? 0 : stride_w;
    o.pad_h = pad_h;
    o.pad_w = pad_w;
    o.dilation = dilation;
    o.groups = groups;
    o.bias = bias;
    return add(std::move(o));
  }

  /// Square k x k convolution; `pad = -1` means "same" padding dilation (k - 1) / 2.
  /// Note: a call with exactly seven int arguments matches both conv overloads and does not
  /// compile; pass the bias too (`conv(x, c, 3, 1, 1, 1, c, false)`) or use the kh, kw form.
  int conv(int x, int out, int k, int stride = 1, int pad = -1, int dilation = 1, int groups = 1, bool bias = false,
           std::string name = {}) {
    const int p = pad < 0 ? dilation * (k - 1) / 2 : pad;
    return conv(x, out, k, k, stride, p, p, dilation, groups, bias, std::move(name));
  }

  /// Fully connected layer on a flat [N, C] input: [N, out]; weight [out, C], optional bias [out].
  int linear(int x, int out, bool bias = true, std::string name = {}) {
    op o = make(op_type::linear, {x}, std::move(name));
    o.out_channels = out;
    o.bias = bias;
    return add(std::move(o));
  }

  /// Batch norm over channels ([N, C, H, W] or [N, C]); `affine` adds weight [C] and bias [C].
  int batch_norm(int x, bool affine = true, std::string name = {}) {
    op o = make(op_type::batch_norm, {x}, std::move(name));
    o.bias = affine;
    return add(std::move(o));
  }

  int relu(int x, std::string name = {}) { return add(make(op_type::relu, {x}, std::move(name))); }
  int hardswish(int x, std::string name = {}) { return add(make(op_type::hardswish, {x}, std::move(name))); }
  int sigmoid(int x, std::string name = {}) { return add(make(op_type::sigmoid, {x}, std::move(name))); }
  int identity(int x, std::string name = {}) { return add(make(op_type::identity, {x}, std::move(name))); }
  /// x[:, :, 1:, 1:] (the shifted path of FactorizedReduce).
  int shift(int x, std::string name = {}) { return add(make(op_type::shift, {x}, std::move(name))); }

  /// k x k max pooling with stride and padding (0 <= pad <= k / 2); `stride = -1` means k.
  int max_pool(int x, int k, int stride = -1, int pad = 0, std::string name = {}) {
    return pool(op_type::max_pool, x, k, stride, pad, std::move(name));
  }
  /// k x k average pooling (padding excluded from the count); `stride = -1` means k.
  int avg_pool(int x, int k, int stride = -1, int pad = 0, std::string name = {}) {
    return pool(op_type::avg_pool, x, k, stride, pad, std::move(name));
  }
  /// [N, C, H, W] -> [N, C].
  int global_avg_pool(int x, std::string name = {}) {
    return add(make(op_type::global_avg_pool, {x}, std::move(name)));
  }
  /// [N, C, H, W] -> [N, C H W].
  int flatten(int x, std::string name = {}) { return add(make(op_type::flatten, {x}, std::move(name))); }
  /// Elementwise sum of equally shaped inputs (>= 1).
  int sum(std::vector<int> xs, std::string name = {}) {
    return add(make(op_type::sum, std::move(xs), std::move(name)));
  }
  /// Channel concatenation of inputs with equal spatial size (>= 1).
  int concat(std::vector<int> xs, std::string name = {}) {
    return add(make(op_type::concat, std::move(xs), std::move(name)));
  }
  /// Zeros shaped like x[:, :, ::stride, ::stride] (DARTS "none").
  int zero(int x, int stride = 1, std::string name = {}) {
    op o = make(op_type::zero, {x}, std::move(name));
    o.stride = stride;
    return add(std::move(o));
  }
  /// x[:, :, ::stride, ::stride] (DARTS "Stride").
  int subsample(int x, int stride, std::string name = {}) {
    op o = make(op_type::subsample, {x}, std::move(name));
    o.stride = stride;
    return add(std::move(o));
  }
  /// Inverted dropout with probability p in [0, 1).
  int dropout(int x, double p, std::string name = {}) {
    op o = make(op_type::dropout, {x}, std::move(name));
    o.p = p;
    return add(std::move(o));
  }
  /// x * s with s [N, C] broadcast over H, W (squeeze-excitation gating).
  int channel_scale(int x, int s, std::string name = {}) {
    return add(make(op_type::channel_scale, {x, s}, std::move(name)));
  }

  /// Appends a parameter to the explicit registration order (network::param_order). When no
  /// entry is ever added, the order is derived from op order (weight, then bias).
  void add_param_order(int op_index, param_role role) {
    check_index(op_index, "add_param_order");
    GHNQ_CHECK(has_param(net_.ops[static_cast<std::size_t>(op_index)], role), value_error,
               "arch::builder::add_param_order: ", op_label(net_, op_index), " has no ", to_string(role),
               " parameter");
    net_.param_order.push_back({op_index, role});
  }
  /// Appends all parameters of op `op_index` (weight, then bias) to the registration order.
  void add_param_order(int op_index) {
    check_index(op_index, "add_param_order");
    append_op_params(net_.ops[static_cast<std::size_t>(op_index)], op_index, net_.param_order);
  }
  /// Replaces the registration order (validated by finish).
  void set_param_order(std::vector<param_ref> order) { net_.param_order = std::move(order); }

  /// Sets the output (must be flat [N, num_classes]) and the network name, validates the whole
  /// network (infer_shapes, param_order) and returns it. The builder stays usable.
  network finish(int output_op, std::string name = {}) const {
    network n = net_;
    n.output = output_op;
    n.name = std::move(name);
    infer_shapes(n);
    check_param_order(n);
    return n;
  }

 private:
  void check_index(int i, const char* what) const {
    GHNQ_CHECK(i >= 0 && i < size(), shape_error, "arch::builder::", what, ": op index ", i,
               " does not exist (", size(), " ops so far)");
  }

  op make(op_type t, std::vector<int> inputs, std::string name) const {
    op o;
    o.type = t;
    o.inputs = std::move(inputs);
    o.name = name.empty() ? "op" + std::to_string(size()) : std::move(name);
    return o;
  }

  int pool(op_type t, int x, int k, int stride, int pad, std::string name) {
    op o = make(t, {x}, std::move(name));
    o.kh = o.kw = k;
    o.stride = stride < 0 ? k : stride;
    o.pad_h = o.pad_w = pad;
    return add(std::move(o));
  }

  /// Appends `o`, infers its shape (rolling back on error) and checks name uniqueness.
  int add(op o) {
    const int i = size();
    net_.ops.push_back(std::move(o));
    try {
      infer_op_shape(net_, i);
      op& a = net_.ops.back();
      if (a.has_params()) {
        auto it = param_ops_.find(a.name);
        GHNQ_CHECK(it == param_ops_.end(), value_error, detail::net_prefix(net_), op_label(net_, i),
                   ": duplicate parameter name '", a.name, "' (also used by ", op_label(net_, it->second), ")");
        param_ops_.emplace(a.name, i);
      }
    } catch (...) {
      net_.ops.pop_back();
      throw;
    }
    return i;
  }

  network net_;
  std::unordered_map<std::string, int> param_ops_;
};

}  // namespace ghnq::arch
