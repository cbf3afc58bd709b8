// `--model DIR`: a checkpoint directory's safetensors headers give the exact per-tensor bytes. The shards here
// are written with only their headers filled in (the data section is a hole), which is all the planner reads.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "planner/core/error.h"
#include "planner/core/units.h"
#include "planner/model_spec.h"
#include "planner/plan.h"
#include "small_v4_config.h"

using namespace ferry;
using namespace ferry::planner;
namespace fs = std::filesystem;

namespace {

// A small V4 with every kind of layer, so the checkpoint stays a few MB.
nlohmann::json tiny_config() { return ferry_test::small_v4_config(8, 64); }

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("ferry-model-dir-" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

void write_shard(const fs::path& file, const std::vector<core::TensorInfo>& tensors) {
  nlohmann::ordered_json h;
  int64_t offset = 0;
  for (const auto& t : tensors) {
    h[t.name] = {{"dtype", std::string(core::dtype_name(t.dtype))},
                 {"shape", t.shape},
                 {"data_offsets", {offset, offset + t.bytes}}};
    offset += t.bytes;
  }
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  std::ofstream out(file, std::ios::binary);
  const uint64_t n = header.size();
  char len[8];
  std::memcpy(len, &n, 8);  // little-endian hosts only, like the format
  out.write(len, 8);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.close();
  fs::resize_file(file, 8 + header.size() + static_cast<uint64_t>(offset));
}

// Writes config.json and two shards with an index, optionally dropping or adding a tensor.
void write_checkpoint(const fs::path& dir, const nlohmann::json& config, const std::string& drop = "",
                      bool extra = false) {
  std::ofstream(dir / "config.json") << config.dump(2);
  std::vector<core::TensorInfo> all = core::make_tensor_inventory(core::config_from_json(config, "tiny"));
  if (!drop.empty()) std::erase_if(all, [&](const core::TensorInfo& t) { return t.name == drop; });
  if (extra)
    all.push_back(
        core::TensorInfo{"layers.1.attn.mystery", core::DType::F32, {10}, 40, core::WeightClass::Other, -1, -1});
  const size_t half = all.size() / 2;
  std::vector<core::TensorInfo> a(all.begin(), all.begin() + static_cast<long>(half)),
      b(all.begin() + static_cast<long>(half), all.end());
  write_shard(dir / "model-00001-of-00002.safetensors", a);
  write_shard(dir / "model-00002-of-00002.safetensors", b);
  nlohmann::json index;
  index["metadata"] = {{"total_size", 0}};
  for (const auto& t : a) index["weight_map"][t.name] = "model-00001-of-00002.safetensors";
  for (const auto& t : b) index["weight_map"][t.name] = "model-00002-of-00002.safetensors";
  std::ofstream(dir / "model.safetensors.index.json") << index.dump(2);
}

}  // namespace

TEST(ModelDir, HeadersGiveTheSameBytesAsTheConfig) {
  TempDir tmp;
  write_checkpoint(tmp.path, tiny_config());
  const ModelSpec from_dir = load_model_spec(tmp.path.string());
  const ModelSpec from_config =
      spec_from_config(core::config_from_json(tiny_config(), "tiny"), ModelSource::ConfigJson, "tiny");
  EXPECT_EQ(from_dir.source, ModelSource::Checkpoint);
  EXPECT_EQ(from_dir.tensor_count, from_config.tensor_count);
  EXPECT_EQ(static_cast<int64_t>(from_dir.tensors.size()), from_dir.tensor_count);
  EXPECT_EQ(from_dir.total_bytes, from_config.total_bytes);
  EXPECT_EQ(from_dir.expert_bytes(), from_config.expert_bytes());
  EXPECT_EQ(from_dir.missing_tensors, 0);
  EXPECT_EQ(from_dir.unexpected_tensors, 0);
  for (size_t k = 0; k < core::kNumWeightClasses; ++k)
    EXPECT_EQ(from_dir.bytes_of(core::WeightClass(k)), from_config.bytes_of(core::WeightClass(k)));
}

TEST(ModelDir, HeaderBytesWinOverTheConfig) {
  // A checkpoint whose experts are stored differently than the config implies (here: one tensor bigger) is
  // planned with the bytes the file really holds, and the difference is reported.
  TempDir tmp;
  auto config = tiny_config();
  write_checkpoint(tmp.path, config, "layers.1.ffn.experts.3.w2.scale", true);
  const ModelSpec s = load_model_spec(tmp.path.string());
  EXPECT_EQ(s.missing_tensors, 1);
  EXPECT_EQ(s.unexpected_tensors, 1);
  EXPECT_EQ(s.bytes_of(core::WeightClass::Other), 40);
  ASSERT_EQ(s.notes.size(), 2u);
  const ModelSpec full = spec_from_config(core::config_from_json(config, "tiny"), ModelSource::ConfigJson, "tiny");
  int64_t dropped = 0;
  for (const auto& t : core::make_tensor_inventory(full.config))
    if (t.name == "layers.1.ffn.experts.3.w2.scale") dropped = t.bytes;
  EXPECT_EQ(s.total_bytes, full.total_bytes - dropped + 40);
}

TEST(ModelDir, PlanFromDirectoryMatchesPlanFromConfig) {
  TempDir tmp;
  write_checkpoint(tmp.path, tiny_config());
  Hardware hw;
  hw.gpus.push_back(parse_gpu_spec("1GiB"));
  hw.host.ram_bytes = 8 * core::kGiB;
  hw.host.memory_bandwidth = kDefaultHostBandwidth;
  hw.host.cores = 4;
  hw.host.gflops_per_core = kDefaultGflopsPerCore;
  hw.gpu_reserve_bytes = 64 * core::kMiB;
  hw.host_reserve_bytes = core::kGiB;
  const Plan a = make_plan(load_model_spec(tmp.path.string()), hw, PlanOptions{});
  const Plan b =
      make_plan(spec_from_config(core::config_from_json(tiny_config(), "tiny"), ModelSource::ConfigJson, "tiny"), hw,
                PlanOptions{});
  ASSERT_TRUE(a.fits);
  ASSERT_EQ(a.devices.size(), b.devices.size());
  for (size_t i = 0; i < a.devices.size(); ++i) EXPECT_EQ(a.devices[i].use, b.devices[i].use);
}

TEST(ModelDir, BrokenShardIsAOneLineError) {
  TempDir tmp;
  write_checkpoint(tmp.path, tiny_config());
  fs::resize_file(tmp.path / "model-00002-of-00002.safetensors", 100);  // cut inside the header
  try {
    load_model_spec(tmp.path.string());
    FAIL() << "no error";
  } catch (const ferry::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("model-00002-of-00002.safetensors"), std::string::npos) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos);
  }
}
