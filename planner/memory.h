// The memory model: every size the runtime allocates that is not a weight or a KV row — workspaces, expert
// slots, pinned staging — as functions of the model and the prefill chunk (ubatch), never of the context.
// Weights come from ModelSpec, the KV cache from kv_cache.h. The CPU forward pass sizes its workspace with
// cpu_forward_workspace() and a test checks it holds exactly that; the GPU figures are estimates until the
// GPU forward exists.
#pragma once

#include <cstdint>

#include "planner/kv_cache.h"
#include "planner/model_spec.h"

namespace ferry::planner {

// Attention is computed over key tiles of this many rows with an online softmax, so its scratch is per tile.
constexpr int64_t kAttnKeyTile = 1024;
// The indexer scores compressed keys in tiles of this many entries, keeping a running top-k.
constexpr int64_t kIndexerTile = 4096;

// fp32 activations of one token through one layer (streams, q, kv, attention output, scores tile, indexer,
// router, routed and shared expert intermediates). The runtime's per-token arena has exactly this layout.
int64_t activation_bytes_per_token(const core::ModelConfig& c);

// GPU (or, without a GPU, host) compute workspace for a prefill chunk of `ubatch` tokens, plus the logits
// buffer: one row, or `ubatch` rows when every position's logits are kept (`ferry run --logits-out`).
int64_t compute_workspace_bytes(const core::ModelConfig& c, int64_t ubatch, bool logits_all);

// The CPU forward pass's workspace for one V4 sequence, buffer by buffer: runtime/forward.cpp sizes every
// buffer from this, and a test checks that what the runtime holds (measured from the buffers) equals bytes().
// Activations of a chunk of `ubatch` tokens, the residual streams (and the MTP layer's), one logits row, and
// one attention/indexer tile scratch per worker thread. Not counted: the caller's output logits and the MTP
// logits kept per position (outputs that grow with the tokens, not workspaces).
struct CpuForwardWorkspace {
  int64_t ubatch = 0, threads = 0;
  // fp32 elements
  int64_t x = 0, xn = 0, y = 0;  // [ubatch, hidden] each
  int64_t mix = 0;               // mHC pre, post, comb of every token: ubatch·(2 hc + hc²)
  int64_t qa = 0, q = 0, kv = 0, o = 0, z = 0;
  int64_t comp = 0;  // each of the compressor's two projections
  int64_t iq = 0, iw = 0, key_tile = 0, gate = 0, route_w = 0;
  int64_t xg = 0, eg = 0, eu = 0;  // routed experts: gathered inputs [ubatch, hidden], gate, up
  int64_t eo = 0;                  // their outputs, one row per (token, chosen expert) [ubatch·k, hidden]
  int64_t residual = 0, mtp_residual = 0, mtp_pending = 0, logits_row = 0;
  int64_t tile_scratch = 0;  // per thread
  // int32 elements
  int64_t sel = 0, sel_count = 0, route_ids = 0, expert_tokens = 0;
  int64_t kv_rows_bytes = 0;  // the chunk's own window rows in the cache encoding
  int64_t bytes() const;
};
// One worker thread's attention/indexer tile scratch, fp32 elements: a key tile's decoded rows, then a tile's
// scores (attention's or the indexer's), then per head the attention's accumulator, maximum and sum.
struct CpuTileLayout {
  int64_t key_rows = 0, scores = 0, per_thread = 0;
};
CpuTileLayout cpu_tile_layout(const core::ModelConfig& c);
int64_t cpu_tile_scratch_floats(const core::ModelConfig& c);  // cpu_tile_layout(c).per_thread
CpuForwardWorkspace cpu_forward_workspace(const core::ModelConfig& c, KvType kv, int64_t ubatch, int64_t threads,
                                          bool mtp);

// The workspace a plan gives the device that runs the forward pass (a GPU, or the host without one): for V4,
// exactly the CPU forward pass's layout (the ops of a simulated device are the CPU's; CUDA kernels will bring
// their own layout), with `threads` worker threads; for other architectures, compute_workspace_bytes.
int64_t forward_workspace_bytes(const core::ModelConfig& c, KvType kv, int64_t ubatch, int64_t threads, bool mtp,
                                bool logits_all);

// Host buffers of the CPU expert path (offload/): one expert's gathered inputs [ubatch, hidden], gate and up
// [ubatch, inter] and outputs [ubatch, hidden], fp32; experts run one at a time.
int64_t cpu_expert_workspace_bytes(const core::ModelConfig& c, int64_t ubatch);

// Device slots that streamed experts land in: two groups of top-k experts (double buffering, so a group is
// never overwritten while a kernel reads it).
int64_t expert_stream_slot_bytes(const ModelSpec& s);

// Pinned host staging: the source side of every expert copy to a GPU (cache fills and streams), as many
// experts as the stream slots hold, so a staging slot is reused only once its copy has landed.
int64_t pinned_staging_bytes(const ModelSpec& s);

}  // namespace ferry::planner
