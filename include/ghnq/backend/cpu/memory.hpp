/// \file
/// \brief CPU backend memory: 64-byte aligned host allocations through a caching pool.
///
/// Block sizes are rounded up to a size class (64-byte steps below 64 KiB, four classes per
/// power of two above) and, when freed, kept in a per-class free list for reuse (a request of
/// 64 KiB or more may also take a cached block of a larger class below twice its size), up to a cap
/// on the cached bytes: the larger of GHNQ_CPU_CACHE_MB (default 1024) and twice the peak number
/// of bytes in use so far, so a program whose steady state needs more than the default still
/// reaches it. Twice, because a step's phases (forward, backward, the next step's prediction)
/// free and request blocks of different size classes: with a cap of one peak, the blocks cached
/// from one phase fill the cache and the next phase's frees go back to the system, so every
/// training step paid thousands of system allocations and page faults on fresh memory (measured:
/// GHN training step, m = 8; the QAT step's extra tensors made it worse). Training loops that allocate the same
/// shapes every step therefore reach a steady state with no system allocations (and no page
/// faults on fresh memory). `memory_stats()` reports the counters; `release_cached_memory()`
/// returns cached blocks to the system.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include "ghnq/backend/ops.hpp"
#include "ghnq/backend/tags.hpp"

namespace ghnq {

/// Counters of the CPU allocator (monotonic except the byte gauges).
struct memory_stats_t {
  std::uint64_t system_allocations = 0;  ///< blocks obtained from the system
  std::uint64_t reused_allocations = 0;  ///< blocks served from the cache
  std::uint64_t bytes_in_use = 0;        ///< live bytes handed out (rounded sizes)
  std::uint64_t bytes_cached = 0;        ///< freed bytes kept for reuse
};

namespace backend::detail {

class cpu_pool {
 public:
  static constexpr std::size_t kAlignment = 64;
  static constexpr std::size_t kHeader = 64;  // keeps the user pointer 64-byte aligned
  static constexpr std::size_t kFineLimit = 64 * 1024;  // 64-byte classes below, 4 per octave above

  /// The process-wide pool; deliberately never destroyed, so tensors freed by static or
  /// thread-local objects at exit still find it.
  static cpu_pool& instance() {
    static cpu_pool* p = new cpu_pool;
    return *p;
  }

  void* allocate(std::size_t bytes) {
    std::size_t size = size_class(bytes == 0 ? 1 : bytes);
    void* base = nullptr;
    {
      std::lock_guard<std::mutex> lock(m_);
      // The block's own class first, then the next larger classes below twice the size: when
      // concurrent programs (e.g. the networks of a meta-batch) interleave differently from step
      // to step, a class may run dry while a neighbour holds spare blocks; reusing those avoids
      // a system allocation (and page faults on fresh memory) at a bounded cost in memory.
      for (std::size_t c = size; c < 2 * size; c = next_class(c)) {
        auto it = free_.find(c);
        if (it != free_.end() && !it->second.empty()) {
          base = it->second.back();
          it->second.pop_back();
          size = c;  // the block keeps its class (recorded in its header)
          stats_.bytes_cached -= size;
          ++stats_.reused_allocations;
          break;
        }
        if (size < kFineLimit) break;  // small blocks: exact class only
      }
    }
    if (!base) {
      base = std::aligned_alloc(kAlignment, size + kHeader);
      if (!base) {
        release();
        base = std::aligned_alloc(kAlignment, size + kHeader);
        if (!base) throw std::bad_alloc();
      }
      std::lock_guard<std::mutex> lock(m_);
      ++stats_.system_allocations;
    }
    {
      std::lock_guard<std::mutex> lock(m_);
      stats_.bytes_in_use += size;
      if (stats_.bytes_in_use > peak_) peak_ = stats_.bytes_in_use;
    }
    std::memcpy(base, &size, sizeof size);
    return static_cast<char*>(base) + kHeader;
  }

  void deallocate(void* p) noexcept {
    if (!p) return;
    void* base = static_cast<char*>(p) - kHeader;
    std::size_t size;
    std::memcpy(&size, base, sizeof size);
    std::lock_guard<std::mutex> lock(m_);
    stats_.bytes_in_use -= size;
    if (stats_.bytes_cached + size <= std::max<std::size_t>(cap_, 2 * peak_)) {
      try {
        free_[size].push_back(base);
        stats_.bytes_cached += size;
        return;
      } catch (...) {  // bookkeeping failed: give the block back instead
      }
    }
    std::free(base);
  }

  void release() noexcept {
    std::lock_guard<std::mutex> lock(m_);
    for (auto& kv : free_)
      for (void* b : kv.second) std::free(b);
    free_.clear();
    stats_.bytes_cached = 0;
  }

  memory_stats_t stats() {
    std::lock_guard<std::mutex> lock(m_);
    return stats_;
  }

  /// The size class following class c.
  static std::size_t next_class(std::size_t c) { return size_class(c + 1); }

  /// Four classes per power of two from kFineLimit up; 64-byte granularity below.
  static std::size_t size_class(std::size_t bytes) {
    if (bytes < kFineLimit) return (bytes + kAlignment - 1) / kAlignment * kAlignment;
    std::size_t p = kFineLimit;
    while (p * 2 <= bytes) p *= 2;
    const std::size_t step = p / 4;
    return (bytes + step - 1) / step * step;
  }

 private:
  cpu_pool() {
    std::size_t mb = 1024;
    if (const char* env = std::getenv("GHNQ_CPU_CACHE_MB")) mb = static_cast<std::size_t>(std::strtoull(env, nullptr, 10));
    cap_ = mb * 1024 * 1024;
  }

  std::mutex m_;
  std::unordered_map<std::size_t, std::vector<void*>> free_;
  memory_stats_t stats_;
  std::size_t cap_ = 0;
  std::size_t peak_ = 0;  // peak bytes in use
};

}  // namespace backend::detail

namespace backend {

template <>
struct impl<cpu_t, op::memory> {
  static constexpr std::size_t kAlignment = detail::cpu_pool::kAlignment;
  static void* allocate(std::size_t bytes) { return detail::cpu_pool::instance().allocate(bytes); }
  static void deallocate(void* p) noexcept { detail::cpu_pool::instance().deallocate(p); }
  static void copy_to_host(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
  static void copy_from_host(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
  static void copy(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
  static void zero(void* p, std::size_t bytes) { std::memset(p, 0, bytes); }
};

}  // namespace backend

/// Counters of the CPU allocator (system allocations vs reuses, live and cached bytes).
inline memory_stats_t memory_stats() { return backend::detail::cpu_pool::instance().stats(); }
/// Return every cached CPU block to the system.
inline void release_cached_memory() { backend::detail::cpu_pool::instance().release(); }

}  // namespace ghnq
