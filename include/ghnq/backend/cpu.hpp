/// \file
/// \brief The CPU backend (oneTBB + Eigen): every `backend::impl<cpu_t, Op>` specialization.
#pragma once
#include "ghnq/backend/cpu/conv2d.hpp"
#include "ghnq/backend/cpu/dropout.hpp"
#include "ghnq/backend/cpu/elementwise.hpp"
#include "ghnq/backend/cpu/gemm.hpp"
#include "ghnq/backend/cpu/gru.hpp"
#include "ghnq/backend/cpu/indexing.hpp"
#include "ghnq/backend/cpu/loss.hpp"
#include "ghnq/backend/cpu/memory.hpp"
#include "ghnq/backend/cpu/norm.hpp"
#include "ghnq/backend/cpu/optim.hpp"
#include "ghnq/backend/cpu/parallel.hpp"
#include "ghnq/backend/cpu/pool.hpp"
#include "ghnq/backend/cpu/spatial.hpp"
