// Safetensors header validation: good files and checkpoint directories read back exactly, and every kind of bad
// header or index gives one ferry::Error line that names the problem (and the file, by its filename).
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "planner/core/error.h"
#include "planner/core/safetensors_header.h"

using namespace ferry;

namespace fs = std::filesystem;
// Ordered, so the files keep the tensor order the tests write.
using ojson = nlohmann::ordered_json;

namespace {

// A fresh directory per test; unique across processes because ctest may run test binaries in parallel.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = fs::temp_directory_path() /
           ("ferry-st-" + std::to_string(std::random_device{}()) + "-" + std::to_string(counter++));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

// Length prefix (the real one unless `claimed_len` overrides it), header text, then `data_bytes` of padding.
void write_raw(const fs::path& file, const std::string& header, int64_t data_bytes, int64_t claimed_len = -1) {
  std::ofstream out(file, std::ios::binary);
  const uint64_t n = claimed_len >= 0 ? static_cast<uint64_t>(claimed_len) : header.size();
  char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out.write(len, 8);
  out << header << std::string(static_cast<size_t>(data_bytes), '\x5a');
}

void write_text(const fs::path& file, const std::string& text) { std::ofstream(file, std::ios::binary) << text; }

ojson entry(const char* dtype, std::vector<int64_t> shape, int64_t begin, int64_t end) {
  return {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {begin, end}}};
}

// Three tensors, deliberately not in name order, with a gap in the data section between the second and third.
ojson good_header() {
  ojson h;
  h["a.weight"] = entry("F8_E4M3", {4, 8}, 0, 32);
  h["__metadata__"] = {{"format", "pt"}};
  h["a.scale"] = entry("F8_E8M0", {1, 1}, 32, 33);
  h["b"] = entry("BF16", {3}, 40, 46);
  return h;
}

ojson with(const char* name, ojson value) {
  ojson h = good_header();
  h[name] = std::move(value);
  return h;
}

// Runs `f`, which must throw a one-line ferry::Error containing `word`; returns the message.
std::string expect_error(const std::function<void()>& f, const std::string& word) {
  try {
    f();
  } catch (const ferry::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(word), std::string::npos) << "message: " << what << "\nexpected: " << word;
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    return what;
  }
  ADD_FAILURE() << "no ferry::Error; expected one containing: " << word;
  return "";
}

// Writes `header` as x.safetensors with `data_bytes` of data and reads it, expecting an error with `word`.
std::string header_error(const ojson& header, const std::string& word, int64_t data_bytes = 64) {
  TempDir tmp;
  write_raw(tmp.path / "x.safetensors", header.dump(), data_bytes);
  const std::string what = expect_error([&] { core::read_safetensors_header(tmp.path / "x.safetensors"); }, word);
  EXPECT_EQ(what.rfind("x.safetensors: ", 0), 0u) << "shard messages start with the filename: " << what;
  return what;
}

}  // namespace

TEST(SafetensorsHeader, ReadsAValidFile) {
  TempDir tmp;
  const std::string text = good_header().dump();
  write_raw(tmp.path / "x.safetensors", text, 48);
  const core::SafetensorsHeader h = core::read_safetensors_header(tmp.path / "x.safetensors");
  EXPECT_EQ(h.file, "x.safetensors");
  EXPECT_EQ(h.header_bytes, static_cast<int64_t>(text.size()));
  EXPECT_EQ(h.data_offset, 8 + static_cast<int64_t>(text.size()));
  EXPECT_EQ(h.file_bytes, h.data_offset + 48);
  ASSERT_EQ(h.tensors.size(), 3u);
  EXPECT_EQ(h.tensors[0].name, "a.weight");  // header order, not name order
  EXPECT_EQ(h.tensors[1].name, "a.scale");
  EXPECT_EQ(h.tensors[2].name, "b");
  EXPECT_EQ(h.tensors[0].dtype, core::DType::F8_E4M3);
  EXPECT_EQ(h.tensors[1].dtype, core::DType::F8_E8M0);
  EXPECT_EQ(h.tensors[2].dtype, core::DType::BF16);
  EXPECT_EQ(h.tensors[0].shape, (std::vector<int64_t>{4, 8}));
  EXPECT_EQ(h.tensors[1].shape, (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(h.tensors[2].shape, (std::vector<int64_t>{3}));
  EXPECT_EQ(h.tensors[0].begin, 0);
  EXPECT_EQ(h.tensors[0].end, 32);
  EXPECT_EQ(h.tensors[1].begin, 32);
  EXPECT_EQ(h.tensors[1].end, 33);
  EXPECT_EQ(h.tensors[2].begin, 40);
  EXPECT_EQ(h.tensors[2].bytes(), 6);
  EXPECT_EQ(h.metadata.size(), 1u);
  EXPECT_EQ(h.metadata.at("format"), "pt");
}

TEST(SafetensorsHeader, ZeroLengthTensorsNeverOverlap) {
  ojson h;
  h["big"] = entry("F32", {4}, 0, 16);
  h["empty_inside"] = entry("F32", {0, 7}, 8, 8);
  h["empty_scalarless"] = entry("I64", {3, 0}, 8, 8);
  const core::SafetensorsHeader p = core::parse_safetensors_header(h.dump(), 8 + 100 + 16, 100, "p.safetensors");
  ASSERT_EQ(p.tensors.size(), 3u);
  EXPECT_EQ(p.tensors[1].bytes(), 0);
  EXPECT_EQ(p.data_offset, 108);
}

TEST(SafetensorsHeader, RejectsTruncatedData) {
  // The header promises 46 bytes of data; the file holds 10.
  header_error(good_header(), "truncated", 10);
}

TEST(SafetensorsHeader, RejectsHeaderLengthLargerThanTheFile) {
  TempDir tmp;
  write_raw(tmp.path / "x.safetensors", "{}", 0, 999999);
  const std::string what = expect_error([&] { core::read_safetensors_header(tmp.path / "x.safetensors"); },
                                        "x.safetensors: header length 999999 exceeds the file size 10");
  EXPECT_EQ(what, "x.safetensors: header length 999999 exceeds the file size 10");
  // The same check guards callers that hand the text over themselves.
  expect_error([] { core::parse_safetensors_header("{}", 20, 50, "y.safetensors"); }, "exceeds the file size");
}

TEST(SafetensorsHeader, RejectsHeaderLengthAboveTheCap) {
  // A sparse file big enough that the length fits inside it, so only the cap can refuse it.
  TempDir tmp;
  const fs::path file = tmp.path / "huge.safetensors";
  const int64_t claimed = core::kMaxSafetensorsHeaderBytes + 1;
  write_raw(file, "", 0, claimed);
  fs::resize_file(file, static_cast<uintmax_t>(8 + claimed + 16));
  expect_error([&] { core::read_safetensors_header(file); }, "limit");
}

TEST(SafetensorsHeader, RejectsFilesTooShortForALength) {
  TempDir tmp;
  write_text(tmp.path / "tiny.safetensors", "abc");
  expect_error([&] { core::read_safetensors_header(tmp.path / "tiny.safetensors"); }, "too short");
}

TEST(SafetensorsHeader, RejectsOverlappingRanges) {
  const std::string what = header_error(with("b", entry("BF16", {3}, 20, 26)), "overlapping");
  EXPECT_NE(what.find("'a.weight'"), std::string::npos) << what;
  EXPECT_NE(what.find("'b'"), std::string::npos) << what;
}

TEST(SafetensorsHeader, RejectsOffsetsPastTheDataSection) {
  const std::string what = header_error(with("b", entry("BF16", {3}, 60, 66)), "past the end");
  EXPECT_NE(what.find("tensor 'b'"), std::string::npos) << what;
}

TEST(SafetensorsHeader, RejectsUnknownDtype) {
  header_error(with("b", entry("F12", {3}, 40, 46)), "unknown dtype 'F12'");
  header_error(with("b", {{"shape", {3}}, {"data_offsets", {40, 46}}}), "no dtype");
}

TEST(SafetensorsHeader, RejectsShapeBytesMismatch) {
  const std::string what = header_error(with("b", entry("BF16", {4}, 40, 46)), "data_offsets span 6");
  EXPECT_NE(what.find("tensor 'b' shape [4] x BF16 = 8 bytes"), std::string::npos) << what;
}

TEST(SafetensorsHeader, RejectsShapesWhoseByteCountOverflows) {
  header_error(with("b", entry("BF16", {int64_t{1} << 62, int64_t{1} << 62}, 40, 46)), "overflow");
  // The element count fits in int64 but the byte count does not.
  header_error(with("b", entry("BF16", {int64_t{1} << 62}, 40, 46)), "overflow");
}

TEST(SafetensorsHeader, RejectsMalformedJson) {
  TempDir tmp;
  write_raw(tmp.path / "x.safetensors", "{\"a\": ", 0);
  expect_error([&] { core::read_safetensors_header(tmp.path / "x.safetensors"); }, "not valid JSON");
}

TEST(SafetensorsHeader, RejectsNonObjectEntries) {
  header_error(with("b", ojson::array({1, 2})), "tensor 'b' is not a JSON object");
  header_error(ojson::array(), "header is not a JSON object");
}

TEST(SafetensorsHeader, RejectsNegativeOrNonIntegerShapes) {
  header_error(with("b", entry("BF16", {-3}, 40, 46)), "negative");
  header_error(with("b", {{"dtype", "BF16"}, {"shape", {1.5}}, {"data_offsets", {40, 46}}}), "not an integer");
  header_error(with("b", {{"dtype", "BF16"}, {"shape", 3}, {"data_offsets", {40, 46}}}), "no shape array");
}

TEST(SafetensorsHeader, RejectsBadDataOffsets) {
  header_error(with("b", entry("BF16", {3}, 46, 40)), "begin after end");
  header_error(with("b", entry("BF16", {3}, -6, 0)), "negative");
  header_error(with("b", {{"dtype", "BF16"}, {"shape", {3}}, {"data_offsets", {40, 46, 52}}}), "[begin, end]");
  header_error(with("b", {{"dtype", "BF16"}, {"shape", {3}}, {"data_offsets", {40, UINT64_MAX}}}), "too large");
}

TEST(SafetensorsHeader, RejectsNonStringMetadata) {
  header_error(with("__metadata__", {{"k", 1}}), "__metadata__ value 'k' is not a string");
  header_error(with("__metadata__", "pt"), "__metadata__ is not an object");
}

TEST(SafetensorsHeader, MessagesStayOnOneLineWhateverTheNames) {
  const std::string what = header_error(with("evil\nname", entry("F12", {1}, 46, 48)), "unknown dtype");
  EXPECT_NE(what.find("'evil\\x0aname'"), std::string::npos) << what;
}

TEST(SafetensorsHeader, ReadsAShardedDirectoryThroughItsIndex) {
  TempDir tmp;
  ojson a, b, stray;
  a["x"] = entry("F32", {2}, 0, 8);
  a["x.scale"] = entry("F8_E8M0", {4}, 8, 12);
  b["y"] = entry("I64", {1}, 0, 8);
  stray["z"] = entry("I8", {1}, 0, 1);
  write_raw(tmp.path / "model-00001-of-00002.safetensors", a.dump(), 12);
  write_raw(tmp.path / "model-00002-of-00002.safetensors", b.dump(), 8);
  write_raw(tmp.path / "leftover.safetensors", stray.dump(), 1);  // not in the index, so not read
  write_text(tmp.path / "model.safetensors.index.json",
             R"({"metadata": {"total_size": 20}, "weight_map": {"x": "model-00001-of-00002.safetensors",
                 "y": "model-00002-of-00002.safetensors", "x.scale": "model-00001-of-00002.safetensors"}})");
  const core::CheckpointHeaders c = core::read_checkpoint_headers(tmp.path);
  ASSERT_EQ(c.shards.size(), 2u);
  EXPECT_EQ(c.shards[0].file, "model-00001-of-00002.safetensors");
  EXPECT_EQ(c.shards[1].file, "model-00002-of-00002.safetensors");
  EXPECT_EQ(c.by_name.size(), 3u);
  EXPECT_EQ(c.by_name.at("y"), (std::pair<size_t, size_t>{1, 0}));
  EXPECT_EQ(c.by_name.at("x.scale"), (std::pair<size_t, size_t>{0, 1}));
  ASSERT_NE(c.find("y"), nullptr);
  EXPECT_EQ(c.find("y")->dtype, core::DType::I64);
  EXPECT_EQ(c.find("x.scale")->begin, 8);
  EXPECT_EQ(c.find("z"), nullptr);
  EXPECT_EQ(c.total_tensor_bytes(), 20);
}

TEST(SafetensorsHeader, IndexNamingAMissingShardIsAnError) {
  TempDir tmp;
  ojson a;
  a["x"] = entry("F32", {2}, 0, 8);
  write_raw(tmp.path / "s1.safetensors", a.dump(), 8);
  write_text(tmp.path / "model.safetensors.index.json",
             R"({"weight_map": {"x": "s1.safetensors", "y": "s9.safetensors"}})");
  expect_error([&] { core::read_checkpoint_headers(tmp.path); }, "'s9.safetensors', which is missing");
}

TEST(SafetensorsHeader, IndexNamingATensorAbsentFromItsShardIsAnError) {
  TempDir tmp;
  ojson a, b;
  a["x"] = entry("F32", {2}, 0, 8);
  b["w"] = entry("F32", {2}, 0, 8);
  b["z"] = entry("F32", {2}, 8, 16);
  write_raw(tmp.path / "s1.safetensors", a.dump(), 8);
  write_raw(tmp.path / "s2.safetensors", b.dump(), 16);
  write_text(tmp.path / "model.safetensors.index.json",
             R"({"weight_map": {"x": "s1.safetensors", "y": "s1.safetensors"}})");
  expect_error([&] { core::read_checkpoint_headers(tmp.path); },
               "tensor 'y' in s1.safetensors, which does not hold it");
  // Present in the checkpoint, but not in the shard the index names.
  write_text(tmp.path / "model.safetensors.index.json",
             R"({"weight_map": {"x": "s1.safetensors", "w": "s1.safetensors", "z": "s2.safetensors"}})");
  expect_error([&] { core::read_checkpoint_headers(tmp.path); },
               "tensor 'w' in s1.safetensors, which does not hold it");
}

TEST(SafetensorsHeader, IndexErrorsForBadIndexFiles) {
  TempDir tmp;
  write_text(tmp.path / "model.safetensors.index.json", R"({"weight_map": {"x": "../s1.safetensors"}})");
  expect_error([&] { core::read_checkpoint_headers(tmp.path); }, "not a file in the model directory");
  write_text(tmp.path / "model.safetensors.index.json", R"({"metadata": {}})");
  expect_error([&] { core::read_checkpoint_headers(tmp.path); }, "no weight_map");
  write_text(tmp.path / "model.safetensors.index.json", R"({"weight_map": )");
  expect_error([&] { core::read_checkpoint_headers(tmp.path); }, "not valid JSON");
}

TEST(SafetensorsHeader, FallsBackToModelSafetensors) {
  TempDir tmp;
  ojson a, other;
  a["x"] = entry("F16", {2, 2}, 0, 8);
  other["y"] = entry("F16", {1}, 0, 2);
  write_raw(tmp.path / "model.safetensors", a.dump(), 8);
  write_raw(tmp.path / "a-other.safetensors", other.dump(), 2);
  const core::CheckpointHeaders c = core::read_checkpoint_headers(tmp.path);
  ASSERT_EQ(c.shards.size(), 1u);
  EXPECT_EQ(c.shards[0].file, "model.safetensors");
  EXPECT_NE(c.find("x"), nullptr);
  EXPECT_EQ(c.find("y"), nullptr);
}

TEST(SafetensorsHeader, FallsBackToEveryShardInSortedOrder) {
  TempDir tmp;
  ojson a, b;
  a["x"] = entry("F32", {1}, 0, 4);
  b["y"] = entry("F32", {1}, 0, 4);
  write_raw(tmp.path / "b.safetensors", b.dump(), 4);
  write_raw(tmp.path / "a.safetensors", a.dump(), 4);
  write_text(tmp.path / "notes.txt", "not a shard");
  const core::CheckpointHeaders c = core::read_checkpoint_headers(tmp.path);
  ASSERT_EQ(c.shards.size(), 2u);
  EXPECT_EQ(c.shards[0].file, "a.safetensors");
  EXPECT_EQ(c.shards[1].file, "b.safetensors");
  EXPECT_EQ(c.by_name.at("y").first, 1u);
}

TEST(SafetensorsHeader, RejectsATensorInTwoShards) {
  TempDir tmp;
  ojson a;
  a["x"] = entry("F32", {1}, 0, 4);
  write_raw(tmp.path / "a.safetensors", a.dump(), 4);
  write_raw(tmp.path / "b.safetensors", a.dump(), 4);
  expect_error([&] { core::read_checkpoint_headers(tmp.path); }, "'x' appears in both a.safetensors and b.safetensors");
}

TEST(SafetensorsHeader, RejectsADirectoryWithoutShards) {
  TempDir tmp;
  expect_error([&] { core::read_checkpoint_headers(tmp.path); }, "holds no");
  expect_error([&] { core::read_checkpoint_headers(tmp.path / "absent"); }, "not a directory");
}
