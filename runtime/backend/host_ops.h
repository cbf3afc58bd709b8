// The host's implementation of every op of ops.h with the CPU kernels (runtime/kernels/cpu): what the host
// backend runs in the caller and the simulated GPU on its compute stream. Ops are computed with oneTBB in the
// calling thread's task arena; tile loops index their scratch by the arena slot.
#pragma once

#include "runtime/backend/ops.h"

namespace ferry::runtime {

// Computes `op` now; throws ferry::Error on arguments it cannot compute (e.g. a tile loop on more threads than
// its scratch has slices).
void run_on_host(const ops::Op& op);

namespace host_ops {
// The ops with loops of their own (host_attention.cpp, host_compress.cpp).
void attention(const ops::Attention& a);
void compress(const ops::Compress& a);
void indexer_select(const ops::IndexerSelect& a);

// The calling thread's slice of `t`: its rows, scores, and (attention) per-head accumulators.
struct TileSlice {
  float* rows;
  float* scores;
  float* acc;
  float* max;
  float* sum;
};
TileSlice tile_slice(const ops::TileScratch& t, int64_t heads, int64_t head_dim);
// Slice `slot` of `t`, whichever thread asks.
TileSlice tile_slice_at(const ops::TileScratch& t, int slot, int64_t heads, int64_t head_dim);
}  // namespace host_ops

}  // namespace ferry::runtime
