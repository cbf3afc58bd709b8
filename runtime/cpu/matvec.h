// CPU matrix-vector products straight from DeepSeek V4's quantized weight formats
// (../shared/spec/deepseek-v4.md §4.1). Decoding a single token is memory-bound, so the kernels decode weights
// in registers as they stream them and never dequantize a whole weight.
#pragma once

#include <cstdint>

namespace ferry::runtime::cpu {

// y[r] = sum_k W[r,k] * x[k] for an MXFP4 weight (routed experts): codes [rows, cols/2] (element 2k in the
// low nibble of byte k of the row), scales [rows, cols/32] E8M0. cols % 32 == 0.
void matvec_mxfp4(const uint8_t* codes, const uint8_t* scales, int64_t rows, int64_t cols, const float* x, float* y);

// FP8 E4M3 weight [rows, cols] with one E8M0 scale per 128x128 block: scales [ceil(rows/128), ceil(cols/128)].
// The E4M3 NaN codes (0x7F, 0xFF) are not expected in weights; the AVX2 path reads them as +-480.
void matvec_fp8(const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x, float* y);

// Which code path runs: "avx2" (AVX2 + FMA + F16C) or "portable", chosen once from the CPU.
const char* matvec_isa();

namespace detail {
// The portable paths, always available, so tests can compare them with the dispatched ones.
void matvec_mxfp4_portable(const uint8_t* codes, const uint8_t* scales, int64_t rows, int64_t cols, const float* x,
                           float* y);
void matvec_fp8_portable(const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x,
                         float* y);
}  // namespace detail

}  // namespace ferry::runtime::cpu
