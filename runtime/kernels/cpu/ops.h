// The small per-token operations of the V4 forward pass (docs/forward-semantics.md): RMSNorm, RoPE with V4's
// YaRN settings, the Hadamard transform, mHC mixing with Sinkhorn normalisation, activations. fp32 in, fp32 out;
// reductions accumulate in double where a long sum would otherwise lose digits.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "planner/core/model_config.h"

namespace ferry::runtime::cpu {

// out = w ⊙ x / sqrt(mean(x²) + eps); `w` may be null (no weight). out may alias x.
void rms_norm(const float* x, const float* w, int64_t n, double eps, float* out);

// Rotates the pairs (2i, 2i+1) of v[0 .. 2·count) by pos·freqs[i] (backwards when `inverse`), in double.
void rope_rotate(float* v, const double* freqs, int64_t count, int64_t pos, bool inverse);

// Rotation frequencies of one layer kind: plain RoPE (ratio 0) or V4's YaRN-corrected RoPE (compressed layers),
// what rope_rotate turns the rope dims by.
class Rope {
 public:
  Rope() = default;
  Rope(const core::ModelConfig& c, bool compressed);
  const std::vector<double>& freqs() const { return freqs_; }

 private:
  std::vector<double> freqs_;
};

// v <- H v / sqrt(n), H the natural-order (Sylvester) Hadamard matrix; n a power of two.
void hadamard(float* v, int64_t n);

// mHC: the pre-mix of the hc streams into one input, and the post-mix back into the streams.
// The three weight sets of one token, views into its workspace.
struct HcMix {
  float* pre = nullptr;   // [hc]
  float* post = nullptr;  // [hc]
  float* comb = nullptr;  // [hc·hc], comb[i·hc + j] = C[i][j]
};
// x = sum_s pre[s]·H[s]; fills mix. H: [hc, d].
void hc_pre(const float* H, int64_t hc, int64_t d, const float* fn, const float* scale, const float* base,
            int64_t sinkhorn_iters, double hc_eps, double norm_eps, HcMix& mix, float* x);
// H'[j] = post[j]·y + sum_i C[i][j]·H[i] (in place on H).
void hc_post(const float* y, const HcMix& mix, int64_t hc, int64_t d, float* H);
// The head's reduction: y = sum_s (sigmoid(mix[s]·scale + base[s]) + hc_eps)·H[s].
void hc_head(const float* H, int64_t hc, int64_t d, const float* fn, const float* scale, const float* base,
             double hc_eps, double norm_eps, float* y);

inline float silu(float x) { return x / (1.0f + std::exp(-x)); }
float sigmoid(float x);
float softplus(float x);

}  // namespace ferry::runtime::cpu
