#include "planner/core/dtype_codec.h"

#include <array>
#include <bit>
#include <cmath>
#include <limits>

namespace ferry::core {

float bf16_to_float(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

uint16_t float_to_bf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if (std::isnan(f)) return static_cast<uint16_t>((x >> 16) | 0x40);  // keep it a quiet NaN
  const uint32_t rounding = 0x7FFF + ((x >> 16) & 1);
  return static_cast<uint16_t>((x + rounding) >> 16);
}

float f16_to_float(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  float v;
  if (exp == 0)
    v = std::ldexp(static_cast<float>(mant), -24);
  else if (exp == 31)
    v = mant ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  else
    v = std::ldexp(static_cast<float>(mant | 0x400), exp - 25);
  return sign ? -v : v;
}

uint16_t float_to_f16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const float a = std::fabs(f);
  if (std::isnan(f)) return static_cast<uint16_t>(sign | 0x7E00);
  if (a >= 65520.0f) return static_cast<uint16_t>(sign | 0x7C00);  // rounds past the largest finite value
  if (a < 0x1p-14f) {  // subnormal: multiples of 2^-24, exact in float, so rint's ties-to-even is the rounding
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(a * 0x1p24f)));
  }
  const uint32_t mant = x & 0x7FFFFF;
  const int exp = static_cast<int>((x >> 23) & 0xFF) - 127;
  uint32_t h = (static_cast<uint32_t>(exp + 15) << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1FFF;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;  // a carry into the exponent is the right result
  return static_cast<uint16_t>(sign | h);
}

float e4m3_to_float(uint8_t b) {
  const int sign = b >> 7, exp = (b >> 3) & 0xF, mant = b & 7;
  if (exp == 15 && mant == 7) return std::numeric_limits<float>::quiet_NaN();
  const float v =
      exp == 0 ? std::ldexp(static_cast<float>(mant), -9) : std::ldexp(static_cast<float>(8 + mant), exp - 10);
  return sign ? -v : v;
}

// The encoders round to the nearest code, ties to the even code (the one with an even mantissa), and saturate:
// written as the binary-float rounding they are, 4 ns (E2M1) and 8 ns (E4M3) a value against 24 and 104 for a
// search of the decoded codes (the synthetic checkpoints and the KV cache's rows encode every value);
// tests/unit/test_dtype_codec.cpp checks them against such a search.
uint8_t float_to_e4m3(float f) {
  if (std::isnan(f)) return 0x7F;
  const float a = std::fabs(f);
  uint32_t code;
  if (a >= 448.0f) {  // the largest finite code; 0x7F is NaN
    code = 0x7E;
  } else if (a < 0x1p-6f) {  // subnormal: multiples of 2^-9, exact in float, so rint's ties-to-even is the rounding
    code = static_cast<uint32_t>(std::nearbyint(a * 0x1p9f));
  } else {  // exponent rebiased 127 -> 7, 3 of 23 mantissa bits kept; a carry into the exponent is the right result
    const uint32_t x = std::bit_cast<uint32_t>(a);
    code = ((((x >> 23) & 0xFF) - 120) << 3) | ((x >> 20) & 7);
    const uint32_t rest = x & 0xFFFFF;
    if (rest > 0x80000 || (rest == 0x80000 && (code & 1))) ++code;  // below 448, so at most 0x7E
  }
  return static_cast<uint8_t>(std::signbit(f) ? code | 0x80 : code);
}

float e8m0_to_float(uint8_t e) {
  if (e == 0xFF) return std::numeric_limits<float>::quiet_NaN();
  return std::ldexp(1.0f, static_cast<int>(e) - 127);
}

uint8_t e8m0_from_exponent(int k) { return static_cast<uint8_t>(k + 127); }

float e2m1_to_float(uint8_t code) {
  static constexpr std::array<float, 8> kValues{0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const float v = kValues[code & 7];
  return (code & 8) ? -v : v;
}

uint8_t float_to_e2m1(float f) {
  if (std::isnan(f)) return 0x7;  // E2M1 has no NaN; saturate like a large value
  const float a = std::fabs(f);
  // The midpoints of the codes 0, 0.5, 1, 1.5, 2, 3, 4, 6: a tie stays at an even code (>) and leaves an odd one (>=).
  const int code = (a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) + (a >= 3.5f) + (a > 5.0f);
  return static_cast<uint8_t>(std::signbit(f) ? code | 8 : code);
}

const Fp8DecodeTables& fp8_decode_tables() {
  static const Fp8DecodeTables t = [] {
    Fp8DecodeTables d;
    for (int i = 0; i < 256; ++i) d.e4m3[i] = e4m3_to_float(static_cast<uint8_t>(i));
    for (int i = 0; i < 256; ++i) d.e8m0[i] = e8m0_to_float(static_cast<uint8_t>(i));
    return d;
  }();
  return t;
}

}  // namespace ferry::core
