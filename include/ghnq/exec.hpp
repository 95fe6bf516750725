/// \file
/// \brief Umbrella for the executor (ghnq::exec): runs a network IR on a parameter set.
#pragma once
#include "ghnq/exec/executor.hpp"
#include "ghnq/exec/meta_batch.hpp"
#include "ghnq/exec/quant_plan.hpp"
