/// \file
/// \brief `ghnq::data::loader`: shuffled mini-batches of normalized (and optionally augmented)
/// float images from a dataset.
///
/// Contract:
///  - Each epoch visits every sample exactly once, in an order that depends only on
///    (seed, epoch): `rng(derive(seed, epoch)).shuffle(0..N-1)`, or 0..N-1 when shuffle is off.
///  - The augmentation of a sample depends only on (seed, epoch, sample index), so batches are
///    bit-identical whatever the thread count (images are assembled with ghnq::parallel_for).
///  - `next(out)` reuses `out.images` and `out.labels` when their sizes already match: no
///    allocation per batch in steady state. The previous batch's contents are overwritten, so
///    clone a batch you want to keep.
///  - Lifetime: a loader built from `const dataset&` only refers to it; the dataset must outlive
///    the loader (building one from a temporary dataset does not compile). Pass a
///    `std::shared_ptr<const dataset>` to share ownership instead.
/// \code
/// auto train = ghnq::data::load_fashion_mnist(ghnq::data::split::train);
/// ghnq::data::loader_options o;
/// o.batch_size = 128; o.seed = 1; o.norm = ghnq::data::fashion_mnist_normalization();
/// o.aug.crop_padding = 2;
/// ghnq::data::loader dl(train, o);
/// ghnq::data::batch b;
/// for (std::int64_t epoch = 0; epoch < 10; ++epoch) {
///   dl.start_epoch(epoch);
///   while (dl.next(b)) { /* b.images: [B, 1, 28, 28], b.labels: B */ }
/// }
/// \endcode
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <numeric>
#include <utility>
#include <vector>

#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/core/error.hpp"
#include "ghnq/core/rng.hpp"
#include "ghnq/data/dataset.hpp"
#include "ghnq/data/transforms.hpp"
#include "ghnq/tensor/tensor.hpp"

namespace ghnq::data {

/// Batching options.
struct loader_options {
  std::int64_t batch_size = 64;
  bool shuffle = true;
  bool drop_last = false;  ///< skip the final batch when it is smaller than batch_size
  std::uint64_t seed = 0;
  normalization norm;      ///< applied to x / 255; empty = identity
  augmentation aug;        ///< off by default (use it for training only)
};

/// One mini-batch.
struct batch {
  tensor<float> images;              ///< [B, C, H, W], normalized
  std::vector<std::int32_t> labels;  ///< B class indices
  std::int64_t size() const noexcept { return static_cast<std::int64_t>(labels.size()); }
};

namespace detail {
/// splitmix64 finalizer: a bijective 64-bit mixer.
inline std::uint64_t mix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
/// A seed for the stream `stream` (0 = shuffle, 1 = augmentation) of (seed, epoch, index).
inline std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t stream, std::uint64_t epoch,
                                 std::uint64_t index = 0) {
  return mix64(mix64(mix64(mix64(seed) ^ stream) ^ epoch) ^ index);
}
}  // namespace detail

class loader {
 public:
  /// Refers to `ds` (which must outlive the loader). Throws value_error on an empty or
  /// inconsistent dataset, batch_size < 1, crop_padding < 0 or a normalization that does not
  /// fit the channel count. Starts epoch 0.
  loader(const dataset& ds, loader_options opt)
      : loader(std::shared_ptr<const dataset>(&ds, [](const dataset*) {}), std::move(opt)) {}
  /// Shares ownership of `ds`.
  loader(std::shared_ptr<const dataset> ds, loader_options opt) : ds_(std::move(ds)), opt_(std::move(opt)) {
    GHNQ_CHECK(ds_ != nullptr, value_error, "loader: null dataset");
    const dataset& d = *ds_;
    GHNQ_CHECK(d.images.defined() && d.images.rank() == 4, value_error, "loader: dataset '", d.name,
               "' images must be [N, C, H, W], got ", d.images.shape());
    GHNQ_CHECK(d.images.is_contiguous(), value_error, "loader: dataset '", d.name, "' images are not contiguous");
    GHNQ_CHECK(d.size() > 0, value_error, "loader: dataset '", d.name, "' is empty");
    GHNQ_CHECK(static_cast<std::int64_t>(d.labels.size()) == d.size(), value_error, "loader: dataset '", d.name,
               "' has ", d.size(), " images but ", d.labels.size(), " labels");
    GHNQ_CHECK(opt_.batch_size >= 1, value_error, "loader: batch_size ", opt_.batch_size, " < 1");
    GHNQ_CHECK(opt_.aug.crop_padding >= 0, value_error, "loader: crop_padding ", opt_.aug.crop_padding, " < 0");
    table_ = normalization_table(opt_.norm, d.channels());
    order_.resize(static_cast<std::size_t>(d.size()));
    start_epoch(0);
  }
  /// A temporary dataset would dangle: keep it in a variable or pass a shared_ptr.
  loader(dataset&&, loader_options) = delete;

  /// Batches per epoch: ceil(N / B), or floor(N / B) with drop_last.
  std::int64_t batches_per_epoch() const noexcept {
    const std::int64_t n = ds_->size(), b = opt_.batch_size;
    return opt_.drop_last ? n / b : (n + b - 1) / b;
  }

  /// Rewind to the start of `epoch`, reshuffling deterministically from (seed, epoch).
  void start_epoch(std::int64_t epoch) {
    epoch_ = epoch;
    pos_ = 0;
    std::iota(order_.begin(), order_.end(), std::int64_t(0));
    if (opt_.shuffle) {
      rng g(detail::derive_seed(opt_.seed, 0, static_cast<std::uint64_t>(epoch)));
      g.shuffle(order_.begin(), order_.end());
    }
  }

  /// Fill `out` with the next batch of the current epoch; false (and `out` untouched) at the
  /// end of the epoch, until start_epoch is called again.
  bool next(batch& out) {
    const dataset& d = *ds_;
    const std::int64_t n = d.size();
    if (pos_ >= n) return false;
    const std::int64_t b = std::min(opt_.batch_size, n - pos_);
    if (b < opt_.batch_size && opt_.drop_last) {
      pos_ = n;
      return false;
    }
    const int c = d.channels(), h = d.height(), w = d.width();
    const ghnq::shape want{b, c, h, w};
    // Reuse the buffer only when nobody else holds it (a kept copy of a previous batch is never overwritten).
    if (!out.images.defined() || out.images.shape() != want || !out.images.is_contiguous() ||
        out.images.use_count() != 1) {
      out.images = tensor<float>(want);
    }
    out.labels.resize(static_cast<std::size_t>(b));
    const std::int64_t per_image = static_cast<std::int64_t>(c) * h * w;
    const std::int64_t grain = std::max<std::int64_t>(1, 16384 / std::max<std::int64_t>(1, per_image));
    const std::int64_t* idx = order_.data() + pos_;
    const std::uint8_t* src = d.images.data();
    float* dst = out.images.data();
    std::int32_t* lab = out.labels.data();
    const float* table = table_.data();
    const auto epoch = static_cast<std::uint64_t>(epoch_);
    parallel_for(0, b, grain, [&](std::int64_t i0, std::int64_t i1) {
      for (std::int64_t i = i0; i < i1; ++i) {
        const std::int64_t k = idx[i];
        crop_flip t;
        if (opt_.aug.active()) {
          rng g(detail::derive_seed(opt_.seed, 1, epoch, static_cast<std::uint64_t>(k)));
          t = draw_augmentation(opt_.aug, g);
        }
        transform_image(src + k * per_image, dst + i * per_image, c, h, w, table, t);
        lab[i] = d.labels[static_cast<std::size_t>(k)];
      }
    });
    pos_ += b;
    return true;
  }

  /// Position the loader before batch `batch_index` of `epoch` (reshuffling for that epoch), so
  /// the next call of next() returns exactly that batch: resuming mid-epoch reproduces an
  /// uninterrupted run. Throws value_error for a negative epoch or an index past the epoch.
  void seek(std::int64_t epoch, std::int64_t batch_index) {
    GHNQ_CHECK(epoch >= 0, value_error, "loader::seek: epoch ", epoch, " < 0");
    GHNQ_CHECK(batch_index >= 0 && batch_index <= batches_per_epoch(), value_error, "loader::seek: batch ",
               batch_index, " outside [0, ", batches_per_epoch(), "]");
    if (epoch != epoch_ || pos_ > batch_index * opt_.batch_size) start_epoch(epoch);
    pos_ = std::min(ds_->size(), batch_index * opt_.batch_size);
  }

  /// The current epoch (as passed to start_epoch).
  std::int64_t epoch() const noexcept { return epoch_; }
  /// Sample indices of the current epoch, in visiting order.
  const std::vector<std::int64_t>& order() const noexcept { return order_; }
  /// Samples already handed out in this epoch.
  std::int64_t position() const noexcept { return pos_; }
  const dataset& data() const noexcept { return *ds_; }
  const loader_options& options() const noexcept { return opt_; }

 private:
  std::shared_ptr<const dataset> ds_;
  loader_options opt_;
  std::vector<float> table_;
  std::vector<std::int64_t> order_;
  std::int64_t epoch_ = 0;
  std::int64_t pos_ = 0;
};

}  // namespace ghnq::data
