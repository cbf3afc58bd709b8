// The reference's own building blocks against values worked out by hand from the format definitions, and
// properties of the reference forward that would fail if it were wrong and need no other implementation.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <set>
#include <vector>

#include <nlohmann/json.hpp>

#include "planner/core/dtype_codec.h"
#include "planner/core/error.h"
#include "reference_forward.h"
#include "reference_ops.h"
#include "reference_rounding.h"
#include "reference_weights.h"
#include "runtime/checkpoint/tiny_model.h"

namespace ferry::reference {
namespace {

using planner::KvType;

// ---- roundings ----

TEST(ReferenceRounding, E4M3TiesToEvenAndSaturates) {
  EXPECT_EQ(round_e4m3(1.0625), 1.0);   // midway 1.000 and 1.001: even mantissa 000
  EXPECT_EQ(round_e4m3(1.1875), 1.25);  // midway 1.001 and 1.010: even mantissa 010
  EXPECT_EQ(round_e4m3(-3.3), -3.25);
  EXPECT_EQ(round_e4m3(464), 448);  // midway 448 and 480 (beyond the format): saturates
  EXPECT_EQ(round_e4m3(1e9), 448);
  EXPECT_EQ(round_e4m3(-500), -448);
  EXPECT_EQ(round_e4m3(std::ldexp(3, -10)), std::ldexp(2, -9));  // midway subnormals 1 and 2 (×2^−9) -> 2
  EXPECT_EQ(round_e4m3(std::ldexp(1, -10)), 0.0);                // half the smallest subnormal -> 0
  EXPECT_EQ(round_e4m3(std::ldexp(1.1, -10)), std::ldexp(1, -9));
}

TEST(ReferenceRounding, E4M3GridIsEveryFiniteCode) {
  for (int code = 0; code < 256; ++code) {
    const double v = core::e4m3_to_float(static_cast<uint8_t>(code));
    if (std::isnan(v)) continue;
    EXPECT_EQ(round_e4m3(v), v) << "code " << code;
    if (code != 0x7E && code != 0xFE && code != 0x00 && code != 0x80) {  // not saturating / zero
      const double next = core::e4m3_to_float(static_cast<uint8_t>(code + 1));
      const double mid = (v + next) / 2;
      EXPECT_EQ(round_e4m3(std::nextafter(mid, v)), v) << code;
      EXPECT_EQ(round_e4m3(std::nextafter(mid, next)), next) << code;
    }
  }
}

TEST(ReferenceRounding, E2M1TiesToEvenAndSaturates) {
  EXPECT_EQ(round_e2m1(0.25), 0.0);
  EXPECT_EQ(round_e2m1(0.75), 1.0);
  EXPECT_EQ(round_e2m1(1.25), 1.0);
  EXPECT_EQ(round_e2m1(1.75), 2.0);
  EXPECT_EQ(round_e2m1(2.5), 2.0);
  EXPECT_EQ(round_e2m1(3.5), 4.0);
  EXPECT_EQ(round_e2m1(5.0), 4.0);
  EXPECT_EQ(round_e2m1(5.01), 6.0);
  EXPECT_EQ(round_e2m1(-0.76), -1.0);
  EXPECT_EQ(round_e2m1(7.0), 6.0);
  EXPECT_EQ(round_e2m1(-7.0), -6.0);
}

TEST(ReferenceRounding, Bf16AndF16) {
  EXPECT_EQ(round_bf16(1.0 + std::ldexp(1, -8)), 1.0);                          // tie -> even (down)
  EXPECT_EQ(round_bf16(1.0 + 3 * std::ldexp(1, -8)), 1.0 + std::ldexp(1, -6));  // tie -> even (up)
  EXPECT_EQ(round_bf16(-(1.0 + 3 * std::ldexp(1, -8))), -(1.0 + std::ldexp(1, -6)));
  EXPECT_EQ(round_bf16(std::ldexp(1, -134)), 0.0);                  // half the smallest subnormal -> 0
  EXPECT_EQ(round_bf16(std::ldexp(3, -134)), std::ldexp(1, -132));  // subnormal tie -> even
  EXPECT_EQ(round_f16(1.0 + std::ldexp(1, -11)), 1.0);
  EXPECT_EQ(round_f16(0.1), 0.0999755859375);
  EXPECT_EQ(round_f16(std::ldexp(1, -25)), 0.0);  // half the smallest f16 subnormal
  EXPECT_EQ(round_f16(std::ldexp(3, -25)), std::ldexp(1, -23));
  EXPECT_EQ(round_f16(65504), 65504);
}

// A cross-check against the runtime's float encoders (the reference itself does not use them): two
// independent derivations of the same format must agree on every value.
TEST(ReferenceRounding, AgreesWithTheRuntimeEncodersOnRandomFloats) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> mant(-1, 1);
  std::uniform_int_distribution<int> expo(-30, 12);
  for (int i = 0; i < 200000; ++i) {
    const float f = static_cast<float>(std::ldexp(mant(rng), expo(rng)));
    EXPECT_EQ(round_bf16(f), core::bf16_to_float(core::float_to_bf16(f))) << f;
    if (std::fabs(f) < 65504) {
      EXPECT_EQ(round_f16(f), core::f16_to_float(core::float_to_f16(f))) << f;
    }
    EXPECT_EQ(round_e4m3(f), core::e4m3_to_float(core::float_to_e4m3(f))) << f;
    EXPECT_EQ(round_e2m1(f), core::e2m1_to_float(core::float_to_e2m1(f))) << f;
    if (HasFailure()) return;
  }
}

TEST(ReferenceRounding, CeilLog2IsExact) {
  for (int k = -130; k <= 130; ++k) {
    const double p = std::ldexp(1.0, k);
    EXPECT_EQ(ceil_log2(p), k);
    EXPECT_EQ(ceil_log2(std::nextafter(p, INFINITY)), k + 1);
    EXPECT_EQ(ceil_log2(std::nextafter(p, 0.0)), k);
  }
}

TEST(ReferenceRounding, Fp8BlockIsTheIdentityOnItsGrid) {
  // amax = 448 · 2^−5: scale 2^−5, and every value an E4M3 value times the scale.
  std::vector<double> x;
  for (int i = 0; i < 64; ++i) x.push_back(std::ldexp(core::e4m3_to_float(static_cast<uint8_t>(2 * i)), -5));
  ASSERT_EQ(x[63], 448 * std::ldexp(1.0, -5));  // code 0x7E
  for (size_t i = 1; i < 64; i += 3) x[i] = -x[i];
  const auto before = x;
  qdq_fp8_block(x.data(), 64);
  EXPECT_EQ(x, before);
}

TEST(ReferenceRounding, Fp8BlockScaleIsAPowerOfTwoAboveTheFloor) {
  std::vector<double> x(64, 0.0);
  x[0] = 448;
  x[1] = 1.0625;  // scale 1: the E4M3 tie goes to 1.0
  qdq_fp8_block(x.data(), 64);
  EXPECT_EQ(x[0], 448);
  EXPECT_EQ(x[1], 1.0);
  std::vector<double> y(64, 0.0);
  y[0] = 448 * (1 + 1e-12);  // just above 448: the scale jumps to 2, and 1.0625 becomes 0.53125·2 -> 0.5·2
  y[1] = 1.0625;
  qdq_fp8_block(y.data(), 64);
  EXPECT_EQ(y[0], 448);
  EXPECT_EQ(y[1], 1.0);
  y.assign(64, 0.0);
  y[0] = 448 * (1 + 1e-12);
  y[1] = 1.1875;  // 0.59375 between 0.5625 and 0.625 (step 2^−4 at scale 2): a tie -> 0.625 (even)
  qdq_fp8_block(y.data(), 64);
  EXPECT_EQ(y[1], 1.25);
  std::vector<double> tiny(64, 1e-6);
  qdq_fp8_block(tiny.data(), 64);  // amax floored at 1e-4: scale 2^ceil(log2(1e-4/448)) = 2^−22; 4.19 -> 4
  EXPECT_EQ(tiny[0], 4 * std::ldexp(1, -22));
  std::vector<double> zeros(64, 0.0);
  qdq_fp8_block(zeros.data(), 64);
  EXPECT_EQ(zeros, std::vector<double>(64, 0.0));
}

TEST(ReferenceRounding, Fp4BlockTiesAndScale) {
  std::vector<double> y{6, 2.5, 5, 0.25, 0.75, 1.25, -3.5, 1.75};
  y.resize(32, 0.0);
  qdq_fp4_block(y.data(), 32);  // amax 6: scale 1
  EXPECT_EQ(std::vector<double>(y.begin(), y.begin() + 8), (std::vector<double>{6, 2, 4, 0, 1, 1, -4, 2}));
  std::vector<double> s{12, 5, 1};  // amax 12: scale 2; 5/2 = 2.5 -> 2; 1/2 = 0.5 stays
  s.resize(32, 0.0);
  qdq_fp4_block(s.data(), 32);
  EXPECT_EQ(s[0], 12);
  EXPECT_EQ(s[1], 4);
  EXPECT_EQ(s[2], 1);
  std::vector<double> t{7, 1};  // amax 7: scale 2 (7/6 > 1), 7/2 = 3.5 -> 4, so 8
  t.resize(32, 0.0);
  qdq_fp4_block(t.data(), 32);
  EXPECT_EQ(t[0], 8);
  EXPECT_EQ(t[1], 1);
}

TEST(ReferenceRounding, QBlocks) {
  std::vector<double> x(32);
  for (int i = 0; i < 32; ++i) x[static_cast<size_t>(i)] = i * 4 - 62;  // integers in [−62, 62]
  x[0] = 127;                                                           // d = f16(127 / 127) = 1
  auto q8 = x;
  qdq_q_block(q8.data(), 32, false);
  EXPECT_EQ(q8, x);
  std::vector<double> ties{127, 2.5, 3.5, -2.5, -0.5, 0.5001};
  ties.resize(32, 0.0);
  qdq_q_block(ties.data(), 32, false);
  EXPECT_EQ(std::vector<double>(ties.begin(), ties.begin() + 6), (std::vector<double>{127, 2, 4, -2, -0.0, 1}));
  std::vector<double> q4{7, 1.5, 2.5, -7, -3.49, 0.5};  // d = 1
  q4.resize(32, 0.0);
  qdq_q_block(q4.data(), 32, true);
  EXPECT_EQ(std::vector<double>(q4.begin(), q4.begin() + 6), (std::vector<double>{7, 2, 2, -7, -3, 0}));
  std::vector<double> one(32, 0.0);
  one[0] = 1;  // d = f16(1/127) is not 1/127: 1/d rounds to 127 and comes back near, not at, 1
  qdq_q_block(one.data(), 32, false);
  const double d = round_f16(1.0 / 127);
  EXPECT_EQ(one[0], 127 * d);
  EXPECT_NE(one[0], 1.0);
  std::vector<double> zero(32, 0.0);
  qdq_q_block(zero.data(), 32, true);
  EXPECT_EQ(zero, std::vector<double>(32, 0.0));
}

// k is the smallest integer with max|x| <= qmax·2^k, then x rounds to the integers times 2^k, ties to even.
TEST(ReferenceRounding, Mxfp4ActivationBlocks) {
  std::vector<double> x{32639, 1.5, -2.5, 0.4};  // int16: qmax = 32639, k = 0
  round_mxfp4_activation_block(x.data(), 4, 16);
  EXPECT_EQ(x, (std::vector<double>{32639, 2, -2, 0}));
  x = {32640, 3, -5, 1};  // just above qmax: k = 1, steps of 2
  round_mxfp4_activation_block(x.data(), 4, 16);
  EXPECT_EQ(x, (std::vector<double>{32640, 4, -4, 0}));
  // int24: qmax = 8355711 = 0.996·2^23, so amax 1 needs k = −22 (a step of 2^−22).
  x = {1, std::ldexp(1, -23), std::ldexp(3, -23), -std::ldexp(5, -23)};
  round_mxfp4_activation_block(x.data(), 4, 24);
  EXPECT_EQ(x, (std::vector<double>{1, 0, std::ldexp(1, -21), -std::ldexp(1, -21)}));
  x = {0, 0};
  round_mxfp4_activation_block(x.data(), 2, 24);
  EXPECT_EQ(x, (std::vector<double>{0, 0}));
  EXPECT_THROW(round_mxfp4_activation_block(x.data(), 2, 8), ferry::Error);
}

TEST(ReferenceRounding, RowRoundingFollowsTheKvTypeTable) {
  const int64_t n = 128, rope = 64;
  std::vector<double> row(n);
  for (int64_t i = 0; i < n; ++i) row[static_cast<size_t>(i)] = std::sin(0.37 * static_cast<double>(i) + 0.1) * 3;
  auto with = [&](KvType kv, RowKind kind) {
    auto r = row;
    round_kv_row(r.data(), n, kind, kv, rope, {});
    return r;
  };
  // fp8 main row: the first 64 dims as one FP8 block, the last 64 (rope) dims in BF16.
  auto fp8 = with(KvType::FP8, RowKind::Main);
  auto nope = std::vector<double>(row.begin(), row.begin() + 64);
  qdq_fp8_block(nope.data(), 64);
  for (int64_t i = 0; i < n; ++i)
    EXPECT_EQ(fp8[static_cast<size_t>(i)],
              i < 64 ? nope[static_cast<size_t>(i)] : round_bf16(row[static_cast<size_t>(i)]))
        << i;
  // fp8 indexer key and query: FP4 per 32.
  auto fp4 = row;
  for (int b = 0; b < 4; ++b) qdq_fp4_block(fp4.data() + 32 * b, 32);
  EXPECT_EQ(with(KvType::FP8, RowKind::IndexerKey), fp4);
  EXPECT_EQ(with(KvType::FP8, RowKind::IndexerQuery), fp4);
  // Only fp8 rounds the indexer query.
  for (KvType kv : {KvType::BF16, KvType::Q8_0, KvType::Q4_0}) EXPECT_EQ(with(kv, RowKind::IndexerQuery), row);
  auto bf = with(KvType::BF16, RowKind::Main);
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(bf[static_cast<size_t>(i)], round_bf16(row[static_cast<size_t>(i)]));
  EXPECT_EQ(with(KvType::BF16, RowKind::IndexerKey), bf);
  auto q4 = row;
  for (int b = 0; b < 4; ++b) qdq_q_block(q4.data() + 32 * b, 32, true);
  EXPECT_EQ(with(KvType::Q4_0, RowKind::Main), q4);
  EXPECT_EQ(with(KvType::Q4_0, RowKind::IndexerKey), q4);
}

TEST(ReferenceRounding, MarginsMeasureTheDistanceToTheBoundary) {
  std::vector<std::pair<FragileKind, double>> seen;
  const MarginSink sink = [&](FragileKind k, double m) {
    seen.emplace_back(k, m);
    return false;
  };
  round_e4m3(1.0625 * (1 + 1e-9), sink);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].first, FragileKind::Fp8Round);
  EXPECT_NEAR(seen[0].second, 1e-9, 1e-12);
  seen.clear();
  round_e2m1(1.1, sink);
  EXPECT_NEAR(seen.at(0).second, 0.15 / 1.1, 1e-12);  // nearest midpoint 1.25
  seen.clear();
  round_bf16(1.0 + std::ldexp(1, -8), sink);
  EXPECT_EQ(seen.at(0).first, FragileKind::Bf16Round);
  EXPECT_EQ(seen.at(0).second, 0.0);
  seen.clear();
  std::vector<double> block(64, 0.0);
  block[0] = 448 * 0.25 * (1 + 1e-8);  // a = amax / 448 is 2^−2 · (1 + 1e-8): right at a jump of the ceiling
  qdq_fp8_block(block.data(), 64, sink);
  EXPECT_EQ(seen.at(0).first, FragileKind::Fp8Scale);
  EXPECT_NEAR(seen.at(0).second, 1e-8, 1e-14);
  seen.clear();
  std::vector<double> q(32, 0.0);
  q[0] = 127;
  q[1] = 2.5 + 1e-7;  // d = 1: 1e-7 from the midpoint 2.5
  qdq_q_block(q.data(), 32, false, sink);
  EXPECT_EQ(seen.at(0).first, FragileKind::QScale);
  EXPECT_EQ(seen.at(0).second, std::ldexp(1, -11));  // d = 1 exactly: half an f16 step (2^−10) from a midpoint
  EXPECT_EQ(seen.at(2).first, FragileKind::QRound);
  EXPECT_NEAR(seen.at(2).second, 1e-7 / 2.5, 1e-13);
  EXPECT_EQ(topk_margin(2.0, 2.0), 0.0);
  EXPECT_NEAR(topk_margin(2.0, 1.0), 0.5, 1e-15);
  EXPECT_NEAR(topk_margin(-1.0, -2.0), 0.5, 1e-15);
}

// Taken the other way, a decision lands on the other side of its boundary, whichever side it was on.
TEST(ReferenceRounding, AFlippedDecisionTakesTheOtherSide) {
  const MarginSink flip = [](FragileKind, double) { return true; };
  EXPECT_EQ(round_e4m3(1.0625 * (1 + 1e-9)), 1.125);  // just above the midpoint of 1 and 1.125
  EXPECT_EQ(round_e4m3(1.0625 * (1 + 1e-9), flip), 1.0);
  EXPECT_EQ(round_e4m3(1.0625 * (1 - 1e-9), flip), 1.125);
  EXPECT_EQ(round_e4m3(-1.0625, flip), -1.125);  // a tie goes to the even code (1.0); flipped, to 1.125
  EXPECT_EQ(round_e2m1(2.5, flip), 3.0);         // a tie goes to 2; flipped, to 3
  EXPECT_EQ(round_e2m1(1.1, flip), 1.5);
  EXPECT_EQ(round_bf16(1.0 + std::ldexp(1, -8), flip), 1.0 + std::ldexp(1, -7));  // a tie goes to 1.0
  EXPECT_EQ(round_bf16(1.0 + std::ldexp(1.01, -8), flip), 1.0);
  // The power-of-two scale decides the grid at the bottom of E4M3's range: 1.5 * 2^-10 is on the grid at scale
  // 2^-2 (subnormal step 2^-11) and a tie at scale 2^-1 (step 2^-10, to even: 2^-9). amax / 448 just below 2^-2
  // gives scale 2^-2, flipped 2^-1; just above gives 2^-1, flipped 2^-2.
  const auto scale_flip = [](FragileKind k, double) { return k == FragileKind::Fp8Scale; };
  for (const double side : {-1e-8, 1e-8}) {
    std::vector<double> block(64, 0.0);
    block[0] = 448 * 0.25 * (1 + side);
    block[1] = std::ldexp(1.5, -10);
    std::vector<double> flipped = block;
    qdq_fp8_block(block.data(), 64);
    qdq_fp8_block(flipped.data(), 64, scale_flip);
    const double fine = std::ldexp(1.5, -10), coarse = std::ldexp(1.0, -9);
    EXPECT_EQ(block[1], side < 0 ? fine : coarse);
    EXPECT_EQ(flipped[1], side < 0 ? coarse : fine);
  }
  // q8_0 at d = 1: 2.5 + 1e-7 rounds to 3, flipped to 2; 127 (no midpoint next to it: the clamp) flips to 126.
  std::vector<double> q(32, 0.0);
  q[0] = 127;
  q[1] = 2.5 + 1e-7;
  qdq_q_block(q.data(), 32, false, [](FragileKind k, double) { return k == FragileKind::QRound; });
  EXPECT_EQ(q[1], 2.0);
  EXPECT_EQ(q[0], 126.0);
}

// ---- elementary operations ----

TEST(ReferenceOps, HadamardIsOrthonormalAndSylvester) {
  const int64_t n = 128;
  for (int64_t j = 0; j < n; ++j) {
    std::vector<double> e(n, 0.0);
    e[static_cast<size_t>(j)] = 1;
    hadamard(e.data(), n);  // column j of H / sqrt(n)
    for (int64_t i = 0; i < n; ++i) {
      const double want = ((std::popcount(static_cast<uint64_t>(i & j)) % 2) ? -1.0 : 1.0) / std::sqrt(128.0);
      ASSERT_DOUBLE_EQ(e[static_cast<size_t>(i)], want) << i << "," << j;
    }
    hadamard(e.data(), n);  // (H / sqrt n)² = I
    for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(e[static_cast<size_t>(i)], i == j ? 1.0 : 0.0, 1e-14);
  }
  // Natural (Sylvester) order: H_2m = [[H_m, H_m], [H_m, −H_m]].
  for (int64_t i = 0; i < 64; ++i)
    for (int64_t j = 0; j < 64; ++j) {
      EXPECT_EQ(hadamard_entry(i, j + 64), hadamard_entry(i, j));
      EXPECT_EQ(hadamard_entry(i + 64, j), hadamard_entry(i, j));
      EXPECT_EQ(hadamard_entry(i + 64, j + 64), -hadamard_entry(i, j));
    }
  EXPECT_EQ(hadamard_entry(0, 0), 1.0);
  EXPECT_EQ(hadamard_entry(1, 1), -1.0);
}

TEST(ReferenceOps, RopeFrequenciesAndYarnRamp) {
  const auto c = core::config_from_json(runtime::tiny_config_json({}), "tiny");
  const Vec plain = rope_frequencies(c, false), yarn = rope_frequencies(c, true);
  ASSERT_EQ(plain.size(), 32u);
  for (size_t i = 0; i < 32; ++i) EXPECT_NEAR(plain[i], std::pow(10000.0, -static_cast<double>(i) / 32), 1e-15);
  // Tiny: base 160000, factor 16, original length 65536, beta 32 / 1. By hand: corr(32) = 15.45 -> low 15,
  // corr(1) = 24.71 -> high 25. High-frequency dims (i <= 15) are kept, low-frequency ones (i >= 25) divided
  // by the factor, a linear blend between.
  for (size_t i = 0; i < 32; ++i) {
    const double f = std::pow(160000.0, -static_cast<double>(i) / 32);
    if (i <= 15)
      EXPECT_NEAR(yarn[i], f, 1e-15 * f) << i;
    else if (i >= 25)
      EXPECT_NEAR(yarn[i], f / 16, 1e-15 * f) << i;
    else
      EXPECT_NEAR(yarn[i], f * ((static_cast<double>(i) - 15) / 10 / 16 + (1 - (static_cast<double>(i) - 15) / 10)),
                  1e-15 * f)
          << i;
  }
  // A rotation: preserves the norm of every pair, and the inverse undoes it.
  std::vector<double> v(64), w;
  for (size_t i = 0; i < 64; ++i) v[i] = std::cos(static_cast<double>(i) * 1.3);
  w = v;
  apply_rope(w.data(), yarn, 1234, false);
  for (size_t i = 0; i < 32; ++i)
    EXPECT_NEAR(std::hypot(w[2 * i], w[2 * i + 1]), std::hypot(v[2 * i], v[2 * i + 1]), 1e-14);
  EXPECT_NEAR(w[0], v[0] * std::cos(1234.0) - v[1] * std::sin(1234.0), 1e-12);  // f_0 = 1
  apply_rope(w.data(), yarn, 1234, true);
  for (size_t i = 0; i < 64; ++i) EXPECT_NEAR(w[i], v[i], 1e-12);
}

TEST(ReferenceOps, TopKPrefersTheLowerIndexOnTies) {
  const TopK t = top_k({1, 3, 2, 3, 0}, 2);
  EXPECT_EQ(t.ids, (std::vector<int64_t>{1, 3}));
  ASSERT_TRUE(t.margin.has_value());
  EXPECT_NEAR(*t.margin, 1.0 / 3, 1e-15);
  const TopK tie = top_k({5, 1, 5, 5}, 2);
  EXPECT_EQ(tie.ids, (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(*tie.margin, 0.0);
  EXPECT_FALSE(top_k({1, 2}, 2).margin.has_value());  // nothing left out: no cut
  EXPECT_EQ(top_k({1, 2}, 5).ids, (std::vector<int64_t>{1, 0}));
  EXPECT_TRUE(top_k({1, 2}, 0).ids.empty());
}

TEST(ReferenceOps, RmsNormAndActivations) {
  const Vec n = rms_norm({3, 4}, {2, 1}, 0);  // rms = sqrt(12.5)
  EXPECT_NEAR(n[0], 6 / std::sqrt(12.5), 1e-15);
  EXPECT_NEAR(n[1], 4 / std::sqrt(12.5), 1e-15);
  EXPECT_NEAR(softplus(0), std::log(2.0), 1e-15);
  EXPECT_NEAR(softplus(800), 800, 1e-12);  // no overflow
  EXPECT_NEAR(softplus(-40), std::exp(-40.0), 1e-30);
  EXPECT_NEAR(silu(2), 2 / (1 + std::exp(-2.0)), 1e-15);
}

// ---- the forward pass on the tiny model ----

class ReferenceForward : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::filesystem::temp_directory_path() / ("ferry-reference-test-" + std::to_string(::getpid()));
    runtime::make_tiny_model(dir_, {});
  }
  static void TearDownTestSuite() {
    weights_.reset();
    std::filesystem::remove_all(dir_);
  }
  // The weights loaded once per process (loading is most of a short run's time).
  static ReferenceOutput run(const std::vector<int32_t>& tokens, const ReferenceOptions& o = {}) {
    if (!weights_) weights_ = std::make_unique<ReferenceWeights>(load_reference_weights(dir_, true));
    return reference_forward(*weights_, tokens, o);
  }
  static std::filesystem::path dir_;
  static std::unique_ptr<ReferenceWeights> weights_;
  static constexpr int64_t kVocab = 512, kLayers = 5;
};
std::filesystem::path ReferenceForward::dir_;
std::unique_ptr<ReferenceWeights> ReferenceForward::weights_;

std::vector<int32_t> tokens(int n, int salt = 0) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(3 + (i * 37 + salt * 101 + (i * i) % 13) % 509);
  return t;
}

ReferenceOptions opts(KvType kv, bool mtp = true, double margin = 1e-5) {
  ReferenceOptions o;
  o.kv_type = kv;
  o.mtp = mtp;
  o.fragile_margin = margin;
  return o;
}

std::vector<double> rows(const std::vector<double>& v, int64_t from, int64_t to) {
  return std::vector<double>(v.begin() + from * 512, v.begin() + to * 512);
}

double rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / den);
}

TEST_F(ReferenceForward, ShapesFiniteAndPositionDependent) {
  const auto r = reference_forward(dir_, tokens(20), {});  // the path API, as callers use it
  EXPECT_EQ(r.logits, run(tokens(20)).logits);
  EXPECT_EQ(r.vocab, kVocab);
  ASSERT_EQ(r.logits.size(), 20u * 512);
  ASSERT_EQ(r.mtp_logits.size(), 19u * 512);
  for (double v : r.logits) ASSERT_TRUE(std::isfinite(v));
  for (double v : r.mtp_logits) ASSERT_TRUE(std::isfinite(v));
  for (int64_t p = 1; p < 20; ++p) EXPECT_NE(rows(r.logits, p - 1, p), rows(r.logits, p, p + 1)) << p;
  const auto one = run({5});
  EXPECT_EQ(one.logits.size(), 512u);
  EXPECT_TRUE(one.mtp_logits.empty());
}

// Every stored row, compressed entry and indexer key is visible only to its own and later positions.
// Position 60 reaches into the indexer's top-k (15 entries > index_topk 8) and 3 HCA entries.
TEST_F(ReferenceForward, IsCausalExactly) {
  const auto a = run(tokens(30), opts(KvType::FP8));
  const auto b = run(tokens(61), opts(KvType::FP8));
  EXPECT_EQ(a.logits, rows(b.logits, 0, 30));
  EXPECT_EQ(a.mtp_logits, rows(b.mtp_logits, 0, 29));
}

// MTP at position p reads tokens[p + 1]: changing token k changes MTP row k − 1 and main row k, not before.
TEST_F(ReferenceForward, MtpReadsTheNextToken) {
  const int k = 25;
  auto t = tokens(40);
  const auto a = run(t, opts(KvType::FP8));
  t[k] = (t[k] + 7) % 512;
  const auto b = run(t, opts(KvType::FP8));
  EXPECT_EQ(rows(a.logits, 0, k), rows(b.logits, 0, k));
  EXPECT_NE(rows(a.logits, k, k + 1), rows(b.logits, k, k + 1));
  EXPECT_EQ(rows(a.mtp_logits, 0, k - 1), rows(b.mtp_logits, 0, k - 1));
  EXPECT_NE(rows(a.mtp_logits, k - 1, k), rows(b.mtp_logits, k - 1, k));
}

TEST_F(ReferenceForward, TheMtpFlagDoesNotTouchTheMainLogits) {
  const auto with = run(tokens(24), opts(KvType::BF16, true));
  const auto without = run(tokens(24), opts(KvType::BF16, false));
  EXPECT_EQ(with.logits, without.logits);
  EXPECT_TRUE(without.mtp_logits.empty());
  for (const auto& e : without.fragile) EXPECT_LT(e.layer, kLayers);
}

// The KV type acts only through the stored rows. Per position, the logits move away from bf16's as the
// storage's relative error grows (q8_0 ~0.7% of a row, fp8 ~2.4%, q4_0 ~12%); single positions jump where a
// router or indexer choice flips, so the medians are compared.
TEST_F(ReferenceForward, KvTypesDifferOnlyByTheirStorageRounding) {
  const auto t = tokens(40);
  const auto bf16 = run(t, opts(KvType::BF16, false)).logits;
  auto median_distance = [&](KvType kv) {
    const auto other = run(t, opts(kv, false)).logits;
    std::vector<double> d;
    for (int64_t p = 0; p < 40; ++p) d.push_back(rel_diff(rows(other, p, p + 1), rows(bf16, p, p + 1)));
    std::sort(d.begin(), d.end());
    return d[20];
  };
  const double q8 = median_distance(KvType::Q8_0), fp8 = median_distance(KvType::FP8),
               q4 = median_distance(KvType::Q4_0);
  std::printf("median relative distance to bf16: q8_0 %.2e, fp8 %.2e, q4_0 %.2e\n", q8, fp8, q4);
  EXPECT_GT(q8, 1e-3);
  EXPECT_LT(q8, fp8);
  EXPECT_LT(fp8, q4);
  EXPECT_LT(q4, 0.5);
}

TEST_F(ReferenceForward, FragileEventsFollowTheMargin) {
  EXPECT_TRUE(run(tokens(40), opts(KvType::FP8, true, 0)).fragile.empty());
  // Margin 1 records (nearly) every decision: every kind the fp8 cache makes shows up, in every layer.
  const auto all = run(tokens(40), opts(KvType::FP8, true, 1));
  std::set<FragileKind> kinds;
  std::set<int64_t> layers;
  for (const auto& e : all.fragile) {
    ASSERT_GE(e.margin, 0.0);
    ASSERT_LT(e.margin, 1.0);
    ASSERT_GE(e.pos, 0);
    ASSERT_LT(e.pos, 40);
    kinds.insert(e.kind);
    layers.insert(e.layer);
  }
  EXPECT_EQ(kinds, (std::set<FragileKind>{FragileKind::Fp8Round, FragileKind::Fp8Scale, FragileKind::Fp4Round,
                                          FragileKind::Fp4Scale, FragileKind::Bf16Round, FragileKind::IndexerTopk,
                                          FragileKind::RouterTopk}));
  EXPECT_EQ(layers, (std::set<int64_t>{0, 1, 2, 3, 4, kLayers}));  // kLayers: the MTP layer
  const auto q8 = run(tokens(12), opts(KvType::Q8_0, false, 1));
  kinds.clear();
  for (const auto& e : q8.fragile) kinds.insert(e.kind);
  EXPECT_EQ(kinds, (std::set<FragileKind>{FragileKind::QRound, FragileKind::QScale, FragileKind::RouterTopk}));
  // A smaller margin records a subset.
  const auto some = run(tokens(40), opts(KvType::FP8, true, 1e-3));
  EXPECT_LT(some.fragile.size(), all.fragile.size() / 10);
  for (const auto& e : some.fragile) EXPECT_LT(e.margin, 1e-3);
}

// Decision ids name the same decision in every run, so flipping one changes the run from that decision on and
// nothing before it; flipping none is the plain run; `positions` stops early without changing what it computes.
TEST_F(ReferenceForward, FlippingADecisionChangesTheRunFromThereOn) {
  const std::vector<int32_t> t = tokens(40);
  const auto plain = run(t, opts(KvType::FP8, false, 1e-2));
  ASSERT_FALSE(plain.fragile.empty());
  ReferenceOptions none = opts(KvType::FP8, false, 1e-2);
  none.flip = {};
  EXPECT_EQ(run(t, none).logits, plain.logits);
  ReferenceOptions early = opts(KvType::FP8, false, 1e-2);
  early.positions = 25;
  EXPECT_EQ(run(t, early).logits, rows(plain.logits, 0, 25));
  // One decision of each kind, at a position past the first few: the logits before it are bitwise the plain
  // run's, and from its position on they differ where the decision always matters (a stored value, a selection;
  // a scale or an indexer query's rounding may change nothing).
  std::set<FragileKind> done;
  for (const auto& e : plain.fragile) {
    if (e.pos < 5 || done.count(e.kind)) continue;
    done.insert(e.kind);
    ReferenceOptions o = opts(KvType::FP8, false, 1e-2);
    o.flip = {e.id};
    const auto f = run(t, o);
    SCOPED_TRACE(std::string(fragile_kind_name(e.kind)) + " at position " + std::to_string(e.pos));
    EXPECT_EQ(rows(f.logits, 0, e.pos), rows(plain.logits, 0, e.pos));
    if (e.kind == FragileKind::Fp8Round || e.kind == FragileKind::Bf16Round || e.kind == FragileKind::RouterTopk ||
        e.kind == FragileKind::IndexerTopk) {
      EXPECT_NE(rows(f.logits, e.pos, 40), rows(plain.logits, e.pos, 40));
    }
    EXPECT_EQ(f.decisions, plain.decisions);  // the same decisions, whatever their values
    for (size_t i = 0; i < plain.fragile.size() && plain.fragile[i].pos < e.pos; ++i) {
      ASSERT_LT(i, f.fragile.size());
      EXPECT_EQ(f.fragile[i].id, plain.fragile[i].id);
      EXPECT_EQ(f.fragile[i].margin, plain.fragile[i].margin);
    }
  }
  EXPECT_GE(done.size(), 4u);
}

// The alternatives (each continuing a copy of the run from its decision's position) are bitwise the runs with
// that flip added, on top of a flip already taken.
TEST_F(ReferenceForward, AlternativesAreTheFlippedRuns) {
  const std::vector<int32_t> t = tokens(30);
  ReferenceOptions o = opts(KvType::FP8, false, 1e-2);
  const auto plain = run(t, o);
  ASSERT_GE(plain.fragile.size(), 6u);
  o.flip = {plain.fragile[1].id};
  std::vector<FragileEvent> alts;
  for (size_t i = 2; i < plain.fragile.size(); i += plain.fragile.size() / 4) alts.push_back(plain.fragile[i]);
  const int64_t row = 29;
  run(t, {});  // loads the weights
  const auto at_row = reference_alternatives(*weights_, t, o, alts, row);
  ASSERT_EQ(at_row.size(), alts.size());
  for (size_t i = 0; i < alts.size(); ++i) {
    ReferenceOptions full = o;
    full.flip.push_back(alts[i].id);
    EXPECT_EQ(at_row[i], rows(run(t, full).logits, row, row + 1))
        << "alternative " << i << " at position " << alts[i].pos;
  }
}

TEST_F(ReferenceForward, RejectsBadTokensAndIncompleteCheckpoints) {
  EXPECT_THROW(reference_forward(dir_, {1, 512}, {}), ferry::Error);
  EXPECT_THROW(reference_forward(dir_, {-1}, {}), ferry::Error);
  EXPECT_THROW(reference_forward(dir_ / "no-such-dir", {1}, {}), ferry::Error);
  // A config that makes layer 2 hash-routed asks for a tid2eid the checkpoint does not have.
  const auto bad = dir_.string() + "-bad";
  std::filesystem::create_directories(bad);
  for (const auto& f : std::filesystem::directory_iterator(dir_))
    std::filesystem::copy(f.path(), bad / f.path().filename(), std::filesystem::copy_options::overwrite_existing);
  auto config = nlohmann::json::parse(std::ifstream(dir_ / "config.json"));
  config["num_hash_layers"] = 3;
  std::ofstream(std::filesystem::path(bad) / "config.json") << config.dump();
  try {
    reference_forward(bad, {1}, {});
    ADD_FAILURE() << "expected a missing-tensor error";
  } catch (const ferry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("layers.2.ffn.gate.tid2eid"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(bad);
}

}  // namespace
}  // namespace ferry::reference
