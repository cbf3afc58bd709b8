#include <gtest/gtest.h>

#include "planner/core/error.h"
#include "planner/plan_json.h"

using namespace ferry;
using namespace ferry::planner;

namespace {
Hardware hw() {
  Hardware h;
  h.gpus.push_back(parse_gpu_spec("rtx3090"));
  h.host.ram_bytes = 256LL << 30;
  h.host.memory_bandwidth = kDefaultHostBandwidth;
  h.host.cores = 16;
  h.host.gflops_per_core = kDefaultGflopsPerCore;
  h.gpu_reserve_bytes = kDefaultGpuReserve;
  h.host_reserve_bytes = kDefaultHostReserve;
  h.source = "flags";
  return h;
}
}  // namespace

TEST(PlanJson, RoundTripsExactly) {
  const ModelSpec s = load_model_spec("deepseek-v4-pro");
  for (int nodes : {1, 4}) {
    Hardware h = hw();
    h.nodes = nodes;
    const Plan p = make_plan(s, h, PlanOptions{});
    const auto j = plan_to_json(p);
    EXPECT_EQ(j["schema"], "ferry.plan");
    EXPECT_EQ(j["schema_version"], Plan::kSchemaVersion);
    const Plan back = plan_from_json(j);
    EXPECT_EQ(plan_to_json(back).dump(), j.dump());
    EXPECT_EQ(back.devices.size(), p.devices.size());
    EXPECT_EQ(back.fits, p.fits);
  }
}

TEST(PlanJson, RejectsOtherSchemasAndBadFields) {
  const Plan p = make_plan(load_model_spec("deepseek-v4-flash"), hw(), PlanOptions{});
  auto j = plan_to_json(p);
  auto wrong_version = j;
  wrong_version["schema_version"] = 99;
  EXPECT_THROW(plan_from_json(wrong_version), ferry::Error);
  auto wrong_type = j;
  wrong_type["options"]["ctx"] = "big";
  EXPECT_THROW(plan_from_json(wrong_type), ferry::Error);
  auto bad_device = j;
  bad_device["layers"][0]["device"] = "gpu9";
  EXPECT_THROW(plan_from_json(bad_device), ferry::Error);
  EXPECT_THROW(plan_from_json_text("{not json"), ferry::Error);
  EXPECT_THROW(plan_from_json_text("[]"), ferry::Error);
}
