/// \file
/// \brief CPU parallel loops over oneTBB, and a scoped thread limit.
///
/// Eigen is never multi-threaded inside these loops (ghnq does not enable Eigen's OpenMP), so
/// there is exactly one thread pool: oneTBB's.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>

#include <tbb/blocked_range.h>
#include <tbb/global_control.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

namespace ghnq {

/// Run f(begin, end) over sub-ranges of [first, last) in parallel. oneTBB splits a range while
/// it is larger than `grain`, so sub-ranges hold between about grain/2 and grain indices; a
/// range of at most `grain` indices runs inline on the caller.
template <class F>
void parallel_for(std::int64_t first, std::int64_t last, std::int64_t grain, F&& f) {
  if (last <= first) return;
  if (grain < 1) grain = 1;
  if (last - first <= grain) {
    f(first, last);
    return;
  }
  tbb::parallel_for(tbb::blocked_range<std::int64_t>(first, last, static_cast<std::size_t>(grain)),
                    [&](const tbb::blocked_range<std::int64_t>& r) { f(r.begin(), r.end()); });
}

/// Number of worker threads ghnq's parallel loops may use right now: the current arena's
/// concurrency, capped by an active thread_limit (tbb::global_control).
inline int max_threads() {
  const auto arena = static_cast<std::size_t>(tbb::this_task_arena::max_concurrency());
  const auto cap = tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism);
  return static_cast<int>(std::min(arena, cap));
}

/// Limits oneTBB (and so ghnq) to n threads while the object lives.
/// \code ghnq::thread_limit one(1);  // single-threaded region \endcode
class thread_limit {
 public:
  explicit thread_limit(int n)
      : ctl_(std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism,
                                                   static_cast<std::size_t>(n < 1 ? 1 : n))) {}

 private:
  std::unique_ptr<tbb::global_control> ctl_;
};

}  // namespace ghnq
