// The memory model: every size the runtime allocates that is not a weight or a KV row — workspaces, expert
// slots, pinned staging — as functions of the model and the prefill chunk (ubatch), never of the context.
// Weights come from ModelSpec, the KV cache from kv_cache.h. The runtime sizes its buffers with these same
// functions; a test compares its high-water mark with them.
#pragma once

#include <cstdint>

#include "planner/model_spec.h"

namespace ferry::planner {

// Attention is computed over key tiles of this many rows with an online softmax, so its scratch is per tile.
constexpr int64_t kAttnKeyTile = 1024;
// The indexer scores compressed keys in tiles of this many entries, keeping a running top-k.
constexpr int64_t kIndexerTile = 4096;

// fp32 activations of one token through one layer (streams, q, kv, attention output, scores tile, indexer,
// router, routed and shared expert intermediates). The runtime's per-token arena has exactly this layout.
int64_t activation_bytes_per_token(const ModelConfig& c);

// GPU (or, without a GPU, host) compute workspace for a prefill chunk of `ubatch` tokens, plus the logits
// buffer: one row, or `ubatch` rows when every position's logits are kept (`ferry run --logits-out`).
int64_t compute_workspace_bytes(const ModelConfig& c, int64_t ubatch, bool logits_all);

// Host buffers of the CPU expert path: the gathered inputs, intermediates and outputs of a chunk's routed tokens.
int64_t cpu_expert_workspace_bytes(const ModelConfig& c, int64_t ubatch);

// Device slots that streamed experts land in: two groups of top-k experts (double buffering, so a group is
// never overwritten while a kernel reads it).
int64_t expert_stream_slot_bytes(const ModelSpec& s);

// Pinned host staging: the source side of the expert stream plus the activations exchanged with the CPU
// expert path for one chunk (inputs and outputs).
int64_t pinned_staging_bytes(const ModelSpec& s, int64_t ubatch);

}  // namespace ferry::planner
