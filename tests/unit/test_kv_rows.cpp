// KV-cache rows and buffers: every storage type rounds as docs/forward-semantics.md says, writes exactly the
// planner's row size, and a whole cache holds exactly the planner's bytes by kind.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "planner/core/dtype_codec.h"
#include "planner/core/model_config.h"
#include "planner/kv_cache.h"
#include "runtime/checkpoint/tiny_model.h"
#include "runtime/kernels/cpu/kv_rows.h"
#include "runtime/model/kv_cache.h"

namespace ferry::runtime {
namespace {

using planner::KvType;

core::ModelConfig tiny(bool pro_like = false, bool real = false) {
  TinyOptions o;
  o.pro_like = pro_like;
  o.real_ratios = real;
  return core::config_from_json(tiny_config_json(o), "tiny");
}

std::vector<float> random_row(int64_t n, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = g(rng);
  return v;
}

// Encodes with guard bytes after the row: the encoder must write exactly layout.bytes.
std::vector<uint8_t> encode_guarded(const planner::KvRowLayout& l, std::vector<float>& x) {
  std::vector<uint8_t> buf(static_cast<size_t>(l.bytes + 16), 0xA5);
  encode_kv_row(l, x.data(), buf.data());
  for (int64_t i = l.bytes; i < l.bytes + 16; ++i) EXPECT_EQ(buf[static_cast<size_t>(i)], 0xA5) << "wrote past the row";
  return buf;
}

TEST(KvRows, SizesAreThePlannersAndDecodeReturnsTheRoundedValues) {
  for (const auto& c : {tiny(), core::preset_config("deepseek-v4-flash")}) {
    for (KvType t : planner::kKvTypesByFidelity) {
      for (bool indexer : {false, true}) {
        const planner::KvRowLayout l =
            indexer ? planner::KvRowLayout::indexer_row(c, t) : planner::KvRowLayout::main_row(c, t);
        const auto rb = planner::kv_row_bytes(c, t);
        EXPECT_EQ(l.bytes, indexer ? rb.indexer : rb.main);
        std::vector<float> x = random_row(l.dims, 7, 3.0f), rounded = x;
        const auto buf = encode_guarded(l, rounded);
        std::vector<float> back(static_cast<size_t>(l.dims));
        decode_kv_row(l, buf.data(), back.data());
        EXPECT_EQ(back, rounded) << planner::kv_type_name(t) << (indexer ? " indexer" : " main");
        // Rounding must move values by less than the format's half step (relative to the block's range).
        double worst = 0, amax = 0;
        for (size_t i = 0; i < x.size(); ++i) {
          worst = std::max(worst, std::fabs(double(x[i]) - rounded[i]));
          amax = std::max(amax, std::fabs(double(x[i])));
        }
        const double bound = t == KvType::BF16 ? amax / 256 : t == KvType::Q8_0 ? amax / 127 : amax / 4;
        EXPECT_LE(worst, bound) << planner::kv_type_name(t);
        EXPECT_GT(worst, 0) << "no rounding happened";
      }
    }
  }
}

TEST(KvRows, Fp8MainRowFollowsTheModelsOwnSimulation) {
  const auto c = core::preset_config("deepseek-v4-flash");
  const planner::KvRowLayout l = planner::KvRowLayout::main_row(c, KvType::FP8);
  std::vector<float> x(512, 0.0f);
  x[0] = 448.0f;         // block 0: amax 448 -> scale 1
  x[1] = 1.0625f;        // midpoint of 1 and 1.125 -> ties to even: 1
  x[2] = 1.1875f;        // midpoint of 1.125 and 1.25 -> 1.25
  x[64] = 449.0f;        // block 1: amax just above 448 -> scale 2
  x[65] = 3.0f;          // 1.5 at scale 2 -> exactly 3
  x[128] = 1e-6f;        // block 2: amax floored at 1e-4 -> scale 2^-22
  x[448] = 1.00390625f;  // rope dim: BF16 midpoint (1 + 2^-8) -> ties to even: 1
  std::vector<float> r = x;
  const auto buf = encode_guarded(l, r);
  EXPECT_EQ(r[0], 448.0f);
  EXPECT_EQ(r[1], 1.0f);
  EXPECT_EQ(r[2], 1.25f);
  EXPECT_EQ(r[64], 448.0f);  // 449 / 2 = 224.5 -> 224 (E4M3 step 16 between 192 and 256) -> 448
  EXPECT_EQ(r[65], 3.0f);
  EXPECT_EQ(buf[448 + 128 + 1], core::e8m0_from_exponent(1));  // block 1's scale byte
  EXPECT_EQ(buf[448 + 128 + 2], core::e8m0_from_exponent(-22));
  EXPECT_EQ(r[128], 4.0f * 0x1p-22f);  // 1e-6 / 2^-22 = 4.19 -> E4M3 4 (step 0.5 there)
  EXPECT_EQ(r[448], 1.0f);
}

TEST(KvRows, Fp4IndexerKeyAndQueryRoundTheSameWay) {
  const auto c = tiny();
  const planner::KvRowLayout l = planner::KvRowLayout::indexer_row(c, KvType::FP8);
  std::vector<float> x = random_row(l.dims, 3, 1.0f);
  x[0] = 6.0f;   // block 0: amax 6 -> scale 1
  x[1] = 2.5f;   // midpoint 2 / 3 -> 2
  x[2] = 5.0f;   // midpoint 4 / 6 -> 4
  x[3] = 0.25f;  // midpoint 0 / 0.5 -> 0
  for (int i = 4; i < 32; ++i) x[i] = 0.1f * static_cast<float>(i % 7);
  std::vector<float> key = x, query = x;
  encode_guarded(l, key);
  round_indexer_query(KvType::FP8, query.data(), l.dims);
  EXPECT_EQ(key, query);
  EXPECT_EQ(key[1], 2.0f);
  EXPECT_EQ(key[2], 4.0f);
  EXPECT_EQ(key[3], 0.0f);
  std::vector<float> untouched = x;
  round_indexer_query(KvType::BF16, untouched.data(), l.dims);
  EXPECT_EQ(untouched, x) << "bf16 mode must not round indexer queries";
}

// Decoding an FP4 indexer row (vector path where the CPU has one) against the format's definition, bit for bit:
// every code at every position (value 2k in byte k's low nibble, 2k+1 in its high one; code 8 is -0), with
// scales 2^-127, 2^-1, 1, 2^127 and NaN.
TEST(KvRows, Fp4IndexerRowsDecodeToEachCodeTimesItsScale) {
  const auto c = tiny();
  const planner::KvRowLayout l = planner::KvRowLayout::indexer_row(c, KvType::FP8);
  ASSERT_EQ(l.dims % 32, 0);
  const int64_t blocks = l.dims / 32;
  std::mt19937 rng(5);
  for (const uint8_t scale : {uint8_t{0}, uint8_t{126}, uint8_t{127}, uint8_t{254}, uint8_t{255}}) {
    for (int shift = 0; shift < 16; ++shift) {
      std::vector<uint8_t> row(static_cast<size_t>(l.bytes));
      for (int64_t k = 0; k < l.dims / 2; ++k) {
        const int lo = static_cast<int>((2 * k + shift) % 16), hi = static_cast<int>((2 * k + 1 + shift) % 16);
        row[static_cast<size_t>(k)] = core::fp4_pack(static_cast<uint8_t>(lo), static_cast<uint8_t>(hi));
      }
      for (int64_t b = 0; b < blocks; ++b)
        row[static_cast<size_t>(l.dims / 2 + b)] = b == shift % blocks ? scale : static_cast<uint8_t>(120 + rng() % 14);
      std::vector<float> got(static_cast<size_t>(l.dims));
      decode_kv_row(l, row.data(), got.data());
      for (int64_t i = 0; i < l.dims; ++i) {
        const uint8_t byte = row[static_cast<size_t>(i / 2)];
        const uint8_t code = i % 2 == 0 ? core::fp4_low(byte) : core::fp4_high(byte);
        const float want =
            core::e2m1_to_float(code) * core::e8m0_to_float(row[static_cast<size_t>(l.dims / 2 + i / 32)]);
        uint32_t gb, wb;
        std::memcpy(&gb, &got[static_cast<size_t>(i)], 4);
        std::memcpy(&wb, &want, 4);
        ASSERT_EQ(gb, wb) << "value " << i << " code " << int(code) << " scale " << int(scale);
      }
    }
  }
}

TEST(KvRows, QuantBlocksUseAnF16ScaleOfAmaxOverQmax) {
  const auto c = tiny();
  for (KvType t : {KvType::Q8_0, KvType::Q4_0}) {
    const planner::KvRowLayout l = planner::KvRowLayout::main_row(c, t);
    std::vector<float> x = random_row(l.dims, 11, 2.0f), r = x;
    const auto buf = encode_guarded(l, r);
    const float qmax = t == KvType::Q8_0 ? 127.0f : 7.0f;
    const int64_t block_bytes = t == KvType::Q8_0 ? 34 : 18;
    for (int64_t b = 0; b < l.dims / 32; ++b) {
      float amax = 0;
      for (int64_t i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[static_cast<size_t>(b * 32 + i)]));
      uint16_t d16;
      std::memcpy(&d16, buf.data() + b * block_bytes, 2);
      EXPECT_EQ(d16, core::float_to_f16(amax / qmax));
      const float d = core::f16_to_float(d16);
      for (int64_t i = 0; i < 32; ++i) {
        const float v = r[static_cast<size_t>(b * 32 + i)];
        EXPECT_FLOAT_EQ(v / d, std::nearbyint(v / d));  // on the grid
        EXPECT_LE(std::fabs(v - x[static_cast<size_t>(b * 32 + i)]), d * 0.5f + amax * 1e-3f);
      }
    }
  }
}

TEST(KvCacheBytes, EqualThePlannersFormulaForEveryTypeAndContext) {
  for (const auto& c : {tiny(), tiny(true), tiny(false, true)}) {
    for (KvType t : planner::kKvTypesByFidelity) {
      for (int64_t ctx : {1, 3, 15, 16, 17, 100, 129, 1000, 4096, 65536}) {
        for (bool mtp : {false, true}) {
          const KvCache cache(c, t, ctx, mtp);
          EXPECT_EQ(cache.bytes(), planner::kv_cache_bytes(c, t, ctx, 1, mtp))
              << planner::kv_type_name(t) << " ctx " << ctx << (mtp ? " +mtp" : "");
        }
      }
    }
  }
}

}  // namespace
}  // namespace ferry::runtime
