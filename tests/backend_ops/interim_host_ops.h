// Interim, until Backend::run and Backend::supports land (issue 15, item 4): the ops of runtime/backend/ops.h
// computed with the host's CPU kernels, on the caller's thread for the host backend and on the compute stream
// (Backend::launch) for the simulated device, as those backends will. The suite calls only run_op and
// supports, so that switching to backend.run(op) + wait and backend.supports(kind) is a change here alone.
#pragma once

#include "runtime/backend/backend.h"
#include "runtime/backend/ops.h"

namespace ferry::runtime::ops_test {

// Whether `b` runs ops of kind `k`: the host-addressable backends (host, sim) run every op; others none yet.
bool supports(const Backend& b, ops::Kind k);

// Runs `op` on `b` and waits for it; rethrows what the op threw.
void run_op(Backend& b, const ops::Op& op);

}  // namespace ferry::runtime::ops_test
