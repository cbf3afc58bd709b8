// Which ops the forward pass runs, so that a device is checked before anything runs: a plan that puts layers on
// a backend lacking one of their ops (today: cuda:N, whose kernels come in a later issue) fails when it is
// bound, with one line naming the device and the ops.
#pragma once

#include <span>
#include <string_view>
#include <vector>

#include "planner/core/model_config.h"
#include "runtime/backend/backend.h"

namespace ferry::runtime {

// The ops of layer `layer` (attention of its kind, its compressors and indexer, MoE with its routing).
std::vector<ops::Kind> ops_of_layer(const core::ModelConfig& c, int64_t layer);
// Every op a session runs on its device: the layers' (and the MTP layer's with `mtp`), the embedding, the head.
std::vector<ops::Kind> ops_of_model(const core::ModelConfig& c, bool mtp);

// Throws ferry::Error "DEVICE cannot run WHAT: it has no kernel for a, b, c" when `device` lacks any of `kinds`.
void require_ops(const Backend& device, std::span<const ops::Kind> kinds, std::string_view what);

}  // namespace ferry::runtime
