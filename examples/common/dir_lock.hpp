// An exclusive lock on an output directory, so that two ghnq processes never write (and resume)
// the same run at once: a second one fails at once with an io_error naming the directory instead
// of interleaving checkpoints and logs. The lock (flock on DIR/.lock) is released when the
// object is destroyed or the process ends, however it ends; the empty file stays.
#pragma once
#include <ghnq/core/error.hpp>

#include <cerrno>
#include <cstring>
#include <string>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>
#endif

namespace cli {

class dir_lock {
 public:
  explicit dir_lock(const std::string& dir) : path_(dir + "/.lock") {
#if defined(__unix__) || defined(__APPLE__)
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw ghnq::io_error(path_, std::string("cannot create the lock file: ") + std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int e = errno;
      ::close(fd_);
      fd_ = -1;
      if (e == EWOULDBLOCK)
        throw ghnq::io_error(dir, "another ghnq process is writing to this directory (it holds " + path_ + ")");
      throw ghnq::io_error(path_, std::string("cannot lock: ") + std::strerror(e));
    }
#endif
  }
  ~dir_lock() {
#if defined(__unix__) || defined(__APPLE__)
    if (fd_ >= 0) ::close(fd_);
#endif
  }
  dir_lock(const dir_lock&) = delete;
  dir_lock& operator=(const dir_lock&) = delete;

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace cli
