// The elementary operations of docs/forward-semantics.md, in float64, written as the page states them:
// RMS norm, RoPE (with the YaRN frequencies of compressed layers), the Hadamard rotation and top-k with its
// tie rule. Kept apart from the forward pass so the tests can check each one on its own.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "planner/core/model_config.h"

namespace ferry::reference {

using Vec = std::vector<double>;

// rms(v, w) = w ⊙ v / sqrt(mean(v²) + eps); an empty `w` means no weight (the per-head query norm).
Vec rms_norm(const Vec& v, const Vec& w, double eps);

double sigmoid(double x);
double silu(double x);
double softplus(double x);  // log(1 + e^x), without overflow for large x

// f_i for i < qk_rope_head_dim / 2: rope_theta^(−2i/rd) for SWA-only layers (ratio 0, MTP), and
// compress_rope_theta with YaRN for compressed layers (ratio > 0) whenever original_max_position > 0.
Vec rope_frequencies(const core::ModelConfig& c, bool compressed_layer);

// Rotates the pairs (2i, 2i+1) of v[0 … 2·freqs.size()) by pos · f_i (by −pos · f_i when `inverse`).
void apply_rope(double* v, const Vec& freqs, int64_t pos, bool inverse);

// H[i][j] = (−1)^popcount(i & j), the natural-order (Sylvester) ±1 matrix.
double hadamard_entry(int64_t i, int64_t j);
// v <- H v / sqrt(n) in place; n a power of two.
void hadamard(double* v, int64_t n);

struct TopK {
  std::vector<int64_t> ids;      // highest score first; equal scores: the lower index first
  std::optional<double> margin;  // topk_margin at the cut; absent when every candidate is selected
  int64_t runner_up = -1;        // the best unselected candidate (with margin)
};
TopK top_k(const Vec& score, int64_t k);

}  // namespace ferry::reference
