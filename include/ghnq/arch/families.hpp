/// \file
/// \brief Ready-made network families written with `arch::builder`: ResNet-20 (CIFAR), ResNet-18,
/// VGG (with batch norm) and MobileNetV2, for any input channels / resolution / class count
/// (1x28x28 and 3x32x32 inputs both work), plus a lookup by name.
///
/// Parameter names follow the usual PyTorch module paths (torchvision / the CIFAR reference
/// implementations), e.g. "layer1.0.conv1.weight", "features.0.weight", "fc.bias".
#pragma once
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "ghnq/arch/builder.hpp"
#include "ghnq/arch/network.hpp"
#include "ghnq/core/error.hpp"

namespace ghnq::arch {

namespace detail {

/// A ResNet basic block: conv3x3(stride)-BN-ReLU-conv3x3-BN plus the shortcut (identity, or a
/// 1x1 conv(stride)-BN projection when the stride or the width changes: "option B"), then ReLU.
inline int basic_block(builder& b, int x, int out, int stride, const std::string& p, const char* shortcut_name) {
  int y = b.conv(x, out, 3, stride, 1, 1, 1, false, p + ".conv1");
  y = b.relu(b.batch_norm(y, true, p + ".bn1"));
  y = b.conv(y, out, 3, 1, 1, 1, 1, false, p + ".conv2");
  y = b.batch_norm(y, true, p + ".bn2");
  int s = x;
  if (stride != 1 || b.channels(x) != out) {
    const std::string sp = p + "." + shortcut_name;
    s = b.conv(x, out, 1, stride, 0, 1, 1, false, sp + ".0");
    s = b.batch_norm(s, true, sp + ".1");
  }
  return b.relu(b.sum({y, s}));
}

inline int scaled(int base, int width, int ref) { return std::max(1, base * width / ref); }

/// Round v to a multiple of `divisor`, not below `divisor` nor 10% below v (MobileNet rule).
inline int make_divisible(double v, int divisor = 8) {
  int n = std::max(divisor, static_cast<int>(v + divisor / 2.0) / divisor * divisor);
  if (n < 0.9 * v) n += divisor;
  return n;
}

inline bool small_input(int h, int w) { return std::min(h, w) < 64; }

}  // namespace detail

/// CIFAR ResNet-20 (He et al. 2016, §4.2): conv3x3(width)-BN-ReLU, 3 stages of 3 basic blocks
/// with widths width, 2 width, 4 width (stride 2 at the start of stages 2 and 3, 1x1 conv + BN
/// projection shortcuts there), global average pooling, linear(classes) with bias.
/// Parameters (3x32x32, 10 classes, width 16): 272,474. Names: conv1, bn1, layer<s>.<b>.conv1 /
/// bn1 / conv2 / bn2 / shortcut.0 / shortcut.1, linear.
/// \code auto net = ghnq::arch::resnet20(3, 32, 32, 10); \endcode
inline network resnet20(int in_c, int h, int w, int classes, int width = 16) {
  GHNQ_CHECK(width >= 1, value_error, "arch::resnet20: width must be >= 1, got ", width);
  builder b(in_c, h, w, classes);
  int x = b.conv(b.input(), width, 3, 1, 1, 1, 1, false, "conv1");
  x = b.relu(b.batch_norm(x, true, "bn1"));
  for (int s = 0; s < 3; ++s)
    for (int k = 0; k < 3; ++k)
      x = detail::basic_block(b, x, width << s, (s > 0 && k == 0) ? 2 : 1,
                              "layer" + std::to_string(s + 1) + "." + std::to_string(k), "shortcut");
  x = b.linear(b.global_avg_pool(x), classes, true, "linear");
  return b.finish(x, "resnet20");
}

/// ResNet-18 with basic blocks [2, 2, 2, 2] and widths 64, 128, 256, 512 scaled by width / 64.
/// Stem: for inputs smaller than 64x64 a CIFAR-style conv3x3(stride 1)-BN-ReLU; otherwise
/// torchvision's conv7x7(stride 2, pad 3)-BN-ReLU-maxpool(3, 2, 1). Stage strides 1, 2, 2, 2 with
/// 1x1 conv + BN projection shortcuts ("downsample"), global average pooling, fc with bias.
/// Parameters: 11,173,962 (3x32x32, 10 classes); 11,689,512 (3x224x224, 1000 classes, as torchvision).
/// \code auto net = ghnq::arch::resnet18(1, 28, 28, 10, 32);   // half width \endcode
inline network resnet18(int in_c, int h, int w, int classes, int width = 64) {
  GHNQ_CHECK(width >= 1, value_error, "arch::resnet18: width must be >= 1, got ", width);
  builder b(in_c, h, w, classes);
  int x;
  if (detail::small_input(h, w)) {
    x = b.conv(b.input(), width, 3, 1, 1, 1, 1, false, "conv1");
    x = b.relu(b.batch_norm(x, true, "bn1"));
  } else {
    x = b.conv(b.input(), width, 7, 2, 3, 1, 1, false, "conv1");
    x = b.relu(b.batch_norm(x, true, "bn1"));
    x = b.max_pool(x, 3, 2, 1);
  }
  for (int s = 0; s < 4; ++s)
    for (int k = 0; k < 2; ++k)
      x = detail::basic_block(b, x, width << s, (s > 0 && k == 0) ? 2 : 1,
                              "layer" + std::to_string(s + 1) + "." + std::to_string(k), "downsample");
  x = b.linear(b.global_avg_pool(x), classes, true, "fc");
  return b.finish(x, "resnet18");
}

/// Entry of a VGG configuration meaning "2x2 max pool, stride 2".
inline constexpr int kVggPool = 0;

/// VGG-11 configuration ("A"): 64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M.
inline std::vector<int> vgg11_config() {
  const int M = kVggPool;
  return {64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M};
}

/// VGG-style network from `config`: a positive entry c adds conv3x3(c, pad 1, with bias)
/// [-BN]-ReLU, `kVggPool` (0) adds a 2x2 stride-2 max pool — skipped when the map is already
/// smaller than 2x2, so deep configurations also work on 28x28 inputs. Then global average
/// pooling and a linear classifier with bias (the CIFAR variant of VGG). Names follow
/// torchvision's Sequential indices: features.<i> (conv / BN), classifier.
/// Parameters (vgg11_config, batch norm, 3x32x32, 10 classes): 9,231,114.
/// \code auto net = ghnq::arch::vgg(3, 32, 32, 10, ghnq::arch::vgg11_config()); \endcode
inline network vgg(int in_c, int h, int w, int classes, const std::vector<int>& config, bool batch_norm = true,
                   const std::string& name = "vgg") {
  GHNQ_CHECK(!config.empty(), value_error, "arch::vgg: empty configuration");
  builder b(in_c, h, w, classes);
  int x = b.input();
  int idx = 0;  // torchvision Sequential index
  bool any_conv = false;
  for (std::size_t k = 0; k < config.size(); ++k) {
    const int c = config[k];
    GHNQ_CHECK(c >= 0, value_error, "arch::vgg: config[", k, "] must be a channel count >= 1 or kVggPool (0), got ", c);
    if (c == kVggPool) {
      if (b.height(x) >= 2 && b.width(x) >= 2) x = b.max_pool(x, 2, 2, 0, "features." + std::to_string(idx));
      ++idx;
      continue;
    }
    x = b.conv(x, c, 3, 1, 1, 1, 1, true, "features." + std::to_string(idx++));
    any_conv = true;
    if (batch_norm) x = b.batch_norm(x, true, "features." + std::to_string(idx++));
    x = b.relu(x, "features." + std::to_string(idx++));
  }
  GHNQ_CHECK(any_conv, value_error, "arch::vgg: configuration has no conv layer");
  x = b.linear(b.global_avg_pool(x), classes, true, "classifier");
  return b.finish(x, name);
}

/// MobileNetV2 (Sandler et al. 2018) with torchvision's layout and width multiplier: conv3x3(32)
/// -BN-ReLU, inverted residual blocks (t, c, n, s) = (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2)
/// (6,96,3,1) (6,160,3,2) (6,320,1,1) — each a 1x1 expand conv-BN-ReLU (omitted when t = 1), a
/// depthwise 3x3 conv(stride)-BN-ReLU and a 1x1 project conv-BN, with a residual sum when the
/// stride is 1 and the channels match — then conv1x1(1280)-BN-ReLU, global average pooling,
/// dropout(0.2) and linear(classes). ReLU replaces ReLU6 (not in the IR). For inputs smaller than
/// 64x64 the stem and the second stage use stride 1 (the usual CIFAR adaptation: 32 -> 4, 28 -> 4).
/// Channels are rounded with make_divisible(c * width_mult, 8).
/// Parameters: 3,504,872 (3x224x224, 1000 classes, as torchvision); 2,236,682 (3x32x32, 10 classes).
/// \code auto net = ghnq::arch::mobilenet_v2(1, 28, 28, 10, 0.5); \endcode
inline network mobilenet_v2(int in_c, int h, int w, int classes, double width_mult = 1.0) {
  GHNQ_CHECK(width_mult > 0.0 && std::isfinite(width_mult), value_error,
             "arch::mobilenet_v2: width_mult must be > 0, got ", width_mult);
  const bool small = detail::small_input(h, w);
  struct stage {
    int t, c, n, s;
  };
  const stage stages[] = {{1, 16, 1, 1},           {6, 24, 2, small ? 1 : 2}, {6, 32, 3, 2}, {6, 64, 4, 2},
                          {6, 96, 3, 1},           {6, 160, 3, 2},            {6, 320, 1, 1}};
  builder b(in_c, h, w, classes);
  int in_ch = detail::make_divisible(32 * width_mult);
  const int last = detail::make_divisible(1280 * std::max(1.0, width_mult));
  int x = b.conv(b.input(), in_ch, 3, small ? 1 : 2, 1, 1, 1, false, "features.0.0");
  x = b.relu(b.batch_norm(x, true, "features.0.1"));
  int f = 1;
  for (const stage& st : stages) {
    const int out = detail::make_divisible(st.c * width_mult);
    for (int i = 0; i < st.n; ++i, ++f) {
      const int stride = i == 0 ? st.s : 1;
      const int hidden = static_cast<int>(std::lround(in_ch * static_cast<double>(st.t)));
      const std::string p = "features." + std::to_string(f) + ".conv.";
      int y = x, k = 0;
      if (st.t != 1) {
        y = b.conv(y, hidden, 1, 1, 0, 1, 1, false, p + "0.0");
        y = b.relu(b.batch_norm(y, true, p + "0.1"));
        ++k;
      }
      y = b.conv(y, hidden, 3, stride, 1, 1, hidden, false, p + std::to_string(k) + ".0");
      y = b.relu(b.batch_norm(y, true, p + std::to_string(k) + ".1"));
      y = b.conv(y, out, 1, 1, 0, 1, 1, false, p + std::to_string(k + 1));
      y = b.batch_norm(y, true, p + std::to_string(k + 2));
      x = (stride == 1 && in_ch == out) ? b.sum({x, y}) : y;
      in_ch = out;
    }
  }
  const std::string p = "features." + std::to_string(f);
  x = b.conv(x, last, 1, 1, 0, 1, 1, false, p + ".0");
  x = b.relu(b.batch_norm(x, true, p + ".1"));
  x = b.dropout(b.global_avg_pool(x), 0.2, "classifier.0");
  x = b.linear(x, classes, true, "classifier.1");
  return b.finish(x, "mobilenet_v2");
}

/// Names accepted by family().
inline std::vector<std::string> family_names() { return {"resnet20", "resnet18", "vgg11", "mobilenet_v2"}; }

/// A ready-made family by name with default widths: "resnet20", "resnet18", "vgg11" (with BN),
/// "mobilenet_v2". Throws value_error listing the known names otherwise.
/// \code auto net = ghnq::arch::family("resnet20", 1, 28, 28, 10); \endcode
inline network family(const std::string& name, int in_c, int h, int w, int classes) {
  if (name == "resnet20") return resnet20(in_c, h, w, classes);
  if (name == "resnet18") return resnet18(in_c, h, w, classes);
  if (name == "vgg11") return vgg(in_c, h, w, classes, vgg11_config(), true, "vgg11");
  if (name == "mobilenet_v2") return mobilenet_v2(in_c, h, w, classes);
  std::string known;
  for (const auto& n : family_names()) known += (known.empty() ? "" : ", ") + n;
  GHNQ_CHECK(false, value_error, "arch::family: unknown family '", name, "' (known: ", known, ")");
  return {};
}

}  // namespace ghnq::arch
