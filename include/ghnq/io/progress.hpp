/// \file
/// \brief Progress display for long runs: rate and ETA, redrawn in place on a terminal, periodic
/// plain lines otherwise (logs, CI).
#pragma once
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>

namespace ghnq::io {

/// \code
/// ghnq::io::progress bar("epoch 1", n_batches, "img", batch_size);
/// for (...) { ...; bar.update(i + 1, "loss 0.41"); }
/// bar.finish();
/// \endcode
class progress {
 public:
  /// \param label      prefix of every line.
  /// \param total      number of steps.
  /// \param unit       what the rate counts ("img", "arch", ...).
  /// \param per_step   units per step (e.g. the batch size), for the rate.
  /// \param stream     output (stderr by default); in-place redraw only when it is a terminal.
  progress(std::string label, std::int64_t total, std::string unit = "it", double per_step = 1.0,
           std::FILE* stream = stderr)
      : label_(std::move(label)), unit_(std::move(unit)), total_(total), per_step_(per_step), out_(stream),
        tty_(::isatty(::fileno(stream)) != 0), start_(clock::now()), last_(start_) {}

  /// Report that `done` steps are complete; `extra` is appended (e.g. the running loss).
  /// Redraws at most every 0.2 s on a terminal and every 10 s otherwise; the last step is
  /// left to finish().
  void update(std::int64_t done, const std::string& extra = {}) {
    const auto now = clock::now();
    const double since_draw = seconds(last_, now);
    if (done >= total_ || since_draw < (tty_ ? 0.2 : 10.0)) return;
    last_ = now;
    draw(done, extra, now);
  }
  /// Print the final line (always) and end it with a newline.
  void finish(const std::string& extra = {}) {
    draw(total_, extra, clock::now());
    std::fputc('\n', out_);
    std::fflush(out_);
    finished_ = true;
  }
  ~progress() {
    if (!finished_ && tty_) std::fputc('\n', out_);
  }
  /// Seconds since construction.
  double elapsed() const { return seconds(start_, clock::now()); }

 private:
  using clock = std::chrono::steady_clock;
  static double seconds(clock::time_point a, clock::time_point b) {
    return std::chrono::duration<double>(b - a).count();
  }
  static std::string hms(double s) {
    if (!(s >= 0) || s > 1e7) return "--:--";
    const auto t = static_cast<long>(s + 0.5);
    char buf[32];
    if (t >= 3600) std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else std::snprintf(buf, sizeof buf, "%02ld:%02ld", t / 60, t % 60);
    return buf;
  }
  void draw(std::int64_t done, const std::string& extra, clock::time_point now) {
    const double el = seconds(start_, now);
    const double rate = el > 0 ? static_cast<double>(done) * per_step_ / el : 0.0;
    const double eta = done > 0 ? el * static_cast<double>(total_ - done) / static_cast<double>(done) : -1;
    const double pct = total_ > 0 ? 100.0 * static_cast<double>(done) / static_cast<double>(total_) : 100.0;
    std::fprintf(out_, "%s%s %5.1f%% %lld/%lld | %.1f %s/s | elapsed %s | ETA %s%s%s%s", tty_ ? "\r" : "",
                 label_.c_str(), pct, static_cast<long long>(done), static_cast<long long>(total_), rate,
                 unit_.c_str(), hms(el).c_str(), hms(eta).c_str(), extra.empty() ? "" : " | ", extra.c_str(),
                 tty_ ? "\033[K" : "\n");
    std::fflush(out_);
  }

  std::string label_, unit_;
  std::int64_t total_;
  double per_step_;
  std::FILE* out_;
  bool tty_;
  bool finished_ = false;
  clock::time_point start_, last_;
};

}  // namespace ghnq::io
