// The device memory an op names: every pointer argument a device's kernel dereferences, by field. Host-memory
// arguments (Embed's and Route's tokens, RoPE's frequency table, LinearGrouped's arrays of views and row starts,
// which a CUDA launch copies into its own arguments) are not listed; the weight views inside LinearGrouped are.
// The simulated device checks each against its own allocations, as a GPU would fault on anything else.
#pragma once

#include <vector>

#include "runtime/backend/ops.h"

namespace ferry::runtime::ops {

struct OpPointer {
  const char* field;  // "x", "w.data", ...
  const void* p;      // never null: null arguments (optional ones) are left out
};

std::vector<OpPointer> device_pointers(const Op& op);

}  // namespace ferry::runtime::ops
