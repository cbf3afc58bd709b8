// Scalar decoding and encoding of the checkpoint and KV-cache element types: BF16, F16, FP8 E4M3 (e4m3fn),
// E8M0 scales and FP4 E2M1 (../shared/spec/deepseek-v4.md §4.1). Encoders round to nearest, ties to even, and
// saturate to the largest finite value, as CUDA's __NV_SATFINITE conversions do.
#pragma once

#include <cstdint>

namespace ferry::core {

float bf16_to_float(uint16_t b);
uint16_t float_to_bf16(float f);

float f16_to_float(uint16_t h);
uint16_t float_to_f16(float f);  // RNE; beyond the largest finite value -> inf

constexpr float kE4M3Max = 448.0f;
float e4m3_to_float(uint8_t b);  // 0x7F / 0xFF are NaN
uint8_t float_to_e4m3(float f);  // RNE, saturating to +-448; NaN -> 0x7F

float e8m0_to_float(uint8_t e);  // 2^(e - 127); 0xFF is NaN

// Every E4M3 and E8M0 code decoded once (by the functions above, so that table lookups agree with them bit for
// bit): what the kernels decode FP8 weights with.
struct Fp8DecodeTables {
  float e4m3[256];
  float e8m0[256];
};
const Fp8DecodeTables& fp8_decode_tables();
// The E8M0 code of a power of two 2^k (k in [-127, 127]).
uint8_t e8m0_from_exponent(int k);

constexpr float kE2M1Max = 6.0f;
float e2m1_to_float(uint8_t code);  // the low 4 bits: {0, .5, 1, 1.5, 2, 3, 4, 6}, bit 3 the sign
uint8_t float_to_e2m1(float f);     // RNE, saturating to +-6

// Packed FP4: element 2k in the low nibble of byte k, element 2k+1 in the high nibble.
inline uint8_t fp4_pack(uint8_t even, uint8_t odd) { return static_cast<uint8_t>((even & 0xF) | ((odd & 0xF) << 4)); }
inline uint8_t fp4_low(uint8_t byte) { return byte & 0xF; }
inline uint8_t fp4_high(uint8_t byte) { return byte >> 4; }

}  // namespace ferry::core
