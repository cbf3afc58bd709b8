// How one KV-cache row is stored for each `--kv-type` (docs/forward-semantics.md, "KV storage roundings"):
// encoding rounds exactly as DeepSeek's reference simulates it (fp8) or as the chosen block format does, and
// decoding returns the rounded values. Row sizes equal the planner's (planner/kv_cache.h), so the runtime's
// cache is exactly the planned size.
#pragma once

#include <cstdint>

#include "planner/kv_cache.h"

namespace ferry::runtime {

// Rounds `x` to what the layout stores, writes the stored bytes to `out` (layout.bytes) and the rounded values
// back into `x`, so that the caller can use the row without decoding it again.
void encode_kv_row(const planner::KvRowLayout& layout, float* x, uint8_t* out);
void decode_kv_row(const planner::KvRowLayout& layout, const uint8_t* in, float* x);

// The indexer query's rounding for the KV type (FP4 per 32 for fp8; none otherwise).
void round_indexer_query(planner::KvType t, float* q, int64_t n);

// The model's own FP8 / FP4 simulation on a block (DeepSeek kernel.py act_quant(·, 64, ue8m0) and
// fp4_act_quant(·, 32)): returns the E8M0 exponent code of the power-of-two scale and writes the codes.
uint8_t quantize_fp8_block(const float* x, int64_t n, uint8_t* codes);
uint8_t quantize_fp4_block(const float* x, int64_t n, uint8_t* codes);  // codes: one per value, 4 bits each

}  // namespace ferry::runtime
