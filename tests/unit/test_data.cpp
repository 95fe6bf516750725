// Data pipeline: IDX (gzip/raw) and CIFAR-10 readers on fixtures written here, every malformed-
// file error, the batch loader (order, normalization, augmentation, determinism), and the real
// Fashion-MNIST test split when it is installed.
#include <catch2/catch.hpp>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/core/rng.hpp"
#include "ghnq/data/cifar.hpp"
#include "ghnq/data/dataset.hpp"
#include "ghnq/data/idx.hpp"
#include "ghnq/data/loader.hpp"
#include "ghnq/data/transforms.hpp"
#include "support/temp_dir.hpp"

using namespace ghnq;
using namespace ghnq::data;
namespace fs = std::filesystem;

namespace {

using bytes = std::vector<unsigned char>;

/// A fresh directory under the system temp dir, removed with its contents at scope exit.
using ghnq::test::temp_dir;

void put_be32(bytes& b, std::uint32_t v) {
  b.push_back(static_cast<unsigned char>(v >> 24));
  b.push_back(static_cast<unsigned char>(v >> 16));
  b.push_back(static_cast<unsigned char>(v >> 8));
  b.push_back(static_cast<unsigned char>(v));
}

bytes idx_images(std::uint32_t n, std::uint32_t rows, std::uint32_t cols, const bytes& pixels,
                 std::uint32_t magic = 0x803) {
  bytes b;
  put_be32(b, magic);
  put_be32(b, n);
  put_be32(b, rows);
  put_be32(b, cols);
  b.insert(b.end(), pixels.begin(), pixels.end());
  return b;
}

bytes idx_labels(const bytes& labels, std::uint32_t n_header, std::uint32_t magic = 0x801) {
  bytes b;
  put_be32(b, magic);
  put_be32(b, n_header);
  b.insert(b.end(), labels.begin(), labels.end());
  return b;
}

void write_raw(const std::string& path, const bytes& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  REQUIRE(f.good());
}

void write_gz(const std::string& path, const bytes& b) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  if (!b.empty()) REQUIRE(gzwrite(f, b.data(), static_cast<unsigned>(b.size())) == static_cast<int>(b.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

bytes read_raw(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return bytes(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

bytes pattern(std::size_t n, unsigned mul = 7, unsigned add = 13) {
  bytes p(n);
  for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<unsigned char>((i * mul + add) % 256);
  return p;
}

/// Catch matcher: the exception message mentions every given substring.
#define CHECK_IO_ERROR(expr, ...)                                                   \
  do {                                                                              \
    bool thrown_ = false;                                                           \
    try {                                                                           \
      (void)(expr);                                                                 \
    } catch (const ghnq::io_error& e_) {                                            \
      thrown_ = true;                                                               \
      const std::string msg_ = e_.what();                                           \
      INFO("message: " << msg_);                                                    \
      for (const std::string& part_ : std::vector<std::string>{__VA_ARGS__})        \
        CHECK(msg_.find(part_) != std::string::npos);                               \
    }                                                                               \
    CHECK(thrown_);                                                                 \
  } while (0)

/// Synthetic dataset: N images [C, H, W] of random bytes, label i for sample i.
dataset synthetic(std::int64_t n, int c, int h, int w, std::uint64_t seed = 1) {
  dataset ds;
  ds.images = tensor<std::uint8_t>({n, c, h, w});
  ghnq::rng g(seed);
  for (std::int64_t i = 0; i < ds.images.numel(); ++i) ds.images.flat(i) = static_cast<std::uint8_t>(g.below(256));
  for (std::int64_t i = 0; i < n; ++i) ds.labels.push_back(static_cast<std::int32_t>(i));
  ds.num_classes = static_cast<int>(n);
  ds.name = "synthetic";
  return ds;
}

std::vector<std::int32_t> epoch_labels(loader& l, std::int64_t epoch) {
  l.start_epoch(epoch);
  std::vector<std::int32_t> all;
  batch b;
  while (l.next(b)) all.insert(all.end(), b.labels.begin(), b.labels.end());
  return all;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// IDX
// ------------------------------------------------------------------------------------------------

TEST_CASE("idx: gzip and raw files load byte for byte", "[data][idx]") {
  temp_dir d;
  const bytes px = pattern(5 * 3 * 4);
  const bytes lab = {3, 0, 9, 1, 7};
  write_gz(d / "img.gz", idx_images(5, 3, 4, px));
  write_gz(d / "lab.gz", idx_labels(lab, 5));
  write_raw(d / "img.raw", idx_images(5, 3, 4, px));
  write_raw(d / "lab.raw", idx_labels(lab, 5));

  for (auto [img, lb] : {std::pair<std::string, std::string>{"img.gz", "lab.gz"}, {"img.raw", "lab.raw"},
                         {"img.gz", "lab.raw"}}) {
    INFO(img << " + " << lb);
    const auto ds = load_idx(d / img, d / lb, "tiny");
    REQUIRE(ds.images.shape() == shape({5, 1, 3, 4}));
    CHECK(ds.size() == 5);
    CHECK(ds.channels() == 1);
    CHECK(ds.height() == 3);
    CHECK(ds.width() == 4);
    CHECK(ds.num_classes == 10);
    CHECK(ds.name == "tiny");
    for (std::size_t i = 0; i < px.size(); ++i) REQUIRE(ds.images.flat(static_cast<std::int64_t>(i)) == px[i]);
    CHECK(ds.images(2, 0, 1, 3) == px[2 * 12 + 1 * 4 + 3]);
    CHECK(ds.labels == std::vector<std::int32_t>{3, 0, 9, 1, 7});
  }
}

TEST_CASE("idx: a gzip file of several members and a large image file", "[data][idx]") {
  temp_dir d;
  // 2000 images of 28 x 28 (1.5 MB inflated): exercises the output-buffer growth.
  const bytes px = pattern(2000 * 28 * 28, 131, 5);
  write_gz(d / "img.gz", idx_images(2000, 28, 28, px));
  const auto t = read_idx_images(d / "img.gz");
  REQUIRE(t.shape() == shape({2000, 1, 28, 28}));
  CHECK(std::equal(px.begin(), px.end(), t.data()));

  // Concatenated gzip members (what `cat a.gz b.gz` gives) inflate to the concatenation.
  const bytes full = idx_labels({1, 2, 3, 4}, 4);
  write_gz(d / "a.gz", bytes(full.begin(), full.begin() + 6));
  write_gz(d / "b.gz", bytes(full.begin() + 6, full.end()));
  bytes cat = read_raw(d / "a.gz");
  const bytes b2 = read_raw(d / "b.gz");
  cat.insert(cat.end(), b2.begin(), b2.end());
  write_raw(d / "cat.gz", cat);
  CHECK(read_idx_labels(d / "cat.gz") == std::vector<std::int32_t>{1, 2, 3, 4});
}

TEST_CASE("idx: every malformed file throws io_error naming the file and the problem", "[data][idx]") {
  temp_dir d;
  const bytes px = pattern(5 * 3 * 4);
  const bytes lab = {3, 0, 9, 1, 7};
  const auto good_img = d / "good-img.gz";
  const auto good_lab = d / "good-lab.gz";
  write_gz(good_img, idx_images(5, 3, 4, px));
  write_gz(good_lab, idx_labels(lab, 5));

  SECTION("missing file") {
    const auto missing = d / "nope-images.gz";
    CHECK_IO_ERROR(load_idx(missing, good_lab), missing, "cannot open");
    CHECK_IO_ERROR(load_idx(good_img, missing), missing, "cannot open");
    CHECK_IO_ERROR(read_idx_images(d.path.string()), d.path.string(), "directory");
  }
  SECTION("corrupt gzip stream") {
    bytes gz = read_raw(good_img);
    REQUIRE(gz.size() > 24);
    for (std::size_t i = 12; i < gz.size() - 8; ++i) gz[i] ^= 0x5a;  // mangle the deflate data
    const auto bad = d / "corrupt.gz";
    write_raw(bad, gz);
    CHECK_IO_ERROR(read_idx_images(bad), bad, "corrupt gzip stream");
  }
  SECTION("gzip stream cut short") {
    const bytes gz = read_raw(good_img);
    const auto bad = d / "cut.gz";
    write_raw(bad, bytes(gz.begin(), gz.begin() + static_cast<std::ptrdiff_t>(gz.size() / 2)));
    CHECK_IO_ERROR(read_idx_images(bad), bad, "corrupt gzip stream", "unexpected end");
    write_raw(bad, bytes{0x1f, 0x8b});
    CHECK_IO_ERROR(read_idx_images(bad), bad, "corrupt gzip stream");
  }
  SECTION("trailing garbage after the gzip stream") {
    bytes gz = read_raw(good_lab);
    gz.push_back(0x42);
    const auto bad = d / "trailing.gz";
    write_raw(bad, gz);
    CHECK_IO_ERROR(read_idx_labels(bad), bad, "trailing data");
  }
  SECTION("wrong IDX magic names the expected value") {
    CHECK_IO_ERROR(load_idx(good_lab, good_lab), good_lab, "wrong IDX magic 0x00000801", "expected 0x00000803");
    CHECK_IO_ERROR(load_idx(good_img, good_img), good_img, "wrong IDX magic 0x00000803", "expected 0x00000801");
    const auto text = d / "text.idx";
    write_raw(text, bytes{'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd', '!', '!', '!', '!', '!'});
    CHECK_IO_ERROR(read_idx_images(text), text, "wrong IDX magic", "0x00000803");
    const auto floats = d / "floats.idx";  // float images (type code 0x0D): not supported
    write_raw(floats, idx_images(1, 1, 1, bytes{0, 0, 0, 0}, 0x0D03));
    CHECK_IO_ERROR(read_idx_images(floats), floats, "wrong IDX magic 0x00000D03");
  }
  SECTION("truncated and over-long files give expected and actual sizes") {
    const auto bad = d / "short.idx";
    write_raw(bad, idx_images(5, 3, 4, bytes(px.begin(), px.begin() + 48)));  // 4 of 5 images
    CHECK_IO_ERROR(read_idx_images(bad), bad, "truncated file", "expected 76 bytes", "got 64");
    const auto badgz = d / "short.gz";
    write_gz(badgz, idx_images(5, 3, 4, bytes(px.begin(), px.begin() + 48)));
    CHECK_IO_ERROR(read_idx_images(badgz), badgz, "truncated file", "expected 76 bytes", "got 64",
                   "after decompression");
    const auto hdr = d / "header.idx";
    write_raw(hdr, bytes{0, 0, 8, 3, 0, 0});
    CHECK_IO_ERROR(read_idx_images(hdr), hdr, "truncated file", "16 bytes of IDX header", "got 6");
    const auto empty = d / "empty.idx";
    write_raw(empty, bytes{});
    CHECK_IO_ERROR(read_idx_labels(empty), empty, "truncated file", "got 0");
    const auto lshort = d / "labels-short.idx";
    write_raw(lshort, idx_labels({1, 2}, 3));
    CHECK_IO_ERROR(read_idx_labels(lshort), lshort, "truncated file", "expected 11 bytes", "got 10");
    const auto longer = d / "long.idx";
    bytes more = px;
    more.push_back(1);
    write_raw(longer, idx_images(5, 3, 4, more));
    CHECK_IO_ERROR(read_idx_images(longer), longer, "trailing data", "expected 76 bytes", "got 77");
    const auto huge = d / "huge.idx";  // header claims 2^32-1 images of 65535 x 65535: no allocation
    write_raw(huge, idx_images(0xffffffffu, 0xffff, 0xffff, px));
    CHECK_IO_ERROR(read_idx_images(huge), huge, "truncated file");
    const auto none = d / "none.idx";
    write_raw(none, idx_images(0, 28, 28, {}));
    CHECK_IO_ERROR(read_idx_images(none), none, "no images");
  }
  SECTION("image/label count mismatch names both files and counts") {
    const auto four = d / "four-labels.gz";
    write_gz(four, idx_labels({1, 2, 3, 4}, 4));
    CHECK_IO_ERROR(load_idx(good_img, four), good_img, four, "5 images", "4 labels");
  }
  SECTION("label out of range") {
    const auto bad = d / "label10.gz";
    write_gz(bad, idx_labels({1, 2, 10, 4, 5}, 5));
    CHECK_IO_ERROR(load_idx(good_img, bad), bad, "label 10 at index 2", "out of range [0, 10)");
    // with more classes it is fine
    CHECK(load_idx(good_img, bad, "x", 11).labels[2] == 10);
  }
}

TEST_CASE("idx: Fashion-MNIST / MNIST directory layout, .gz fallback and the env override",
          "[data][idx]") {
  temp_dir d;
  const bytes px = pattern(3 * 28 * 28);
  write_gz(d / "t10k-images-idx3-ubyte.gz", idx_images(3, 28, 28, px));
  write_gz(d / "t10k-labels-idx1-ubyte.gz", idx_labels({4, 5, 6}, 3));
  write_raw(d / "train-images-idx3-ubyte", idx_images(2, 28, 28, pattern(2 * 28 * 28, 3, 1)));  // not gzipped
  write_raw(d / "train-labels-idx1-ubyte", idx_labels({0, 9}, 2));

  const auto test = load_fashion_mnist(split::test, d.path.string());
  CHECK(test.size() == 3);
  CHECK(test.name == "fashion-mnist-test");
  CHECK(test.labels == std::vector<std::int32_t>{4, 5, 6});
  const auto train = load_mnist(split::train, d.path.string() + "/");
  CHECK(train.size() == 2);
  CHECK(train.name == "mnist-train");
  CHECK(train.images(1, 0, 0, 1) == pattern(2 * 28 * 28, 3, 1)[28 * 28 + 1]);

  // GHNQ_FASHION_MNIST overrides the default directory
  const char* old = std::getenv("GHNQ_FASHION_MNIST");
  const std::string saved = old ? old : "";
  ::setenv("GHNQ_FASHION_MNIST", d.path.c_str(), 1);
  CHECK(default_fashion_mnist_dir() == d.path.string());
  const auto via_env = load_fashion_mnist(split::test);
  CHECK(via_env.size() == 3);
  ::setenv("GHNQ_FASHION_MNIST", (d / "missing-dir").c_str(), 1);
  CHECK_IO_ERROR(load_fashion_mnist(split::test), "missing-dir/t10k-images-idx3-ubyte.gz", "cannot open");
  if (old) {
    ::setenv("GHNQ_FASHION_MNIST", saved.c_str(), 1);
  } else {
    ::unsetenv("GHNQ_FASHION_MNIST");
  }
  CHECK(std::string(kFashionMnistDir) == "/usr/share/datasets/fashion-mnist");
}

// ------------------------------------------------------------------------------------------------
// CIFAR-10
// ------------------------------------------------------------------------------------------------

namespace {
bytes cifar_records(const std::vector<int>& labels, unsigned seed) {
  bytes b;
  for (std::size_t r = 0; r < labels.size(); ++r) {
    b.push_back(static_cast<unsigned char>(labels[r]));
    const bytes px = pattern(3072, 2 * seed + 1, static_cast<unsigned>(r * 31 + seed));
    b.insert(b.end(), px.begin(), px.end());
  }
  return b;
}
}  // namespace

TEST_CASE("cifar10: binary batches load byte for byte", "[data][cifar]") {
  temp_dir d;
  const bytes a = cifar_records({3, 9, 0}, 1), b = cifar_records({7, 1}, 2);
  write_raw(d / "a.bin", a);
  write_raw(d / "b.bin", b);
  const auto ds = load_cifar10_batches({d / "a.bin", d / "b.bin"});
  REQUIRE(ds.images.shape() == shape({5, 3, 32, 32}));
  CHECK(ds.labels == std::vector<std::int32_t>{3, 9, 0, 7, 1});
  CHECK(ds.num_classes == 10);
  for (int i = 0; i < 5; ++i) {
    const bytes& src = i < 3 ? a : b;
    const std::size_t rec = static_cast<std::size_t>(i < 3 ? i : i - 3) * 3073;
    for (int k = 0; k < 3072; ++k) REQUIRE(ds.images.flat(i * 3072 + k) == src[rec + 1 + static_cast<std::size_t>(k)]);
  }
  // CHW: byte 1 + 1024 * c + 32 * y + x of the record is pixel (c, y, x)
  CHECK(ds.images(4, 2, 5, 7) == b[3073 + 1 + 2048 + 5 * 32 + 7]);

  // load_cifar10: train = data_batch_1..5 in order, test = test_batch; also inside cifar-10-batches-bin/
  const fs::path sub = d.path / "cifar-10-batches-bin";
  fs::create_directories(sub);
  for (int i = 1; i <= 5; ++i) write_raw((sub / ("data_batch_" + std::to_string(i) + ".bin")).string(), cifar_records({i}, 3));
  write_raw((sub / "test_batch.bin").string(), cifar_records({2, 4}, 4));
  const auto train = load_cifar10(split::train, d.path.string());
  CHECK(train.labels == std::vector<std::int32_t>{1, 2, 3, 4, 5});
  CHECK(train.name == "cifar10-train");
  const auto test = load_cifar10(split::test, sub.string());
  CHECK(test.labels == std::vector<std::int32_t>{2, 4});
  CHECK(test.images.shape() == shape({2, 3, 32, 32}));
}

TEST_CASE("cifar10: malformed files throw io_error naming the file and the problem", "[data][cifar]") {
  temp_dir d;
  const auto good = d / "good.bin";
  write_raw(good, cifar_records({1, 2}, 1));
  const auto empty = d / "empty.bin";
  write_raw(empty, {});
  CHECK_IO_ERROR(load_cifar10_batches({good, empty}), empty, "empty file");
  bytes cut = cifar_records({1, 2}, 1);
  cut.pop_back();
  const auto short_file = d / "short.bin";
  write_raw(short_file, cut);
  CHECK_IO_ERROR(load_cifar10_batches({short_file}), short_file, "6145", "not a multiple", "3073");
  const auto bad_label = d / "label.bin";
  write_raw(bad_label, cifar_records({1, 10}, 1));
  CHECK_IO_ERROR(load_cifar10_batches({good, bad_label}), bad_label, "label 10 of record 1", "out of range");
  const auto missing = d / "data_batch_1.bin";
  CHECK_IO_ERROR(load_cifar10_batches({good, missing}), missing, "cannot open");
  CHECK_IO_ERROR(load_cifar10(split::test, d / "nowhere"), "nowhere/test_batch.bin", "cannot open");
  CHECK_THROWS_AS(load_cifar10_batches({}), value_error);
}

// ------------------------------------------------------------------------------------------------
// transforms
// ------------------------------------------------------------------------------------------------

TEST_CASE("transforms: normalization table, flip and crop on a known image", "[data][transforms]") {
  const auto table = normalization_table(cifar10_normalization(), 3);
  REQUIRE(table.size() == 3 * 256);
  for (int c = 0; c < 3; ++c) {
    const float m = cifar10_normalization().mean[static_cast<std::size_t>(c)];
    const float s = cifar10_normalization().std[static_cast<std::size_t>(c)];
    for (int v : {0, 1, 128, 255}) CHECK(table[static_cast<std::size_t>(c * 256 + v)] == Approx((v / 255.0f - m) / s));
  }
  const auto ident = normalization_table({}, 2);
  CHECK(ident[256 + 255] == 1.0f);
  CHECK(ident[51] == Approx(0.2f));
  const auto fm = normalization_table(fashion_mnist_normalization(), 1);
  CHECK(fm[0] == Approx(-0.2860f / 0.3530f));
  CHECK_THROWS_AS(normalization_table({{0.5f, 0.5f}, {0.5f, 0.5f}}, 3), value_error);
  CHECK_THROWS_AS(normalization_table({{0.5f}, {0.0f}}, 1), value_error);
  CHECK_THROWS_AS(normalization_table({{0.5f}, {}}, 1), value_error);

  // 1 x 3 x 4 image with values 1..12; identity-like table: lut[v] = v (mean 0, std 1/255)
  std::vector<std::uint8_t> img(12);
  for (int i = 0; i < 12; ++i) img[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(i + 1);
  std::vector<float> lut(256);
  for (int v = 0; v < 256; ++v) lut[static_cast<std::size_t>(v)] = static_cast<float>(v);
  std::vector<float> out(12);
  auto at = [&](int y, int x) { return out[static_cast<std::size_t>(y * 4 + x)]; };

  transform_image(img.data(), out.data(), 1, 3, 4, lut.data(), {0, 0, false});
  for (int i = 0; i < 12; ++i) CHECK(out[static_cast<std::size_t>(i)] == static_cast<float>(i + 1));

  transform_image(img.data(), out.data(), 1, 3, 4, lut.data(), {0, 0, true});  // flip reverses columns
  for (int y = 0; y < 3; ++y)
    for (int x = 0; x < 4; ++x) CHECK(at(y, x) == static_cast<float>(y * 4 + (3 - x) + 1));

  // shift (dy, dx) = (1, -1): out(y, x) = I(y + 1, x - 1), zero outside
  transform_image(img.data(), out.data(), 1, 3, 4, lut.data(), {1, -1, false});
  const float want[3][4] = {{0, 5, 6, 7}, {0, 9, 10, 11}, {0, 0, 0, 0}};
  for (int y = 0; y < 3; ++y)
    for (int x = 0; x < 4; ++x) CHECK(at(y, x) == want[y][x]);

  // crop then flip: out(y, x) = I(y + dy, W - 1 - x + dx)
  transform_image(img.data(), out.data(), 1, 3, 4, lut.data(), {-1, 2, true});
  const float want2[3][4] = {{0, 0, 0, 0}, {0, 0, 4, 3}, {0, 0, 8, 7}};
  for (int y = 0; y < 3; ++y)
    for (int x = 0; x < 4; ++x) CHECK(at(y, x) == want2[y][x]);

  // padded pixels are raw zeros, so they normalize to -mean / std
  std::vector<float> o2(12);
  transform_image(img.data(), o2.data(), 1, 3, 4, fm.data(), {2, 0, false});
  CHECK(o2[11] == fm[0]);
  CHECK(o2[0] == fm[9]);
}

TEST_CASE("transforms: draw_augmentation covers [-p, p] and flips half the time", "[data][transforms]") {
  ghnq::rng g(11);
  augmentation aug{3, true};
  std::set<int> dys, dxs;
  int flips = 0;
  const int n = 4000;
  for (int i = 0; i < n; ++i) {
    const auto t = draw_augmentation(aug, g);
    REQUIRE(std::abs(t.dy) <= 3);
    REQUIRE(std::abs(t.dx) <= 3);
    dys.insert(t.dy);
    dxs.insert(t.dx);
    flips += t.flip;
  }
  CHECK(dys.size() == 7);
  CHECK(dxs.size() == 7);
  CHECK(flips > n * 0.45);
  CHECK(flips < n * 0.55);
  const auto off = draw_augmentation(augmentation{}, g);
  CHECK((off.dy == 0 && off.dx == 0 && !off.flip));
}

// ------------------------------------------------------------------------------------------------
// loader
// ------------------------------------------------------------------------------------------------

TEST_CASE("loader: batch counts, sizes and epoch end", "[data][loader]") {
  const auto ds = synthetic(10, 1, 2, 2);
  for (bool drop : {false, true}) {
    loader_options o;
    o.batch_size = 4;
    o.drop_last = drop;
    loader l(ds, o);
    CHECK(l.batches_per_epoch() == (drop ? 2 : 3));
    batch b;
    std::vector<std::int64_t> sizes;
    while (l.next(b)) {
      sizes.push_back(b.size());
      CHECK(b.images.shape() == shape({b.size(), 1, 2, 2}));
    }
    CHECK(sizes == (drop ? std::vector<std::int64_t>{4, 4} : std::vector<std::int64_t>{4, 4, 2}));
    CHECK_FALSE(l.next(b));  // stays at the end until start_epoch
    l.start_epoch(1);
    CHECK(l.next(b));
  }
  loader_options o;
  o.batch_size = 5;
  o.drop_last = true;
  CHECK(loader(ds, o).batches_per_epoch() == 2);
  o.batch_size = 64;
  CHECK(loader(ds, o).batches_per_epoch() == 0);
  o.drop_last = false;
  CHECK(loader(ds, o).batches_per_epoch() == 1);
}

TEST_CASE("loader: normalized values match the dataset samples", "[data][loader]") {
  const auto ds = synthetic(7, 2, 3, 3);
  loader_options o;
  o.batch_size = 3;
  o.shuffle = true;
  o.seed = 5;
  o.norm = {{0.5f, 0.25f}, {0.2f, 0.5f}};
  loader l(ds, o);
  batch b;
  int seen = 0;
  while (l.next(b)) {
    for (std::int64_t i = 0; i < b.size(); ++i) {
      const auto k = b.labels[static_cast<std::size_t>(i)];  // label == sample index
      for (int c = 0; c < 2; ++c)
        for (int y = 0; y < 3; ++y)
          for (int x = 0; x < 3; ++x) {
            const float v = ds.images(k, c, y, x);
            const float want = (v / 255.0f - o.norm.mean[static_cast<std::size_t>(c)]) / o.norm.std[static_cast<std::size_t>(c)];
            REQUIRE(b.images(i, c, y, x) == Approx(want).epsilon(1e-6));
          }
      ++seen;
    }
  }
  CHECK(seen == 7);
  // one mean/std entry applies to every channel; none means x / 255
  o.norm = {{0.5f}, {0.25f}};
  loader l1(ds, o);
  REQUIRE(l1.next(b));
  CHECK(b.images(0, 1, 2, 2) == Approx((ds.images(b.labels[0], 1, 2, 2) / 255.0f - 0.5f) / 0.25f));
  o.norm = {};
  loader l2(ds, o);
  REQUIRE(l2.next(b));
  CHECK(b.images(0, 0, 1, 1) == Approx(ds.images(b.labels[0], 0, 1, 1) / 255.0f));
}

TEST_CASE("loader: each epoch is a permutation, deterministic in (seed, epoch)", "[data][loader]") {
  const auto ds = synthetic(50, 1, 2, 2);
  loader_options o;
  o.batch_size = 8;
  o.seed = 42;
  loader a(ds, o), b(ds, o);
  std::vector<std::int32_t> iota(50);
  for (int i = 0; i < 50; ++i) iota[static_cast<std::size_t>(i)] = i;

  const auto e0 = epoch_labels(a, 0), e1 = epoch_labels(a, 1);
  for (const auto* e : {&e0, &e1}) {
    auto s = *e;
    std::sort(s.begin(), s.end());
    CHECK(s == iota);  // every sample exactly once
  }
  CHECK(e0 != iota);              // shuffled
  CHECK(e0 != e1);                // a new order each epoch
  CHECK(epoch_labels(b, 1) == e1);  // same seed, same epoch: same order (any call order)
  CHECK(epoch_labels(a, 0) == e0);
  o.seed = 43;
  loader c(ds, o);
  CHECK(epoch_labels(c, 0) != e0);  // another seed, another order
  o.shuffle = false;
  loader s(ds, o);
  CHECK(epoch_labels(s, 3) == iota);
}

TEST_CASE("loader: augmentation is a bounded shift/flip, deterministic and thread-count independent",
          "[data][loader]") {
  const auto ds = synthetic(64, 3, 8, 8, 7);
  loader_options o;
  o.batch_size = 64;
  o.seed = 9;
  o.aug = {2, true};
  o.norm = {};  // x / 255: the zero fill is exactly 0
  loader l(ds, o);
  batch b;
  REQUIRE(l.next(b));
  std::set<std::pair<int, int>> shifts;
  int flipped = 0;
  for (std::int64_t i = 0; i < 64; ++i) {
    const auto k = b.labels[static_cast<std::size_t>(i)];
    bool found = false;
    for (int flip = 0; flip < 2 && !found; ++flip)
      for (int dy = -2; dy <= 2 && !found; ++dy)
        for (int dx = -2; dx <= 2 && !found; ++dx) {
          bool ok = true;
          for (int c = 0; c < 3 && ok; ++c)
            for (int y = 0; y < 8 && ok; ++y)
              for (int x = 0; x < 8 && ok; ++x) {
                const int sy = y + dy, sx = (flip ? 7 - x : x) + dx;
                const float want =
                    (sy >= 0 && sy < 8 && sx >= 0 && sx < 8) ? ds.images(k, c, sy, sx) / 255.0f : 0.0f;
                ok = b.images(i, c, y, x) == want;
              }
          if (ok) {
            found = true;
            shifts.insert({dy, dx});
            flipped += flip;
          }
        }
    CHECK(found);
  }
  CHECK(shifts.size() > 5);  // random crops really differ
  CHECK(flipped > 10);
  CHECK(flipped < 54);

  // thread-count independence and determinism on images big enough to be split across threads
  const auto big = synthetic(96, 3, 32, 32, 3);
  o.batch_size = 96;
  o.norm = cifar10_normalization();
  loader l1(big, o), l2(big, o);
  l1.start_epoch(4);
  l2.start_epoch(4);
  batch b1, b2;
  REQUIRE(l1.next(b1));
  {
    thread_limit one(1);
    REQUIRE(l2.next(b2));
  }
  CHECK(b1.labels == b2.labels);
  CHECK(std::equal(b1.images.data(), b1.images.data() + b1.images.numel(), b2.images.data()));
  // another epoch draws other augmentations for the same samples
  l2.start_epoch(5);
  REQUIRE(l2.next(b2));
  std::vector<float> e5(static_cast<std::size_t>(b2.images.numel()));
  std::copy(b2.images.data(), b2.images.data() + b2.images.numel(), e5.begin());
  l1.start_epoch(4);
  REQUIRE(l1.next(b1));
  bool differs = false;
  for (std::int64_t i = 0; i < 96 && !differs; ++i) {
    // find sample b1.labels[i] in epoch 5
    const auto it = std::find(b2.labels.begin(), b2.labels.end(), b1.labels[static_cast<std::size_t>(i)]);
    const auto j = it - b2.labels.begin();
    differs = !std::equal(b1.images.data() + i * 3072, b1.images.data() + (i + 1) * 3072, e5.data() + j * 3072);
  }
  CHECK(differs);
}

TEST_CASE("loader: batch buffers are reused in steady state", "[data][loader]") {
  const auto ds = synthetic(10, 1, 4, 4);
  loader_options o;
  o.batch_size = 4;
  loader l(ds, o);
  batch b;
  REQUIRE(l.next(b));
  const float* img = b.images.data();
  const std::int32_t* lab = b.labels.data();
  REQUIRE(l.next(b));
  CHECK(b.images.data() == img);
  CHECK(b.labels.data() == lab);
  REQUIRE(l.next(b));  // the last, smaller batch gets its own shape
  CHECK(b.images.shape() == shape({2, 1, 4, 4}));
  // A batch the caller keeps is never overwritten by the next one.
  loader l2(ds, o);
  batch c;
  REQUIRE(l2.next(c));
  const tensor<float> kept = c.images;
  const auto kept_values = kept.to_vector();
  REQUIRE(l2.next(c));
  CHECK_FALSE(c.images.same_data(kept));
  CHECK(kept.to_vector() == kept_values);
}

TEST_CASE("loader: invalid input and ownership", "[data][loader]") {
  static_assert(!std::is_constructible_v<loader, dataset&&, loader_options>,
                "a loader must not bind to a temporary dataset");
  const auto ds = synthetic(4, 3, 2, 2);
  loader_options o;
  o.batch_size = 0;
  CHECK_THROWS_AS(loader(ds, o), value_error);
  o.batch_size = 2;
  o.aug.crop_padding = -1;
  CHECK_THROWS_AS(loader(ds, o), value_error);
  o.aug.crop_padding = 0;
  o.norm = fashion_mnist_normalization();  // 1 entry: broadcast, fine
  CHECK_NOTHROW(loader(ds, o));
  o.norm = {{0.1f, 0.2f}, {0.1f, 0.2f}};  // 2 entries for 3 channels
  CHECK_THROWS_WITH(loader(ds, o), Catch::Contains("3 channels"));
  o.norm = {};
  dataset empty;
  CHECK_THROWS_AS(loader(empty, o), value_error);
  auto bad = ds;
  bad.labels.pop_back();
  CHECK_THROWS_WITH(loader(bad, o), Catch::Contains("3 labels"));

  // shared ownership keeps the dataset alive
  auto shared = std::make_shared<dataset>(synthetic(6, 1, 2, 2));
  loader l(shared, o);
  shared.reset();
  batch b;
  int n = 0;
  while (l.next(b)) n += static_cast<int>(b.size());
  CHECK(n == 6);
  CHECK(l.data().size() == 6);
}

// ------------------------------------------------------------------------------------------------
// the real Fashion-MNIST test split, when installed
// ------------------------------------------------------------------------------------------------

TEST_CASE("fashion-mnist: the installed test split", "[data][idx][fashion]") {
  const std::string dir = default_fashion_mnist_dir();
  if (!fs::exists(fs::path(dir) / "t10k-images-idx3-ubyte.gz") &&
      !fs::exists(fs::path(dir) / "t10k-images-idx3-ubyte")) {
    // scripts/setup.sh installs dataset-fashion-mnist: in CI a missing dataset is a failure.
    if (std::getenv("CI")) FAIL("Fashion-MNIST not found in " << dir << " although CI is set");
    WARN("Fashion-MNIST not found in " << dir << ": skipping (set GHNQ_FASHION_MNIST)");
    return;
  }
  const auto ds = load_fashion_mnist(split::test);
  REQUIRE(ds.images.shape() == shape({10000, 1, 28, 28}));
  CHECK(ds.num_classes == 10);
  std::vector<int> counts(10, 0);
  for (auto y : ds.labels) ++counts[static_cast<std::size_t>(y)];
  for (int c = 0; c < 10; ++c) CHECK(counts[static_cast<std::size_t>(c)] == 1000);

  // normalized with the training statistics, the test set has mean ~0 and std ~1
  loader_options o;
  o.batch_size = 1000;
  o.norm = fashion_mnist_normalization();
  loader l(ds, o);
  batch b;
  double s = 0, s2 = 0;
  std::int64_t n = 0;
  while (l.next(b)) {
    for (std::int64_t i = 0; i < b.images.numel(); ++i) {
      const double v = b.images.flat(i);
      s += v;
      s2 += v * v;
    }
    n += b.images.numel();
  }
  const double mean = s / static_cast<double>(n);
  const double sd = std::sqrt(s2 / static_cast<double>(n) - mean * mean);
  CHECK(std::abs(mean) < 0.02);
  CHECK(std::abs(sd - 1.0) < 0.02);
}

TEST_CASE("dataset::head copies the first n samples", "[data]") {
  const auto ds = synthetic(10, 1, 4, 4);
  const auto h = ds.head(3);
  REQUIRE(h.size() == 3);
  CHECK(h.labels == std::vector<std::int32_t>(ds.labels.begin(), ds.labels.begin() + 3));
  CHECK(std::equal(h.images.data(), h.images.data() + 3 * 16, ds.images.data()));
  CHECK_FALSE(h.images.same_data(ds.images));
  CHECK(ds.head(0).size() == 10);
  CHECK(ds.head(50).size() == 10);
}
