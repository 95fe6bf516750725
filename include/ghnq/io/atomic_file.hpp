/// \file
/// \brief Atomic replacement of a small file: `io::write_file_atomic(path, text)` writes a unique
/// temporary file in the same directory, flushes it to disk, and renames it over `path`, so a
/// reader (or a crash) sees either the old file or the complete new one, never a prefix.
///
/// Used for every text artefact ghnq writes (architecture JSON, evaluation CSVs, study tables,
/// plots); safetensors checkpoints use the same protocol in io/safetensors.hpp, streaming.
/// \code
/// ghnq::io::write_file_atomic("run/eval.csv", "name,top1\nresnet20,91.2\n");
/// \endcode
#pragma once
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "ghnq/core/error.hpp"

namespace ghnq::io {

/// Writes `data` to `path` atomically (temporary file `path.tmp.XXXXXX`, fsync, rename, best-effort
/// fsync of the directory). On failure the temporary file is removed, `path` keeps its previous
/// content, and io_error names `path` and the failing step with the system's reason.
inline void write_file_atomic(const std::string& path, std::string_view data) {
  if (path.empty()) throw io_error("<empty path>", "write_file_atomic: empty file name");
  std::vector<char> name(path.begin(), path.end());
  const char suffix[] = ".tmp.XXXXXX";
  name.insert(name.end(), suffix, suffix + sizeof suffix);  // includes the terminating NUL
  const int fd = ::mkstemp(name.data());
  if (fd < 0) throw io_error(path, std::string("cannot create temporary file beside it: ") + std::strerror(errno));
  const std::string tmp(name.data());
  auto fail = [&](const char* what) {
    const int e = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    throw io_error(path, std::string(what) + " temporary file '" + tmp + "': " + std::strerror(e));
  };
  std::size_t done = 0;
  while (done < data.size()) {
    const ::ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("cannot write");
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fchmod(fd, 0644) != 0) fail("cannot set the permissions of");
  if (::fsync(fd) != 0) fail("cannot sync");
  if (::close(fd) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    throw io_error(path, std::string("cannot close temporary file '") + tmp + "': " + std::strerror(e));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    throw io_error(path, std::string("cannot rename temporary file '") + tmp + "' over it: " + std::strerror(e));
  }
  // Make the rename durable (best effort: some file systems refuse fsync on directories).
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace ghnq::io
