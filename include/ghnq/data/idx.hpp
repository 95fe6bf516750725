/// \file
/// \brief Readers for IDX image/label files (MNIST, Fashion-MNIST), gzip-compressed or raw.
///
/// Format (big-endian): a 4-byte magic 0x000008TD (T = 0x08 unsigned byte, D = number of
/// dimensions), D 4-byte extents, then the data. ghnq accepts images with magic 0x00000803
/// (N x rows x cols unsigned bytes) and labels with magic 0x00000801 (N unsigned bytes).
/// A file starting with the gzip magic (1f 8b) is inflated with zlib first; anything else is
/// read as raw IDX. Every malformed input throws ghnq::io_error naming the file and the problem:
/// a missing file, a corrupt gzip stream, a wrong magic, a truncated (or over-long) file,
/// image/label count mismatch, a label out of range. Nothing is silently truncated.
#pragma once
#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <sstream>
#include <string>
#include <vector>

#include "ghnq/core/error.hpp"
#include "ghnq/data/dataset.hpp"
#include "ghnq/tensor/tensor.hpp"

namespace ghnq::data {

/// Default Fashion-MNIST directory; the environment variable GHNQ_FASHION_MNIST overrides it.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

/// IDX magic of unsigned-byte images with 3 dimensions (N, rows, cols).
inline constexpr std::uint32_t kIdxImagesMagic = 0x00000803u;
/// IDX magic of unsigned-byte labels with 1 dimension (N).
inline constexpr std::uint32_t kIdxLabelsMagic = 0x00000801u;

namespace detail {

/// True when the buffer starts with the gzip magic bytes 1f 8b.
inline bool is_gzip(const std::vector<unsigned char>& b) {
  return b.size() >= 2 && b[0] == 0x1f && b[1] == 0x8b;
}

/// Inflate a whole gzip file held in memory (concatenated members are joined, like gunzip).
/// Throws io_error(file, "corrupt gzip stream: ...") when inflation fails or the stream ends early.
inline std::vector<unsigned char> gunzip(const std::vector<unsigned char>& in, const std::string& file) {
  std::vector<unsigned char> out;
  // ISIZE (the last 4 bytes, little-endian) is the uncompressed size modulo 2^32: a good hint.
  if (in.size() >= 18) {
    const std::size_t n = in.size();
    const std::uint32_t isize = static_cast<std::uint32_t>(in[n - 4]) | (static_cast<std::uint32_t>(in[n - 3]) << 8) |
                                (static_cast<std::uint32_t>(in[n - 2]) << 16) |
                                (static_cast<std::uint32_t>(in[n - 1]) << 24);
    if (isize <= (1u << 30)) out.reserve(std::size_t(isize) + (std::size_t(1) << 20));
  }
  z_stream zs;
  std::memset(&zs, 0, sizeof zs);
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) throw io_error(file, "zlib inflateInit2 failed");
  struct guard {
    z_stream* z;
    ~guard() { inflateEnd(z); }
  } g{&zs};

  std::size_t in_pos = 0;
  std::size_t produced = 0;
  constexpr std::size_t kChunk = std::size_t(1) << 20;
  for (;;) {
    if (zs.avail_in == 0 && in_pos < in.size()) {
      const std::size_t take = std::min<std::size_t>(in.size() - in_pos, UINT_MAX);
      zs.next_in = const_cast<Bytef*>(in.data() + in_pos);
      zs.avail_in = static_cast<uInt>(take);
      in_pos += take;
    }
    if (out.size() - produced < kChunk / 2) out.resize(std::max(out.capacity(), produced + kChunk));
    const std::size_t room = std::min<std::size_t>(out.size() - produced, UINT_MAX);
    zs.next_out = out.data() + produced;
    zs.avail_out = static_cast<uInt>(room);
    const int rc = inflate(&zs, Z_NO_FLUSH);
    produced += room - zs.avail_out;
    if (rc == Z_STREAM_END) {
      const std::size_t left = zs.avail_in + (in.size() - in_pos);
      if (left == 0) break;
      const unsigned char* rest = zs.next_in ? zs.next_in : in.data() + in_pos;
      if (left >= 2 && rest[0] == 0x1f && rest[1] == 0x8b) {  // another gzip member
        inflateReset(&zs);
        continue;
      }
      std::ostringstream os;
      os << "corrupt gzip stream: " << left << " bytes of trailing data after the end of the gzip stream";
      throw io_error(file, os.str());
    }
    if (rc == Z_MEM_ERROR) throw std::bad_alloc();
    if (rc == Z_DATA_ERROR || rc == Z_STREAM_ERROR || rc == Z_NEED_DICT) {
      throw io_error(file, std::string("corrupt gzip stream: ") + (zs.msg ? zs.msg : "invalid compressed data"));
    }
    if (rc == Z_BUF_ERROR && zs.avail_in == 0 && in_pos >= in.size()) {
      throw io_error(file, "corrupt gzip stream: unexpected end of compressed data (file truncated?)");
    }
  }
  out.resize(produced);
  return out;
}

/// File contents, inflated when the file is gzip-compressed.
inline std::vector<unsigned char> read_maybe_gzip(const std::string& path) {
  auto raw = read_file_bytes(path);
  if (is_gzip(raw)) return gunzip(raw, path);
  return raw;
}

inline std::uint32_t be32(const unsigned char* p) {
  return (static_cast<std::uint32_t>(p[0]) << 24) | (static_cast<std::uint32_t>(p[1]) << 16) |
         (static_cast<std::uint32_t>(p[2]) << 8) | static_cast<std::uint32_t>(p[3]);
}

inline std::string hex32(std::uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08X", v);
  return buf;
}

/// Check the IDX magic and that the file holds exactly header + payload bytes.
inline void check_idx_layout(const std::vector<unsigned char>& b, const std::string& file, bool gz,
                             std::uint32_t magic, const char* what, std::size_t header_bytes) {
  const char* after = gz ? " (after decompression)" : "";
  if (b.size() < 4) {
    std::ostringstream os;
    os << "truncated file: expected at least " << header_bytes << " bytes of IDX header, got " << b.size()
       << after;
    throw io_error(file, os.str());
  }
  const std::uint32_t m = be32(b.data());
  if (m != magic) {
    throw io_error(file, "wrong IDX magic " + hex32(m) + ", expected " + hex32(magic) + " (" + what + ")" +
                             (gz ? "" : "; the file is not gzip-compressed and was read as raw IDX"));
  }
  if (b.size() < header_bytes) {
    std::ostringstream os;
    os << "truncated file: expected at least " << header_bytes << " bytes of IDX header, got " << b.size()
       << after;
    throw io_error(file, os.str());
  }
}

inline void check_idx_size(const std::vector<unsigned char>& b, const std::string& file, bool gz,
                           unsigned __int128 expected, const std::string& layout) {
  if (static_cast<unsigned __int128>(b.size()) == expected) return;
  const char* after = gz ? " (after decompression)" : "";
  std::ostringstream os;
  os << (static_cast<unsigned __int128>(b.size()) < expected ? "truncated file: expected "
                                                             : "unexpected trailing data: expected ")
     << static_cast<unsigned long long>(expected) << " bytes (" << layout << "), got " << b.size() << after;
  throw io_error(file, os.str());
}

}  // namespace detail

/// Read an IDX image file: returns a [N, 1, rows, cols] byte tensor.
/// Throws io_error on a missing/corrupt file, a magic other than 0x00000803, a size that does not
/// match the header, or an empty image set.
inline tensor<std::uint8_t> read_idx_images(const std::string& path) {
  const auto raw = detail::read_file_bytes(path);
  const bool gz = detail::is_gzip(raw);
  const auto b = gz ? detail::gunzip(raw, path) : raw;
  detail::check_idx_layout(b, path, gz, kIdxImagesMagic, "unsigned-byte images with 3 dimensions", 16);
  const std::uint32_t n = detail::be32(b.data() + 4), rows = detail::be32(b.data() + 8),
                      cols = detail::be32(b.data() + 12);
  std::ostringstream layout;
  layout << "16-byte header + " << n << " images of " << rows << " x " << cols;
  detail::check_idx_size(b, path, gz, 16 + static_cast<unsigned __int128>(n) * rows * cols, layout.str());
  if (n == 0) throw io_error(path, "IDX image file holds no images");
  if (rows == 0 || cols == 0) throw io_error(path, "IDX images have an empty size " + layout.str());
  tensor<std::uint8_t> t({static_cast<std::int64_t>(n), 1, static_cast<std::int64_t>(rows),
                          static_cast<std::int64_t>(cols)});
  std::memcpy(t.data(), b.data() + 16, b.size() - 16);
  return t;
}

/// Read an IDX label file: N labels, each checked to lie in [0, num_classes).
inline std::vector<std::int32_t> read_idx_labels(const std::string& path, int num_classes = 10) {
  GHNQ_CHECK(num_classes >= 1 && num_classes <= 256, value_error, "read_idx_labels: num_classes ", num_classes,
             " not in [1, 256]");
  const auto raw = detail::read_file_bytes(path);
  const bool gz = detail::is_gzip(raw);
  const auto b = gz ? detail::gunzip(raw, path) : raw;
  detail::check_idx_layout(b, path, gz, kIdxLabelsMagic, "unsigned-byte labels with 1 dimension", 8);
  const std::uint32_t n = detail::be32(b.data() + 4);
  std::ostringstream layout;
  layout << "8-byte header + " << n << " labels";
  detail::check_idx_size(b, path, gz, 8 + static_cast<unsigned __int128>(n), layout.str());
  if (n == 0) throw io_error(path, "IDX label file holds no labels");
  std::vector<std::int32_t> labels(n);
  for (std::uint32_t i = 0; i < n; ++i) {
    const int y = b[8 + i];
    if (y >= num_classes) {
      std::ostringstream os;
      os << "label " << y << " at index " << i << " is out of range [0, " << num_classes << ")";
      throw io_error(path, os.str());
    }
    labels[i] = y;
  }
  return labels;
}

/// Load an IDX image file and its label file (each gzip-compressed or raw) into a dataset.
/// \param images_gz  IDX3 unsigned-byte images (magic 0x00000803).
/// \param labels_gz  IDX1 unsigned-byte labels (magic 0x00000801), same count as the images.
/// \param name       the dataset's name.
/// \param num_classes labels must lie in [0, num_classes).
/// \code
/// auto ds = ghnq::data::load_idx("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "mnist-test");
/// \endcode
inline dataset load_idx(const std::string& images_gz, const std::string& labels_gz,
                        const std::string& name = "idx", int num_classes = 10) {
  dataset ds;
  ds.images = read_idx_images(images_gz);
  ds.labels = read_idx_labels(labels_gz, num_classes);
  if (static_cast<std::int64_t>(ds.labels.size()) != ds.images.dim(0)) {
    std::ostringstream os;
    os << "image/label count mismatch: " << ds.images.dim(0) << " images, but label file " << labels_gz
       << " holds " << ds.labels.size() << " labels";
    throw io_error(images_gz, os.str());
  }
  ds.num_classes = num_classes;
  ds.name = name;
  return ds;
}

namespace detail {

/// "<dir>/<stem>.gz" when readable, else "<dir>/<stem>" when readable, else the .gz path
/// (so that the error names the expected file).
inline std::string resolve_idx_file(const std::string& dir, const std::string& stem) {
  const std::string gz = join_path(dir, stem + ".gz");
  if (file_readable(gz)) return gz;
  const std::string plain = join_path(dir, stem);
  if (file_readable(plain)) return plain;
  return gz;
}

inline dataset load_mnist_layout(split s, const std::string& dir, const std::string& name) {
  const std::string prefix = s == split::train ? "train" : "t10k";
  return load_idx(resolve_idx_file(dir, prefix + "-images-idx3-ubyte"),
                  resolve_idx_file(dir, prefix + "-labels-idx1-ubyte"), name + "-" + to_string(s));
}

}  // namespace detail

/// The Fashion-MNIST directory used when none is given: $GHNQ_FASHION_MNIST if set and
/// non-empty, else kFashionMnistDir.
inline std::string default_fashion_mnist_dir() {
  const char* e = std::getenv("GHNQ_FASHION_MNIST");
  return (e && *e) ? std::string(e) : std::string(kFashionMnistDir);
}

/// Load Fashion-MNIST from `dir` ("" = default_fashion_mnist_dir()): train-images-idx3-ubyte.gz,
/// train-labels-idx1-ubyte.gz (60000 images) or t10k-*.gz (10000 images); uncompressed files
/// without ".gz" are accepted too. Images are [N, 1, 28, 28]; 10 classes.
/// \code
/// auto train = ghnq::data::load_fashion_mnist(ghnq::data::split::train);
/// \endcode
inline dataset load_fashion_mnist(split s, const std::string& dir = "") {
  return detail::load_mnist_layout(s, dir.empty() ? default_fashion_mnist_dir() : dir, "fashion-mnist");
}

/// Load MNIST from `dir` (same file names and layout as Fashion-MNIST).
inline dataset load_mnist(split s, const std::string& dir) {
  return detail::load_mnist_layout(s, dir, "mnist");
}

}  // namespace ghnq::data
