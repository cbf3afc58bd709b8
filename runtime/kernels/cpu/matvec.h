// CPU matrix-vector products straight from DeepSeek V4's quantized weight formats
// (../shared/spec/deepseek-v4.md §4.1). Decoding a single token is memory-bound, so the kernels decode weights
// in registers as they stream them and never dequantize a whole weight. Prefill has the matmul forms, which
// decode each weight vector once for a tile of tokens (compute-bound there: the weight is read from cache).
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/kernels/cpu/mxfp4_activation.h"

namespace ferry::runtime::cpu {

// The CPU code paths, chosen once from the CPU: the best it has, or the one FERRY_CPU_ISA=portable|avx2|avxvnni|avx512
// names. avxvnni is AVX2 plus the 256-bit VNNI byte dot product (Alder Lake and later client cores).
enum class CpuIsa { Portable, Avx2, AvxVnni, Avx512 };
const char* isa_name(CpuIsa isa);

// y[r] = sum_k W[r,k] * x[k] for an MXFP4 weight (routed experts): codes [rows, cols/2] (element 2k in the
// low nibble of byte k of the row), scales [rows, cols/32] E8M0. cols % 32 == 0. x is first rounded to
// integers per block of 32 (mxfp4_activation.h: `bits`); the products are then exact integers per block.
// E8M0 255 (NaN) is not expected in weights.
void matvec_mxfp4(const uint8_t* codes, const uint8_t* scales, int64_t rows, int64_t cols, const float* x, float* y,
                  core::ActivationBits bits);
// The same with x already rounded, so several weights (or row blocks) can share one rounding of x.
void matvec_mxfp4(const uint8_t* codes, const uint8_t* scales, int64_t rows, const Mxfp4Activation& x, float* y);
// The same for n tokens at once (prefill): y[t * y_stride + r] = sum_k W[r,k] * x[t][k]. Each weight vector is
// decoded once for a tile of tokens; every token's result is bitwise the matvec's, whatever n is.
void matmul_mxfp4(const uint8_t* codes, const uint8_t* scales, int64_t rows, const Mxfp4Activation* x, int64_t n,
                  float* y, int64_t y_stride);
// The MXFP4 paths this CPU has, best last, and the one matvec_mxfp4 uses.
std::vector<CpuIsa> mxfp4_isas();
CpuIsa mxfp4_isa();

// FP8 E4M3 weight [rows, cols] with one E8M0 scale per 128x128 block: scales [ceil(rows/128), ceil(cols/128)].
// The E4M3 NaN codes (0x7F, 0xFF) are not expected in weights; the AVX2 path reads them as +-480.
void matvec_fp8(const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x, float* y);

// The same for n tokens x + t * x_stride, bitwise the matvec's result for each.
void matmul_fp8(const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x, int64_t n,
                int64_t x_stride, float* y, int64_t y_stride);

// BF16 weight [rows, cols] (raw bf16 bits) against n tokens: y[t * y_stride + r] is bitwise cpu::dot of row r,
// decoded to float, and x + t * x_stride (vec.h), whatever n and the split of rows.
void matmul_bf16(const uint16_t* w, int64_t rows, int64_t cols, const float* x, int64_t n, int64_t x_stride, float* y,
                 int64_t y_stride);

// The FP8 paths this CPU has (portable, avx2: AVX2 + FMA + F16C, avx512: AVX-512 F/BW/VL too), best last, and
// the name of the one matvec_fp8 runs: the best up to FERRY_CPU_ISA's choice. avx512 gives avx2's bits.
std::vector<CpuIsa> fp8_isas();
const char* matvec_isa();

namespace detail {
// One given MXFP4 path (it must be in mxfp4_isas()), so tests and benchmarks can compare them.
void matvec_mxfp4_on(CpuIsa isa, const uint8_t* codes, const uint8_t* scales, int64_t rows, const Mxfp4Activation& x,
                     float* y);
void matmul_mxfp4_on(CpuIsa isa, const uint8_t* codes, const uint8_t* scales, int64_t rows, const Mxfp4Activation* x,
                     int64_t n, float* y, int64_t y_stride);
// The portable FP8 path, always available, so tests can compare it with the dispatched one.
void matvec_fp8_portable(const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x, float* y);
void matmul_fp8_portable(const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x, int64_t n,
                         int64_t x_stride, float* y, int64_t y_stride);
// One given FP8 path (it must be in fp8_isas()).
void matvec_fp8_on(CpuIsa isa, const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x,
                   float* y);
void matmul_fp8_on(CpuIsa isa, const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x,
                   int64_t n, int64_t x_stride, float* y, int64_t y_stride);
// BF16 by decoding each row and calling cpu::dot: the definition matmul_bf16 keeps to.
void matmul_bf16_portable(const uint16_t* w, int64_t rows, int64_t cols, const float* x, int64_t n, int64_t x_stride,
                          float* y, int64_t y_stride);
}  // namespace detail

}  // namespace ferry::runtime::cpu
