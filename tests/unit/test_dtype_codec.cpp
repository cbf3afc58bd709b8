// Decoding against tables built from the spec's definitions (../shared/spec/deepseek-v4.md §4.1), and the
// encoders' round-to-nearest-even and saturation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "planner/core/dtype_codec.h"

using namespace ferry;

namespace {

// E4M3 (e4m3fn): 1 sign, 4 exponent bits (bias 7), 3 mantissa bits, no infinity, S.1111.111 is NaN.
double e4m3_table(int code) {
  const int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
  if (e == 15 && m == 7) return NAN;
  const double v = e == 0 ? (m / 8.0) * std::pow(2.0, -6) : (1 + m / 8.0) * std::pow(2.0, e - 7);
  return s ? -v : v;
}

}  // namespace

TEST(DtypeCodec, AllE4M3CodesDecodeAsSpecified) {
  int nans = 0;
  for (int c = 0; c < 256; ++c) {
    const double want = e4m3_table(c);
    const float got = core::e4m3_to_float(static_cast<uint8_t>(c));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << c;
      ++nans;
    } else {
      EXPECT_EQ(static_cast<double>(got), want) << "code " << c;
    }
  }
  EXPECT_EQ(nans, 2);
  EXPECT_EQ(core::e4m3_to_float(0x7E), 448.0f);
  EXPECT_EQ(core::e4m3_to_float(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
}

TEST(DtypeCodec, AllE2M1CodesDecodeAsSpecified) {
  const float table[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  for (int c = 0; c < 16; ++c) {
    const float want = (c & 8) ? -table[c & 7] : table[c & 7];
    EXPECT_EQ(core::e2m1_to_float(static_cast<uint8_t>(c)), want) << c;
  }
}

TEST(DtypeCodec, E8M0IsAPowerOfTwo) {
  for (int e = 0; e < 255; ++e) EXPECT_EQ(core::e8m0_to_float(static_cast<uint8_t>(e)), std::ldexp(1.0f, e - 127)) << e;
  EXPECT_TRUE(std::isnan(core::e8m0_to_float(255)));
  EXPECT_EQ(core::e8m0_from_exponent(0), 127);
  EXPECT_EQ(core::e8m0_to_float(core::e8m0_from_exponent(-5)), 1.0f / 32);
}

TEST(DtypeCodec, E4M3EncodingRoundsToNearestEvenAndSaturates) {
  for (int c = 0; c < 256; ++c) {
    if (std::isnan(core::e4m3_to_float(static_cast<uint8_t>(c)))) continue;
    EXPECT_EQ(core::float_to_e4m3(core::e4m3_to_float(static_cast<uint8_t>(c))), c)
        << c;  // every value is its own code
  }
  EXPECT_EQ(core::float_to_e4m3(1.0625f), 0x38);  // midway 1.0 (0x38) and 1.125 (0x39): even
  EXPECT_EQ(core::float_to_e4m3(1.1875f), 0x3A);  // midway 1.125 (0x39) and 1.25 (0x3A): even
  EXPECT_EQ(core::float_to_e4m3(1.07f), 0x39);    // nearer 1.125
  EXPECT_EQ(core::float_to_e4m3(1e6f), 0x7E);     // saturates to 448
  EXPECT_EQ(core::float_to_e4m3(-1e6f), 0xFE);
  EXPECT_EQ(core::float_to_e4m3(INFINITY), 0x7E);
  EXPECT_EQ(core::float_to_e4m3(std::ldexp(1.0f, -11)), 0x00);  // below half the smallest subnormal: zero
}

TEST(DtypeCodec, E2M1EncodingRoundsToNearestEvenAndSaturates) {
  EXPECT_EQ(core::float_to_e2m1(2.5f), 4);   // midway 2 (code 4) and 3 (code 5): even
  EXPECT_EQ(core::float_to_e2m1(5.0f), 6);   // midway 4 (code 6) and 6 (code 7): even
  EXPECT_EQ(core::float_to_e2m1(0.25f), 0);  // midway 0 and 0.5: even
  EXPECT_EQ(core::float_to_e2m1(0.26f), 1);
  EXPECT_EQ(core::float_to_e2m1(7.0f), 7);  // saturates to 6
  EXPECT_EQ(core::float_to_e2m1(-3.0f), 13);
  EXPECT_EQ(core::fp4_low(core::fp4_pack(3, 12)), 3);
  EXPECT_EQ(core::fp4_high(core::fp4_pack(3, 12)), 12);
}

namespace {

// The code a float must get, by search: the nearest of the non-negative finite codes in double (exact for these
// values), ties to the even code, the largest code from its value up; NaN and the sign as the encoders document.
int nearest_code_by_search(float f, int codes, double (*value)(int), int nan_code, int sign_bit) {
  if (std::isnan(f)) return nan_code;
  const double a = std::fabs(static_cast<double>(f));
  int best = codes - 1;  // saturation
  if (a < value(codes - 1)) {
    best = 0;
    for (int c = 1; c < codes; ++c) {
      const double d = std::fabs(value(c) - a), db = std::fabs(value(best) - a);
      if (d < db || (d == db && c % 2 == 0)) best = c;
    }
  }
  return std::signbit(f) ? best | sign_bit : best;
}

double e2m1_table(int code) {
  static const double v[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  return v[code];
}

// Floats near every code's value and every midpoint (500 neighbours each side, both signs), and bit patterns
// spread over all 2^32 (an odd stride, so every exponent and many mantissas): what f(x) is checked on.
template <class F>
void for_test_floats(double (*value)(int), int codes, F&& f) {
  for (int c = 0; c < codes; ++c)
    for (const double centre : {value(c), c + 1 < codes ? (value(c) + value(c + 1)) / 2 : value(c)}) {
      float x = static_cast<float>(centre), y = x;
      for (int i = 0; i < 500; ++i, x = std::nextafter(x, INFINITY), y = std::nextafter(y, -INFINITY))
        for (const float v : {x, y, -x, -y}) f(v);
    }
  for (uint64_t u = 0; u < (uint64_t{1} << 32); u += 65537) {
    const uint32_t b = static_cast<uint32_t>(u);
    float v;
    std::memcpy(&v, &b, sizeof v);
    f(v);
  }
}

}  // namespace

// The encoders' bit arithmetic against a search over the decoded codes (an exhaustive run over all 2^32 floats
// against the earlier search-based encoders agreed when they were rewritten).
TEST(DtypeCodec, E4M3EncoderIsTheNearestCodeBySearch) {
  for_test_floats(e4m3_table, 0x7F, [](float v) {
    ASSERT_EQ(core::float_to_e4m3(v), nearest_code_by_search(v, 0x7F, e4m3_table, 0x7F, 0x80)) << v;
  });
}

TEST(DtypeCodec, E2M1EncoderIsTheNearestCodeBySearch) {
  for_test_floats(e2m1_table, 8, [](float v) {
    ASSERT_EQ(core::float_to_e2m1(v), nearest_code_by_search(v, 8, e2m1_table, 0x7, 8)) << v;
  });
}

TEST(DtypeCodec, Bf16RoundsToNearestEven) {
  EXPECT_EQ(core::float_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(core::bf16_to_float(0x3F80), 1.0f);
  // 1 + 2^-8 is midway between bf16 1.0 and 1 + 2^-7: ties to even (1.0).
  EXPECT_EQ(core::float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);
  EXPECT_EQ(core::float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);
  EXPECT_TRUE(std::isnan(core::bf16_to_float(core::float_to_bf16(NAN))));
  EXPECT_EQ(core::f16_to_float(0x3C00), 1.0f);
  EXPECT_EQ(core::f16_to_float(0xC000), -2.0f);
  EXPECT_EQ(core::f16_to_float(0x0001), std::ldexp(1.0f, -24));
}
