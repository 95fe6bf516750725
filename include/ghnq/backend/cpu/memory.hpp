/// \file
/// \brief CPU backend memory: 64-byte aligned host allocations.
#pragma once
#include <cstdlib>
#include <cstring>
#include <new>

#include "ghnq/backend/ops.hpp"
#include "ghnq/backend/tags.hpp"

namespace ghnq::backend {

template <>
struct impl<cpu_t, op::memory> {
  static constexpr std::size_t kAlignment = 64;
  static void* allocate(std::size_t bytes) {
    if (bytes == 0) bytes = kAlignment;
    const std::size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    void* p = std::aligned_alloc(kAlignment, rounded);
    if (!p) throw std::bad_alloc();
    return p;
  }
  static void deallocate(void* p) noexcept { std::free(p); }
  static void copy_to_host(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
  static void copy_from_host(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
  static void copy(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
  static void zero(void* p, std::size_t bytes) { std::memset(p, 0, bytes); }
};

}  // namespace ghnq::backend
