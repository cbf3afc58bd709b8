// The reference's own building blocks, checked against values worked out by hand from the format definitions,
// and properties of the reference forward that need no other implementation.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <vector>

#include "reference_forward.h"
#include "reference_rounding.h"
#include "runtime/tiny_model.h"

namespace ferry::reference {
namespace {

TEST(ReferenceRounding, E4M3TiesToEvenAndSaturates) {
  EXPECT_EQ(round_e4m3(1.0625, {}), 1.0);    // midpoint of 1 and 1.125: even mantissa 1.000
  EXPECT_EQ(round_e4m3(1.1875, {}), 1.25);   // midpoint of 1.125 and 1.25: even mantissa 1.010
  EXPECT_EQ(round_e4m3(-3.3, {}), -3.25);
  EXPECT_EQ(round_e4m3(500, {}), 448);       // saturating
  EXPECT_EQ(round_e4m3(std::ldexp(3, -10), {}), std::ldexp(2, -9));  // 1.5 · 2^-9 between subnormals 1 and 2 -> 2
  EXPECT_EQ(round_e4m3(std::ldexp(1, -10), {}), 0.0);                 // half the smallest subnormal -> 0 (even)
}

TEST(ReferenceRounding, E2M1TiesToEven) {
  EXPECT_EQ(round_e2m1(0.25, {}), 0.0);
  EXPECT_EQ(round_e2m1(0.75, {}), 1.0);
  EXPECT_EQ(round_e2m1(1.25, {}), 1.0);
  EXPECT_EQ(round_e2m1(2.5, {}), 2.0);
  EXPECT_EQ(round_e2m1(5.0, {}), 4.0);
  EXPECT_EQ(round_e2m1(-7.0, {}), -6.0);
}

TEST(ReferenceRounding, Bf16AndF16) {
  EXPECT_EQ(round_bf16(1.0 + std::ldexp(1, -8), {}), 1.0);                      // tie -> even
  EXPECT_EQ(round_bf16(1.0 + 3 * std::ldexp(1, -8), {}), 1.0 + std::ldexp(1, -6));  // tie -> even (up)
  EXPECT_EQ(round_f16(1.0 + std::ldexp(1, -11), {}), 1.0);
  EXPECT_EQ(round_f16(0.1, {}), 0.0999755859375);
}

TEST(ReferenceRounding, BlockScalesArePowersOfTwoAboveTheFloor) {
  std::vector<double> x(64, 0.0);
  x[0] = 448;
  x[1] = 1.0625;
  qdq_fp8_block(x.data(), 64, {});
  EXPECT_EQ(x[0], 448);
  EXPECT_EQ(x[1], 1.0);
  std::vector<double> tiny(64, 1e-6);
  qdq_fp8_block(tiny.data(), 64, {});  // amax floored at 1e-4 -> scale 2^-22; 1e-6 / 2^-22 = 4.19 -> 4
  EXPECT_EQ(tiny[0], 4 * std::ldexp(1, -22));
  std::vector<double> y{6, 2.5, 5, 0.25};
  y.resize(32, 0.0);
  qdq_fp4_block(y.data(), 32, {});
  EXPECT_EQ(y[1], 2.0);
  EXPECT_EQ(y[2], 4.0);
  EXPECT_EQ(y[3], 0.0);
}

TEST(ReferenceRounding, MarginsMeasureTheDistanceToTheBoundary) {
  double margin = -1;
  round_e4m3(1.0625 * (1 + 1e-9), [&](FragileKind k, double m) {
    EXPECT_EQ(k, FragileKind::Fp8Round);
    margin = m;
  });
  EXPECT_NEAR(margin, 1e-9, 1e-12);
  round_e2m1(1.1, [&](FragileKind, double m) { margin = m; });
  EXPECT_NEAR(margin, 0.15 / 1.1, 1e-12);
  EXPECT_EQ(topk_margin(2.0, 2.0), 0.0);
  EXPECT_NEAR(topk_margin(2.0, 1.0), 0.5, 1e-15);
}

class ReferenceForward : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::filesystem::temp_directory_path() / ("ferry-reference-test-" + std::to_string(::getpid()));
    runtime::make_tiny_model(dir_, {});
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }
  static std::filesystem::path dir_;
};
std::filesystem::path ReferenceForward::dir_;

std::vector<int32_t> tokens(int n) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(3 + (i * 37) % 500);
  return t;
}

TEST_F(ReferenceForward, IsCausal) {
  ReferenceOptions o;
  o.mtp = false;
  const auto short_run = reference_forward(dir_, tokens(30), o);
  const auto long_run = reference_forward(dir_, tokens(60), o);
  ASSERT_EQ(short_run.logits.size(), 30u * 512);
  for (size_t i = 0; i < short_run.logits.size(); ++i) ASSERT_EQ(short_run.logits[i], long_run.logits[i]) << i;
}

TEST_F(ReferenceForward, LogitsAreFiniteAndDependOnPosition) {
  const auto r = reference_forward(dir_, tokens(20), {});
  for (double v : r.logits) ASSERT_TRUE(std::isfinite(v));
  EXPECT_NE(std::vector<double>(r.logits.begin(), r.logits.begin() + 512),
            std::vector<double>(r.logits.begin() + 512, r.logits.begin() + 1024));
  EXPECT_EQ(r.mtp_logits.size(), 19u * 512);
}

TEST_F(ReferenceForward, KvTypeChangesTheLogitsOnlyThroughTheCache) {
  ReferenceOptions bf16, fp8;
  bf16.kv_type = planner::KvType::BF16;
  fp8.kv_type = planner::KvType::FP8;
  const auto a = reference_forward(dir_, tokens(40), bf16), b = reference_forward(dir_, tokens(40), fp8);
  double num = 0, den = 0;
  for (size_t i = 0; i < a.logits.size(); ++i) {
    num += (a.logits[i] - b.logits[i]) * (a.logits[i] - b.logits[i]);
    den += a.logits[i] * a.logits[i];
  }
  const double rel = std::sqrt(num / den);
  EXPECT_GT(rel, 1e-6) << "fp8 storage must round";
  EXPECT_LT(rel, 0.2) << "fp8 storage must stay close to bf16";
}

TEST_F(ReferenceForward, FragileEventsFollowTheMargin) {
  ReferenceOptions none, all;
  none.fragile_margin = 0;
  all.fragile_margin = 1;
  EXPECT_TRUE(reference_forward(dir_, tokens(10), none).fragile.empty());
  EXPECT_FALSE(reference_forward(dir_, tokens(10), all).fragile.empty());
}

}  // namespace
}  // namespace ferry::reference
