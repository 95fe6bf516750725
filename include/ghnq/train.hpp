/// \file
/// \brief Umbrella for training utilities (ghnq::train): optimizers, gradient clipping, schedules.
#pragma once
#include "ghnq/train/clip.hpp"
#include "ghnq/train/optimizer.hpp"
#include "ghnq/train/schedule.hpp"
