// Command-line options of the ghnq examples and the ghnq driver: --key value pairs and --flag
// switches, with clear errors (a ghnq::value_error naming the option) for unknown options,
// missing or malformed values.
#pragma once
#include <ghnq/core/error.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace cli {

inline std::vector<std::string> split_list(const std::string& s);

/// Minimal option parser: --key value pairs and --flag switches; `repeat` names options that may
/// be given several times (each value may also be a comma list; `list(k)` has them all, in order).
/// A single-valued option given twice is an error; `allow` rejects unknown options.
class args {
 public:
  args(int argc, char** argv, std::vector<std::string> flags, std::string usage,
       std::vector<std::string> repeat = {})
      : usage_(std::move(usage)) {
    for (int i = 0; i < argc; ++i) {
      const std::string a = argv[i];
      if (a.rfind("--", 0) != 0) throw ghnq::value_error("unexpected argument '" + a + "'\n" + usage_);
      if (a == "--help" || a == "-h") {
        std::fputs(usage_.c_str(), stdout);
        std::exit(0);
      }
      if (std::find(flags.begin(), flags.end(), a) != flags.end()) {
        kv_[a] = "1";
        continue;
      }
      if (i + 1 >= argc) throw ghnq::value_error("missing value after " + a + "\n" + usage_);
      const std::string v = argv[++i];
      if (std::find(repeat.begin(), repeat.end(), a) != repeat.end()) {
        for (auto& t : split_list(v)) lists_[a].push_back(std::move(t));
        kv_[a] = v;
        continue;
      }
      if (kv_.count(a) != 0) throw ghnq::value_error(a + " given twice\n" + usage_);
      kv_[a] = v;
    }
  }
  void allow(const std::vector<std::string>& keys) const {
    for (const auto& [k, v] : kv_)
      if (std::find(keys.begin(), keys.end(), k) == keys.end())
        throw ghnq::value_error("unknown option " + k + "\n" + usage_);
  }
  bool has(const std::string& k) const { return kv_.count(k) != 0; }
  /// Every value of a repeatable option (empty when absent).
  std::vector<std::string> list(const std::string& k) const {
    auto it = lists_.find(k);
    return it == lists_.end() ? std::vector<std::string>{} : it->second;
  }
  const std::string& usage() const { return usage_; }
  std::string str(const std::string& k, const std::string& def = "") const {
    auto it = kv_.find(k);
    return it == kv_.end() ? def : it->second;
  }
  std::string required(const std::string& k) const {
    if (!has(k)) throw ghnq::value_error("missing required option " + k + "\n" + usage_);
    return str(k);
  }
  long long integer(const std::string& k, long long def) const {
    if (!has(k)) return def;
    try {
      std::size_t n = 0;
      const long long v = std::stoll(str(k), &n);
      if (n == str(k).size()) return v;
    } catch (const std::exception&) {
    }
    throw ghnq::value_error(k + ": expected an integer, got '" + str(k) + "'");
  }
  double real(const std::string& k, double def) const {
    if (!has(k)) return def;
    try {
      std::size_t n = 0;
      const double v = std::stod(str(k), &n);
      if (n == str(k).size()) return v;
    } catch (const std::exception&) {
    }
    throw ghnq::value_error(k + ": expected a number, got '" + str(k) + "'");
  }

 private:
  std::map<std::string, std::string> kv_;
  std::map<std::string, std::vector<std::string>> lists_;
  std::string usage_;
};

inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string t;
  while (std::getline(ss, t, ','))
    if (!t.empty()) out.push_back(t);
  return out;
}
inline std::vector<int> parse_int_list(const std::string& s) {
  std::vector<int> out;
  for (const auto& t : split_list(s)) {
    try {
      out.push_back(std::stoi(t));
    } catch (const std::exception&) {
      throw ghnq::value_error("expected a comma-separated list of integers, got '" + s + "'");
    }
  }
  if (out.empty()) throw ghnq::value_error("expected a comma-separated list of integers, got '" + s + "'");
  return out;
}

}  // namespace cli
