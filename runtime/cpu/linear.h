// One entry point for every linear layer of the forward pass, whatever the weight's checkpoint format:
// Y[t] = W · X[t] for a chunk of tokens. The weight is read in its stored encoding (FP8 blocks, MXFP4, BF16,
// F32) and never dequantized as a whole; a chunk of several tokens reuses each decoded weight tile for all of
// them (matrix-matrix), one token is a matrix-vector product.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/cpu/mxfp4_activation.h"

namespace ferry::runtime::cpu {

enum class WeightFormat : uint8_t {
  F32,    // float [rows, cols]
  BF16,   // uint16 [rows, cols]
  FP8,    // E4M3 [rows, cols] with E8M0 scales [ceil(rows/128), ceil(cols/128)] for the whole tensor
  MXFP4,  // packed E2M1 [rows, cols/2] with E8M0 scales [rows, cols/32]
};

// A view of `rows` consecutive rows of a stored weight, starting at row `row_begin` of the tensor. `data` and
// `scales` always point at the start of the whole tensor, so that FP8's 128-row scale blocks stay aligned with
// a view that starts inside one (the grouped output projection uses such views).
struct WeightView {
  WeightFormat format = WeightFormat::F32;
  const uint8_t* data = nullptr;
  const uint8_t* scales = nullptr;
  int64_t row_begin = 0;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t tensor_rows = 0;  // rows of the whole tensor (FP8 scale grid height)

  WeightView slice_rows(int64_t begin, int64_t count) const;
};

// y[t * y_stride + r] = sum_k W[r, k] * x[t * x_stride + k], for t < n and r < w.rows. fp32 accumulation.
// An MXFP4 weight takes x rounded per token (mxfp4_activation.h); `rounded`, when given, is that rounding
// already made by round_mxfp4_inputs (so that w1 and w3 of an expert share one), else linear makes it.
void linear(const WeightView& w, const float* x, int64_t n, int64_t x_stride, float* y, int64_t y_stride,
            const std::vector<Mxfp4Activation>* rounded = nullptr);

// The MXFP4 rounding of n tokens of `cols` values each, one Mxfp4Activation per token.
std::vector<Mxfp4Activation> round_mxfp4_inputs(const float* x, int64_t n, int64_t x_stride, int64_t cols);

// Bytes the view's weights occupy (codes and scales), for bandwidth reports and copies to a device.
int64_t weight_view_bytes(const WeightView& w);
int64_t weight_view_code_bytes(const WeightView& w);
int64_t weight_view_scale_bytes(const WeightView& w);  // 0 for BF16 and F32

}  // namespace ferry::runtime::cpu
