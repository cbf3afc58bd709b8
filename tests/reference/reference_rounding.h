// The KV storage roundings of docs/forward-semantics.md in float64, each decision reported with its relative
// distance to the boundary. The grids are built here from the format definitions (E4M3, E2M1, BF16, F16);
// nothing is taken from the runtime's codecs, so that a wrong codec cannot hide in both implementations.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "planner/kv_cache.h"
#include "reference_forward.h"

namespace ferry::reference {

// Called for every decision with its kind and relative margin (docs: "fragile events"); may be empty. Returns
// true to take the decision the other way (the other neighbour on the grid, the other power of two): how a test
// shows that a divergence from float32 is this decision taken the other way (ReferenceOptions::flip).
using MarginSink = std::function<bool(FragileKind, double)>;

// Scalar roundings, round to nearest with ties to the even mantissa.
double round_e4m3(double v, const MarginSink& sink = {});  // saturating at ±448
double round_e2m1(double v, const MarginSink& sink = {});  // grid {0, .5, 1, 1.5, 2, 3, 4, 6}, saturating at ±6
double round_bf16(double v, const MarginSink& sink = {});  // 8 significant bits, normal exponents from −126
double round_f16(double v, const MarginSink& sink = {});   // 11 significant bits, from −14; reports QScale

// ceil(log2(a)) for a > 0, exact (no log2 rounding next to a power of two).
int ceil_log2(double a);

// In place on one block. FP8: DeepSeek's act_quant(·, 64, ue8m0); FP4: fp4_act_quant(·, 32); Q8/Q4: the
// llama.cpp q8_0 / q4_0 blocks with an f16 scale.
void qdq_fp8_block(double* x, int64_t n, const MarginSink& sink = {});
void qdq_fp4_block(double* x, int64_t n, const MarginSink& sink = {});
void qdq_q_block(double* x, int64_t n, bool four_bit, const MarginSink& sink = {});

// The MXFP4 expert activation rounding (runtime/kernels/cpu/mxfp4_activation.h) on one block of up to 32
// values: with qmax = 8355711 (bits 24) or 32639 (bits 16) and k the smallest integer with
// max|x| <= qmax·2^k, x <- rne(x / 2^k)·2^k. Not a decision of the contract (docs/forward-semantics.md:
// int24 stays within float32's resolution), so no margins are reported.
void round_mxfp4_activation_block(double* x, int64_t n, int bits);

// What a stored (or, for the indexer query, scored) vector is, which picks its rounding per KV type.
enum class RowKind : uint8_t { Main, IndexerKey, IndexerQuery };
// The rounding of one finished row as the table in docs/forward-semantics.md says. `rope_dims` are the last
// dims of a main row (kept BF16 under fp8).
void round_kv_row(double* x, int64_t n, RowKind kind, planner::KvType kv, int64_t rope_dims, const MarginSink& sink);

// Margin of a selection at its cut: (last selected − best unselected) / max(|both|, 1e-30); 0 for a tie.
double topk_margin(double last_selected, double best_unselected);

}  // namespace ferry::reference
