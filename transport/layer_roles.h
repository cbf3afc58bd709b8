// Who does what in each layer when the Plan spreads the model over nodes, one rank per node (rank r is plan node
// r): the ranks that run a layer's non-routed part, and the contiguous range of its routed experts each rank
// holds. Read from the Plan's runs and homes (planner/plan.h), its one source.
#pragma once

#include <cstdint>
#include <vector>

#include "planner/plan.h"

namespace ferry::transport {

struct ExpertRange {
  int rank = 0;
  int64_t first = 0, last = -1;  // inclusive
  bool contains(int64_t e) const { return e >= first && e <= last; }
};

struct LayerRoles {
  std::vector<int> runners;          // ascending
  std::vector<ExpertRange> holders;  // in expert order, each rank's experts one range
};

// Roles of layers 0 … num_hidden_layers−1 (the MTP layer runs in one process for now). Throws a one-line
// ferry::Error when the plan is for another number of nodes than `ranks`, or a node's experts of a layer are not
// one contiguous range (the combine gathers each rank's rows in one piece, in expert order).
std::vector<LayerRoles> layer_roles(const planner::Plan& plan, int ranks);

}  // namespace ferry::transport
