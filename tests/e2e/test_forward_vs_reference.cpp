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

struct Comparison {
  std::vector<int32_t> tokens;  // prompt + generated
  runtime::GenerateResult gen;
  reference::ReferenceOutput ref;
  std::vector<double> err;      // per position
};

constexpr int64_t kPrompt = 200, kGenerate = 64;

// Prompt 200 tokens, greedy 64 more; the reference runs over all 264 tokens. Cached per KV type.
const Comparison& run_for(KvType kv) {
  static std::map<KvType, Comparison> cache;
  auto it = cache.find(kv);
  if (it != cache.end()) return it->second;
  Comparison r;
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

// The first position at which the reference saw a decision closer to its boundary than float32 can resolve
// (a rounding next to a grid midpoint, a near-tie at a top-k cut): from there on float32 may legitimately
// take the other side and carry the difference forward through the cache.
constexpr double kFloat32Noise = 1e-6;
constexpr int64_t kJumpPositions = 3;  // a flip's effect passes 1e-5 within this many positions

// A divergence must trace back to a fragile decision: at the first position whose logits differ by more than
// 1e-5, or at one of the few positions before it (a flip's effect can take a position or two to pass 1e-5),
// the reference took a decision float32 cannot resolve (a rounding next to a grid midpoint, a
// near-tie at a top-k cut) — the flipped row or selection is used by that very token. A bug (a wrong
// formula, row, scale or mask) shows up without such a decision.
void expect_divergence_traced(const std::vector<double>& err, const std::vector<reference::FragileEvent>& fragile,
                              int64_t layer_filter, const char* what) {
  const auto it = std::find_if(err.begin(), err.end(), [](double e) { return e > 1e-5; });
  if (it == err.end()) {
    std::printf("%s: no divergence above 1e-5 at any position\n", what);
    return;
  }
  const int64_t p_div = it - err.begin();
  const int64_t p_jump = std::max<int64_t>(0, p_div - kJumpPositions);
  const reference::FragileEvent* cause = nullptr;
  for (const auto& e : fragile)
    if (e.pos >= p_jump && e.pos <= p_div && e.margin < kFloat32Noise && (layer_filter < 0 || e.layer >= layer_filter) &&
        (!cause || e.margin < cause->margin))
      cause = &e;
  ASSERT_NE(cause, nullptr) << what << ": logits diverge first at position " << p_div << " (rel err " << *it
                            << ") with no fragile decision there or at the " << kJumpPositions << " positions before";
  std::printf("%s: first divergence at position %lld (rel err %.1e), caused at position %lld by layer %lld's %s "
              "(margin %.1e)\n",
              what, static_cast<long long>(p_div), *it, static_cast<long long>(cause->pos),
              static_cast<long long>(cause->layer), reference::fragile_kind_name(cause->kind), cause->margin);
}
void expect_divergence_traced(const Comparison& r, const char* what) {
  expect_divergence_traced(r.err, r.ref.fragile, -1, what);
}

TEST(ForwardVsReference, Bf16PromptWithin1em3AndGreedyTokensIdentical) {
  const Comparison& r = run_for(KvType::BF16);
  const int64_t V = tiny_model().config().vocab_size;
  ASSERT_EQ(static_cast<int64_t>(r.gen.logits.size()), (kPrompt + kGenerate) * V);
  for (int64_t p = 0; p < kPrompt; ++p) EXPECT_LE(r.err[static_cast<size_t>(p)], 1e-3) << "position " << p;
  for (int64_t i = 0; i < kGenerate; ++i)
    EXPECT_EQ(r.gen.tokens[static_cast<size_t>(i)], argmax_of(r.ref.logits.data() + (kPrompt - 1 + i) * V, V))
        << "generated token " << i;
  const auto over = std::count_if(r.err.begin(), r.err.end(), [](double e) { return e > 1e-3; });
  std::printf("bf16: median rel err %.2e, max %.2e, %lld of %zu positions above 1e-3\n", median(r.err),
              *std::max_element(r.err.begin(), r.err.end()), static_cast<long long>(over), r.err.size());
}

TEST(ForwardVsReference, Bf16DivergenceTracesToAFragileDecision) {
  expect_divergence_traced(run_for(KvType::BF16), "bf16");
}

TEST(ForwardVsReference, Fp8ArgmaxAgreesAndDivergenceTracesToAFragileDecision) {
  const Comparison& r = run_for(KvType::FP8);
  const int64_t V = tiny_model().config().vocab_size;
  int64_t same = 0;
  for (int64_t p = 0; p < kPrompt; ++p)
    same += argmax_of(r.gen.logits.data() + p * V, V) == argmax_of(r.ref.logits.data() + p * V, V);
  EXPECT_GE(static_cast<double>(same) / kPrompt, 0.98);
  std::printf("fp8: median rel err %.2e, %.1f%% <= 1e-3, max %.2e, argmax equal at %lld/%lld prompt positions\n",
              median(r.err), 100 * fraction_at_most(r.err, 1e-3), *std::max_element(r.err.begin(), r.err.end()),
              static_cast<long long>(same), static_cast<long long>(kPrompt));
  expect_divergence_traced(r, "fp8");
}

TEST(ForwardVsReference, QuantizedCachesTraceDivergenceToo) {
  for (KvType kv : {KvType::Q8_0, KvType::Q4_0}) expect_divergence_traced(run_for(kv), planner::kv_type_name(kv).data());
}

TEST(ForwardVsReference, MtpLogitsMatchTheReference) {
  const auto& model = tiny_model();
  const std::vector<int32_t> prompt = prompt_tokens(64, 7);
  runtime::Session session(model, {.ctx = 256, .kv_type = KvType::BF16, .ubatch = 24, .mtp = true});
  std::vector<float> last;
  session.feed(prompt, nullptr, &last);
  reference::ReferenceOptions ro;
  ro.kv_type = KvType::BF16;
  const auto ref = reference::reference_forward(tiny_model_dir(), prompt, ro);
  const int64_t V = model.config().vocab_size, n = static_cast<int64_t>(prompt.size()) - 1;
  ASSERT_EQ(static_cast<int64_t>(session.mtp_logits().size()), n * V);
  ASSERT_EQ(static_cast<int64_t>(ref.mtp_logits.size()), n * V);
  std::vector<double> err;
  for (int64_t p = 0; p < n; ++p) err.push_back(rel_err(session.mtp_logits().data() + p * V, ref.mtp_logits.data() + p * V, V));
  EXPECT_LE(err[0], 1e-5);
  expect_divergence_traced(err, ref.fragile, -1, "mtp");
}

}  // namespace
}  // namespace ferry::testing
