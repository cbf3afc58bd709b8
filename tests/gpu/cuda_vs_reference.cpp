// `ferry run --gpu cuda:0`'s forward pass against the float64 reference (tests/reference/) on the tiny model, every
// layer and expert on the device: bf16 KV within 1e-3 at every prompt position and 64 greedy tokens identical; fp8
// KV within the statistical criterion the CPU meets (tests/e2e/test_forward_vs_reference.cpp). Part of the
// test_offload_cuda binary, which exits 77 without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "cuda_binding.h"
#include "reference_forward.h"
#include "reference_weights.h"

namespace ferry::testing {
namespace {

constexpr int64_t kRefPrompt = 200, kRefGenerate = 64;

struct Compared {
  runtime::GenerateResult gen;
  std::vector<double> ref_logits;
  std::vector<double> err;  // per position
};

Compared on_device_against_reference(planner::KvType kv) {
  Compared r;
  runtime::SessionOptions so;
  so.ctx = 1024, so.kv_type = kv, so.ubatch = 512;
  const std::vector<int32_t> prompt = prompt_tokens(kRefPrompt);
  with_cuda_binding({"64MiB", 64 << 20, -1, 2}, so, [&](offload::BoundPlan& bound, runtime::SessionOptions bso) {
    runtime::Session session(bound.weights(), bso);
    runtime::GenerateOptions go;
    go.n_predict = kRefGenerate;
    go.stop_at_eos = false;
    go.keep_logits = true;
    r.gen = runtime::generate(session, prompt, go);
  });
  std::vector<int32_t> tokens = prompt;
  tokens.insert(tokens.end(), r.gen.tokens.begin(), r.gen.tokens.end());
  reference::ReferenceOptions ro;
  ro.kv_type = kv;
  ro.mtp = false;
  r.ref_logits =
      reference::reference_forward(reference::load_reference_weights(tiny_model_dir(), false), tokens, ro).logits;
  const int64_t V = tiny_model().config().vocab_size;
  for (int64_t p = 0; p < static_cast<int64_t>(tokens.size()); ++p)
    r.err.push_back(rel_err(r.gen.logits.data() + p * V, r.ref_logits.data() + p * V, V));
  return r;
}

TEST(CudaVsReference, Bf16PromptWithin1em3AndGreedyTokensIdentical) {
  const Compared r = on_device_against_reference(planner::KvType::BF16);
  const int64_t V = tiny_model().config().vocab_size;
  ASSERT_EQ(static_cast<int64_t>(r.gen.logits.size()), (kRefPrompt + kRefGenerate) * V);
  for (int64_t p = 0; p < kRefPrompt; ++p) EXPECT_LE(r.err[static_cast<size_t>(p)], 1e-3) << "position " << p;
  for (int64_t i = 0; i < kRefGenerate; ++i)
    EXPECT_EQ(r.gen.tokens[static_cast<size_t>(i)], argmax_of(r.ref_logits.data() + (kRefPrompt - 1 + i) * V, V))
        << "generated token " << i;
  std::printf("cuda bf16: median rel err %.2e, max %.2e\n", median(r.err),
              *std::max_element(r.err.begin(), r.err.end()));
}

TEST(CudaVsReference, Fp8MeetsTheStatisticalCriterion) {
  const Compared r = on_device_against_reference(planner::KvType::FP8);
  const int64_t V = tiny_model().config().vocab_size;
  int64_t same = 0;
  for (int64_t p = 0; p < kRefPrompt; ++p)
    same += argmax_of(r.gen.logits.data() + p * V, V) == argmax_of(r.ref_logits.data() + p * V, V);
  const std::vector<double> prompt_err(r.err.begin(), r.err.begin() + kRefPrompt);
  std::printf("cuda fp8: prompt median rel err %.2e, all positions median %.2e, argmax equal at %lld/%lld\n",
              median(prompt_err), median(r.err), static_cast<long long>(same), static_cast<long long>(kRefPrompt));
  EXPECT_GE(static_cast<double>(same) / kRefPrompt, 0.98);
  EXPECT_LE(median(prompt_err), 1e-4);
  EXPECT_GE(fraction_at_most(prompt_err, 1e-3), 0.95);
  EXPECT_LE(median(r.err), 1e-4);
  EXPECT_GE(fraction_at_most(r.err, 1e-3), 0.95);
}

}  // namespace
}  // namespace ferry::testing
