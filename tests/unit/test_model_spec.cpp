// Weights against ../shared/spec/deepseek-v4.md §4 (expected values typed from the spec) and config parsing.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "planner/core/error.h"
#include "planner/core/units.h"
#include "planner/model_spec.h"
#include "test_paths.h"

using namespace ferry;
using namespace ferry::planner;

namespace {
double gib(int64_t b) { return double(b) / double(core::kGiB); }
}  // namespace

TEST(ModelSpec, V4FlashWeightsMatchSpec) {
  const ModelSpec s = load_model_spec("deepseek-v4-flash");
  EXPECT_EQ(s.tensor_count, 69187);
  EXPECT_TRUE(s.tensors.empty());         // a preset lists no tensors; core::make_tensor_inventory generates them
  EXPECT_EQ(s.expert_bytes(), 13369344);  // 12.75 MiB, exact
  EXPECT_NEAR(gib(s.total_bytes), 148.65, 0.005);
  EXPECT_NEAR(gib(s.total_bytes - s.mtp_bytes()), 145.30, 0.005);
  EXPECT_NEAR(gib(s.mtp_bytes()), 3.35, 0.005);
  EXPECT_NEAR(
      gib(s.bytes_of(core::WeightClass::RoutedExpert) - s.layers.back().bytes[size_t(core::WeightClass::RoutedExpert)]),
      137.06, 0.005);
  EXPECT_NEAR(gib(s.global[size_t(core::WeightClass::Embedding)]), 0.99, 0.005);
  EXPECT_NEAR(gib(s.global[size_t(core::WeightClass::Head)]), 0.99, 0.005);
  // Per-layer byte budget (§4.3): compressor 16.0 MiB (CSA) / 8.25 MiB (HCA), indexer 12.5 MiB, gate 2.0 MiB.
  EXPECT_NEAR(double(s.layers[2].bytes[size_t(core::WeightClass::Compressor)]) / core::kMiB, 16.0, 0.05);
  EXPECT_NEAR(double(s.layers[3].bytes[size_t(core::WeightClass::Compressor)]) / core::kMiB, 8.25, 0.05);
  EXPECT_NEAR(double(s.layers[2].bytes[size_t(core::WeightClass::Indexer)]) / core::kMiB, 12.5, 0.05);
  EXPECT_EQ(s.layers[0].n_experts, 256);
}

TEST(ModelSpec, V4ProWeightsMatchSpec) {
  const ModelSpec s = load_model_spec("deepseek-v4-pro");
  EXPECT_EQ(s.tensor_count, 145116);      // the real DeepSeek-V4-Pro dump
  EXPECT_EQ(s.expert_bytes(), 35094528);  // 33.47 MiB, exact
  EXPECT_NEAR(gib(s.total_bytes), 805.32, 0.005);
  EXPECT_NEAR(gib(s.total_bytes - s.mtp_bytes()), 792.32, 0.005);
  // §4.3 counts the checkpoint's stored elements (an I8 byte holding two FP4 codes is one): 861,608,274,846.
  int64_t stored = 0;
  for (const auto& t : core::make_tensor_inventory(s.config)) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    stored += n;
  }
  EXPECT_EQ(stored, 861608274846);
}

TEST(ModelSpec, LayerKindsFollowCompressRatios) {
  const auto flash = core::preset_config("deepseek-v4-flash");
  int swa = 0, csa = 0, hca = 0;
  for (int64_t l = 0; l < flash.num_hidden_layers; ++l) {
    switch (flash.attn_kind(l)) {
      case core::AttnKind::Swa: ++swa; break;
      case core::AttnKind::Csa: ++csa; break;
      case core::AttnKind::Hca: ++hca; break;
      default: break;
    }
  }
  EXPECT_EQ(swa, 2);
  EXPECT_EQ(csa, 21);
  EXPECT_EQ(hca, 20);
  EXPECT_EQ(flash.attn_kind(43), core::AttnKind::Swa);  // MTP
  EXPECT_TRUE(flash.is_hash_layer(2));
  EXPECT_FALSE(flash.is_hash_layer(3));
  const auto pro = core::preset_config("deepseek-v4-pro");
  EXPECT_EQ(pro.attn_kind(0), core::AttnKind::Hca);
  EXPECT_EQ(pro.compress_ratios.size(), 62u);
}

TEST(ModelSpec, RealFlashConfigEqualsPreset) {
  const ModelSpec from_file = load_model_spec(ferry_test::data_path("deepseek-v4-flash/config.json"));
  const ModelSpec preset = load_model_spec("deepseek-v4-flash");
  EXPECT_EQ(from_file.source, ModelSource::ConfigJson);
  const auto a = core::make_tensor_inventory(from_file.config), b = core::make_tensor_inventory(preset.config);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].name, b[i].name);
    EXPECT_EQ(a[i].shape, b[i].shape);
    EXPECT_EQ(a[i].dtype, b[i].dtype);
  }
  EXPECT_EQ(from_file.total_bytes, preset.total_bytes);
}

TEST(ModelSpec, V4TensorNamesAndPacking) {
  const std::vector<core::TensorInfo> inventory = core::make_tensor_inventory(core::preset_config("deepseek-v4-flash"));
  auto find = [&](const std::string& name) -> const core::TensorInfo& {
    for (const auto& t : inventory)
      if (t.name == name) return t;
    throw std::runtime_error("missing " + name);
  };
  // Shapes the spec quotes from the real shard-2 sample.
  EXPECT_EQ(find("layers.2.attn.wo_a.weight").shape, (std::vector<int64_t>{8192, 4096}));
  EXPECT_EQ(find("layers.2.attn.wq_a.weight").shape, (std::vector<int64_t>{1024, 4096}));
  EXPECT_EQ(find("layers.5.ffn.experts.7.w1.weight").shape, (std::vector<int64_t>{2048, 2048}));
  EXPECT_EQ(find("layers.5.ffn.experts.7.w1.weight").dtype, core::DType::I8);
  EXPECT_EQ(find("layers.5.ffn.experts.7.w1.scale").shape, (std::vector<int64_t>{2048, 128}));
  EXPECT_EQ(find("layers.5.ffn.experts.7.w2.weight").shape, (std::vector<int64_t>{4096, 1024}));
  EXPECT_EQ(find("layers.0.ffn.gate.tid2eid").shape, (std::vector<int64_t>{129280, 6}));
  EXPECT_EQ(find("layers.0.ffn.gate.tid2eid").dtype, core::DType::I64);
  EXPECT_EQ(find("layers.2.attn.wq_a.scale").shape, (std::vector<int64_t>{8, 32}));
  EXPECT_EQ(find("layers.2.attn.wq_a.scale").dtype, core::DType::F8_E8M0);
  EXPECT_EQ(find("layers.2.hc_attn_fn").shape, (std::vector<int64_t>{24, 16384}));
  EXPECT_EQ(find("mtp.0.e_proj.weight").dtype, core::DType::F8_E4M3);
  EXPECT_EQ(find("layers.2.attn.indexer.compressor.ape").shape, (std::vector<int64_t>{4, 256}));
}

namespace {

nlohmann::json flash_json() { return core::preset_config_json("deepseek-v4-flash"); }

std::string error_of(const nlohmann::json& j) {
  try {
    core::config_from_json(j, "test");
  } catch (const ferry::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(ModelConfig, RejectsUnsupportedArchitecturesNamingTheSupportedOnes) {
  auto j = flash_json();
  j["model_type"] = "llama";
  const std::string e = error_of(j);
  EXPECT_NE(e.find("'llama'"), std::string::npos) << e;
  EXPECT_NE(e.find("deepseek_v4"), std::string::npos) << e;
  EXPECT_NE(e.find("deepseek_v32"), std::string::npos) << e;
}

TEST(ModelConfig, RejectsMissingWrongTypeAndOutOfRangeKeys) {
  auto missing = flash_json();
  missing.erase("hidden_size");
  EXPECT_NE(error_of(missing).find("missing key 'hidden_size'"), std::string::npos);
  auto wrong = flash_json();
  wrong["num_hidden_layers"] = "43";
  EXPECT_NE(error_of(wrong).find("'num_hidden_layers' must be an integer"), std::string::npos);
  auto negative = flash_json();
  negative["n_routed_experts"] = -4;
  EXPECT_NE(error_of(negative).find("out of range"), std::string::npos);
  auto ratios = flash_json();
  ratios["compress_ratios"].erase(0);
  EXPECT_NE(error_of(ratios).find("compress_ratios has 43 entries, expected 44"), std::string::npos);
  auto groups = flash_json();
  groups["o_groups"] = 7;
  EXPECT_NE(error_of(groups).find("o_groups"), std::string::npos);
  EXPECT_NE(error_of(nlohmann::json::array()).find("JSON object"), std::string::npos);
}

TEST(ModelConfig, MalformedJsonIsOneLine) {
  try {
    core::config_from_json_text("{\"model_type\": \"deepseek_v4\",\n \"hidden_size\": ", "x");
    FAIL() << "no error";
  } catch (const ferry::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("not valid JSON"), std::string::npos);
    EXPECT_EQ(what.find('\n'), std::string::npos);
  }
}

TEST(ModelConfig, UnknownPresetListsKnownOnes) {
  try {
    load_model_spec("deepseek-v9");
    FAIL() << "no error";
  } catch (const ferry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("deepseek-v4-flash"), std::string::npos);
  }
  EXPECT_NO_THROW(core::preset_config("deepseek-r1"));
}
