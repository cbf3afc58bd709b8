// The CPU forward pass against the independent float64 reference (tests/reference/) on the default tiny
// model: logits at every position, greedy generation, MTP, and the statistics the fp8 cache must meet.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "forward_check.h"
#include "reference_forward.h"

namespace ferry::testing {
namespace {

using planner::KvType;

struct Run {
  std::vector<int32_t> tokens;  // prompt + generated
  runtime::GenerateResult gen;
  reference::ReferenceOutput ref;
  std::vector<double> err;      // per position
};

constexpr int64_t kPrompt = 200, kGenerate = 64;

// Prompt 200 tokens, greedy 64 more; the reference runs over all 264 tokens. Cached per KV type.
const Run& run_for(KvType kv) {
  static std::map<KvType, Run> cache;
  auto it = cache.find(kv);
  if (it != cache.end()) return it->second;
  Run r;
  const auto& model = tiny_model();
  const std::vector<int32_t> prompt = prompt_tokens(kPrompt);
  runtime::Session session(model, {.ctx = 1024, .kv_type = kv, .ubatch = 512, .mtp = false});
  runtime::GenerateOptions go;
  go.n_predict = kGenerate;
  go.stop_at_eos = false;
  go.keep_logits = true;
  r.gen = runtime::generate(session, prompt, go);
  r.tokens = prompt;
  r.tokens.insert(r.tokens.end(), r.gen.tokens.begin(), r.gen.tokens.end());
  reference::ReferenceOptions ro;
  ro.kv_type = kv;
  ro.mtp = false;
  ro.fragile_margin = 1e-4;
  r.ref = reference::reference_forward(tiny_model_dir(), r.tokens, ro);
  const int64_t V = model.config().vocab_size;
  for (int64_t p = 0; p < static_cast<int64_t>(r.tokens.size()); ++p)
    r.err.push_back(rel_err(r.gen.logits.data() + p * V, r.ref.logits.data() + p * V, V));
  return cache.emplace(kv, std::move(r)).first->second;
}

TEST(ForwardVsReference, Bf16LogitsWithin1em3EverywhereAndGreedyTokensIdentical) {
  const Run& r = run_for(KvType::BF16);
  const int64_t V = tiny_model().config().vocab_size;
  ASSERT_EQ(static_cast<int64_t>(r.gen.logits.size()), (kPrompt + kGenerate) * V);
  for (size_t p = 0; p < r.err.size(); ++p) EXPECT_LE(r.err[p], 1e-3) << "position " << p;
  for (int64_t i = 0; i < kGenerate; ++i)
    EXPECT_EQ(r.gen.tokens[static_cast<size_t>(i)], argmax_of(r.ref.logits.data() + (kPrompt - 1 + i) * V, V))
        << "generated token " << i;
  std::printf("bf16: median rel err %.2e, max %.2e\n", median(r.err), *std::max_element(r.err.begin(), r.err.end()));
}

void expect_statistical_match(const Run& r, const char* what) {
  const int64_t V = tiny_model().config().vocab_size;
  EXPECT_LE(median(r.err), 1e-4) << what;
  EXPECT_GE(fraction_at_most(r.err, 1e-3), 0.95) << what;
  int64_t same = 0;
  for (int64_t p = 0; p < kPrompt; ++p)
    same += argmax_of(r.gen.logits.data() + p * V, V) == argmax_of(r.ref.logits.data() + p * V, V);
  EXPECT_GE(static_cast<double>(same) / kPrompt, 0.98) << what;
  std::printf("%s: median rel err %.2e, %.1f%% <= 1e-3, max %.2e, argmax equal at %lld/%lld prompt positions\n", what,
              median(r.err), 100 * fraction_at_most(r.err, 1e-3), *std::max_element(r.err.begin(), r.err.end()),
              static_cast<long long>(same), static_cast<long long>(kPrompt));
}

TEST(ForwardVsReference, Fp8MeetsTheStatisticalCriterion) { expect_statistical_match(run_for(KvType::FP8), "fp8"); }

}  // namespace
}  // namespace ferry::testing
