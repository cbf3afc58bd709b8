// The activation rounding of the MXFP4 kernels (runtime/kernels/cpu/mxfp4_activation.h), checked against its
// definition: exponents at and around the limit, round-to-nearest-even ties, the byte split, the lane sums.
#include "runtime/kernels/cpu/mxfp4_activation.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "planner/core/error.h"

namespace ferry::runtime::cpu {
namespace {

int32_t q_of(const Mxfp4Activation& a, int64_t i) {
  const size_t at = size_t(i / 32 * 16 + (i % 32) / 2);
  int32_t q = 0;
  for (int j = 0; j < a.parts; ++j) q = q * 256 + (i % 2 == 0 ? a.even[j][at] : a.odd[j][at]);
  return q;
}

constexpr core::ActivationBits kAllBits[] = {core::ActivationBits::Int8, core::ActivationBits::Int16,
                                             core::ActivationBits::Int24};

TEST(Mxfp4Activation, LimitsAreThreeOrTwoSignedBytes) {
  EXPECT_EQ(activation_qmax(core::ActivationBits::Int8), 127);
  EXPECT_EQ(activation_qmax(core::ActivationBits::Int16), 127 * 256 + 127);
  EXPECT_EQ(activation_qmax(core::ActivationBits::Int24), 127 * 65536 + 127 * 256 + 127);
}

TEST(Mxfp4Activation, ExponentIsTheSmallestThatFits) {
  for (core::ActivationBits bits : kAllBits) {
    const double qmax = activation_qmax(bits);
    for (int k = -30; k <= 20; ++k) {
      const float at_limit = static_cast<float>(std::ldexp(qmax, k));  // exact: qmax has at most 23 bits
      EXPECT_EQ(mxfp4_activation_exponent(at_limit, bits), k);
      EXPECT_EQ(mxfp4_activation_exponent(std::nextafter(at_limit, INFINITY), bits), k + 1);
      EXPECT_EQ(mxfp4_activation_exponent(static_cast<float>(std::ldexp(qmax / 2, k)), bits), k - 1);
      EXPECT_EQ(mxfp4_activation_exponent(static_cast<float>(std::ldexp(qmax / 2 + 0.5, k)), bits), k);
    }
  }
}

TEST(Mxfp4Activation, RoundsToNearestEvenAndSplitsIntoBytes) {
  // amax = 32639 gives k = 0, so q is x rounded to an integer: ties go to even.
  std::vector<float> x(64, 0.0f);
  x[0] = 32639.0f;
  const float vals[] = {2.5f,   3.5f,    -2.5f,   -0.5f,  0.5f,      1.5f,       127.5f,
                        128.0f, -128.0f, -129.0f, 255.5f, -32639.0f, 0.49999997f};
  const int32_t want[] = {2, 4, -2, 0, 0, 2, 128, 128, -128, -129, 256, -32639, 0};
  for (size_t i = 0; i < std::size(vals); ++i) x[i + 1] = vals[i];
  Mxfp4Activation a;
  quantize_mxfp4_activation(x.data(), 64, a, core::ActivationBits::Int16);
  EXPECT_EQ(a.blocks, 2);
  EXPECT_EQ(a.parts, 2);
  EXPECT_EQ(a.exponent[0], -1);  // k - 1
  EXPECT_EQ(a.exponent[1], 0);   // an all-zero block
  EXPECT_EQ(q_of(a, 0), 32639);
  for (size_t i = 0; i < std::size(vals); ++i) EXPECT_EQ(q_of(a, int64_t(i) + 1), want[i]) << vals[i];
  for (int64_t i = 32; i < 64; ++i) EXPECT_EQ(q_of(a, i), 0);
}

TEST(Mxfp4Activation, ReconstructsWithinHalfAStepAndSumsLanes) {
  for (core::ActivationBits bits : kAllBits) {
    SCOPED_TRACE(core::activation_bits_name(bits));
    std::mt19937 rng(3);
    std::normal_distribution<float> n(0.0f, 1.0f);
    std::vector<float> x(32 * 40);
    for (size_t i = 0; i < x.size(); ++i) x[i] = n(rng) * std::ldexp(1.0f, int(i / 32) - 20);  // scales 2^-20 .. 2^19
    Mxfp4Activation a;
    quantize_mxfp4_activation(x.data(), int64_t(x.size()), a, bits);
    EXPECT_EQ(a.parts, static_cast<int>(bits) / 8);
    EXPECT_EQ(a.even[0].size() % (16 * 16), 0u);  // padded to 16 blocks
    const double qmax = activation_qmax(bits);
    for (int64_t b = 0; b < a.blocks; ++b) {
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[size_t(b * 32 + i)]));
      const int k = a.exponent[size_t(b)] + 1;
      EXPECT_LE(amax, std::ldexp(qmax, k));
      EXPECT_GT(amax, std::ldexp(qmax, k - 1));
      int32_t lane[4] = {0, 0, 0, 0};
      for (int i = 0; i < 32; ++i) {
        const int32_t q = q_of(a, b * 32 + i);
        EXPECT_LE(std::fabs(std::ldexp(double(q), k) - x[size_t(b * 32 + i)]), std::ldexp(0.5, k));
        lane[i / 8] += q;
      }
      for (int m = 0; m < 4; ++m) EXPECT_EQ(a.correction[size_t(b * 4 + m)], 12 * lane[m]);
    }
  }
}

// The Int8 lane layout holds the planes' bytes regrouped (lane p of vector v: bytes 4 (v % 4) .. +3 of block
// kLaneBlock[p] of the even (v < 4) or odd plane), each block's -12 * sum q and 2^(k - 1); padding is zero.
TEST(Mxfp4Activation, Int8LanesRegroupThePlanes) {
  std::mt19937 rng(5);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> x(32 * 21);  // 21 blocks: one whole group of 16 and a partial one
  for (size_t i = 0; i < x.size(); ++i) x[i] = n(rng) * std::ldexp(1.0f, int(i / 32) % 9 - 4);
  x[32 * 20 + 3] = NAN;
  Mxfp4Activation a;
  quantize_mxfp4_activation(x.data(), int64_t(x.size()), a, core::ActivationBits::Int8);
  ASSERT_EQ(a.lanes.size(), 32u * 32);
  ASSERT_EQ(a.lane_bias.size(), 32u);
  for (int64_t g = 0; g < 2; ++g) {
    for (int p = 0; p < 16; ++p) {
      const int64_t b = 16 * g + kLaneBlock[p];
      int32_t sum = 0;
      for (int v = 0; v < 8; ++v) {
        for (int m = 0; m < 4; ++m) {
          const int64_t element = 32 * b + 2 * (4 * (v % 4) + m) + (v < 4 ? 0 : 1);
          const int32_t want = b < a.blocks ? q_of(a, element) : 0;
          EXPECT_EQ(a.lanes[size_t(512 * g + 64 * v + 4 * p + m)], want) << "block " << b << " v " << v;
          sum += want;
        }
      }
      EXPECT_EQ(a.lane_bias[size_t(16 * g + p)], -12 * sum) << "block " << b;
      const float scale = a.lane_scale[size_t(16 * g + p)];
      if (b == 20) {
        EXPECT_EQ(scale, INFINITY);
      } else if (b < a.blocks) {
        EXPECT_EQ(scale, std::ldexp(1.0f, a.exponent[size_t(b)])) << "block " << b;
      }
    }
  }
  quantize_mxfp4_activation(x.data(), int64_t(x.size()), a, core::ActivationBits::Int16);
  EXPECT_TRUE(a.lanes.empty());  // only Int8 has the layout
}

// The dispatched rounding (AVX2 where the CPU has it) is bitwise the element-by-element definition: random
// blocks over a wide range of scales, with ties, zeros, signed zeros, subnormals, blocks too small for the
// vector path, and non-finite values mixed in.
TEST(Mxfp4Activation, VectorPathIsBitwiseTheDefinition) {
  std::mt19937 rng(11);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::uniform_int_distribution<int> pick(0, 15), scale(-130, 40);
  const float specials[] = {0.0f, -0.0f, 0.5f, -2.5f, 1e-40f, -1e-42f, INFINITY, -INFINITY, NAN, 8355711.0f, 32639.0f};
  std::vector<float> x(32 * 400);
  for (size_t b = 0; b < x.size() / 32; ++b) {
    const int e = b % 7 == 0 ? -140 : scale(rng);  // some whole blocks near the subnormal range
    for (size_t i = 0; i < 32; ++i) {
      float v = std::ldexp(n(rng), e);
      if (b % 3 == 0) v = std::round(v * 4) / 4;  // many exact ties after scaling
      if (pick(rng) == 0) v = specials[size_t(pick(rng)) % std::size(specials)];
      x[b * 32 + i] = b % 11 == 0 ? 0.0f : v;  // some all-zero blocks
    }
  }
  for (core::ActivationBits bits : kAllBits) {
    SCOPED_TRACE(core::activation_bits_name(bits));
    Mxfp4Activation fast, def;
    quantize_mxfp4_activation(x.data(), int64_t(x.size()), fast, bits);
    detail::quantize_mxfp4_activation_portable(x.data(), int64_t(x.size()), def, bits);
    ASSERT_EQ(fast.parts, def.parts);
    for (int j = 0; j < def.parts; ++j) {
      EXPECT_TRUE(fast.even[j] == def.even[j]) << "even plane " << j;
      EXPECT_TRUE(fast.odd[j] == def.odd[j]) << "odd plane " << j;
    }
    EXPECT_TRUE(fast.correction == def.correction);
    EXPECT_TRUE(fast.exponent == def.exponent);
  }
}

TEST(Mxfp4Activation, RejectsColumnsOffTheBlock) {
  std::vector<float> x(48, 1.0f);
  Mxfp4Activation a;
  EXPECT_THROW(quantize_mxfp4_activation(x.data(), 48, a, core::ActivationBits::Int24), ferry::Error);
}

}  // namespace
}  // namespace ferry::runtime::cpu
