// The KV storage roundings of docs/forward-semantics.md in float64, with the distance of each decision to its
// boundary. Grids are enumerated from the format definitions, not taken from the runtime's codecs.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "reference_forward.h"

namespace ferry::reference {

// Called for every decision with its kind and relative margin.
using MarginSink = std::function<void(FragileKind, double)>;

double round_e4m3(double v, const MarginSink& sink);  // RNE on the E4M3 grid, saturating at ±448
double round_e2m1(double v, const MarginSink& sink);  // RNE on {0, .5, 1, 1.5, 2, 3, 4, 6}, saturating at ±6
double round_bf16(double v, const MarginSink& sink);
double round_f16(double v, const MarginSink& sink);   // for the q8_0 / q4_0 block scales

// In place on a block: the model's FP8 (per 64) and FP4 (per 32) simulations, and the q8_0 / q4_0 blocks.
void qdq_fp8_block(double* x, int64_t n, const MarginSink& sink);
void qdq_fp4_block(double* x, int64_t n, const MarginSink& sink);
void qdq_q_block(double* x, int64_t n, bool four_bit, const MarginSink& sink);

// Margin of a selection at its cut: (last selected − best unselected) / max of their magnitudes.
double topk_margin(double last_selected, double best_unselected);

}  // namespace ferry::reference
