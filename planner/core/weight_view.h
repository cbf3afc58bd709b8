// The model's tensor type: a view of a stored weight matrix in its checkpoint encoding (never dequantized),
// which the kernels of every backend read and the model, offload and the planner pass around. Pointers are in
// the memory of the device that holds the weight.
#pragma once

#include <cstdint>

namespace ferry::core {

enum class WeightFormat : uint8_t {
  F32,    // float [rows, cols]
  BF16,   // uint16 [rows, cols]
  FP8,    // E4M3 [rows, cols] with E8M0 scales [ceil(rows/128), ceil(cols/128)] for the whole tensor
  MXFP4,  // packed E2M1 [rows, cols/2] with E8M0 scales [rows, cols/32]
};

// Block sizes of the scaled formats (../shared/spec/deepseek-v4.md §5).
constexpr int64_t kFp8Block = 128;  // FP8: one scale per 128x128 block
constexpr int64_t kFp4Block = 32;   // MXFP4: one scale per 32 values of a row

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

// The precision an MXFP4 weight's input is rounded to per block of 32 (runtime/kernels/cpu/mxfp4_activation.h):
// 24-bit integers, as exact as float, or 16-bit ones, faster on the CPU, or 8-bit ones, the fastest (a step of
// 2^-7 of each block's largest value, DeepSeek's own FP8 activation class).
enum class ActivationBits : int { Int8 = 8, Int16 = 16, Int24 = 24 };
const char* activation_bits_name(ActivationBits bits);  // "int8" / "int16" / "int24"

// Bytes the view's weights occupy (codes and scales), for bandwidth reports and copies to a device.
int64_t weight_view_bytes(const WeightView& w);
int64_t weight_view_code_bytes(const WeightView& w);
int64_t weight_view_scale_bytes(const WeightView& w);  // 0 for BF16 and F32

}  // namespace ferry::core
