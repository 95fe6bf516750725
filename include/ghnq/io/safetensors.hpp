/// \file
/// \brief Reading and writing safetensors files: GHN checkpoints (tensors plus a JSON config in the
/// metadata) and the integer export of quantized networks (I8 / packed-int4-as-U8 weights, I32 biases).
///
/// Format (the public safetensors format, https://github.com/huggingface/safetensors):
///  - 8 bytes: little-endian unsigned 64-bit header length N;
///  - N bytes: UTF-8 JSON object mapping each tensor name to
///    `{"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}` (offsets relative to the
///    byte buffer after the header, `end - begin == numel * dtype size`), plus an optional
///    `"__metadata__"` object of string -> string;
///  - the byte buffer: tensors little-endian, row-major, covering the buffer exactly (no gaps,
///    no overlaps, no trailing bytes).
///
/// The writer pads the header with spaces to a multiple of 8 bytes, lays the tensors out
/// contiguously in the order they were added, and saves atomically (temporary file in the same
/// directory, fsync, rename), so the target is either the old file or the complete new one.
/// The reader validates every field and throws ghnq::io_error naming the file and the tensor or
/// field at fault; it never reads out of bounds, whatever the bytes.
/// \code
/// ghnq::io::safetensors_writer w;
/// w.add("decoder.weight", weight);                  // tensor<float>
/// w.set_metadata("config", config_json.dump());
/// w.save("ghn.safetensors");
///
/// auto f = ghnq::io::safetensors_file::load("ghn.safetensors");
/// auto cfg = nlohmann::json::parse(f.metadata("config"));
/// auto wt = f.get<float>("decoder.weight", weight.shape());   // dtype and shape checked
/// \endcode
#pragma once
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "ghnq/backend/tags.hpp"
#include "ghnq/core/error.hpp"
#include "ghnq/core/traits.hpp"
#include "ghnq/tensor/shape.hpp"
#include "ghnq/tensor/tensor.hpp"

namespace ghnq::io {

/// Largest header accepted (and written), in bytes; the reference implementation uses the same limit.
inline constexpr std::uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

// ---- dtypes ------------------------------------------------------------------------------------

/// Element types of the safetensors format (the names in the file are "F64", "F32", "F16", "BF16",
/// "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"). F16 and BF16 have no C++
/// element type here: they are read and written as raw bytes only.
enum class st_dtype : std::uint8_t { f64, f32, f16, bf16, i64, i32, i16, i8, u64, u32, u16, u8, boolean };

/// Every dtype, in enum order.
inline constexpr st_dtype kAllStDtypes[] = {st_dtype::f64, st_dtype::f32, st_dtype::f16, st_dtype::bf16,
                                            st_dtype::i64, st_dtype::i32, st_dtype::i16, st_dtype::i8,
                                            st_dtype::u64, st_dtype::u32, st_dtype::u16, st_dtype::u8,
                                            st_dtype::boolean};

/// Size of one element in bytes.
/// \code static_assert(ghnq::io::st_dtype_size(ghnq::io::st_dtype::bf16) == 2); \endcode
constexpr std::size_t st_dtype_size(st_dtype d) noexcept {
  switch (d) {
    case st_dtype::f64:
    case st_dtype::i64:
    case st_dtype::u64:
      return 8;
    case st_dtype::f32:
    case st_dtype::i32:
    case st_dtype::u32:
      return 4;
    case st_dtype::f16:
    case st_dtype::bf16:
    case st_dtype::i16:
    case st_dtype::u16:
      return 2;
    case st_dtype::i8:
    case st_dtype::u8:
    case st_dtype::boolean:
      return 1;
  }
  return 0;
}

/// The name of a dtype in the file ("F32", "I8", "BOOL", ...).
constexpr const char* st_dtype_name(st_dtype d) noexcept {
  switch (d) {
    case st_dtype::f64: return "F64";
    case st_dtype::f32: return "F32";
    case st_dtype::f16: return "F16";
    case st_dtype::bf16: return "BF16";
    case st_dtype::i64: return "I64";
    case st_dtype::i32: return "I32";
    case st_dtype::i16: return "I16";
    case st_dtype::i8: return "I8";
    case st_dtype::u64: return "U64";
    case st_dtype::u32: return "U32";
    case st_dtype::u16: return "U16";
    case st_dtype::u8: return "U8";
    case st_dtype::boolean: return "BOOL";
  }
  return "?";
}

/// Parses a dtype name (exact, case-sensitive); returns false (and leaves `out`) when unknown.
/// \code ghnq::io::st_dtype d; bool ok = ghnq::io::parse_st_dtype("I32", d);  // ok, d == st_dtype::i32 \endcode
inline bool parse_st_dtype(const std::string& name, st_dtype& out) noexcept {
  for (st_dtype d : kAllStDtypes)
    if (name == st_dtype_name(d)) {
      out = d;
      return true;
    }
  return false;
}

/// Trait: the dtype stored for element type T. Defined for float (F32), double (F64),
/// std::int8/16/32/64_t (I8..I64), std::uint8/16/32/64_t (U8..U64) and bool (BOOL).
/// \tparam T element type of a ghnq::tensor.
template <class T>
struct st_dtype_of {
  static_assert(detail::dependent_false<T>,
                "ghnq: no safetensors dtype for this element type (use float, double, std::int8/16/32/64_t, "
                "std::uint8/16/32/64_t or bool)");
};
template <> struct st_dtype_of<float> { static constexpr st_dtype value = st_dtype::f32; };
template <> struct st_dtype_of<double> { static constexpr st_dtype value = st_dtype::f64; };
template <> struct st_dtype_of<std::int8_t> { static constexpr st_dtype value = st_dtype::i8; };
template <> struct st_dtype_of<std::int16_t> { static constexpr st_dtype value = st_dtype::i16; };
template <> struct st_dtype_of<std::int32_t> { static constexpr st_dtype value = st_dtype::i32; };
template <> struct st_dtype_of<std::int64_t> { static constexpr st_dtype value = st_dtype::i64; };
template <> struct st_dtype_of<std::uint8_t> { static constexpr st_dtype value = st_dtype::u8; };
template <> struct st_dtype_of<std::uint16_t> { static constexpr st_dtype value = st_dtype::u16; };
template <> struct st_dtype_of<std::uint32_t> { static constexpr st_dtype value = st_dtype::u32; };
template <> struct st_dtype_of<std::uint64_t> { static constexpr st_dtype value = st_dtype::u64; };
template <> struct st_dtype_of<bool> { static constexpr st_dtype value = st_dtype::boolean; };
template <class T>
inline constexpr st_dtype st_dtype_of_v = st_dtype_of<T>::value;

static_assert(sizeof(float) == 4 && std::numeric_limits<float>::is_iec559, "ghnq: safetensors needs IEEE binary32 float");
static_assert(sizeof(double) == 8 && std::numeric_limits<double>::is_iec559, "ghnq: safetensors needs IEEE binary64 double");
static_assert(sizeof(bool) == 1, "ghnq: safetensors BOOL needs a one-byte bool");

// ---- records -----------------------------------------------------------------------------------

/// One tensor as raw bytes: `bytes` holds `numel(shape) * st_dtype_size(dtype)` bytes in file
/// order (little-endian elements, row-major). The shape may have any rank (ghnq tensors: <= 6).
struct st_tensor {
  std::string name;
  st_dtype dtype = st_dtype::f32;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> bytes;
};

/// Header entry of a tensor in a loaded file: dtype, shape and its byte range [begin, end) in the
/// data buffer (after the header).
struct st_info {
  st_dtype dtype = st_dtype::f32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;

  /// Number of elements (1 for a 0-d scalar, 0 when an extent is 0).
  std::int64_t numel() const noexcept {
    std::int64_t n = 1;
    for (auto e : shape) n *= e;  // validated at load: cannot overflow
    return n;
  }
  /// Number of bytes in the buffer (`end - begin`).
  std::uint64_t nbytes() const noexcept { return end - begin; }
};

namespace detail {

/// True on little-endian hosts (the file order).
constexpr bool st_host_little_endian() noexcept {
#if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  return false;
#else
  return true;
#endif
}

/// Reverses the bytes of each `elem`-byte element of p[0, nbytes) (little <-> big endian).
inline void st_swap_elements(std::uint8_t* p, std::size_t nbytes, std::size_t elem) noexcept {
  if (elem <= 1) return;
  for (std::size_t i = 0; i + elem <= nbytes; i += elem) std::reverse(p + i, p + i + elem);
}

/// Host order <-> file order (an involution; a no-op on little-endian hosts).
inline void st_host_to_file_order(std::uint8_t* p, std::size_t nbytes, st_dtype d) noexcept {
  if constexpr (!st_host_little_endian()) st_swap_elements(p, nbytes, st_dtype_size(d));
  (void)p;
  (void)nbytes;
  (void)d;
}

inline void st_put_u64_le(std::uint8_t* p, std::uint64_t v) noexcept {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
inline std::uint64_t st_get_u64_le(const std::uint8_t* p) noexcept {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}

/// numel(shape) * st_dtype_size(d) in `out`; false when an extent is negative or it overflows 64 bits.
inline bool st_checked_nbytes(const std::vector<std::int64_t>& shape, st_dtype d, std::uint64_t& out) noexcept {
  std::uint64_t n = 1;
  for (auto e : shape) {
    if (e < 0 || __builtin_mul_overflow(n, static_cast<std::uint64_t>(e), &n)) return false;
  }
  if (n > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return false;
  return !__builtin_mul_overflow(n, static_cast<std::uint64_t>(st_dtype_size(d)), &out);
}

inline std::string st_shape_string(const std::vector<std::int64_t>& s) {
  std::string r = "[";
  for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

inline std::string st_errno_text(int err) { return std::error_code(err, std::generic_category()).message(); }

/// A JSON value for an error message, cut to about 80 characters.
inline std::string st_brief(const nlohmann::ordered_json& v) {
  std::string s = v.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

/// True when `s` is valid UTF-8 (what the JSON header requires).
inline bool st_valid_utf8(const std::string& s) {
  try {
    (void)nlohmann::ordered_json(s).dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::strict);
    return true;
  } catch (const nlohmann::ordered_json::exception&) {
    return false;
  }
}

/// Next value of a process-wide counter (unique temporary names).
inline unsigned long st_next_counter() noexcept {
  static std::atomic<unsigned long> counter{0};
  return counter.fetch_add(1, std::memory_order_relaxed);
}

/// Writes all of [p, p + n) to fd; false (errno set) on failure.
inline bool st_write_all(int fd, const void* p, std::size_t n) noexcept {
  const auto* c = static_cast<const std::uint8_t*>(p);
  while (n > 0) {
    const std::size_t chunk = std::min<std::size_t>(n, std::size_t(1) << 30);
    const ssize_t w = ::write(fd, c, chunk);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (w == 0) {
      errno = EIO;
      return false;
    }
    c += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

/// Reads a whole file; io_error naming it when it cannot be opened or read.
inline std::vector<std::uint8_t> st_read_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw io_error(path, "cannot open for reading: " + st_errno_text(errno));
  struct closer {
    int fd;
    ~closer() { ::close(fd); }
  } guard{fd};
  struct stat st {};
  std::vector<std::uint8_t> buf;
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0)
    buf.reserve(static_cast<std::size_t>(st.st_size));
  constexpr std::size_t kChunk = std::size_t(1) << 20;
  for (;;) {
    const std::size_t old = buf.size();
    buf.resize(old + kChunk);
    const ssize_t r = ::read(fd, buf.data() + old, kChunk);
    if (r < 0) {
      const int err = errno;
      buf.resize(old);
      if (err == EINTR) continue;
      throw io_error(path, "read failed: " + st_errno_text(err));
    }
    buf.resize(old + static_cast<std::size_t>(r));
    if (r == 0) break;
  }
  return buf;
}

}  // namespace detail

// ---- writer ------------------------------------------------------------------------------------

/// Collects tensors and metadata, then writes one safetensors file.
///
/// Contract: names are unique, non-empty, valid UTF-8 and not "__metadata__" (value_error
/// otherwise); tensors are laid out in the order added; metadata keys are written sorted.
/// The writer copies the data at `add` time, so later changes to a tensor do not affect the file.
/// \code
/// ghnq::io::safetensors_writer w;
/// w.add("conv1.weight", q_weight);                                   // tensor<std::int8_t>
/// w.add_raw("conv2.weight_int4", ghnq::io::st_dtype::u8, {64, 288}, packed.data(), packed.size());
/// w.add("conv1.bias", q_bias);                                       // tensor<std::int32_t>
/// w.set_metadata("format", "ghnq.int8");
/// w.save("net_int8.safetensors");
/// \endcode
class safetensors_writer {
 public:
  /// Adds a CPU tensor (any strides; the logical row-major values are written) with the dtype
  /// `st_dtype_of_v<T>`. Throws value_error on an undefined tensor or a bad / duplicate name.
  template <class T>
  void add(const std::string& name, const tensor<T, backend::cpu_t>& t) {
    GHNQ_CHECK(t.defined(), value_error, "safetensors_writer: tensor '", name, "' is undefined");
    check_name(name);
    auto c = t.contiguous();
    st_tensor rec;
    rec.name = name;
    rec.dtype = st_dtype_of_v<T>;
    rec.shape = c.shape().to_vector();
    const std::size_t n = static_cast<std::size_t>(c.numel()) * sizeof(T);
    rec.bytes.resize(n);
    if (n) std::memcpy(rec.bytes.data(), c.data(), n);
    detail::st_host_to_file_order(rec.bytes.data(), n, rec.dtype);
    push(std::move(rec));
  }

  /// Adds raw elements of any dtype (F16, BF16, packed int4 as U8, ...): `data` holds `nbytes`
  /// bytes of host-order elements, row-major; `nbytes` must equal numel(shape) * st_dtype_size(dtype)
  /// (value_error otherwise). Extents must be >= 0; any rank.
  void add_raw(const std::string& name, st_dtype dtype, const std::vector<std::int64_t>& shape, const void* data,
               std::size_t nbytes) {
    check_name(name);
    std::uint64_t need = 0;
    GHNQ_CHECK(detail::st_checked_nbytes(shape, dtype, need), value_error, "safetensors_writer: tensor '", name,
               "': shape ", detail::st_shape_string(shape), " has a negative extent or too many elements");
    GHNQ_CHECK(need == nbytes, value_error, "safetensors_writer: tensor '", name, "': ", nbytes, " bytes given, ",
               st_dtype_name(dtype), " with shape ", detail::st_shape_string(shape), " needs ", need);
    GHNQ_CHECK(nbytes == 0 || data != nullptr, value_error, "safetensors_writer: tensor '", name, "': null data");
    st_tensor rec;
    rec.name = name;
    rec.dtype = dtype;
    rec.shape = shape;
    rec.bytes.resize(nbytes);
    if (nbytes) std::memcpy(rec.bytes.data(), data, nbytes);
    detail::st_host_to_file_order(rec.bytes.data(), nbytes, dtype);
    push(std::move(rec));
  }

  /// Adds a raw record whose bytes are already in file order (e.g. `safetensors_file::record`).
  /// Same checks as `add_raw`.
  void add(st_tensor rec) {
    check_name(rec.name);
    std::uint64_t need = 0;
    GHNQ_CHECK(detail::st_checked_nbytes(rec.shape, rec.dtype, need) && need == rec.bytes.size(), value_error,
               "safetensors_writer: tensor '", rec.name, "': ", rec.bytes.size(), " bytes do not fit ",
               st_dtype_name(rec.dtype), " with shape ", detail::st_shape_string(rec.shape));
    push(std::move(rec));
  }

  /// Sets (or replaces) a metadata entry; key and value must be valid UTF-8 (value_error).
  /// \code w.set_metadata("config", cfg.dump()); \endcode
  void set_metadata(const std::string& key, const std::string& value) {
    GHNQ_CHECK(detail::st_valid_utf8(key), value_error, "safetensors_writer: metadata key is not valid UTF-8");
    GHNQ_CHECK(detail::st_valid_utf8(value), value_error, "safetensors_writer: metadata value of '", key,
               "' is not valid UTF-8");
    meta_[key] = value;
  }

  std::size_t size() const noexcept { return records_.size(); }
  bool contains(const std::string& name) const { return names_.count(name) != 0; }
  const std::map<std::string, std::string>& metadata() const noexcept { return meta_; }
  const std::vector<st_tensor>& records() const noexcept { return records_; }

  /// The complete file contents (8-byte length, padded header, data buffer).
  std::vector<std::uint8_t> serialize() const {
    std::vector<std::uint8_t> out = header_bytes();
    for (const auto& r : records_) out.insert(out.end(), r.bytes.begin(), r.bytes.end());
    return out;
  }

  /// Writes the file atomically: the bytes go to a new temporary file `path + ".tmp.<pid>.<n>"`
  /// in the same directory, which is fsync'ed and then renamed over `path` (the directory is
  /// fsync'ed too, best effort). On any failure the temporary file is removed, `path` is left
  /// as it was, and io_error naming `path` (and the temporary file and the system error) is
  /// thrown. A symbolic link at `path` is replaced, not followed.
  /// \code w.save("checkpoints/ghn_epoch10.safetensors"); \endcode
  void save(const std::string& path) const {
    if (path.empty()) throw io_error(path, "empty output path");
    const std::vector<std::uint8_t> head = header_bytes();

    struct temp_file {
      std::string name;
      int fd = -1;
      bool committed = false;
      ~temp_file() {
        if (fd >= 0) ::close(fd);
        if (!committed && !name.empty()) ::unlink(name.c_str());
      }
    } tmp;
    int err = 0;
    std::string name;
    for (int attempt = 0; attempt < 100; ++attempt) {
      name = path + ".tmp." + std::to_string(static_cast<long>(::getpid())) + "." +
             std::to_string(detail::st_next_counter());
      const int fd = ::open(name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd >= 0) {
        tmp.name = name;
        tmp.fd = fd;
        break;
      }
      err = errno;
      if (err != EEXIST) break;
    }
    if (tmp.fd < 0)
      throw io_error(path, "cannot create temporary file '" + name + "': " + detail::st_errno_text(err));

    auto fail = [&](const char* what) {
      const int e = errno;
      throw io_error(path, std::string(what) + " temporary file '" + tmp.name + "': " + detail::st_errno_text(e));
    };
    if (!detail::st_write_all(tmp.fd, head.data(), head.size())) fail("cannot write");
    for (const auto& r : records_)
      if (!detail::st_write_all(tmp.fd, r.bytes.data(), r.bytes.size())) fail("cannot write");
    if (::fsync(tmp.fd) != 0) fail("cannot sync");
    const int fd = tmp.fd;
    tmp.fd = -1;
    if (::close(fd) != 0) fail("cannot close");
    if (::rename(tmp.name.c_str(), path.c_str()) != 0) {
      const int e = errno;
      throw io_error(path, "cannot rename temporary file '" + tmp.name + "' over it: " + detail::st_errno_text(e));
    }
    tmp.committed = true;
    // Make the rename durable (best effort: some file systems refuse fsync on directories).
    std::string dir = std::filesystem::path(path).parent_path().string();
    if (dir.empty()) dir = ".";
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      (void)::fsync(dfd);
      ::close(dfd);
    }
  }

 private:
  void check_name(const std::string& name) const {
    GHNQ_CHECK(!name.empty(), value_error, "safetensors_writer: empty tensor name");
    GHNQ_CHECK(name != "__metadata__", value_error,
               "safetensors_writer: '__metadata__' is reserved and cannot name a tensor");
    GHNQ_CHECK(detail::st_valid_utf8(name), value_error, "safetensors_writer: tensor name is not valid UTF-8");
    GHNQ_CHECK(!contains(name), value_error, "safetensors_writer: duplicate tensor name '", name, "'");
  }
  void push(st_tensor rec) {
    names_.insert(rec.name);
    records_.push_back(std::move(rec));
  }
  std::vector<std::uint8_t> header_bytes() const {
    using oj = nlohmann::ordered_json;
    oj h = oj::object();
    if (!meta_.empty()) {
      oj m = oj::object();
      for (const auto& kv : meta_) m[kv.first] = kv.second;
      h["__metadata__"] = std::move(m);
    }
    std::uint64_t off = 0;
    for (const auto& r : records_) {
      oj e = oj::object();
      e["dtype"] = st_dtype_name(r.dtype);
      oj s = oj::array();
      for (auto x : r.shape) s.push_back(x);
      e["shape"] = std::move(s);
      const std::uint64_t end = off + r.bytes.size();
      e["data_offsets"] = oj::array({off, end});
      h[r.name] = std::move(e);
      off = end;
    }
    std::string text = h.dump();
    while (text.size() % 8 != 0) text.push_back(' ');
    GHNQ_CHECK(text.size() <= kSafetensorsMaxHeaderBytes, value_error, "safetensors_writer: header of ",
               text.size(), " bytes exceeds the ", kSafetensorsMaxHeaderBytes, "-byte limit");
    std::vector<std::uint8_t> out(8 + text.size());
    detail::st_put_u64_le(out.data(), text.size());
    std::memcpy(out.data() + 8, text.data(), text.size());
    return out;
  }

  std::vector<st_tensor> records_;
  std::set<std::string> names_;
  std::map<std::string, std::string> meta_;
};

// ---- reader ------------------------------------------------------------------------------------

/// A loaded and fully validated safetensors file (the whole file is held in memory).
///
/// Contract of `load` / `from_bytes`: every malformed input throws ghnq::io_error whose message
/// starts with the file name and names the tensor or field at fault: a file shorter than 8
/// bytes; a header length past the end of the file or above kSafetensorsMaxHeaderBytes; a header
/// that is not valid UTF-8 JSON, not an object, nested too deeply, or has duplicate keys; an entry
/// that is not an object; a missing or unknown "dtype"; a "shape" that is not an array of
/// non-negative integers; "data_offsets" not [begin, end] with begin <= end <= buffer size;
/// `end - begin != numel * dtype size` (overflow-checked); tensors overlapping, gaps or trailing
/// bytes in the buffer; a "__metadata__" that is not an object of strings. Unknown fields of an
/// entry are ignored (like the reference implementation).
/// \code
/// auto f = ghnq::io::safetensors_file::load("net_int8.safetensors");
/// for (const auto& n : f.names()) std::cout << n << ' ' << ghnq::io::st_dtype_name(f.info(n).dtype) << '\n';
/// auto w = f.get<std::int8_t>("conv1.weight");
/// auto b = f.get<std::int32_t>("conv1.bias", ghnq::shape{64});
/// \endcode
class safetensors_file {
 public:
  safetensors_file() = default;

  /// Reads and validates `path` (io_error naming it on any problem).
  static safetensors_file load(const std::string& path) {
    return from_bytes(detail::st_read_file(path), path);
  }

  /// Validates in-memory file contents; `name` stands for the file in error messages.
  static safetensors_file from_bytes(std::vector<std::uint8_t> bytes, const std::string& name = "<memory>") {
    safetensors_file f;
    f.path_ = name;
    f.bytes_ = std::move(bytes);
    f.parse();
    return f;
  }

  /// The file name given to `load` (or `from_bytes`).
  const std::string& path() const noexcept { return path_; }
  /// Number of tensors.
  std::size_t size() const noexcept { return order_.size(); }
  /// Tensor names in file order (by data offset; ties between empty tensors in header order).
  const std::vector<std::string>& names() const noexcept { return order_; }
  bool contains(const std::string& name) const { return infos_.count(name) != 0; }
  /// Header entry of `name`; io_error naming the tensor and the file when there is none.
  const st_info& info(const std::string& name) const {
    auto it = infos_.find(name);
    if (it == infos_.end()) missing(name);
    return it->second;
  }

  /// All metadata entries ("__metadata__"; empty when the file has none).
  const std::map<std::string, std::string>& metadata() const noexcept { return meta_; }
  bool has_metadata(const std::string& key) const { return meta_.count(key) != 0; }
  /// One metadata value; io_error naming the key and the file when absent.
  const std::string& metadata(const std::string& key) const {
    auto it = meta_.find(key);
    if (it == meta_.end()) throw io_error(path_, "no metadata entry '" + key + "'");
    return it->second;
  }

  /// The `info(name).nbytes()` bytes of a tensor, in file order (little-endian).
  const std::uint8_t* raw_data(const std::string& name) const {
    return bytes_.data() + data_start_ + info(name).begin;
  }
  /// A copy of a tensor as a raw record (bytes in file order), e.g. to pass to a writer.
  st_tensor record(const std::string& name) const {
    const st_info& in = info(name);
    st_tensor r;
    r.name = name;
    r.dtype = in.dtype;
    r.shape = in.shape;
    const std::uint8_t* p = raw_data(name);
    r.bytes.assign(p, p + in.nbytes());
    return r;
  }

  /// The tensor `name` as a new CPU tensor. The stored dtype must be exactly `st_dtype_of_v<T>`
  /// (io_error naming the tensor, the dtype found and the dtype expected); the rank must be <= 6
  /// (shape_error); a BOOL tensor must hold only bytes 0 and 1 (io_error).
  /// \code auto w = f.get<float>("decoder.weight"); \endcode
  template <class T>
  tensor<T, backend::cpu_t> get(const std::string& name) const {
    constexpr st_dtype want = st_dtype_of_v<T>;
    const st_info& in = info(name);
    if (in.dtype != want)
      throw io_error(path_, "tensor '" + name + "' has dtype " + st_dtype_name(in.dtype) + ", expected " +
                                st_dtype_name(want));
    GHNQ_CHECK(static_cast<int>(in.shape.size()) <= ghnq::shape::kMaxRank, shape_error, path_, ": tensor '",
               name, "' has rank ", in.shape.size(), " (shape ", detail::st_shape_string(in.shape),
               "); ghnq tensors hold at most ", ghnq::shape::kMaxRank, " dimensions");
    const std::uint8_t* src = raw_data(name);
    const std::size_t n = static_cast<std::size_t>(in.nbytes());
    if constexpr (std::is_same_v<T, bool>) {
      for (std::size_t i = 0; i < n; ++i)
        if (src[i] > 1)
          throw io_error(path_, "tensor '" + name + "': BOOL element " + std::to_string(i) + " is " +
                                    std::to_string(src[i]) + ", neither 0 nor 1");
    }
    tensor<T, backend::cpu_t> t(ghnq::shape(in.shape.begin(), in.shape.end()));
    if (n) {
      std::memcpy(static_cast<void*>(t.data()), src, n);
      detail::st_host_to_file_order(reinterpret_cast<std::uint8_t*>(t.data()), n, want);
    }
    return t;
  }

  /// As `get<T>(name)`, and the stored shape must equal `expected` (shape_error naming the file,
  /// the tensor and both shapes), e.g. when loading a checkpoint into an existing model.
  /// \code auto b = f.get<float>("decoder.bias", model_bias.shape()); \endcode
  template <class T>
  tensor<T, backend::cpu_t> get(const std::string& name, const ghnq::shape& expected) const {
    const st_info& in = info(name);
    const bool same = static_cast<int>(in.shape.size()) == expected.rank() &&
                      std::equal(in.shape.begin(), in.shape.end(), expected.begin());
    GHNQ_CHECK(same, shape_error, path_, ": tensor '", name, "' has shape ", detail::st_shape_string(in.shape),
               ", expected ", expected);
    return get<T>(name);
  }

 private:
  [[noreturn]] void missing(const std::string& name) const {
    std::string list;
    const std::size_t show = std::min<std::size_t>(order_.size(), 8);
    for (std::size_t i = 0; i < show; ++i) list += (i ? ", " : "") + ("'" + order_[i] + "'");
    if (order_.size() > show) list += ", ...";
    throw io_error(path_, "no tensor named '" + name + "' (the file holds " + std::to_string(order_.size()) +
                              " tensor" + (order_.size() == 1 ? "" : "s") + (list.empty() ? "" : ": " + list) +
                              ")");
  }

  [[noreturn]] void fail(const std::string& what) const { throw io_error(path_, what); }

  /// Reads a non-negative integer JSON value into `out`; false when it is not one (or > INT64_MAX).
  static bool as_extent(const nlohmann::ordered_json& v, std::uint64_t& out) {
    if (v.is_number_unsigned()) {
      out = v.get<std::uint64_t>();
    } else if (v.is_number_integer()) {
      const auto s = v.get<std::int64_t>();
      if (s < 0) return false;
      out = static_cast<std::uint64_t>(s);
    } else {
      return false;
    }
    return out <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  }

  void parse() {
    using oj = nlohmann::ordered_json;
    const std::size_t size = bytes_.size();
    if (size < 8)
      fail("file has " + std::to_string(size) + " bytes, less than the 8-byte header length (truncated?)");
    const std::uint64_t n = detail::st_get_u64_le(bytes_.data());
    if (n > kSafetensorsMaxHeaderBytes)
      fail("header length " + std::to_string(n) + " exceeds the " + std::to_string(kSafetensorsMaxHeaderBytes) +
           "-byte limit (not a safetensors file, or a corrupt header length)");
    if (n > size - 8)
      fail("header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(size) +
           " bytes; truncated?)");
    data_start_ = 8 + static_cast<std::size_t>(n);
    const std::uint64_t buffer = size - data_start_;

    // Parse with checks on nesting depth and duplicate keys (which plain parsing would silently merge).
    std::vector<std::set<std::string>> keys;
    std::string entry;  // current top-level key
    auto cb = [&](int depth, oj::parse_event_t ev, oj& parsed) -> bool {
      switch (ev) {
        case oj::parse_event_t::object_start:
        case oj::parse_event_t::array_start:
          if (depth >= 16) fail("header JSON is nested too deeply to be a safetensors header");
          if (ev == oj::parse_event_t::object_start) keys.emplace_back();
          break;
        case oj::parse_event_t::object_end:
          if (!keys.empty()) keys.pop_back();
          break;
        case oj::parse_event_t::key: {
          const std::string k = parsed.get<std::string>();
          if (depth == 1) entry = k;
          if (!keys.empty() && !keys.back().insert(k).second) {
            if (depth == 1) fail("header has a duplicate entry '" + k + "'");
            fail("header entry '" + entry + "' has a duplicate key '" + k + "'");
          }
          break;
        }
        default:
          break;
      }
      return true;
    };
    // nlohmann's lexer takes a NUL byte for the end of the input, which would hide what follows.
    const auto nul = std::find(bytes_.begin() + 8, bytes_.begin() + static_cast<std::ptrdiff_t>(data_start_), 0);
    if (nul != bytes_.begin() + static_cast<std::ptrdiff_t>(data_start_))
      fail("header is not valid JSON: NUL byte at header offset " + std::to_string(nul - bytes_.begin() - 8));
    oj header;
    try {
      header = oj::parse(bytes_.begin() + 8, bytes_.begin() + static_cast<std::ptrdiff_t>(data_start_), cb);
    } catch (const oj::exception& e) {
      fail(std::string("header is not valid JSON: ") + e.what());
    }
    if (!header.is_object()) fail("header is not a JSON object (got " + detail::st_brief(header) + ")");

    struct span {
      std::uint64_t begin, end;
      std::size_t index;
      std::string name;
    };
    std::vector<span> spans;
    for (auto it = header.begin(); it != header.end(); ++it) {
      const std::string& name = it.key();
      const oj& v = it.value();
      if (name == "__metadata__") {
        if (!v.is_object()) fail("__metadata__ is not a JSON object (got " + detail::st_brief(v) + ")");
        for (auto m = v.begin(); m != v.end(); ++m) {
          if (!m.value().is_string())
            fail("__metadata__ entry '" + m.key() + "' is not a string (got " + detail::st_brief(m.value()) + ")");
          meta_[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      const std::string where = "tensor '" + name + "'";
      if (!v.is_object()) fail(where + ": header entry is not a JSON object (got " + detail::st_brief(v) + ")");
      st_info in;

      auto f = v.find("dtype");
      if (f == v.end()) fail(where + ": missing field 'dtype'");
      if (!f->is_string() || !parse_st_dtype(f->get<std::string>(), in.dtype))
        fail(where + ": field 'dtype' is " + detail::st_brief(*f) +
             ", not one of F64 F32 F16 BF16 I64 I32 I16 I8 U64 U32 U16 U8 BOOL");

      f = v.find("shape");
      if (f == v.end()) fail(where + ": missing field 'shape'");
      if (!f->is_array()) fail(where + ": field 'shape' is not an array (got " + detail::st_brief(*f) + ")");
      for (const auto& e : *f) {
        std::uint64_t x = 0;
        if (!as_extent(e, x))
          fail(where + ": field 'shape' " + detail::st_brief(*f) + " has an entry " + detail::st_brief(e) +
               " that is not a non-negative 64-bit integer");
        in.shape.push_back(static_cast<std::int64_t>(x));
      }

      f = v.find("data_offsets");
      if (f == v.end()) fail(where + ": missing field 'data_offsets'");
      std::uint64_t b = 0, e = 0;
      if (!f->is_array() || f->size() != 2 || !as_extent((*f)[0], b) || !as_extent((*f)[1], e))
        fail(where + ": field 'data_offsets' must be [begin, end] with non-negative integers (got " +
             detail::st_brief(*f) + ")");
      if (b > e) fail(where + ": field 'data_offsets' " + detail::st_brief(*f) + " has begin > end");
      if (e > buffer)
        fail(where + ": field 'data_offsets' " + detail::st_brief(*f) + " runs past the end of the " +
             std::to_string(buffer) + "-byte data buffer (truncated?)");
      std::uint64_t need = 0;
      if (!detail::st_checked_nbytes(in.shape, in.dtype, need))
        fail(where + ": shape " + detail::st_shape_string(in.shape) + " of dtype " + st_dtype_name(in.dtype) +
             " has a byte size that overflows 64 bits");
      if (e - b != need)
        fail(where + ": field 'data_offsets' " + detail::st_brief(*f) + " spans " + std::to_string(e - b) +
             " bytes, but dtype " + st_dtype_name(in.dtype) + " with shape " + detail::st_shape_string(in.shape) +
             " needs " + std::to_string(need));
      in.begin = b;
      in.end = e;
      spans.push_back({b, e, spans.size(), name});
      infos_.emplace(name, std::move(in));
    }

    // The tensors must tile the buffer exactly.
    std::sort(spans.begin(), spans.end(), [](const span& a, const span& c) {
      if (a.begin != c.begin) return a.begin < c.begin;
      if (a.end != c.end) return a.end < c.end;
      return a.index < c.index;
    });
    std::uint64_t cursor = 0;
    const std::string* prev = nullptr;
    for (const auto& s : spans) {
      if (s.begin < cursor)
        fail("tensors '" + *prev + "' and '" + s.name + "' overlap in the data buffer (byte " +
             std::to_string(s.begin) + " < " + std::to_string(cursor) + ")");
      if (s.begin > cursor)
        fail("data buffer has unused bytes [" + std::to_string(cursor) + ", " + std::to_string(s.begin) +
             ") before tensor '" + s.name + "'");
      cursor = s.end;
      prev = &s.name;
      order_.push_back(s.name);
    }
    if (cursor != buffer)
      fail("data buffer has " + std::to_string(buffer - cursor) + " unused bytes after the last tensor (" +
           std::to_string(buffer) + " bytes, tensors end at " + std::to_string(cursor) + ")");
  }

  std::string path_;
  std::vector<std::uint8_t> bytes_;
  std::size_t data_start_ = 0;
  std::map<std::string, st_info> infos_;
  std::vector<std::string> order_;
  std::map<std::string, std::string> meta_;
};

}  // namespace ghnq::io
