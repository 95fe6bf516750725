/// \file
/// \brief Umbrella for the differentiable ops (ghnq::nn) and parameter initializers.
#pragma once
#include "ghnq/nn/activation.hpp"
#include "ghnq/nn/add.hpp"
#include "ghnq/nn/batch_norm.hpp"
#include "ghnq/nn/common.hpp"
#include "ghnq/nn/concat.hpp"
#include "ghnq/nn/dropout.hpp"
#include "ghnq/nn/embedding.hpp"
#include "ghnq/nn/gru_cell.hpp"
#include "ghnq/nn/init.hpp"
#include "ghnq/nn/layer_norm.hpp"
#include "ghnq/nn/linear.hpp"
#include "ghnq/nn/loss.hpp"
#include "ghnq/nn/reshape.hpp"
