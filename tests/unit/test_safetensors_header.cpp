// Safetensors header validation: a good file and sharded directory read back, and every kind of bad header
// gives one line naming the problem.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "planner/error.h"
#include "planner/safetensors_header.h"

using namespace ferry::planner;
namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("ferry-st-" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

// Writes `header` (any text) with its length prefix, then `data_bytes` zero bytes.
void write_raw(const fs::path& file, const std::string& header, int64_t data_bytes, int64_t claimed_len = -1) {
  std::ofstream out(file, std::ios::binary);
  const uint64_t n = claimed_len >= 0 ? static_cast<uint64_t>(claimed_len) : header.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  out.write(reinterpret_cast<const char*>(len), 8);
  out << header << std::string(static_cast<size_t>(data_bytes), '\0');
}

ojson entry(const char* dtype, std::vector<int64_t> shape, int64_t begin, int64_t end) {
  return {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {begin, end}}};
}

ojson good_header() {
  ojson h;
  h["__metadata__"] = {{"format", "pt"}};
  h["a.weight"] = entry("F8_E4M3", {4, 8}, 0, 32);
  h["a.scale"] = entry("F8_E8M0", {1, 1}, 32, 33);
  h["b"] = entry("BF16", {3}, 40, 46);
  return h;
}

std::string error_of(const ojson& header, int64_t data_bytes = 64) {
  TempDir tmp;
  write_raw(tmp.path / "x.safetensors", header.dump(), data_bytes);
  try {
    read_safetensors_header(tmp.path / "x.safetensors");
  } catch (const ferry::Error& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
    return e.what();
  }
  return "";
}

}  // namespace

TEST(SafetensorsHeader, ReadsAValidFile) {
  TempDir tmp;
  const std::string text = good_header().dump();
  write_raw(tmp.path / "x.safetensors", text, 48);
  const SafetensorsHeader h = read_safetensors_header(tmp.path / "x.safetensors");
  ASSERT_EQ(h.tensors.size(), 3u);
  EXPECT_EQ(h.tensors[0].name, "a.weight");
  EXPECT_EQ(h.tensors[0].dtype, DType::F8_E4M3);
  EXPECT_EQ(h.tensors[0].shape, (std::vector<int64_t>{4, 8}));
  EXPECT_EQ(h.tensors[2].begin, 40);
  EXPECT_EQ(h.tensors[2].bytes(), 6);
  EXPECT_EQ(h.data_offset, 8 + static_cast<int64_t>(text.size()));
  EXPECT_EQ(h.metadata.at("format"), "pt");
}

TEST(SafetensorsHeader, RejectsEachKindOfBadHeader) {
  auto with = [](const char* name, ojson e) {
    ojson h = good_header();
    h[name] = std::move(e);
    return h;
  };
  EXPECT_NE(error_of(with("b", entry("F12", {3}, 40, 46))).find("unknown dtype 'F12'"), std::string::npos);
  EXPECT_NE(error_of(with("b", entry("BF16", {4}, 40, 46))).find("data_offsets span 6"), std::string::npos);
  EXPECT_NE(error_of(with("b", entry("BF16", {3}, 20, 26))).find("overlapping"), std::string::npos);
  EXPECT_NE(error_of(with("b", entry("BF16", {3}, 60, 66))).find("past the data section"), std::string::npos);
  EXPECT_NE(error_of(with("b", entry("BF16", {-3}, 40, 46))).find("negative"), std::string::npos);
  EXPECT_NE(error_of(with("b", entry("BF16", {3}, 46, 40))).find("begin after end"), std::string::npos);
  EXPECT_NE(error_of(with("b", ojson::array())).find("not a JSON object"), std::string::npos);
  EXPECT_NE(error_of(with("b", entry("BF16", {1LL << 62, 1LL << 62}, 40, 46))).find("overflow"), std::string::npos);
  EXPECT_NE(error_of(with("__metadata__", {{"k", 1}})).find("not a string"), std::string::npos);
  EXPECT_NE(error_of(ojson::array()).find("not a JSON object"), std::string::npos);
  // Truncated data: the header promises 46 bytes, the file holds 10.
  EXPECT_NE(error_of(good_header(), 10).find("truncated"), std::string::npos);
}

TEST(SafetensorsHeader, RejectsBrokenFraming) {
  TempDir tmp;
  write_raw(tmp.path / "long.safetensors", "{}", 0, 999999);
  EXPECT_THROW(read_safetensors_header(tmp.path / "long.safetensors"), ferry::Error);
  try {
    read_safetensors_header(tmp.path / "long.safetensors");
  } catch (const ferry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("exceeds the file size"), std::string::npos);
  }
  write_raw(tmp.path / "json.safetensors", "{\"a\": ", 0);
  try {
    read_safetensors_header(tmp.path / "json.safetensors");
    FAIL();
  } catch (const ferry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("not valid JSON"), std::string::npos);
  }
  std::ofstream(tmp.path / "tiny.safetensors") << "abc";
  EXPECT_THROW(read_safetensors_header(tmp.path / "tiny.safetensors"), ferry::Error);
}

TEST(SafetensorsHeader, ReadsAShardedDirectoryThroughItsIndex) {
  TempDir tmp;
  ojson a, b;
  a["x"] = entry("F32", {2}, 0, 8);
  b["y"] = entry("I64", {1}, 0, 8);
  write_raw(tmp.path / "s1.safetensors", a.dump(), 8);
  write_raw(tmp.path / "s2.safetensors", b.dump(), 8);
  std::ofstream(tmp.path / "model.safetensors.index.json") << R"({"metadata": {}, "weight_map": {"x": "s1.safetensors", "y": "s2.safetensors"}})";
  const CheckpointHeaders c = read_checkpoint_headers(tmp.path);
  EXPECT_EQ(c.shards.size(), 2u);
  ASSERT_NE(c.find("y"), nullptr);
  EXPECT_EQ(c.find("y")->dtype, DType::I64);
  EXPECT_EQ(c.total_tensor_bytes(), 16);
  EXPECT_EQ(c.find("z"), nullptr);
}

TEST(SafetensorsHeader, IndexErrorsNameTheShardOrTensor) {
  TempDir tmp;
  ojson a;
  a["x"] = entry("F32", {2}, 0, 8);
  write_raw(tmp.path / "s1.safetensors", a.dump(), 8);
  std::ofstream(tmp.path / "model.safetensors.index.json") << R"({"weight_map": {"x": "s1.safetensors", "y": "s9.safetensors"}})";
  try {
    read_checkpoint_headers(tmp.path);
    FAIL();
  } catch (const ferry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("s9.safetensors, which is missing"), std::string::npos) << e.what();
  }
  std::ofstream(tmp.path / "model.safetensors.index.json") << R"({"weight_map": {"x": "s1.safetensors", "y": "s1.safetensors"}})";
  try {
    read_checkpoint_headers(tmp.path);
    FAIL();
  } catch (const ferry::Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'y'"), std::string::npos) << e.what();
  }
}
