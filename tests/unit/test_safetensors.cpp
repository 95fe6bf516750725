// Tests of ghnq/io/safetensors.hpp: round trips, the exact byte layout, validation of every
// malformed-file case (each error names the file and the field), truncation and header fuzzing,
// and the atomic save.
#include <signal.h>
#include <sys/resource.h>

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "ghnq/io/atomic_file.hpp"
#include "ghnq/io/safetensors.hpp"
#include "support/temp_dir.hpp"

using namespace ghnq;
using namespace ghnq::io;
namespace fs = std::filesystem;
using bytes_t = std::vector<std::uint8_t>;

namespace {

/// A fresh directory under the system temp dir, removed with its contents at scope exit.
using ghnq::test::temp_dir;

bytes_t read_bytes(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return bytes_t(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}
void write_bytes(const std::string& p, const bytes_t& b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  REQUIRE(out.good());
}

/// 8-byte little-endian length + header text + `buffer` zero bytes (no padding added).
bytes_t raw_file(const std::string& header, std::size_t buffer) {
  bytes_t b(8);
  const std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) b[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(n >> (8 * i));
  b.insert(b.end(), header.begin(), header.end());
  b.resize(b.size() + buffer, 0);
  return b;
}

/// Entries of `dir` whose name contains ".tmp." (leftover temporary files).
int temp_leftovers(const fs::path& dir) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp.") != std::string::npos) ++n;
  return n;
}

/// Runs `f`, which must throw exactly ghnq::io_error naming `file` and containing every `parts`.
void expect_io_error(const std::function<void()>& f, const std::string& file,
                     std::initializer_list<std::string> parts) {
  try {
    f();
    FAIL("no exception; expected io_error mentioning " << *parts.begin());
  } catch (const io_error& e) {
    const std::string msg = e.what();
    INFO("message: " << msg);
    CHECK(e.file() == file);
    CHECK(msg.find(file) != std::string::npos);
    for (const auto& p : parts) {
      INFO("expected part: " << p);
      CHECK(msg.find(p) != std::string::npos);
    }
  } catch (const std::exception& e) {
    FAIL("wrong exception type, message: " << e.what());
  }
}

std::vector<std::string> names_of(std::initializer_list<const char*> l) { return {l.begin(), l.end()}; }

}  // namespace

TEST_CASE("safetensors dtypes: names, sizes, element types", "[io][safetensors]") {
  for (st_dtype d : kAllStDtypes) {
    st_dtype back = d == st_dtype::f32 ? st_dtype::u8 : st_dtype::f32;
    REQUIRE(parse_st_dtype(st_dtype_name(d), back));
    CHECK(back == d);
    CHECK(st_dtype_size(d) >= 1);
  }
  CHECK(std::string(st_dtype_name(st_dtype::bf16)) == "BF16");
  CHECK(std::string(st_dtype_name(st_dtype::boolean)) == "BOOL");
  CHECK(st_dtype_size(st_dtype::f64) == 8);
  CHECK(st_dtype_size(st_dtype::f32) == 4);
  CHECK(st_dtype_size(st_dtype::bf16) == 2);
  CHECK(st_dtype_size(st_dtype::i8) == 1);
  CHECK(st_dtype_size(st_dtype::i64) == 8);
  st_dtype d = st_dtype::i8;
  CHECK_FALSE(parse_st_dtype("f32", d));
  CHECK_FALSE(parse_st_dtype("F8_E4M3", d));
  CHECK_FALSE(parse_st_dtype("", d));
  CHECK(d == st_dtype::i8);
  static_assert(st_dtype_of_v<float> == st_dtype::f32);
  static_assert(st_dtype_of_v<double> == st_dtype::f64);
  static_assert(st_dtype_of_v<std::int8_t> == st_dtype::i8);
  static_assert(st_dtype_of_v<std::int32_t> == st_dtype::i32);
  static_assert(st_dtype_of_v<std::uint8_t> == st_dtype::u8);
  static_assert(st_dtype_of_v<bool> == st_dtype::boolean);

  // The byte-order helper used on big-endian hosts.
  bytes_t b = {1, 2, 3, 4, 5, 6, 7, 8};
  ghnq::io::detail::st_swap_elements(b.data(), b.size(), 4);
  CHECK(b == bytes_t{4, 3, 2, 1, 8, 7, 6, 5});
  ghnq::io::detail::st_swap_elements(b.data(), b.size(), 2);
  CHECK(b == bytes_t{3, 4, 1, 2, 7, 8, 5, 6});
  ghnq::io::detail::st_swap_elements(b.data(), b.size(), 1);
  CHECK(b == bytes_t{3, 4, 1, 2, 7, 8, 5, 6});
}

TEST_CASE("safetensors round trip of float/double/int tensors, scalars, empty tensors, metadata",
          "[io][safetensors]") {
  temp_dir dir;
  const std::string path = dir.file("roundtrip.safetensors");
  std::mt19937 gen(42);
  std::normal_distribution<float> nf;
  std::normal_distribution<double> nd;

  auto wf = tensor<float>::empty({3, 5, 2});
  for (std::int64_t i = 0; i < wf.numel(); ++i) wf.flat(i) = nf(gen);
  auto wd = tensor<double>::empty({7});
  for (std::int64_t i = 0; i < wd.numel(); ++i) wd.flat(i) = nd(gen);
  wd.flat(0) = std::numeric_limits<double>::denorm_min();
  wd.flat(1) = -0.0;
  auto q8 = tensor<std::int8_t>::from({2, 3}, {-128, -1, 0, 1, 42, 127});
  auto b32 = tensor<std::int32_t>::from({4}, {std::numeric_limits<std::int32_t>::min(), -7, 0,
                                              std::numeric_limits<std::int32_t>::max()});
  auto i64 = tensor<std::int64_t>::from({2}, {std::numeric_limits<std::int64_t>::min(), 1234567890123LL});
  auto u8 = tensor<std::uint8_t>::from({3}, {0, 128, 255});
  auto mask = tensor<bool>::from({2, 2}, {true, false, false, true});
  auto scalar = tensor<float>::from(shape{}, {3.25f});
  auto empty_f = tensor<float>::empty({0, 3});
  auto empty_i8 = tensor<std::int8_t>::empty({0});
  // A strided view is written with its logical (row-major) values.
  auto base = tensor<float>::from({2, 3}, {1, 2, 3, 4, 5, 6});
  auto tr = base.transpose(0, 1);
  REQUIRE_FALSE(tr.is_contiguous());
  const std::uint16_t bf16_bits[] = {0x3f80, 0xc000, 0x7f80};  // 1, -2, +inf in bfloat16

  const std::string config = "{\"hidden\": 32, \"name\": \"ghn \\\"v2\\\"\",\n \"unicode\": \"\xc3\xa9\xe2\x82\xac\"}";
  safetensors_writer w;
  w.add("decoder.weight", wf);
  w.add("wd", wd);
  w.add("conv1.weight_q", q8);
  w.add("conv1.bias_q", b32);
  w.add("empty_f", empty_f);
  w.add("i64", i64);
  w.add("scalar", scalar);
  w.add("empty_i8", empty_i8);
  w.add("u8", u8);
  w.add("mask", mask);
  w.add("transposed", tr);
  w.add_raw("bf16", st_dtype::bf16, {3}, bf16_bits, sizeof bf16_bits);
  w.set_metadata("config", config);
  w.set_metadata("format", "ghnq");
  w.set_metadata("empty", "");
  w.set_metadata("format", "ghnq.ckpt");  // replaces
  CHECK(w.size() == 12);
  CHECK(w.contains("u8"));
  w.save(path);
  CHECK(read_bytes(path) == w.serialize());
  CHECK(temp_leftovers(dir.path) == 0);

  auto f = safetensors_file::load(path);
  CHECK(f.path() == path);
  CHECK(f.size() == 12);
  // File order is the insertion order, empty tensors included.
  CHECK(f.names() == names_of({"decoder.weight", "wd", "conv1.weight_q", "conv1.bias_q", "empty_f", "i64",
                               "scalar", "empty_i8", "u8", "mask", "transposed", "bf16"}));
  CHECK(f.contains("scalar"));
  CHECK_FALSE(f.contains("nope"));
  CHECK(f.metadata().size() == 3);
  CHECK(f.metadata("config") == config);
  CHECK(f.metadata("format") == "ghnq.ckpt");
  CHECK(f.metadata("empty").empty());
  CHECK(f.has_metadata("config"));
  CHECK_FALSE(f.has_metadata("nope"));

  auto rf = f.get<float>("decoder.weight", shape{3, 5, 2});
  CHECK(rf.shape() == shape({3, 5, 2}));
  CHECK(rf.to_vector() == wf.to_vector());
  auto rd = f.get<double>("wd");
  CHECK(rd.to_vector() == wd.to_vector());
  CHECK(std::signbit(rd.flat(1)));
  CHECK(f.get<std::int8_t>("conv1.weight_q").to_vector() == q8.to_vector());
  CHECK(f.get<std::int32_t>("conv1.bias_q").to_vector() == b32.to_vector());
  CHECK(f.get<std::int64_t>("i64").to_vector() == i64.to_vector());
  CHECK(f.get<std::uint8_t>("u8").to_vector() == u8.to_vector());
  auto rm = f.get<bool>("mask");
  CHECK((rm(0, 0) && !rm(0, 1) && !rm(1, 0) && rm(1, 1)));
  auto rs = f.get<float>("scalar");
  CHECK(rs.rank() == 0);
  CHECK(rs.numel() == 1);
  CHECK(rs.flat(0) == 3.25f);
  auto re = f.get<float>("empty_f", shape{0, 3});
  CHECK(re.defined());
  CHECK(re.shape() == shape({0, 3}));
  CHECK(f.get<std::int8_t>("empty_i8").shape() == shape({0}));
  auto rt = f.get<float>("transposed");
  CHECK(rt.shape() == shape({3, 2}));
  CHECK(rt.to_vector() == std::vector<float>{1, 4, 2, 5, 3, 6});

  const st_info& ib = f.info("bf16");
  CHECK(ib.dtype == st_dtype::bf16);
  CHECK(ib.shape == std::vector<std::int64_t>{3});
  CHECK(ib.nbytes() == 6);
  CHECK(std::memcmp(f.raw_data("bf16"), bf16_bits, 6) == 0);
  const st_info& iq = f.info("conv1.weight_q");
  CHECK(iq.dtype == st_dtype::i8);
  CHECK(iq.numel() == 6);
  CHECK(f.info("scalar").shape.empty());
  CHECK(f.info("scalar").numel() == 1);
  CHECK(f.info("empty_f").numel() == 0);
  CHECK(f.info("empty_f").nbytes() == 0);

  // Copying every record (bytes in file order) through a new writer reproduces the file exactly.
  safetensors_writer copy;
  for (const auto& n : f.names()) copy.add(f.record(n));
  for (const auto& kv : f.metadata()) copy.set_metadata(kv.first, kv.second);
  CHECK(copy.serialize() == read_bytes(path));
}

TEST_CASE("safetensors exact byte layout", "[io][safetensors]") {
  temp_dir dir;
  SECTION("metadata first, header padded with spaces to a multiple of 8") {
    safetensors_writer w;
    w.add("a", tensor<float>::from({2}, {1.0f, -2.0f}));
    w.set_metadata("k", "v");
    const std::string json = R"({"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
    REQUIRE(json.size() == 79);
    bytes_t expected = {0x50, 0, 0, 0, 0, 0, 0, 0};  // header length 80
    expected.insert(expected.end(), json.begin(), json.end());
    expected.push_back(' ');
    const bytes_t data = {0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0};  // 1.0f, -2.0f little-endian
    expected.insert(expected.end(), data.begin(), data.end());
    CHECK(w.serialize() == expected);
    const std::string path = dir.file("tiny.safetensors");
    w.save(path);
    CHECK(read_bytes(path) == expected);
  }
  SECTION("int8 then an int32 scalar: contiguous offsets, no metadata") {
    safetensors_writer w;
    w.add("a", tensor<std::int8_t>::from({3}, {1, -1, 127}));
    w.add("b", tensor<std::int32_t>::from(shape{}, {0x01020304}));
    const std::string json =
        R"({"a":{"dtype":"I8","shape":[3],"data_offsets":[0,3]},"b":{"dtype":"I32","shape":[],"data_offsets":[3,7]}})";
    REQUIRE(json.size() == 105);
    bytes_t expected = {0x70, 0, 0, 0, 0, 0, 0, 0};  // header length 112
    expected.insert(expected.end(), json.begin(), json.end());
    expected.insert(expected.end(), 7, ' ');
    const bytes_t data = {0x01, 0xff, 0x7f, 0x04, 0x03, 0x02, 0x01};
    expected.insert(expected.end(), data.begin(), data.end());
    CHECK(w.serialize() == expected);
    auto f = safetensors_file::from_bytes(expected);
    CHECK(f.names() == names_of({"a", "b"}));
    CHECK(f.get<std::int32_t>("b").flat(0) == 0x01020304);
  }
  SECTION("padding for every name length") {
    for (int len = 1; len <= 17; ++len) {
      safetensors_writer w;
      w.add(std::string(static_cast<std::size_t>(len), 'x'), tensor<std::uint8_t>::from({1}, {9}));
      const bytes_t b = w.serialize();
      std::uint64_t n = 0;
      for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(b[static_cast<std::size_t>(i)]) << (8 * i);
      CHECK(n % 8 == 0);
      CHECK(b.size() == 8 + n + 1);
      const std::string text(b.begin() + 8, b.begin() + 8 + static_cast<std::ptrdiff_t>(n));
      const auto close = text.rfind('}');
      CHECK(text.find_first_not_of(' ', close + 1) == std::string::npos);
      CHECK(text.size() - close - 1 < 8);
      CHECK(safetensors_file::from_bytes(b).get<std::uint8_t>(std::string(static_cast<std::size_t>(len), 'x'))
                .flat(0) == 9);
    }
  }
}

TEST_CASE("safetensors rejects every malformed file with an error naming the file and the field",
          "[io][safetensors]") {
  temp_dir dir;
  int k = 0;
  // Writes `b` to a fresh file and expects load() to throw io_error containing `parts`.
  auto bad = [&](const bytes_t& b, std::initializer_list<std::string> parts) {
    const std::string path = dir.file("bad" + std::to_string(k++) + ".safetensors");
    write_bytes(path, b);
    INFO("file contents: " << std::string(b.begin(), b.end()));
    expect_io_error([&] { safetensors_file::load(path); }, path, parts);
  };
  const std::string ok_entry = R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  REQUIRE_NOTHROW(safetensors_file::from_bytes(raw_file("{" + ok_entry + "}", 8)));

  SECTION("length prefix and JSON") {
    bad(bytes_t{1, 2, 3, 4, 5}, {"8-byte header length"});
    bad(bytes_t{}, {"8-byte header length"});
    bytes_t longer = raw_file("{" + ok_entry + "}", 8);
    longer[0] = static_cast<std::uint8_t>(longer.size());  // header length past the end of the file
    bad(longer, {"header length", "past the end"});
    bytes_t absurd = raw_file("{}", 0);
    absurd[5] = 1;  // 2^40
    bad(absurd, {"header length 1099511627778", "limit"});
    bad(raw_file("{not json", 0), {"header is not valid JSON"});
    bad(raw_file("", 0), {"header is not valid JSON"});
    bad(raw_file("{\"w\":{\"dtype\":\"F32\"", 0), {"header is not valid JSON"});
    bad(raw_file("{\"\xff\":{}}", 0), {"header is not valid JSON"});  // invalid UTF-8
    bad(raw_file(std::string("{}\0", 3), 0), {"header is not valid JSON", "NUL byte at header offset 2"});
    bad(raw_file(std::string("{}\0 {\"w\":5}", 11), 0), {"header is not valid JSON", "NUL byte"});
    bad(raw_file("[1,2]", 0), {"not a JSON object", "[1,2]"});
    bad(raw_file("\"w\"", 0), {"not a JSON object"});
    bad(raw_file("{" + ok_entry + "," + ok_entry + "}", 8), {"duplicate entry 'w'"});
    bad(raw_file(R"({"w":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8),
        {"entry 'w'", "duplicate key 'dtype'"});
    bad(raw_file("{\"w\":" + std::string(100, '[') + std::string(100, ']') + "}", 0), {"nested too deeply"});
  }
  SECTION("entries") {
    bad(raw_file(R"({"w":5})", 0), {"tensor 'w'", "not a JSON object"});
    bad(raw_file(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8), {"tensor 'w'", "missing field 'dtype'"});
    bad(raw_file(R"({"w":{"dtype":"F8","shape":[2],"data_offsets":[0,8]}})", 8), {"tensor 'w'", "'dtype'", "F8"});
    bad(raw_file(R"({"w":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", 8), {"tensor 'w'", "'dtype'"});
    bad(raw_file(R"({"w":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}})", 8), {"tensor 'w'", "'dtype'"});
    bad(raw_file(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", 8), {"tensor 'w'", "missing field 'shape'"});
    bad(raw_file(R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8), {"tensor 'w'", "'shape'"});
    bad(raw_file(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), {"tensor 'w'", "'shape'", "-2"});
    bad(raw_file(R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8), {"tensor 'w'", "'shape'"});
    bad(raw_file(R"({"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", 8), {"tensor 'w'", "'shape'"});
    bad(raw_file(R"({"w":{"dtype":"F32","shape":[[2]],"data_offsets":[0,8]}})", 8), {"tensor 'w'", "'shape'"});
    bad(raw_file(R"({"w":{"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,8]}})", 8),
        {"tensor 'w'", "'shape'"});
    bad(raw_file(R"({"w":{"dtype":"F32","shape":[2]}})", 8), {"tensor 'w'", "missing field 'data_offsets'"});
    bad(raw_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8), {"tensor 'w'", "'data_offsets'"});
    bad(raw_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", 8), {"tensor 'w'", "'data_offsets'"});
    bad(raw_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":{"a":0}}})", 8), {"tensor 'w'", "'data_offsets'"});
    bad(raw_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-1,7]}})", 8), {"tensor 'w'", "'data_offsets'"});
    bad(raw_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8.5]}})", 8), {"tensor 'w'", "'data_offsets'"});
    bad(raw_file(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8), {"tensor 'w'", "begin > end"});
    bad(raw_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 7),
        {"tensor 'w'", "'data_offsets'", "past the end", "7-byte"});
    bad(raw_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
        {"tensor 'w'", "spans 8 bytes", "needs 12"});
    bad(raw_file(R"({"w":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", 8),
        {"tensor 'w'", "spans 8 bytes", "F64", "needs 16"});
    bad(raw_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]}})", 8),
        {"tensor 'w'", "overflows"});
    bad(raw_file(R"({"w":{"dtype":"F64","shape":[1152921504606846976,8],"data_offsets":[0,8]}})", 8),
        {"tensor 'w'", "overflows"});
  }
  SECTION("buffer coverage") {
    bad(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                 12),
        {"'a'", "'b'", "overlap"});
    bad(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                 4),
        {"'a'", "'b'", "overlap"});
    bad(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
                 8),
        {"'a'", "'e'", "overlap"});
    bad(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                 12),
        {"unused bytes [4, 8)", "'b'"});
    bad(raw_file(R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8), {"unused bytes [0, 4)", "'b'"});
    bad(raw_file("{" + ok_entry + "}", 9), {"1 unused bytes after the last tensor"});
    bad(raw_file("{}", 3), {"3 unused bytes"});
  }
  SECTION("metadata") {
    bad(raw_file(R"({"__metadata__":"x"})", 0), {"__metadata__", "not a JSON object"});
    bad(raw_file(R"({"__metadata__":{"a":"1","step":5}})", 0), {"__metadata__", "'step'", "not a string"});
    bad(raw_file(R"({"__metadata__":{"cfg":{"x":1}}})", 0), {"__metadata__", "'cfg'", "not a string"});
    bad(raw_file(R"({"__metadata__":{"cfg":null}})", 0), {"__metadata__", "'cfg'"});
  }
  SECTION("valid edge cases are accepted") {
    auto f = safetensors_file::from_bytes(raw_file("{}", 0));
    CHECK(f.size() == 0);
    CHECK(f.metadata().empty());
    // Unknown fields are ignored; unpadded headers and leading whitespace are fine.
    auto g = safetensors_file::from_bytes(
        raw_file(R"(  {"w":{"extra":[1],"dtype":"U8","shape":[1,2],"data_offsets":[0,2]},"__metadata__":{}})", 2));
    CHECK(g.names() == names_of({"w"}));
    CHECK(g.info("w").shape == std::vector<std::int64_t>{1, 2});
    // Two empty tensors at the same offset keep header order.
    auto h = safetensors_file::from_bytes(raw_file(
        R"({"z":{"dtype":"I8","shape":[0],"data_offsets":[1,1]},"y":{"dtype":"I8","shape":[1],"data_offsets":[0,1]},"x":{"dtype":"I8","shape":[0,5],"data_offsets":[1,1]}})",
        1));
    CHECK(h.names() == names_of({"y", "z", "x"}));
  }
}

TEST_CASE("safetensors corruption by editing the bytes of a valid file", "[io][safetensors]") {
  temp_dir dir;
  safetensors_writer w;
  w.add("w", tensor<float>::from({2}, {1.0f, 2.0f}));
  const bytes_t good = w.serialize();
  const std::string text(good.begin(), good.end());
  int k = 0;
  auto edited = [&](const std::string& from, const std::string& to) {
    const auto pos = text.find(from);
    REQUIRE(pos != std::string::npos);
    REQUIRE(from.size() == to.size());
    bytes_t b = good;
    std::copy(to.begin(), to.end(), b.begin() + static_cast<std::ptrdiff_t>(pos));
    const std::string path = dir.file("edit" + std::to_string(k++) + ".safetensors");
    write_bytes(path, b);
    return path;
  };
  std::string p = edited("\"F32\"", "\"F64\"");
  expect_io_error([&] { safetensors_file::load(p); }, p, {"tensor 'w'", "F64", "needs 16"});
  p = edited("\"F32\"", "\"X32\"");
  expect_io_error([&] { safetensors_file::load(p); }, p, {"tensor 'w'", "'dtype'", "X32"});
  p = edited("[0,8]", "[0,9]");
  expect_io_error([&] { safetensors_file::load(p); }, p, {"tensor 'w'", "past the end"});
  p = edited("[0,8]", "[1,8]");
  expect_io_error([&] { safetensors_file::load(p); }, p, {"tensor 'w'", "spans 7 bytes"});
  p = edited("[2]", "[1]");
  expect_io_error([&] { safetensors_file::load(p); }, p, {"tensor 'w'", "needs 4"});
  p = edited("\"shape\"", "\"shapx\"");
  expect_io_error([&] { safetensors_file::load(p); }, p, {"tensor 'w'", "missing field 'shape'"});
  p = edited("{\"w\":{", "[\"w\",{");
  expect_io_error([&] { safetensors_file::load(p); }, p, {"header is not valid JSON"});
  // Header length one short: the last padding byte moves into the buffer -> an unused byte.
  bytes_t shorter = good;
  shorter[0] = static_cast<std::uint8_t>(shorter[0] - 1);
  p = dir.file("short_len.safetensors");
  write_bytes(p, shorter);
  expect_io_error([&] { safetensors_file::load(p); }, p, {"1 unused bytes"});
  // Header length one long: the first data byte (0x00) ends up in the JSON text.
  bytes_t longer = good;
  longer[0] = static_cast<std::uint8_t>(longer[0] + 1);
  p = dir.file("long_len.safetensors");
  write_bytes(p, longer);
  expect_io_error([&] { safetensors_file::load(p); }, p, {"header is not valid JSON"});
  // A BOOL tensor holding a byte other than 0 / 1.
  safetensors_writer wb;
  wb.add("m", tensor<bool>::from({2}, {true, false}));
  bytes_t bb = wb.serialize();
  bb.back() = 2;
  p = dir.file("bool.safetensors");
  write_bytes(p, bb);
  auto fb = safetensors_file::load(p);
  expect_io_error([&] { fb.get<bool>("m"); }, p, {"tensor 'm'", "BOOL element 1 is 2"});
}

TEST_CASE("safetensors truncated files and header fuzzing never crash", "[io][safetensors]") {
  temp_dir dir;
  safetensors_writer w;
  w.add("a", tensor<float>::from({2, 2}, {1, 2, 3, 4}));
  w.add("b", tensor<std::int8_t>::from({3}, {-1, 0, 1}));
  w.add("c", tensor<double>::from(shape{}, {0.5}));
  w.set_metadata("config", "{\"x\": 1}");
  const bytes_t good = w.serialize();
  const std::string path = dir.file("cut.safetensors");
  REQUIRE_NOTHROW(safetensors_file::from_bytes(good));
  for (std::size_t cut = 0; cut < good.size(); ++cut) {
    INFO("cut at " << cut << " of " << good.size());
    write_bytes(path, bytes_t(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(cut)));
    expect_io_error([&] { safetensors_file::load(path); }, path, {});
  }
  bytes_t extra = good;
  extra.push_back(0);
  write_bytes(path, extra);
  expect_io_error([&] { safetensors_file::load(path); }, path, {"unused bytes"});

  // Replace each header byte by a few troublesome characters: valid results or io_error only.
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(good[static_cast<std::size_t>(i)]) << (8 * i);
  const std::uint8_t subs[] = {' ', '0', '9', '"', '{', '}', '[', ']', ',', ':', '-', 0x00, 0xff, 0xc3};
  int accepted = 0, rejected = 0;
  for (std::size_t pos = 0; pos < 8 + n; ++pos) {
    for (std::uint8_t s : subs) {
      if (good[pos] == s) continue;
      bytes_t b = good;
      b[pos] = s;
      try {
        auto f = safetensors_file::from_bytes(b, "fuzz");
        for (const auto& name : f.names()) {
          auto r = f.record(name);
          std::uint64_t need = 0;
          REQUIRE(ghnq::io::detail::st_checked_nbytes(r.shape, r.dtype, need));
          REQUIRE(need == r.bytes.size());
        }
        ++accepted;
      } catch (const io_error& e) {
        REQUIRE(e.file() == "fuzz");
        ++rejected;
      } catch (const std::exception& e) {
        FAIL("byte " << pos << " -> " << int(s) << ": unexpected exception " << e.what());
      }
    }
  }
  CHECK(rejected > accepted);
  CHECK(accepted > 0);  // e.g. edits inside the metadata strings stay valid
}

TEST_CASE("safetensors get: dtype, shape and name mismatches are clear errors", "[io][safetensors]") {
  temp_dir dir;
  const std::string path = dir.file("ckpt.safetensors");
  safetensors_writer w;
  w.add("layer.weight", tensor<float>::zeros({4, 3}));
  w.add("layer.bias_q", tensor<std::int32_t>::zeros({4}));
  w.save(path);
  auto f = safetensors_file::load(path);
  expect_io_error([&] { f.get<double>("layer.weight"); }, path, {"tensor 'layer.weight'", "F32", "expected F64"});
  expect_io_error([&] { f.get<std::int8_t>("layer.bias_q"); }, path, {"'layer.bias_q'", "I32", "expected I8"});
  expect_io_error([&] { f.get<float>("layer.wieght"); }, path,
                  {"no tensor named 'layer.wieght'", "2 tensors", "'layer.weight'", "'layer.bias_q'"});
  expect_io_error([&] { f.info("missing"); }, path, {"'missing'"});
  expect_io_error([&] { f.raw_data("missing"); }, path, {"'missing'"});
  expect_io_error([&] { f.metadata("config"); }, path, {"no metadata entry 'config'"});
  try {
    f.get<float>("layer.weight", shape{3, 4});
    FAIL("no shape_error");
  } catch (const shape_error& e) {
    const std::string msg = e.what();
    CHECK(msg.find(path) != std::string::npos);
    CHECK(msg.find("'layer.weight'") != std::string::npos);
    CHECK(msg.find("[4, 3]") != std::string::npos);
    CHECK(msg.find("[3, 4]") != std::string::npos);
  }
  CHECK_THROWS_AS(f.get<float>("layer.weight", shape{4}), shape_error);
  CHECK_NOTHROW(f.get<float>("layer.weight", shape{4, 3}));
  // Rank above ghnq::shape::kMaxRank: readable as raw bytes, not as a ghnq tensor.
  safetensors_writer w7;
  const std::uint8_t one = 1;
  w7.add_raw("r7", st_dtype::u8, {1, 1, 1, 1, 1, 1, 1}, &one, 1);
  auto f7 = safetensors_file::from_bytes(w7.serialize(), "r7.st");
  CHECK(f7.info("r7").shape.size() == 7);
  CHECK(f7.raw_data("r7")[0] == 1);
  CHECK_THROWS_AS(f7.get<std::uint8_t>("r7"), shape_error);
}

TEST_CASE("safetensors writer argument checks", "[io][safetensors]") {
  safetensors_writer w;
  w.add("x", tensor<float>::zeros({2}));
  CHECK_THROWS_AS(w.add("x", tensor<float>::zeros({2})), value_error);
  CHECK_THROWS_AS(w.add("__metadata__", tensor<float>::zeros({2})), value_error);
  CHECK_THROWS_AS(w.add("", tensor<float>::zeros({2})), value_error);
  CHECK_THROWS_AS(w.add("bad\xff", tensor<float>::zeros({2})), value_error);
  CHECK_THROWS_AS(w.add("undef", tensor<float>()), value_error);
  const float v[3] = {1, 2, 3};
  CHECK_THROWS_AS(w.add_raw("r", st_dtype::f32, {2}, v, sizeof v), value_error);
  CHECK_THROWS_AS(w.add_raw("r", st_dtype::f32, {-3}, v, sizeof v), value_error);
  CHECK_THROWS_AS(w.add_raw("r", st_dtype::f32, {3}, nullptr, sizeof v), value_error);
  CHECK_THROWS_AS(w.add(st_tensor{"r", st_dtype::f16, {3}, bytes_t(5)}), value_error);
  CHECK_THROWS_AS(w.set_metadata("k", "bad\xc3"), value_error);
  try {
    w.add("x", tensor<float>::zeros({1}));
  } catch (const value_error& e) {
    CHECK(std::string(e.what()).find("duplicate tensor name 'x'") != std::string::npos);
  }
  CHECK(w.size() == 1);  // failed adds leave the writer unchanged
  w.add_raw("r", st_dtype::f32, {3}, v, sizeof v);
  CHECK(w.size() == 2);
}

TEST_CASE("safetensors save is atomic", "[io][safetensors]") {
  temp_dir dir;
  const std::string path = dir.file("model.safetensors");
  safetensors_writer old_w;
  old_w.add("w", tensor<float>::from({2}, {1, 2}));
  old_w.save(path);
  const bytes_t old_bytes = read_bytes(path);
  REQUIRE(old_bytes == old_w.serialize());

  SECTION("a successful save replaces the file and leaves no temporary file") {
    safetensors_writer w;
    w.add("w", tensor<float>::from({3}, {7, 8, 9}));
    w.save(path);
    CHECK(safetensors_file::load(path).get<float>("w").to_vector() == std::vector<float>{7, 8, 9});
    CHECK(temp_leftovers(dir.path) == 0);
    int entries = 0;
    for (const auto& e : fs::directory_iterator(dir.path)) {
      (void)e;
      ++entries;
    }
    CHECK(entries == 1);
  }
  SECTION("a write failing midway (file size limit) leaves the old file intact") {
    safetensors_writer w;
    w.add("big", tensor<float>::zeros({1 << 18}));  // 1 MiB
    rlimit old_lim{};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old_lim) == 0);
    rlimit lim = old_lim;
    lim.rlim_cur = 64 * 1024;
    if (old_lim.rlim_max != RLIM_INFINITY && old_lim.rlim_max < lim.rlim_cur) lim.rlim_cur = old_lim.rlim_max;
    auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &lim) == 0);
    bool threw = false;
    std::string msg;
    try {
      w.save(path);
    } catch (const io_error& e) {
      threw = true;
      msg = e.what();
    }
    ::setrlimit(RLIMIT_FSIZE, &old_lim);
    ::signal(SIGXFSZ, old_handler);
    INFO(msg);
    CHECK(threw);
    CHECK(msg.find(path) != std::string::npos);
    CHECK(msg.find("cannot write temporary file") != std::string::npos);
    CHECK(read_bytes(path) == old_bytes);
    CHECK(temp_leftovers(dir.path) == 0);
  }
  SECTION("a failing rename (the target name is a non-empty directory) removes the temporary file") {
    const std::string target = dir.file("taken");
    fs::create_directories(target);
    write_bytes((fs::path(target) / "keep.txt").string(), bytes_t{'k'});
    safetensors_writer w;
    w.add("w", tensor<float>::zeros({2}));
    expect_io_error([&] { w.save(target); }, target, {"cannot rename temporary file"});
    CHECK(fs::is_directory(target));
    CHECK(read_bytes((fs::path(target) / "keep.txt").string()) == bytes_t{'k'});
    CHECK(temp_leftovers(dir.path) == 0);
    CHECK(read_bytes(path) == old_bytes);
  }
  SECTION("saving into a nonexistent directory is an io_error and creates nothing") {
    const std::string target = dir.file("no/such/dir/model.safetensors");
    expect_io_error([&] { old_w.save(target); }, target, {"cannot create temporary file"});
    CHECK_FALSE(fs::exists(dir.path / "no"));
    CHECK(temp_leftovers(dir.path) == 0);
  }
  SECTION("loading a missing file or a directory is an io_error naming it") {
    const std::string missing = dir.file("missing.safetensors");
    expect_io_error([&] { safetensors_file::load(missing); }, missing, {"cannot open"});
    expect_io_error([&] { safetensors_file::load(dir.path.string()); }, dir.path.string(), {"read failed"});
  }
}

TEST_CASE("write_file_atomic replaces text files whole or not at all", "[io][atomic]") {
  temp_dir dir;
  const std::string path = dir.file("table.csv");
  ghnq::io::write_file_atomic(path, "a,b\n1,2\n");
  CHECK(read_bytes(path) == bytes_t{'a', ',', 'b', '\n', '1', ',', '2', '\n'});
  ghnq::io::write_file_atomic(path, "");  // an empty file is a valid content
  CHECK(read_bytes(path).empty());
  ghnq::io::write_file_atomic(path, "new");
  CHECK(read_bytes(path) == bytes_t{'n', 'e', 'w'});
  CHECK(temp_leftovers(dir.path) == 0);
  CHECK((fs::status(path).permissions() & fs::perms::others_read) != fs::perms::none);

  SECTION("a target that is a non-empty directory: io_error, directory and old files untouched") {
    const std::string target = dir.file("taken");
    fs::create_directories(target);
    write_bytes((fs::path(target) / "keep.txt").string(), bytes_t{'k'});
    expect_io_error([&] { ghnq::io::write_file_atomic(target, "x"); }, target, {"cannot rename temporary file"});
    CHECK(read_bytes((fs::path(target) / "keep.txt").string()) == bytes_t{'k'});
    CHECK(temp_leftovers(dir.path) == 0);
    CHECK(read_bytes(path) == bytes_t{'n', 'e', 'w'});
  }
  SECTION("a missing directory: io_error naming the file, nothing created") {
    const std::string target = dir.file("no/such/dir/t.csv");
    expect_io_error([&] { ghnq::io::write_file_atomic(target, "x"); }, target, {"cannot create temporary file"});
    CHECK_FALSE(fs::exists(dir.path / "no"));
  }
  SECTION("a write failing midway (file size limit) leaves the old file intact") {
    rlimit old_lim{};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old_lim) == 0);
    rlimit lim = old_lim;
    lim.rlim_cur = 4096;
    if (old_lim.rlim_max != RLIM_INFINITY && old_lim.rlim_max < lim.rlim_cur) lim.rlim_cur = old_lim.rlim_max;
    auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &lim) == 0);
    std::string msg;
    try {
      ghnq::io::write_file_atomic(path, std::string(1 << 16, 'z'));
    } catch (const ghnq::io_error& e) {
      msg = e.what();
    }
    ::setrlimit(RLIMIT_FSIZE, &old_lim);
    ::signal(SIGXFSZ, old_handler);
    INFO(msg);
    CHECK(msg.find(path) != std::string::npos);
    CHECK(msg.find("cannot write temporary file") != std::string::npos);
    CHECK(read_bytes(path) == bytes_t{'n', 'e', 'w'});
    CHECK(temp_leftovers(dir.path) == 0);
  }
}
