// Session::rewind under `mpirun -np 2` (tests/mpi/CMakeLists.txt): rank 0 drives a session of the tiny model spread
// over both ranks — a pipeline (layers 0-2 on rank 0, 3-4 and the head on rank 1) or every layer on both with the
// experts split in halves — feeds a sequence, rewinds into it again and again and feeds something else each time;
// the logits are bitwise those of a fresh single-process prefill of what the session then holds, and the rewinds
// recompute from the snapshots every rank took (fewer than K tokens when one is kept). Rank 1 follows.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "forward_check.h"
#include "tests/mpi/mpi_gtest.h"
#include "transport/rank_exchange.h"
#include "transport/world.h"

namespace ferry::transport {
namespace {

using ferry::testing::prompt_tokens;
using ferry::testing::tiny_model;

constexpr int64_t kEvery = 8;  // K; the tiny model's window is 16, its compression ratios 4 and 16
constexpr int64_t kCtx = 512;

const World& world() { return *World::current(); }

size_t sz(int64_t v) { return static_cast<size_t>(v); }

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Layers 0-2 on rank 0, 3-4 on rank 1 (with their experts): a pipeline whose head is rank 1's.
std::vector<LayerRoles> pipeline_roles(int64_t layers, int64_t experts) {
  std::vector<LayerRoles> roles;
  for (int64_t l = 0; l < layers; ++l) {
    const int r = l < 3 ? 0 : 1;
    roles.push_back({{r}, {{r, 0, experts - 1}}});
  }
  return roles;
}

// Every layer on both ranks, each computing half of its experts.
std::vector<LayerRoles> expert_roles(int64_t layers, int64_t experts) {
  return std::vector<LayerRoles>(sz(layers), {{0, 1}, {{0, 0, experts / 2 - 1}, {1, experts / 2, experts - 1}}});
}

// Every logit of a fresh single-process session fed `tokens`, in the default chunks, without snapshots.
std::vector<float> fresh_logits(const std::vector<int32_t>& tokens) {
  runtime::Session s(tiny_model(), {.ctx = kCtx});
  std::vector<float> all;
  s.feed(tokens, &all, nullptr);
  return all;
}

// Rank 0: the rewinds and their checks; rank 1 follows until rank 0 is done (also when a check failed).
void check_rewinds(const std::vector<LayerRoles>& roles) {
  RankGroup group(world(), roles);
  MpiRankExchange exchange(group, 0);
  runtime::Session s(tiny_model(),
                     {.ctx = kCtx, .ubatch = 24, .ranks = &exchange, .snapshot_every = kEvery, .snapshot_keep = 3});
  if (!world().leader()) {
    group.follow([&](int) -> runtime::Session& { return s; });
    return;
  }
  struct Stop {
    RankGroup& group;
    ~Stop() { group.announce_stop(); }
  } stop{group};
  const int64_t V = tiny_model().config().vocab_size;
  s.feed(concat(prompt_tokens(70, 1), prompt_tokens(31, 2)), nullptr, nullptr);
  // Back a few tokens (a snapshot kept), onto a snapshot, past every kept snapshot (from the start), to 0, and
  // to where the session is (nothing to do).
  int64_t from_snapshot = 0;
  for (const int64_t p : {99, 93, 88, 85, 40, 0, 5}) {
    const std::string what = "rewind to " + std::to_string(p) + " from " + std::to_string(s.position());
    const int64_t cost = s.rewind_cost(p);
    from_snapshot += p < s.position() && cost < p;
    ASSERT_EQ(s.rewind(p), cost) << what;
    const std::vector<int32_t> next = prompt_tokens(5 + p % 7, 10 + p);
    const std::vector<int32_t> held(s.tokens());
    ASSERT_EQ(static_cast<int64_t>(held.size()), p) << what;
    std::vector<float> got;
    s.feed(next, &got, nullptr);
    const std::vector<float> want = fresh_logits(concat(held, next));
    ASSERT_EQ(want.size(), sz((p + static_cast<int64_t>(next.size())) * V)) << what;
    int64_t differ = 0;
    for (size_t i = 0; i < got.size(); ++i) differ += std::memcmp(&got[i], &want[sz(p * V) + i], sizeof(float)) != 0;
    EXPECT_EQ(differ, 0) << what << ": " << differ << " of " << got.size() << " logits differ from a fresh prefill";
  }
  EXPECT_GE(from_snapshot, 3) << "the rewinds did not use the snapshots";
}

TEST(RewindRanks, PipelineOfLayersComputesAFreshPrefill) {
  const auto& c = tiny_model().config();
  check_rewinds(pipeline_roles(c.num_hidden_layers, c.n_routed_experts));
}

TEST(RewindRanks, ExpertsSplitComputesAFreshPrefill) {
  const auto& c = tiny_model().config();
  check_rewinds(expert_roles(c.num_hidden_layers, c.n_routed_experts));
}

}  // namespace
}  // namespace ferry::transport

int main(int argc, char** argv) {
  ferry::transport::World world(&argc, &argv);
  testing::InitGoogleTest(&argc, argv);
  return ferry::transport::testing_mpi::run_all_tests_on_ranks(world, "test_rewind_ranks") ? 1 : 0;
}
