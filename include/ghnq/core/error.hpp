/// \file
/// \brief Exception hierarchy of ghnq and the precondition macros GHNQ_CHECK / GHNQ_ASSERT.
///
/// Every error a user can trigger through input (a file, a shape, a command-line value) is a
/// subclass of ghnq::error whose message names the file, field or shape at fault.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace ghnq {

/// Base of all ghnq exceptions.
class error : public std::runtime_error {
 public:
  explicit error(const std::string& what) : std::runtime_error(what) {}
};

/// A tensor shape does not fit an operation (names the op and both shapes).
class shape_error : public error {
 public:
  using error::error;
};

/// A value is outside its documented range (names the parameter).
class value_error : public error {
 public:
  using error::error;
};

/// A computation met NaN or infinite values where it needs finite ones (e.g. a quantizer's range
/// observed on non-finite activations). A value_error, so that callers that catch value_error keep
/// working; evaluation and training catch it to score or skip the network concerned.
class numeric_error : public value_error {
 public:
  using value_error::value_error;
};

/// A file could not be read or is malformed (names the file and what is wrong).
class io_error : public error {
 public:
  io_error(const std::string& file, const std::string& what)
      : error(file + ": " + what), file_(file) {}
  const std::string& file() const noexcept { return file_; }

 private:
  std::string file_;
};

/// A backend or feature was requested that this build does not provide.
class unsupported_error : public error {
 public:
  using error::error;
};

/// A backend runtime (e.g. CUDA) reported a failure.
class backend_error : public error {
 public:
  using error::error;
};

namespace detail {
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace ghnq

/// Always-on precondition check: throws `ExcType` with the streamed message when `cond` fails.
/// \code GHNQ_CHECK(x.rank() == 4, ghnq::shape_error, "conv2d: input must be NCHW, got ", x.shape()); \endcode
#define GHNQ_CHECK(cond, ExcType, ...)                       \
  do {                                                       \
    if (!(cond)) throw ExcType(::ghnq::detail::concat(__VA_ARGS__)); \
  } while (0)

/// Debug-only internal invariant check (compiled away with NDEBUG).
#ifdef NDEBUG
#define GHNQ_ASSERT(cond) ((void)0)
#else
#include <cassert>
#define GHNQ_ASSERT(cond) assert(cond)
#endif
