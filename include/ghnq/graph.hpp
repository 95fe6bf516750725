/// \file
/// \brief Umbrella for computational graphs (ghnq::graph): what the GHN reads.
#pragma once
#include "ghnq/graph/batch.hpp"
#include "ghnq/graph/build.hpp"
#include "ghnq/graph/dot.hpp"
#include "ghnq/graph/graph.hpp"
#include "ghnq/graph/virtual_edges.hpp"
