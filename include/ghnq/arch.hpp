/// \file
/// \brief Umbrella for architectures (ghnq::arch): the network IR, builder, families, JSON,
/// DeepNets-1M construction and sampling.
#pragma once
#include "ghnq/arch/builder.hpp"
#include "ghnq/arch/deepnets.hpp"
#include "ghnq/arch/families.hpp"
#include "ghnq/arch/hash.hpp"
#include "ghnq/arch/json.hpp"
#include "ghnq/arch/network.hpp"
#include "ghnq/arch/params.hpp"
#include "ghnq/arch/sampler.hpp"
#include "ghnq/arch/shape_inference.hpp"
