/// \file
/// \brief Umbrella for the executor (ghnq::exec): runs a network IR on a parameter set, with fake
/// quantization (placement plan, per-op quantizers, mixed-precision policies) or as an exported
/// integer-only model.
#pragma once
#include "ghnq/exec/executor.hpp"
#include "ghnq/exec/int_executor.hpp"
#include "ghnq/exec/int_export.hpp"
#include "ghnq/exec/meta_batch.hpp"
#include "ghnq/exec/mixed_precision.hpp"
#include "ghnq/exec/quant_plan.hpp"
#include "ghnq/exec/quantize.hpp"
