/// \file
/// \brief Umbrella header of the quantizers (ghnq::quant): uniform fake quantization with
///        observers, LSQ, PACT, binary / ternary, pseudo-quantization noise, run-time bit dispatch.
///
/// Formulas and defaults: shared/spec/quantization.md; each header documents its exact formula,
/// rounding (round-half-to-even on x * (1/s)) and surrogate gradient at the declaration.
/// \code
/// #include <ghnq/quant.hpp>
/// ghnq::quant::dispatch_bits(bits, [&](auto b) {
///   constexpr int kB = decltype(b)::value;
///   ghnq::quant::pact<kB> act;                  // unsigned, any kB in [1, 16]
///   ...
/// });
/// \endcode
#pragma once
#include "ghnq/backend/cpu/quant.hpp"
#include "ghnq/quant/common.hpp"
#include "ghnq/quant/dispatch.hpp"
#include "ghnq/quant/extreme.hpp"
#include "ghnq/quant/lsq.hpp"
#include "ghnq/quant/noise.hpp"
#include "ghnq/quant/observer.hpp"
#include "ghnq/quant/pact.hpp"
#include "ghnq/quant/statistic.hpp"
#include "ghnq/quant/uniform.hpp"
