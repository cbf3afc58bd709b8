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
  for (int nodes : {1, 3, 4})
    for (int numa : {1, 2}) {
      Hardware h = hw();
      h.nodes = nodes;
      h.host.numa_nodes = numa;
      const Plan p = make_plan(s, h, PlanOptions{});
      const auto j = plan_to_json(p);
      EXPECT_EQ(j["schema"], "ferry.plan");
      EXPECT_EQ(j["schema_version"], Plan::kSchemaVersion);
      const Plan back = plan_from_json(j);
      EXPECT_EQ(plan_to_json(back).dump(), j.dump());
      EXPECT_EQ(back.devices.size(), p.devices.size());
      for (size_t i = 0; i < p.devices.size(); ++i) EXPECT_EQ(back.devices[i].use, p.devices[i].use);  // ledger too
      ASSERT_EQ(back.layers.size(), p.layers.size());
      for (size_t i = 0; i < p.layers.size(); ++i) {
        EXPECT_EQ(back.layers[i].runs, p.layers[i].runs);
        EXPECT_EQ(back.layers[i].experts, p.layers[i].experts);
      }
      EXPECT_EQ(back.fits, p.fits);
      // Compact: a few ranges per layer and node, not one object per expert.
      for (const auto& l : j["layers"]) EXPECT_LE(l["experts"].size(), size_t(nodes * numa + nodes));
    }
}

TEST(PlanJson, RejectsOtherSchemasAndBadFields) {
  const Plan p = make_plan(load_model_spec("deepseek-v4-flash"), hw(), PlanOptions{});
  auto j = plan_to_json(p);
  auto wrong_version = j;
  wrong_version["schema_version"] = 1;
  EXPECT_THROW(plan_from_json(wrong_version), ferry::Error);
  auto wrong_type = j;
  wrong_type["options"]["ctx"] = "big";
  EXPECT_THROW(plan_from_json(wrong_type), ferry::Error);
  auto bad_device = j;
  bad_device["layers"][0]["runs"][0]["device"] = "gpu9";
  EXPECT_THROW(plan_from_json(bad_device), ferry::Error);
  EXPECT_THROW(plan_from_json_text("{not json"), ferry::Error);
  EXPECT_THROW(plan_from_json_text("[]"), ferry::Error);
}

// Edited homes that do not give every expert of a layer one home, on devices that can hold it, are refused
// with one line naming the layer.
TEST(PlanJson, RejectsHomesThatDoNotHomeEveryExpertOnce) {
  Hardware h = hw();
  h.host.numa_nodes = 2;
  const Plan p = make_plan(load_model_spec("deepseek-v4-flash"), h, PlanOptions{});
  const auto j = plan_to_json(p);
  ASSERT_EQ(j["layers"][3]["experts"].size(), 2u);  // the two NUMA nodes' shares, cached by gpu0
  auto expect_error = [](const nlohmann::ordered_json& bad, const std::string& text) {
    try {
      plan_from_json(bad);
      ADD_FAILURE() << "accepted; expected an error mentioning " << text;
    } catch (const ferry::Error& e) {
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
  };
  auto twice = j;
  twice["layers"][3]["experts"][1]["first"] = 0;  // numa1's share now starts on numa0's expert 0
  expect_error(twice, "layer 3: expert 0 has two homes");
  auto gap = j;  // expert 1 homeless: the 256 homes then reach expert 256
  gap["layers"][3]["experts"][1]["first"] = 3;
  expect_error(gap, "layer 3 experts 3-257 step 2: beyond expert 255");
  auto beyond = j;
  beyond["layers"][3]["experts"][0]["step"] = 3;
  expect_error(beyond, "beyond expert 255");
  auto step0 = j;
  step0["layers"][3]["experts"][0]["step"] = 0;
  expect_error(step0, "count and step must be >= 1");
  auto unknown = j;
  unknown["layers"][3]["experts"][0]["device"] = "host.numa7";
  expect_error(unknown, "layer 3 names unknown device 'host.numa7'");
  auto cached_resident = j;
  cached_resident["layers"][3]["experts"][0]["device"] = "gpu0";
  expect_error(cached_resident, "resident on gpu0 and cached too");
  auto cache_on_host = j;
  cache_on_host["layers"][3]["experts"][0]["cache"] = "host.numa1";
  expect_error(cache_on_host, "is not a GPU of host.numa0's node that runs the layer");
  auto slots_on_host = j;
  slots_on_host["layers"][3]["runs"][0]["device"] = "host.numa0";
  expect_error(slots_on_host, "cache slots on host.numa0, not a GPU");
  auto unknown_class = j;
  unknown_class["devices"][0]["use"]["weights.everything"] = 1;
  expect_error(unknown_class, "unknown memory class 'weights.everything'");
}

// The plan records the split asked for (options.split), the one placed and why; a plan file without them (written
// before plans named their layout) reads as the layout its runs and homes make.
TEST(PlanJson, RecordsTheSplit) {
  const ModelSpec s = load_model_spec("deepseek-v4-pro");
  Hardware h = hw();
  h.nodes = 4;
  for (const Split asked : {Split::Auto, Split::Experts, Split::Layers, Split::LayersExperts}) {
    PlanOptions o;
    o.split = asked;
    const Plan p = make_plan(s, h, o);
    const auto j = plan_to_json(p);
    EXPECT_EQ(j["options"]["split"], std::string(split_name(asked)));
    EXPECT_EQ(j["split"], std::string(split_name(asked == Split::Auto ? Split::LayersExperts : asked)));
    EXPECT_EQ(j["split_reason"], p.split_reason);
    const Plan back = plan_from_json(j);
    EXPECT_EQ(back.options.split, asked);
    EXPECT_EQ(back.split, p.split);
    auto old = j;
    old.erase("split");
    old.erase("split_reason");
    old["options"].erase("split");
    const Plan inferred = plan_from_json(old);
    EXPECT_EQ(inferred.split, p.split) << split_name(asked);
    EXPECT_EQ(inferred.options.split, Split::Auto);
  }
  auto bad = plan_to_json(make_plan(s, h, PlanOptions{}));
  bad["split"] = "rows";
  EXPECT_THROW(plan_from_json(bad), ferry::Error);
  bad["split"] = "layers";  // the runs of layers+experts, every layer's experts on all nodes
  EXPECT_THROW(plan_from_json(bad), ferry::Error);
}
