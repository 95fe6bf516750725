/// \file
/// \brief `ghnq::data::dataset`: an in-memory labelled image set (raw bytes, NCHW), the train/test
/// split tag, per-channel normalization constants, and the whole-file reader shared by the
/// IDX and CIFAR readers.
///
/// Contract:
///  - `images` is a contiguous `tensor<std::uint8_t>` of shape [N, C, H, W] holding the raw pixel
///    bytes exactly as stored in the files; `labels` has N entries, each in [0, num_classes).
///  - Copying a dataset is cheap for the images (the tensor is a shared handle) and copies the
///    label vector.
#pragma once
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "ghnq/core/error.hpp"
#include "ghnq/tensor/tensor.hpp"

namespace ghnq::data {

/// Which part of a data set to load.
enum class split { train, test };

/// Human-readable name of a split ("train" / "test").
inline const char* to_string(split s) noexcept { return s == split::train ? "train" : "test"; }

/// A labelled image set held in memory.
/// \code
/// auto ds = ghnq::data::load_fashion_mnist(ghnq::data::split::test);
/// // ds.size() == 10000, ds.channels() == 1, ds.height() == 28, ds.width() == 28
/// std::uint8_t px = ds.images(0, 0, 14, 14);  int y = ds.labels[0];
/// \endcode
struct dataset {
  tensor<std::uint8_t> images;       ///< [N, C, H, W] raw bytes
  std::vector<std::int32_t> labels;  ///< N class indices in [0, num_classes)
  int num_classes = 10;
  std::string name;                  ///< e.g. "fashion-mnist-test"

  /// Number of samples N (0 for an empty dataset).
  std::int64_t size() const noexcept { return images.defined() ? images.dim(0) : 0; }
  int channels() const { return static_cast<int>(images.dim(1)); }
  int height() const { return static_cast<int>(images.dim(2)); }
  int width() const { return static_cast<int>(images.dim(3)); }

  /// The first n samples as a new dataset (a copy); n <= 0 or n >= size() gives the whole set.
  dataset head(std::int64_t n) const {
    if (n <= 0 || n >= size()) return *this;
    dataset h = *this;
    h.images = images.slice(0, 0, n).clone();
    h.labels.assign(labels.begin(), labels.begin() + n);
    return h;
  }
};

/// Per-channel normalization applied to x / 255: y = (x / 255 - mean[c]) / std[c].
/// Empty vectors mean identity (y = x / 255); one entry applies to every channel.
struct normalization {
  std::vector<float> mean, std;
};

/// Fashion-MNIST training-set statistics: mean 0.2860, std 0.3530.
inline normalization fashion_mnist_normalization() { return {{0.2860f}, {0.3530f}}; }
/// MNIST training-set statistics: mean 0.1307, std 0.3081.
inline normalization mnist_normalization() { return {{0.1307f}, {0.3081f}}; }
/// CIFAR-10 training-set statistics: mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616).
inline normalization cifar10_normalization() {
  return {{0.4914f, 0.4822f, 0.4465f}, {0.2470f, 0.2435f, 0.2616f}};
}

namespace detail {

/// Whole contents of a file; throws io_error naming the file when it cannot be opened or read.
inline std::vector<unsigned char> read_file_bytes(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw io_error(path, "cannot open file (is a directory)");
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw io_error(path, std::string("cannot open file (") + std::strerror(errno) + ")");
  std::vector<unsigned char> out;
  const auto hint = std::filesystem::file_size(path, ec);
  std::size_t cap = ec ? std::size_t(1) << 16 : static_cast<std::size_t>(hint) + 1;  // +1: see EOF at once
  std::size_t len = 0;
  for (;;) {
    out.resize(std::max(cap, len + 1));
    const std::size_t want = out.size() - len;
    const std::size_t n = std::fread(out.data() + len, 1, want, f);
    len += n;
    if (n < want) break;
    cap = out.size() * 2;
  }
  out.resize(len);
  const int err = errno;
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) throw io_error(path, std::string("read error (") + std::strerror(err) + ")");
  return out;
}

/// Size in bytes of a regular file; throws io_error naming the file when it is missing or not
/// a regular file.
inline std::int64_t file_size(const std::string& path) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(st)) {
    throw io_error(path, "cannot open file (" + (ec ? ec.message() : std::string("No such file or directory")) + ")");
  }
  if (!std::filesystem::is_regular_file(st)) throw io_error(path, "not a regular file");
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) throw io_error(path, "cannot determine the file size (" + ec.message() + ")");
  return static_cast<std::int64_t>(size);
}

/// True when `path` names a file that can be opened for reading.
inline bool file_readable(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return false;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  std::fclose(f);
  return true;
}

/// `dir` + "/" + `file` (no separator added when dir is empty or already ends in one).
inline std::string join_path(const std::string& dir, const std::string& file) {
  if (dir.empty()) return file;
  return dir.back() == '/' ? dir + file : dir + "/" + file;
}

}  // namespace detail

}  // namespace ghnq::data
