/// \file
/// \brief Reader for the CIFAR-10 binary version (data_batch_1.bin ... data_batch_5.bin, test_batch.bin).
///
/// Format: a sequence of 3073-byte records, each 1 label byte (0..9) followed by 3072 pixel bytes:
/// the 1024 red, then 1024 green, then 1024 blue values of a 32 x 32 image in row-major order
/// (that is, CHW). Every malformed file throws ghnq::io_error naming the file and the problem:
/// missing, empty, size not a multiple of 3073, a label above 9.
#pragma once
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "ghnq/core/error.hpp"
#include "ghnq/data/dataset.hpp"
#include "ghnq/tensor/tensor.hpp"

namespace ghnq::data {

/// Bytes of one CIFAR-10 record: 1 label + 3 x 32 x 32 pixels.
inline constexpr std::int64_t kCifarRecordBytes = 1 + 3 * 32 * 32;

/// Load and concatenate CIFAR-10 binary batch files, in the given order: [N, 3, 32, 32], 10 classes.
/// \code
/// auto ds = ghnq::data::load_cifar10_batches({"cifar-10-batches-bin/test_batch.bin"});
/// \endcode
inline dataset load_cifar10_batches(const std::vector<std::string>& files) {
  GHNQ_CHECK(!files.empty(), value_error, "load_cifar10_batches: no files given");
  auto check_size = [](const std::string& f, std::int64_t size) {
    if (size == 0) throw io_error(f, "empty file: a CIFAR-10 batch holds 3073-byte records");
    if (size % kCifarRecordBytes != 0) {
      std::ostringstream os;
      os << "file size " << size << " is not a multiple of the CIFAR-10 record size " << kCifarRecordBytes
         << " (1 label byte + 3072 pixel bytes): truncated or not a CIFAR-10 binary batch";
      throw io_error(f, os.str());
    }
  };
  // Pass 1: sizes (so the image tensor is allocated once); pass 2: read one file at a time.
  std::int64_t total = 0;
  for (const auto& f : files) {
    const std::int64_t size = detail::file_size(f);
    check_size(f, size);
    total += size / kCifarRecordBytes;
  }
  dataset ds;
  ds.images = tensor<std::uint8_t>({total, 3, 32, 32});
  ds.labels.resize(static_cast<std::size_t>(total));
  ds.num_classes = 10;
  ds.name = "cifar10";
  std::int64_t k = 0;
  for (const auto& f : files) {
    const auto b = detail::read_file_bytes(f);
    check_size(f, static_cast<std::int64_t>(b.size()));
    const std::int64_t n = static_cast<std::int64_t>(b.size()) / kCifarRecordBytes;
    if (k + n > total) throw io_error(f, "file grew while being read");
    for (std::int64_t i = 0; i < n; ++i, ++k) {
      const unsigned char* rec = b.data() + i * kCifarRecordBytes;
      if (rec[0] > 9) {
        std::ostringstream os;
        os << "label " << int(rec[0]) << " of record " << i << " (byte offset " << i * kCifarRecordBytes
           << ") is out of range [0, 10)";
        throw io_error(f, os.str());
      }
      ds.labels[static_cast<std::size_t>(k)] = rec[0];
      std::memcpy(ds.images.data() + k * (kCifarRecordBytes - 1), rec + 1,
                  static_cast<std::size_t>(kCifarRecordBytes - 1));
    }
  }
  if (k != total) throw io_error(files.back(), "a CIFAR-10 batch file shrank while being read");
  return ds;
}

/// Load CIFAR-10 from `dir`: train = data_batch_1.bin ... data_batch_5.bin (50000 images),
/// test = test_batch.bin (10000 images). When `dir` lacks data_batch_1.bin but holds the
/// archive's folder cifar-10-batches-bin/, that folder is used.
inline dataset load_cifar10(split s, const std::string& dir) {
  std::string d = dir;
  if (!detail::file_readable(detail::join_path(d, "data_batch_1.bin")) &&
      !detail::file_readable(detail::join_path(d, "test_batch.bin"))) {
    const std::string sub = detail::join_path(d, "cifar-10-batches-bin");
    if (detail::file_readable(detail::join_path(sub, "data_batch_1.bin")) ||
        detail::file_readable(detail::join_path(sub, "test_batch.bin"))) {
      d = sub;
    }
  }
  std::vector<std::string> files;
  if (s == split::train) {
    for (int i = 1; i <= 5; ++i) files.push_back(detail::join_path(d, "data_batch_" + std::to_string(i) + ".bin"));
  } else {
    files.push_back(detail::join_path(d, "test_batch.bin"));
  }
  auto ds = load_cifar10_batches(files);
  ds.name = std::string("cifar10-") + to_string(s);
  return ds;
}

}  // namespace ghnq::data
