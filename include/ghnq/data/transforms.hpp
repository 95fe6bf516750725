/// \file
/// \brief Image augmentation (random crop with zero padding, horizontal flip) and normalization
/// of one raw CHW byte image into floats, as the loader applies them.
///
/// Semantics (torchvision's RandomCrop(size = H x W, padding = p, fill = 0) followed by
/// RandomHorizontalFlip, then ToTensor + Normalize):
///  - crop: the image is zero-padded by p pixels on every side and an H x W window at offset
///    (oy, ox), oy, ox uniform in [0, 2p], is cut out. With the shift (dy, dx) = (oy - p, ox - p)
///    in [-p, p]^2: cropped(c, y, x) = I(c, y + dy, x + dx), and 0 outside the image.
///  - flip: out(c, y, x) = cropped(c, y, W - 1 - x).
///  - normalize: y = (x / 255 - mean[c]) / std[c]; padded pixels are raw 0 bytes, so they become
///    -mean[c] / std[c] (as in torchvision, which pads before normalizing).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ghnq/core/error.hpp"
#include "ghnq/core/rng.hpp"
#include "ghnq/data/dataset.hpp"

namespace ghnq::data {

/// Random training augmentation. Both are off by default.
struct augmentation {
  int crop_padding = 0;  ///< random crop with zero padding of this many pixels; 0 = off
  bool hflip = false;    ///< horizontal flip with probability 1/2

  bool active() const noexcept { return crop_padding > 0 || hflip; }
};

/// One drawn instance of an augmentation: shift (dy, dx) in [-p, p] and whether to flip.
struct crop_flip {
  int dy = 0, dx = 0;
  bool flip = false;
};

/// Draw crop offsets (first oy, then ox, each uniform in [0, 2p]) and then the flip
/// (bernoulli(1/2), drawn only when aug.hflip) from `g`.
inline crop_flip draw_augmentation(const augmentation& aug, rng& g) {
  crop_flip t;
  if (aug.crop_padding > 0) {
    const int p = aug.crop_padding;
    t.dy = static_cast<int>(g.randint(0, 2 * p)) - p;
    t.dx = static_cast<int>(g.randint(0, 2 * p)) - p;
  }
  if (aug.hflip) t.flip = g.bernoulli(0.5);
  return t;
}

/// Per-channel lookup table: table[c * 256 + v] = (v / 255 - mean[c]) / std[c], computed in float
/// exactly as written. Validates the normalization against `channels` (value_error otherwise):
/// mean and std have the same length, 0 (identity: v / 255), 1 (all channels) or `channels`
/// entries, and every std is positive.
inline std::vector<float> normalization_table(const normalization& n, int channels) {
  GHNQ_CHECK(channels >= 1, value_error, "normalization_table: channels ", channels, " < 1");
  GHNQ_CHECK(n.mean.size() == n.std.size(), value_error, "normalization: mean has ", n.mean.size(),
             " entries but std has ", n.std.size());
  const std::size_t k = n.mean.size();
  GHNQ_CHECK(k == 0 || k == 1 || k == static_cast<std::size_t>(channels), value_error, "normalization: ", k,
             " mean/std entries for ", channels, " channels (need 0, 1 or ", channels, ")");
  for (std::size_t i = 0; i < k; ++i) {
    GHNQ_CHECK(n.std[i] > 0.0f, value_error, "normalization: std[", i, "] = ", n.std[i], " must be positive");
  }
  std::vector<float> table(static_cast<std::size_t>(channels) * 256);
  for (int c = 0; c < channels; ++c) {
    const std::size_t j = k == 1 ? 0 : static_cast<std::size_t>(c);
    const float mean = k == 0 ? 0.0f : n.mean[j];
    const float sd = k == 0 ? 1.0f : n.std[j];
    for (int v = 0; v < 256; ++v) {
      table[static_cast<std::size_t>(c * 256 + v)] = (static_cast<float>(v) / 255.0f - mean) / sd;
    }
  }
  return table;
}

/// Crop/flip and normalize one image: `src` is [C, H, W] bytes, `dst` receives [C, H, W] floats,
/// `table` comes from normalization_table(norm, C). See the file comment for the exact semantics.
/// \code
/// auto table = ghnq::data::normalization_table(ghnq::data::fashion_mnist_normalization(), 1);
/// ghnq::data::transform_image(img, out, 1, 28, 28, table.data(), {/*dy*/ 2, /*dx*/ -1, /*flip*/ true});
/// \endcode
inline void transform_image(const std::uint8_t* src, float* dst, int channels, int height, int width,
                            const float* table, const crop_flip& t) {
  const std::int64_t plane = static_cast<std::int64_t>(height) * width;
  for (int c = 0; c < channels; ++c) {
    const float* lut = table + c * 256;
    const std::uint8_t* s = src + c * plane;
    float* d = dst + c * plane;
    if (t.dy == 0 && t.dx == 0 && !t.flip) {
      for (std::int64_t i = 0; i < plane; ++i) d[i] = lut[s[i]];
      continue;
    }
    const float zero = lut[0];
    for (int y = 0; y < height; ++y) {
      float* row = d + static_cast<std::int64_t>(y) * width;
      const int sy = y + t.dy;
      if (sy < 0 || sy >= height) {
        for (int x = 0; x < width; ++x) row[x] = zero;
        continue;
      }
      const std::uint8_t* srow = s + static_cast<std::int64_t>(sy) * width;
      for (int x = 0; x < width; ++x) {
        const int sx = (t.flip ? width - 1 - x : x) + t.dx;
        row[x] = (sx >= 0 && sx < width) ? lut[srow[sx]] : zero;
      }
    }
  }
}

}  // namespace ghnq::data
