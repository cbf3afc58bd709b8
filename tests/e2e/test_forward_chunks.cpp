// Chunked prefill and decode compute the same function: logits do not depend on --ubatch (up to float32
// summation order), the workspace does not depend on the context, and bad input fails before any work.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "forward_check.h"
#include "planner/core/error.h"

namespace ferry::testing {
namespace {

using planner::KvType;

constexpr int64_t kPrompt = 200;

std::vector<float> prefill_logits(KvType kv, int64_t ubatch, int64_t ctx = 1024) {
  runtime::Session s(tiny_model(), {.ctx = ctx, .kv_type = kv, .ubatch = ubatch});
  std::vector<float> logits;
  s.feed(prompt_tokens(kPrompt), &logits, nullptr);
  return logits;
}

std::vector<double> row_errors(const std::vector<float>& a, const std::vector<float>& b) {
  const int64_t V = tiny_model().config().vocab_size;
  std::vector<double> e;
  for (int64_t p = 0; p < kPrompt; ++p) e.push_back(rel_err(a.data() + p * V, b.data() + p * V, V));
  return e;
}

// Every per-token computation runs in the same order whatever the chunk (linear layers row by row, attention
// rows in window-then-compressed order, experts in id order), so chunked prefill and one-token decode
// (ubatch 1) agree bit for bit — more than the 1e-4 (bf16) and statistical (fp8) agreement required, and it
// means no rounding midpoint can fall differently between two chunk sizes.
TEST(ForwardChunks, LogitsAreBitwiseIdenticalForEveryUbatchAndKvType) {
  for (KvType kv : planner::kKvTypesByFidelity) {
    const auto base = prefill_logits(kv, 512);
    for (int64_t ub : {1, 7, 64}) {
      const auto other = prefill_logits(kv, ub);
      ASSERT_EQ(other.size(), base.size());
      int64_t differ = 0;
      for (size_t i = 0; i < base.size(); ++i) differ += other[i] != base[i];
      EXPECT_EQ(differ, 0) << planner::kv_type_name(kv) << " ubatch " << ub << ": " << differ << " logits differ";
      const auto e = row_errors(other, base);
      EXPECT_LE(*std::max_element(e.begin(), e.end()), 1e-4) << planner::kv_type_name(kv) << " ubatch " << ub;
    }
  }
}

TEST(ForwardChunks, TheLastRowOfAFeedIsTheLastRowOfAllRows) {
  runtime::Session a(tiny_model(), {.ctx = 256, .kv_type = KvType::BF16, .ubatch = 64});
  runtime::Session b(tiny_model(), {.ctx = 256, .kv_type = KvType::BF16, .ubatch = 64});
  std::vector<float> all, last;
  a.feed(prompt_tokens(100), &all, nullptr);
  b.feed(prompt_tokens(100), nullptr, &last);
  const int64_t V = tiny_model().config().vocab_size;
  EXPECT_EQ(std::vector<float>(all.end() - V, all.end()), last);
}

TEST(ForwardChunks, WorkspaceIsTheSameAt1KAnd64KContext) {
  for (int64_t ub : {1, 64, 512}) {
    runtime::Session small(tiny_model(), {.ctx = 1024, .kv_type = KvType::FP8, .ubatch = ub});
    runtime::Session large(tiny_model(), {.ctx = 65536, .kv_type = KvType::FP8, .ubatch = ub});
    std::vector<float> last;
    small.feed(prompt_tokens(300), nullptr, &last);
    large.feed(prompt_tokens(300), nullptr, &last);
    EXPECT_EQ(small.workspace_bytes(), large.workspace_bytes()) << "ubatch " << ub;
    EXPECT_EQ(large.workspace_bytes(), large.planned_workspace().bytes()) << "ubatch " << ub;
    EXPECT_GT(planner::kv_total(large.cache().bytes()), 30 * planner::kv_total(small.cache().bytes()));
  }
}

// What the session holds is what the planner's layout counts, for every KV type, chunk size and with MTP; and
// the layout is not trivially small (it grows with ubatch).
TEST(ForwardChunks, WorkspaceHeldEqualsThePlannersLayout) {
  for (KvType kv : {KvType::FP8, KvType::BF16, KvType::Q8_0, KvType::Q4_0})
    for (int64_t ub : {1, 7, 64})
      for (bool mtp : {false, true}) {
        runtime::Session s(tiny_model(), {.ctx = 256, .kv_type = kv, .ubatch = ub, .mtp = mtp});
        std::vector<float> last;
        s.feed(prompt_tokens(80), nullptr, &last);
        const auto planned =
            planner::cpu_forward_workspace(tiny_model().config(), kv, ub, s.planned_workspace().threads, mtp);
        EXPECT_EQ(s.workspace_bytes(), planned.bytes())
            << planner::kv_type_name(kv) << " ubatch " << ub << " mtp " << mtp;
      }
  const auto& c = tiny_model().config();
  EXPECT_GT(planner::cpu_forward_workspace(c, KvType::FP8, 64, 1, false).bytes(),
            planner::cpu_forward_workspace(c, KvType::FP8, 1, 1, false).bytes() + 63 * 4 * 4 * c.hidden_size);
}

TEST(ForwardChunks, BadTokensAndAFullContextFailBeforeAnyWork) {
  runtime::Session s(tiny_model(), {.ctx = 8, .kv_type = KvType::FP8, .ubatch = 4});
  std::vector<float> last;
  const int32_t vocab = static_cast<int32_t>(tiny_model().config().vocab_size);
  EXPECT_THROW(s.feed(std::vector<int32_t>{1, vocab}, nullptr, &last), Error);
  EXPECT_THROW(s.feed(std::vector<int32_t>{1, -1}, nullptr, &last), Error);
  EXPECT_EQ(s.position(), 0);
  s.feed(prompt_tokens(6), nullptr, &last);
  EXPECT_THROW(s.feed(prompt_tokens(3), nullptr, &last), Error);
  EXPECT_EQ(s.position(), 6);
  EXPECT_EQ(s.tokens(), prompt_tokens(6));  // the failed feeds left no token behind
}

// A server reuses one session for request after request: after reset() it must compute exactly what a fresh
// session does, whatever the previous sequence left in the window ring, the compressed rows, the indexer keys,
// the compressor states and the MTP layer.
TEST(ForwardChunks, AResetSessionComputesWhatAFreshOneDoes) {
  const runtime::SessionOptions o{.ctx = 512, .kv_type = KvType::FP8, .ubatch = 64, .mtp = true};
  auto run = [](runtime::Session& s) {
    std::vector<float> all, last;
    s.feed(prompt_tokens(kPrompt, 3), &all, nullptr);
    for (int32_t t : prompt_tokens(5, 4)) {
      s.feed({&t, 1}, nullptr, &last);
      all.insert(all.end(), last.begin(), last.end());
    }
    return all;
  };
  runtime::Session used(tiny_model(), o);
  used.feed(prompt_tokens(300, 2), nullptr, nullptr);  // past the window and many compressed blocks
  EXPECT_EQ(used.tokens(), prompt_tokens(300, 2));
  used.reset();
  EXPECT_EQ(used.position(), 0);
  EXPECT_TRUE(used.tokens().empty());
  EXPECT_TRUE(used.mtp_logits().empty());
  runtime::Session fresh(tiny_model(), o);
  EXPECT_EQ(run(used), run(fresh));
  EXPECT_EQ(used.mtp_logits(), fresh.mtp_logits());
  EXPECT_FALSE(fresh.mtp_logits().empty());
}

}  // namespace
}  // namespace ferry::testing
