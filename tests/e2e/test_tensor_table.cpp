// The tensor table's users agree: for tiny checkpoints with non-default counts (experts, top-k, hash layers,
// output groups, indexer heads, hyper-connection streams, expert encoding), the planner's bytes per class — from
// the checkpoint's headers and from its config alone — are the bytes the weight binder holds, and the model
// runs; with two shared experts (one MLP twice as wide) or none, it computes what the float64 reference does. The
// binder names the tensor that does not match.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>

#include "forward_check.h"
#include "planner/model_spec.h"
#include "reference_forward.h"
#include "test_errors.h"

namespace ferry::testing {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    const auto* t = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string(t->test_suite_name()) + "-" + t->name();
    for (char& c : name)
      if (c == '/') c = '-';
    path = fs::temp_directory_path() / ("ferry-tensor-table-" + std::to_string(::getpid()) + "-" + name);
    fs::remove_all(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

struct Counts {
  const char* name;
  bool pro_like;
  nlohmann::json overrides;
};

void PrintTo(const Counts& c, std::ostream* os) { *os << c.name; }

const Counts kCounts[] = {
    {"tiny_defaults", false, nlohmann::json::object()},
    {"more_of_everything",
     false,
     {{"n_routed_experts", 24},
      {"num_experts_per_tok", 3},
      {"num_hash_layers", 3},
      {"num_attention_heads", 8},
      {"o_groups", 4},
      {"index_n_heads", 8},
      {"hc_mult", 2},
      {"moe_intermediate_size", 64}}},
    {"fewer_and_fp8_experts",
     true,
     {{"n_routed_experts", 6},
      {"num_experts_per_tok", 1},
      {"num_hash_layers", 0},
      {"o_groups", 1},
      {"index_n_heads", 1},
      {"hc_mult", 3},
      {"expert_dtype", "fp8"}}},
    {"two_shared_experts", false, {{"n_shared_experts", 2}}},
    {"no_shared_expert", false, {{"n_shared_experts", 0}}},
};

class PlannedIsLoaded : public ::testing::TestWithParam<Counts> {};

TEST_P(PlannedIsLoaded, PerClassAndTheModelRuns) {
  const Counts& p = GetParam();
  TempDir tmp;
  runtime::make_tiny_model(tmp.path, {.seed = 5, .pro_like = p.pro_like, .overrides = p.overrides});
  const planner::ModelSpec from_headers = planner::load_model_spec(tmp.path.string());
  const planner::ModelSpec from_config = planner::load_model_spec((tmp.path / "config.json").string());
  ASSERT_EQ(from_headers.missing_tensors, 0);
  ASSERT_EQ(from_headers.unexpected_tensors, 0);
  const runtime::ModelWeights m = runtime::ModelWeights::load(tmp.path);
  const core::ModelConfig& c = m.config();
  ASSERT_EQ(static_cast<int64_t>(m.layer(0).experts.size()), c.n_routed_experts);
  for (const auto& [key, value] : p.overrides.items()) {
    if (key == "n_routed_experts") {
      EXPECT_EQ(c.n_routed_experts, value.get<int64_t>());
    }
    if (key == "hc_mult") {
      EXPECT_EQ(c.hc_mult, value.get<int64_t>());
    }
    if (key == "expert_dtype") {
      EXPECT_EQ(m.layer(0).experts[0].w1.format, core::WeightFormat::FP8);
    }
  }

  EXPECT_EQ(m.weight_bytes(), from_headers.total_bytes);  // every stored tensor is bound (one MTP layer)
  EXPECT_EQ(from_config.total_bytes, from_headers.total_bytes);
  int64_t held = 0;
  for (size_t k = 0; k < core::kNumWeightClasses; ++k) {
    const auto cls = static_cast<core::WeightClass>(k);
    EXPECT_EQ(m.bytes_of(cls), from_headers.bytes_of(cls)) << core::weight_class_name(cls);
    EXPECT_EQ(m.bytes_of(cls), from_config.bytes_of(cls)) << core::weight_class_name(cls);
    held += m.bytes_of(cls);
  }
  EXPECT_EQ(held, from_config.held_bytes_total());
  EXPECT_EQ(m.bytes_of(core::WeightClass::SharedExpert) > 0, c.n_shared_experts > 0);
  EXPECT_GT(m.bytes_of(core::WeightClass::Indexer), 0);

  // Enough tokens for every compressor to emit rows (ratio 16: one every 16 tokens), in chunks.
  runtime::Session s(m, {.ctx = 128, .kv_type = planner::KvType::FP8, .ubatch = 16, .mtp = true});
  std::vector<float> logits;
  s.feed(prompt_tokens(40), nullptr, &logits);
  ASSERT_EQ(static_cast<int64_t>(logits.size()), c.vocab_size);
  for (float x : logits) ASSERT_TRUE(std::isfinite(x));
  EXPECT_EQ(s.position(), 40);
}

INSTANTIATE_TEST_SUITE_P(Counts, PlannedIsLoaded, ::testing::ValuesIn(kCounts),
                         [](const auto& info) { return std::string(info.param.name); });

// DeepSeek's V4 checkpoints have one shared expert; other counts are a shared MLP n_shared routed experts wide
// (as V3 lays them out), or none. The forward pass computes them as the float64 reference does.
TEST(TensorTable, SharedExpertCountsComputeAsTheReference) {
  for (const int64_t shared : {0, 2}) {
    SCOPED_TRACE("n_shared_experts " + std::to_string(shared));
    TempDir tmp;
    runtime::make_tiny_model(tmp.path, {.seed = 9, .overrides = {{"n_shared_experts", shared}}});
    const runtime::ModelWeights m = runtime::ModelWeights::load(tmp.path);
    const std::vector<int32_t> tokens = prompt_tokens(24);
    runtime::Session s(m, {.ctx = 64, .kv_type = planner::KvType::BF16, .ubatch = 8, .mtp = false});
    std::vector<float> logits;
    s.feed(tokens, &logits, nullptr);
    reference::ReferenceOptions options;
    options.kv_type = planner::KvType::BF16;
    options.mtp = false;
    const reference::ReferenceOutput ref = reference::reference_forward(tmp.path, tokens, options);
    const int64_t vocab = m.config().vocab_size;
    for (int64_t p = 0; p < static_cast<int64_t>(tokens.size()); ++p)
      ASSERT_LE(rel_err(logits.data() + p * vocab, ref.logits.data() + p * vocab, vocab), 1e-4) << "position " << p;
  }
}

// Rewrites one tensor's header entry in the shard that holds it; the data section is kept as it is.
void edit_header(const fs::path& dir, const std::string& tensor, const std::function<void(nlohmann::json&)>& edit) {
  const auto index = nlohmann::json::parse(std::ifstream(dir / "model.safetensors.index.json"));
  const fs::path shard = dir / index["weight_map"][tensor].get<std::string>();
  std::ifstream in(shard, std::ios::binary);
  const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  uint64_t n;
  std::memcpy(&n, file.data(), 8);
  auto header = nlohmann::ordered_json::parse(file.substr(8, n));
  nlohmann::json entry = header[tensor];
  edit(entry);
  header[tensor] = entry;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t len = text.size();
  std::ofstream out(shard, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(&len), 8);
  out << text << file.substr(8 + n);
}

TEST(TensorTable, TheBinderNamesTheTensorThatDoesNotMatch) {
  TempDir tmp;
  runtime::make_tiny_model(tmp.path, {});
  auto load_error = [&] { return ferry_test::error_of([&] { runtime::ModelWeights::load(tmp.path); }); };
  ASSERT_EQ(load_error(), "");

  // Same byte count, so the header itself stays valid; only the table can tell.
  edit_header(tmp.path, "norm.weight", [](nlohmann::json& e) { e["dtype"] = "F16"; });
  EXPECT_EQ(load_error(), "tensor norm.weight has dtype F16, expected BF16");
  edit_header(tmp.path, "norm.weight", [](nlohmann::json& e) { e["dtype"] = "BF16"; });
  ASSERT_EQ(load_error(), "");

  edit_header(tmp.path, "layers.1.attn.attn_sink", [](nlohmann::json& e) { e["shape"] = {2, 2}; });
  EXPECT_EQ(load_error(), "tensor layers.1.attn.attn_sink has shape [2, 2], expected [4]");
}

}  // namespace
}  // namespace ferry::testing
