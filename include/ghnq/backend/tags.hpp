/// \file
/// \brief Backend policy tags (cpu_t, cuda_t) and the `impl<Backend, Op>` customization point.
///
/// A backend is an empty tag type passed first (as a template argument or an object). Every
/// piece of backend work is `backend::impl<Backend, Op>::run(...)`; backends specialize it.
/// The primary template only produces a diagnostic naming the missing specialization.
#pragma once
#include <type_traits>

#include "ghnq/core/config.hpp"
#include "ghnq/core/traits.hpp"

namespace ghnq::backend {

/// Host backend: oneTBB for parallel loops, Eigen for GEMM (single-threaded inside tasks).
struct cpu_t {
  static constexpr bool is_device = false;
  static constexpr const char* name = "cpu";
};
inline constexpr cpu_t cpu{};

/// CUDA backend: device memory, cuBLAS GEMM and own kernels. Usable only when the library was
/// configured with -DGHNQ_WITH_CUDA=ON (GHNQ_HAS_CUDA == 1).
struct cuda_t {
  static constexpr bool is_device = true;
  static constexpr const char* name = "cuda";
};
inline constexpr cuda_t cuda{};

/// Trait: is `T` a backend tag?
template <class T>
struct is_backend : std::false_type {};
template <>
struct is_backend<cpu_t> : std::true_type {};
template <>
struct is_backend<cuda_t> : std::true_type {};
template <class T>
inline constexpr bool is_backend_v = is_backend<T>::value;

#if defined(__cpp_concepts)
template <class T>
concept backend_tag = is_backend_v<T>;
#endif

/// Customization point: `impl<Backend, Op>` does operation `Op` on `Backend`.
/// \tparam Backend a backend tag (cpu_t, cuda_t, or a user tag).
/// \tparam Op      an operation tag from backend/ops.hpp.
template <class Backend, class Op>
struct impl {
  static_assert(detail::dependent_false<Backend, Op>,
                "ghnq: no backend::impl<Backend, Op> specialization: this backend does not implement "
                "this operation (see the template arguments in the error above), or its header is "
                "not included");
};

}  // namespace ghnq::backend
