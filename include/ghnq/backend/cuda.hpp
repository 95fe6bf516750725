/// \file
/// \brief The CUDA backend (CUDA runtime + cuBLAS): every `backend::impl<cuda_t, Op>` specialization.
///
/// Built only when ghnq is configured with -DGHNQ_WITH_CUDA=ON (GHNQ_HAS_CUDA == 1); otherwise this
/// header is empty, so the umbrella ghnq/ghn.hpp includes it unconditionally. Host API only: the
/// headers below include cuda_runtime_api.h / cublas_v2.h and compile with the ordinary C++ compiler.
/// \code
/// #if GHNQ_HAS_CUDA
/// if (ghnq::cuda::available()) {
///   auto d = ghnq::to_backend<ghnq::backend::cuda_t>(host_tensor);   // host -> device
///   auto back = ghnq::to_backend<ghnq::backend::cpu_t>(d);            // device -> host
/// }
/// #endif
/// \endcode
#pragma once
#include "ghnq/core/config.hpp"

#if GHNQ_HAS_CUDA
#include "ghnq/backend/cuda/gemm.hpp"
#include "ghnq/backend/cuda/memory.hpp"
#endif
