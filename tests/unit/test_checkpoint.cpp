// Safetensors written by runtime/safetensors_writer and read back through the memory-mapped Checkpoint, every
// dtype bit for bit; and the tiny model: deterministic, complete, valid.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>

#include "planner/core/dtype_codec.h"
#include "planner/core/error.h"
#include "planner/model_spec.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/checkpoint/checkpoint_inspect.h"
#include "runtime/checkpoint/safetensors_writer.h"
#include "runtime/checkpoint/tiny_model.h"
#include "test_paths.h"

using namespace ferry;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() /
           ("ferry-ckpt-" + tag + "-" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

}  // namespace

TEST(Checkpoint, EveryDtypeRoundTripsBitExactly) {
  TempDir tmp("rt");
  std::vector<runtime::TensorData> tensors;
  uint8_t next = 1;
  for (core::DType d : {core::DType::BF16, core::DType::F16, core::DType::F32, core::DType::F8_E4M3,
                        core::DType::F8_E8M0, core::DType::I8, core::DType::I32, core::DType::I64}) {
    runtime::TensorData t{"t." + std::string(core::dtype_name(d)), d, {3, 5}, {}};
    t.bytes.resize(static_cast<size_t>(15 * core::dtype_size(d)));
    for (auto& b : t.bytes) b = next = static_cast<uint8_t>(next * 37 + 11);  // every byte value pattern
    tensors.push_back(std::move(t));
  }
  runtime::write_sharded_checkpoint(tmp.path, tensors, 3);
  const runtime::Checkpoint c = runtime::Checkpoint::open(tmp.path);
  EXPECT_EQ(c.headers().shards.size(), 3u);
  for (const auto& t : tensors) {
    ASSERT_TRUE(c.has(t.name));
    EXPECT_EQ(c.info(t.name).dtype, t.dtype);
    EXPECT_EQ(c.info(t.name).shape, t.shape);
    const auto bytes = c.bytes(t.name);
    ASSERT_EQ(bytes.size(), t.bytes.size());
    EXPECT_EQ(std::memcmp(bytes.data(), t.bytes.data(), bytes.size()), 0) << t.name;
  }
  EXPECT_THROW(c.bytes("nope"), ferry::Error);
}

TEST(Checkpoint, WriterRefusesInconsistentTensors) {
  TempDir tmp("bad");
  runtime::TensorData t{"x", core::DType::F32, {2, 2}, std::vector<uint8_t>(15)};
  EXPECT_THROW(runtime::write_safetensors(tmp.path / "x.safetensors", {&t}), ferry::Error);
  EXPECT_FALSE(fs::exists(tmp.path / "x.safetensors"));
}

TEST(TinyModel, SameSeedGivesByteIdenticalFiles) {
  TempDir a("a"), b("b"), c("c");
  runtime::make_tiny_model(a.path, {.seed = 7});
  runtime::make_tiny_model(b.path, {.seed = 7});
  runtime::make_tiny_model(c.path, {.seed = 8});
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(a.path)) names.insert(e.path().filename().string());
  EXPECT_TRUE(names.count("config.json") && names.count("tokenizer.json") &&
              names.count("model.safetensors.index.json"));
  EXPECT_TRUE(names.count("model-00001-of-00002.safetensors") && names.count("model-00002-of-00002.safetensors"));
  for (const auto& n : names) EXPECT_EQ(read_all(a.path / n), read_all(b.path / n)) << n;
  EXPECT_NE(read_all(a.path / "model-00001-of-00002.safetensors"),
            read_all(c.path / "model-00001-of-00002.safetensors"));
}

TEST(TinyModel, IsValidAndHasEveryKindOfLayer) {
  TempDir tmp("valid");
  runtime::make_tiny_model(tmp.path, {});
  const runtime::CheckpointReport r = runtime::inspect_checkpoint(tmp.path);
  EXPECT_TRUE(r.valid()) << (r.problems.empty() ? "" : r.problems[0]);
  const auto& c = r.spec.config;
  std::set<core::AttnKind> kinds;
  for (int64_t l = 0; l < c.n_layers_total(); ++l) kinds.insert(c.attn_kind(l));
  EXPECT_EQ(kinds, (std::set<core::AttnKind>{core::AttnKind::Swa, core::AttnKind::Csa, core::AttnKind::Hca}));
  EXPECT_TRUE(c.is_hash_layer(0));
  EXPECT_FALSE(c.is_hash_layer(c.num_hidden_layers - 1));
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  EXPECT_GT(c.o_groups, 1);
  EXPECT_EQ(c.hc_mult, 4);
  EXPECT_LT(c.index_topk, 100 / 4);  // the indexer really selects after a 100-token prompt
  EXPECT_EQ(c.sliding_window, 16);
  EXPECT_EQ(r.bytes_by_dtype.count("I8"), 1u);
  EXPECT_EQ(r.bytes_by_dtype.count("F8_E8M0"), 1u);
  EXPECT_EQ(r.bytes_by_dtype.count("I64"), 1u);
}

TEST(TinyModel, ConfigHasExactlyTheRealConfigsKeys) {
  std::ifstream in(ferry_test::data_path("deepseek-v4-flash/config.json"));
  const nlohmann::json real = nlohmann::json::parse(in);
  for (bool pro : {false, true})
    for (bool real_ratios : {false, true}) {
      const nlohmann::json tiny = runtime::tiny_config_json({.pro_like = pro, .real_ratios = real_ratios});
      std::set<std::string> a, b;
      for (const auto& [k, v] : real.items()) a.insert(k);
      for (const auto& [k, v] : tiny.items()) b.insert(k);
      EXPECT_EQ(a, b);
      EXPECT_NO_THROW(core::config_from_json(tiny, "tiny"));
    }
  const auto real_ratios = core::config_from_json(runtime::tiny_config_json({.real_ratios = true}), "tiny");
  EXPECT_EQ(real_ratios.sliding_window, 128);
  EXPECT_EQ(real_ratios.compress_ratio(2), 128);
}

TEST(TinyModel, QuantizedWeightsDecodeNearTheirScale) {
  // FP8 weights: every 128x128 block's largest |value| uses the top of E4M3's range (power-of-two scales put
  // amax / scale in (224, 448]), so a wrong scale or packing shows up here.
  TempDir tmp("q");
  runtime::make_tiny_model(tmp.path, {});
  const runtime::Checkpoint c = runtime::Checkpoint::open(tmp.path);
  const auto w = c.bytes("layers.1.attn.wq_a.weight");
  const auto s = c.bytes("layers.1.attn.wq_a.scale");
  ASSERT_EQ(c.info("layers.1.attn.wq_a.scale").shape, (std::vector<int64_t>{1, 2}));
  float amax = 0;
  for (size_t i = 0; i < 64; ++i)
    for (size_t j = 0; j < 128; ++j)
      amax = std::max(amax, std::fabs(core::e4m3_to_float(static_cast<uint8_t>(w[i * 256 + j]))));
  EXPECT_GT(amax, 224.0f);
  EXPECT_LE(amax, 448.0f);
  // Dequantized, the weights have the planned spread sqrt(3 / in).
  const float scale = core::e8m0_to_float(static_cast<uint8_t>(s[0]));
  EXPECT_NEAR(amax * scale, std::sqrt(3.0f / 256), 0.02);
}
