// The forward pass on a device, op by op: the ops a session runs on its device are exactly the ones
// ops_of_model lists (so the support check before a run is complete), the whole forward pass on the simulated
// device gives the host's logits bit for bit, and a device that lacks an op is refused before anything runs,
// with one line naming it and the ops.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "forward_check.h"
#include "planner/core/error.h"
#include "runtime/backend/cpu_backend.h"
#include "runtime/backend/sim_backend.h"
#include "runtime/model/forward.h"
#include "runtime/model/op_support.h"

namespace ferry::testing {
namespace {

using runtime::ops::Kind;

struct KindSet final : runtime::SimOpObserver {
  std::mutex mu;
  std::set<Kind> seen;
  void before(const runtime::ops::Op& op) override {
    std::lock_guard<std::mutex> lock(mu);
    seen.insert(runtime::ops::kind_of(op));
  }
};

std::vector<float> logits_on(runtime::Backend* device, bool mtp, KindSet* observer = nullptr,
                             runtime::SimBackend* sim = nullptr) {
  runtime::SessionOptions so;
  so.ctx = 256;
  so.ubatch = 64;
  so.mtp = mtp;
  so.device = device;
  if (sim && observer) sim->set_observer(observer);
  std::vector<float> logits;
  {
    runtime::Session s(tiny_model(), so);
    s.feed(prompt_tokens(150), &logits, nullptr);
    std::vector<float> last;
    const std::vector<int32_t> one = {7};
    s.feed(one, nullptr, &last);  // a decode step too
    logits.insert(logits.end(), last.begin(), last.end());
  }
  if (sim) sim->set_observer(nullptr);
  return logits;
}

TEST(OpSupport, TheOpsASessionRunsAreTheOnesItChecksFor) {
  for (const bool mtp : {false, true}) {
    SCOPED_TRACE(mtp ? "with MTP" : "without MTP");
    runtime::SimBackend sim({int64_t{1} << 30, 0, false});
    KindSet observed;
    logits_on(&sim, mtp, &observed, &sim);
    const std::vector<Kind> listed = runtime::ops_of_model(tiny_model().config(), mtp);
    EXPECT_EQ(std::vector<Kind>(observed.seen.begin(), observed.seen.end()), listed);
  }
}

TEST(OpSupport, TheForwardPassOnTheSimulatedDeviceIsBitwiseTheHosts) {
  runtime::SimBackend sim({int64_t{1} << 30, 0, false});
  const std::vector<float> on_sim = logits_on(&sim, true), on_host = logits_on(nullptr, true);
  ASSERT_EQ(on_sim.size(), on_host.size());
  EXPECT_TRUE(std::equal(on_sim.begin(), on_sim.end(), on_host.begin(),
                         [](float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }));
}

TEST(OpSupport, ADeviceWithoutAnOpIsRefusedBeforeAnythingRuns) {
  BackendWithout partial("partial-host", {Kind::Attention});
  runtime::SessionOptions so;
  so.ctx = 64;
  so.device = &partial;
  try {
    runtime::Session s(tiny_model(), so);
    FAIL() << "a device without attention was accepted";
  } catch (const ferry::Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m, "partial-host cannot run this model's forward pass: it has no kernel for attention");
  }
  EXPECT_EQ(partial.ledger().total_current(), 0);  // nothing was allocated on it
}

}  // namespace
}  // namespace ferry::testing
