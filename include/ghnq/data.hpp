/// \file
/// \brief Umbrella for the data pipeline (ghnq::data): IDX / CIFAR-10 readers, transforms, loader.
#pragma once
#include "ghnq/data/cifar.hpp"
#include "ghnq/data/dataset.hpp"
#include "ghnq/data/idx.hpp"
#include "ghnq/data/loader.hpp"
#include "ghnq/data/transforms.hpp"
