/// \file
/// \brief The umbrella header of ghnq: the only include users need.
/// \code
/// #include <ghnq/ghn.hpp>
/// ghnq::autograd::tape<float> tp;
/// \endcode
#pragma once
#include "ghnq/core/config.hpp"
#include "ghnq/core/error.hpp"
#include "ghnq/core/rng.hpp"
#include "ghnq/backend/tags.hpp"
#include "ghnq/backend/cpu.hpp"
#include "ghnq/backend/cuda.hpp"
#include "ghnq/tensor/tensor.hpp"
#include "ghnq/tensor/adaptors.hpp"
#include "ghnq/autograd/tape.hpp"
#include "ghnq/nn.hpp"
#include "ghnq/arch.hpp"
#include "ghnq/graph.hpp"
#include "ghnq/exec.hpp"
#include "ghnq/ghn/hypernet.hpp"
#include "ghnq/ghn/trainer.hpp"
#include "ghnq/ghn/evaluate.hpp"
#include "ghnq/ghn/checkpoint.hpp"
#include "ghnq/ghn/fit.hpp"
#include "ghnq/io/atomic_file.hpp"
#include "ghnq/io/safetensors.hpp"
#include "ghnq/train.hpp"
#include "ghnq/data.hpp"
#include "ghnq/quant.hpp"
#include "ghnq/io/progress.hpp"
