/// \file
/// \brief Build configuration of ghnq: version, which backends were compiled, portability macros.
///
/// Macros here only say what was *built*; which backend a computation uses is always chosen by
/// the policy type passed to it (see backend/tags.hpp).
#pragma once

#define GHNQ_VERSION_MAJOR 0
#define GHNQ_VERSION_MINOR 1
#define GHNQ_VERSION_PATCH 0

/// GHNQ_HAS_CUDA is 1 when the CUDA backend is available (set by the CMake target
/// `ghnq::ghnq` when configured with -DGHNQ_WITH_CUDA=ON), 0 otherwise.
#ifndef GHNQ_HAS_CUDA
#define GHNQ_HAS_CUDA 0
#endif

/// Marks functions callable from host and device code; plain `inline` for host-only compilers.
#if defined(__CUDACC__)
#define GHNQ_HOST_DEVICE __host__ __device__ inline
#else
#define GHNQ_HOST_DEVICE inline
#endif

namespace ghnq {
/// Library version as a string, e.g. "0.1.0".
inline constexpr const char* version_string = "0.1.0";
}  // namespace ghnq
