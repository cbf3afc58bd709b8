// Decoding the stored weight encodings element by element on the device (../shared/spec/deepseek-v4.md §4.1),
// as planner/core/dtype_codec.h decodes them on the host, bit for bit (tests/unit/test_cuda_math.cpp checks every
// code): BF16, FP8 E4M3 (e4m3fn), E8M0 scales, FP4 E2M1; and the per-block rounding of an MXFP4 weight's input
// (runtime/kernels/cpu/mxfp4_activation.h). Built from bit operations and one exact multiplication, no tables:
// a kernel decodes in registers as it streams the weight.
#pragma once

#include <cstdint>

#include "runtime/kernels/cuda/device_math.h"

namespace ferry::runtime::cuda {

FERRY_HD float bf16_to_float(uint16_t b) { return float_from_bits(static_cast<uint32_t>(b) << 16); }

// E4M3 is a float with a 4-bit exponent of bias 7 and 3 mantissa bits: placed in a float's exponent and mantissa
// fields it reads as value·2^-120 (subnormals as float subnormals), so one exact product by 2^120 decodes it.
// 0x7F and 0xFF are NaN.
FERRY_HD float e4m3_to_float(uint8_t b) {
  if ((b & 0x7F) == 0x7F) return float_from_bits(0x7FC00000u);
  const uint32_t bits = (static_cast<uint32_t>(b & 0x80) << 24) | (static_cast<uint32_t>(b & 0x7F) << 20);
  return mul_rn(float_from_bits(bits), 0x1p120f);
}

// 2^(e − 127); 0 is the subnormal 2^-127, 0xFF is NaN.
FERRY_HD float e8m0_to_float(uint8_t e) {
  if (e == 0xFF) return float_from_bits(0x7FC00000u);
  return float_from_bits(e == 0 ? 0x00400000u : static_cast<uint32_t>(e) << 23);
}

// The low 4 bits: 2 exponent bits (bias 1), 1 mantissa bit, bit 3 the sign: {0, .5, 1, 1.5, 2, 3, 4, 6}.
FERRY_HD float e2m1_to_float(uint8_t code) {
  const uint32_t e = (code >> 1) & 3, m = code & 1;
  const uint32_t magnitude = e == 0 ? (m ? 0x3F000000u : 0u) : ((e + 126) << 23) | (m << 22);
  return float_from_bits(magnitude | (static_cast<uint32_t>(code & 8) << 28));
}

// ---- the MXFP4 input rounding (mxfp4_activation.h) ----

// The largest |q| of an activation precision (8, 16 or 24 bits): 127 · (1 [+ 256 [+ 65536]]).
FERRY_HD int32_t activation_qmax(int bits) { return bits == 8 ? 127 : bits == 16 ? 32639 : 8355711; }

// The block exponent k for a finite amax > 0: the smallest k with amax <= qmax·2^k.
FERRY_HD int activation_exponent(float amax, int bits) {
  const int b = bits == 8 ? 6 : bits == 16 ? 14 : 22;
  const uint32_t u = bits_of_float(amax);
  const int e = static_cast<int>((u >> 23) & 255);
  // ilogb: the exponent field, or for a subnormal the position of its highest mantissa bit.
  int k = (e != 0 ? e - 127 : highest_bit(u & 0x7FFFFF) - 149) - b;
  if (scale_pow2(amax, -k) > static_cast<float>(activation_qmax(bits))) ++k;
  return k;
}

// x rounded to the block's grid: q·2^k with q = rne(x / 2^k), exact in float (|q| < 2^23); q = 0 is +0, as the
// CPU's integer q is.
FERRY_HD float activation_round(float x, int k) { return scale_pow2(add_rn(round_even(scale_pow2(x, -k)), 0.0f), k); }

}  // namespace ferry::runtime::cuda
