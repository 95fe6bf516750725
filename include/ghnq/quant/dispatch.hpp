/// \file
/// \brief `quant::dispatch_bits`: a run-time bit-width to a compile-time `std::integral_constant`.
///
/// Quantizers take their bit-width as a template parameter so kernels and ranges are fixed at
/// compile time; programs read the bit-width at run time (command line, a per-step draw of the
/// mixed-bits strategy). dispatch_bits bridges the two by instantiating the callable for every
/// bit-width of a compile-time set and calling the one that matches.
#pragma once
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

#include "ghnq/core/error.hpp"
#include "ghnq/quant/common.hpp"

namespace ghnq::quant {

/// A compile-time set of bit-widths (each in [1, 16], no repeats).
/// \tparam tBits the bit-widths, in the order they are tried.
template <int... tBits>
struct bit_set {
  static_assert(sizeof...(tBits) > 0, "ghnq::quant::bit_set: empty set");
  static_assert(((tBits >= 1 && tBits <= kMaxBits) && ...), "ghnq::quant::bit_set: bit-widths must be in [1, 16]");
  static constexpr int kSize = static_cast<int>(sizeof...(tBits));
  /// True when b is in the set.
  static constexpr bool contains(int b) noexcept { return ((b == tBits) || ...); }
  /// "{1, 2, 3}"
  static std::string to_string() {
    std::ostringstream os;
    os << '{';
    int k = 0;
    ((os << (k++ ? ", " : "") << tBits), ...);
    os << '}';
    return os.str();
  }
};

/// Bit-widths every program accepts by default: 1..8 and 16.
using supported_bits = bit_set<1, 2, 3, 4, 5, 6, 7, 8, 16>;
/// The supported bit-widths of signed codes (a signed code needs 2 bits at least).
using signed_bits = bit_set<2, 3, 4, 5, 6, 7, 8, 16>;

namespace detail {
template <int B0, int...>
struct first_bit : std::integral_constant<int, B0> {};

template <class R, class Set, class F, int B0, int... Rest>
R dispatch_impl(int b, F& f) {
  if (b == B0) return f(std::integral_constant<int, B0>{});
  if constexpr (sizeof...(Rest) > 0) {
    return dispatch_impl<R, Set, F, Rest...>(b, f);
  } else {
    throw value_error(::ghnq::detail::concat("quant::dispatch_bits: unsupported bit-width ", b,
                                             "; supported bit-widths are ", Set::to_string()));
  }
}
}  // namespace detail

/// Calls f(std::integral_constant<int, B>{}) for the B of `set` equal to the run-time `bits` and
/// returns its result; throws value_error naming `bits` and the set when none is equal. f must
/// return the same type for every B of the set (static_assert).
/// \code
/// float err = ghnq::quant::dispatch_bits(ghnq::quant::signed_bits{}, cli_bits, [&](auto b) {
///   return run_experiment<decltype(b)::value>();   // ghnq::quant::lsq<decltype(b)::value> inside
/// });
/// \endcode
template <int... tBits, class F>
decltype(auto) dispatch_bits(bit_set<tBits...>, int bits, F&& f) {
  using R = decltype(f(std::integral_constant<int, detail::first_bit<tBits...>::value>{}));
  static_assert((std::is_same_v<R, decltype(f(std::integral_constant<int, tBits>{}))> && ...),
                "ghnq::quant::dispatch_bits: the callable must return the same type for every bit-width");
  return detail::dispatch_impl<R, bit_set<tBits...>, F, tBits...>(bits, f);
}

/// dispatch_bits over supported_bits {1, 2, 3, 4, 5, 6, 7, 8, 16}.
/// \code
/// ghnq::quant::dispatch_bits(4, [&](auto b) { ghnq::quant::pact<decltype(b)::value> q; ... });
/// \endcode
template <class F>
decltype(auto) dispatch_bits(int bits, F&& f) {
  return dispatch_bits(supported_bits{}, bits, std::forward<F>(f));
}

}  // namespace ghnq::quant
