// KV-cache sizes against ../shared/spec/deepseek-v4.md §2 (the expected numbers are the spec's, typed here).
#include <gtest/gtest.h>

#include "planner/core/units.h"
#include "planner/kv_cache.h"

using namespace ferry;
using namespace ferry::planner;

namespace {

double gib(int64_t b) { return double(b) / double(core::kGiB); }

double total_gib(const char* preset, KvType t, int64_t ctx) {
  return gib(kv_total(kv_cache_bytes(core::preset_config(preset), t, ctx, 1, false)));
}

double without_state_gib(const char* preset, KvType t, int64_t ctx) {
  KvBytes b = kv_cache_bytes(core::preset_config(preset), t, ctx, 1, false);
  return gib(kv_total(b) - b[static_cast<size_t>(KvKind::CompressorState)]);
}

constexpr int64_t k1M = 1048576;
constexpr int64_t k160K = 163840;

void expect_within_half_percent(double got, double expected) {
  EXPECT_NEAR(got, expected, expected * 0.005) << "expected " << expected;
}

}  // namespace

TEST(KvCache, RowBytesMatchTheProductionLayouts) {
  const auto flash = core::preset_config("deepseek-v4-flash");
  EXPECT_EQ(kv_row_bytes(flash, KvType::FP8).main, 584);    // FlashMLA MODEL1_FP8Sparse
  EXPECT_EQ(kv_row_bytes(flash, KvType::FP8).indexer, 68);  // FP4 + UE8M0 per 32
  EXPECT_EQ(kv_row_bytes(flash, KvType::BF16).main, 1024);
  EXPECT_EQ(kv_row_bytes(flash, KvType::BF16).indexer, 256);
  EXPECT_EQ(kv_row_bytes(flash, KvType::Q8_0).main, 16 * 34);
  EXPECT_EQ(kv_row_bytes(flash, KvType::Q4_0).main, 16 * 18);
  const auto v3 = core::preset_config("deepseek-v3");
  EXPECT_EQ(kv_row_bytes(v3, KvType::BF16).main, 1152);
  EXPECT_EQ(kv_row_bytes(v3, KvType::FP8).main, 656);
  EXPECT_EQ(kv_row_bytes(core::preset_config("deepseek-v3.2"), KvType::BF16).indexer, 132);
}

TEST(KvCache, CompressorStateSizes) {
  const auto flash = core::preset_config("deepseek-v4-flash");
  EXPECT_EQ(compressor_state_bytes(flash, 0), 0);                      // SWA-only
  EXPECT_EQ(compressor_state_bytes(flash, 2), 64 * 1024 + 16 * 1024);  // CSA: main + indexer
  EXPECT_EQ(compressor_state_bytes(flash, 3), 512 * 1024);             // HCA
  // §2.3: Flash compressor state 11.64 MiB per sequence.
  const KvBytes b = kv_cache_bytes(flash, KvType::FP8, k1M, 1, false);
  EXPECT_NEAR(double(b[static_cast<size_t>(KvKind::CompressorState)]) / core::kMiB, 11.64, 0.01);
}

TEST(KvCache, V4FlashTotalsAt1M) {
  expect_within_half_percent(total_gib("deepseek-v4-flash", KvType::FP8, k1M), 3.446);
  expect_within_half_percent(total_gib("deepseek-v4-flash", KvType::BF16, k1M), 6.735);
  expect_within_half_percent(without_state_gib("deepseek-v4-flash", KvType::BF16, k1M), 6.724);  // vLLM's figure
}

TEST(KvCache, V4ProTotalsAt1M) {
  expect_within_half_percent(total_gib("deepseek-v4-pro", KvType::FP8, k1M), 4.935);
  expect_within_half_percent(total_gib("deepseek-v4-pro", KvType::BF16, k1M), 9.642);
  expect_within_half_percent(without_state_gib("deepseek-v4-pro", KvType::BF16, k1M), 9.625);
}

TEST(KvCache, V3AndV32TotalsAt160K) {
  expect_within_half_percent(total_gib("deepseek-v3", KvType::BF16, k160K), 10.723);
  expect_within_half_percent(total_gib("deepseek-v3.2", KvType::BF16, k160K), 11.951);
  expect_within_half_percent(total_gib("deepseek-v3.2", KvType::FP8, k160K), 7.335);  // production 656 + 132
}

TEST(KvCache, ShorterContextsFromTheSpecTable) {
  expect_within_half_percent(total_gib("deepseek-v4-flash", KvType::FP8, 131072), 0.443);
  expect_within_half_percent(total_gib("deepseek-v4-flash", KvType::FP8, k160K), 0.551);
  expect_within_half_percent(total_gib("deepseek-v4-pro", KvType::FP8, 131072), 0.636);
  expect_within_half_percent(total_gib("deepseek-v3", KvType::BF16, 131072), 8.578);
}

TEST(KvCache, SlopePerTokenMatchesSpec) {
  // §2.3: 3514 B/token (Flash, FP8 + FP4 idx) and 6880 B/token (Flash, BF16); 5031 / 9848 for Pro.
  auto slope = [](const char* preset, KvType t) {
    const auto c = core::preset_config(preset);
    const int64_t a = 65536, b = a + 128 * 64;  // whole HCA blocks, past the window
    return double(kv_total(kv_cache_bytes(c, t, b, 1, false)) - kv_total(kv_cache_bytes(c, t, a, 1, false))) /
           double(b - a);
  };
  EXPECT_NEAR(slope("deepseek-v4-flash", KvType::FP8), 3514, 1);
  EXPECT_NEAR(slope("deepseek-v4-flash", KvType::BF16), 6880, 1);
  EXPECT_NEAR(slope("deepseek-v4-pro", KvType::FP8), 5031, 1);
  EXPECT_NEAR(slope("deepseek-v4-pro", KvType::BF16), 9848, 1);
}

TEST(KvCache, ScalesWithParallelSequencesAndMtp) {
  const auto flash = core::preset_config("deepseek-v4-flash");
  const int64_t one = kv_total(kv_cache_bytes(flash, KvType::FP8, 4096, 1, false));
  EXPECT_EQ(kv_total(kv_cache_bytes(flash, KvType::FP8, 4096, 3, false)), 3 * one);
  // The MTP layer is SWA-only: one more 128-row ring.
  EXPECT_EQ(kv_total(kv_cache_bytes(flash, KvType::FP8, 4096, 1, true)) - one, 128 * 584);
}

TEST(KvCache, CompressedEntriesAppearOnlyForWholeBlocks) {
  const auto flash = core::preset_config("deepseek-v4-flash");
  // CSA layer 2: 7 tokens -> one entry of ratio 4; HCA layer 3: 127 tokens -> none yet.
  EXPECT_EQ(layer_kv_bytes(flash, 2, KvType::FP8, 7)[static_cast<size_t>(KvKind::CsaMain)], 584);
  EXPECT_EQ(layer_kv_bytes(flash, 3, KvType::FP8, 127)[static_cast<size_t>(KvKind::Hca)], 0);
  EXPECT_EQ(layer_kv_bytes(flash, 3, KvType::FP8, 128)[static_cast<size_t>(KvKind::Hca)], 584);
  EXPECT_EQ(layer_kv_bytes(flash, 0, KvType::FP8, 1000)[static_cast<size_t>(KvKind::SwaRing)], 128 * 584);
}

// A snapshot of the volatile state (window rings + compressor states), as the Session's default keep is argued.
TEST(KvCache, V4FlashSnapshotBytes) {
  const auto flash = core::preset_config("deepseek-v4-flash");
  const int64_t rings = 43 * 128 * 584;
  const KvBytes b = kv_cache_bytes(flash, KvType::FP8, k1M, 1, false);
  EXPECT_EQ(kv_snapshot_bytes(flash, KvType::FP8, k1M, 1), rings + b[static_cast<size_t>(KvKind::CompressorState)]);
  EXPECT_NEAR(double(kv_snapshot_bytes(flash, KvType::FP8, k1M, 4)) / core::kMiB, 58.8, 0.1);
  EXPECT_EQ(kv_snapshot_bytes(flash, KvType::BF16, 64, 1) - kv_snapshot_bytes(flash, KvType::BF16, 32, 1),
            43 * 32 * 1024);  // rings of min(ctx, 128) rows
  EXPECT_EQ(kv_snapshot_bytes(flash, KvType::FP8, k1M, 0), 0);
}
