/// \file
/// \brief Small metaprogramming helpers: dependent_false for diagnostic primary templates.
#pragma once
#include <type_traits>

namespace ghnq::detail {
/// Always false, but only once the template is instantiated; lets a primary template's
/// static_assert fire with a readable message instead of at definition time.
template <class... T>
inline constexpr bool dependent_false = false;
}  // namespace ghnq::detail
