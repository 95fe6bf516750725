/// \file
/// \brief Umbrella for the differentiable ops (ghnq::nn).
#pragma once
#include "ghnq/nn/activation.hpp"
#include "ghnq/nn/add.hpp"
#include "ghnq/nn/common.hpp"
#include "ghnq/nn/linear.hpp"
