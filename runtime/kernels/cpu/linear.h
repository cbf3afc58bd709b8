// One entry point for every linear layer of the forward pass, whatever the weight's checkpoint format:
// Y[t] = W · X[t] for a chunk of tokens. The weight is read in its stored encoding (FP8 blocks, MXFP4, BF16,
// F32) and never dequantized as a whole; a chunk of several tokens reuses each decoded weight tile for all of
// them (matrix-matrix), one token is a matrix-vector product.
#pragma once

#include <cstdint>
#include <vector>

#include "planner/core/weight_view.h"
#include "runtime/kernels/cpu/mxfp4_activation.h"

namespace ferry::runtime::cpu {

// y[t * y_stride + r] = sum_k W[r, k] * x[t * x_stride + k], for t < n and r < w.rows. fp32 accumulation.
// An MXFP4 weight takes x rounded per token to `bits` (mxfp4_activation.h); `rounded`, when given, is that
// rounding already made by round_mxfp4_inputs (so that w1 and w3 of an expert share one), else linear makes it.
void linear(const core::WeightView& w, const float* x, int64_t n, int64_t x_stride, float* y, int64_t y_stride,
            core::ActivationBits bits, const std::vector<Mxfp4Activation>* rounded = nullptr);

// The MXFP4 rounding of n tokens of `cols` values each, one Mxfp4Activation per token.
std::vector<Mxfp4Activation> round_mxfp4_inputs(const float* x, int64_t n, int64_t x_stride, int64_t cols,
                                                core::ActivationBits bits);

}  // namespace ferry::runtime::cpu
