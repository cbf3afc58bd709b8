// The tiny model bound to cuda:0 by the plan of an offload scenario (tests/e2e/offload_scenarios.h), for the GPU
// tests: test_offload_cuda.cpp (the offload scenarios' twins) and cuda_vs_reference.cpp.
#pragma once

#include <functional>

#include "offload/plan_binding.h"
#include "offload_scenarios.h"

namespace ferry::testing {

using BoundBody = std::function<void(offload::BoundPlan& bound, runtime::SessionOptions so)>;

// Plans `sc` (its budget, cache and host) for cuda:0, binds the tiny model, runs `body` with the binding and the
// session options it gives, then checks that every device stayed within its plan, prints the device's own memory
// figures next to the plan, and that the binding leaves no device memory behind.
void with_cuda_binding(const Scenario& sc, const runtime::SessionOptions& so, const BoundBody& body);

}  // namespace ferry::testing
