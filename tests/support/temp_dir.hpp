/// \file
/// \brief A scratch directory for one test. ctest runs the test cases of one executable as parallel
/// processes, so the name carries the process id and a per-process counter; the directory and its
/// contents are removed on destruction.
#pragma once
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <string>
#include <system_error>

namespace ghnq::test {

struct temp_dir {
  std::filesystem::path path;

  explicit temp_dir(const std::string& prefix = "ghnq_test") {
    static std::atomic<int> counter{0};
    path = std::filesystem::temp_directory_path() /
           (prefix + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  /// Path of `name` inside the directory.
  std::string file(const std::string& name) const { return (path / name).string(); }
  std::string operator/(const std::string& name) const { return file(name); }
};

}  // namespace ghnq::test
