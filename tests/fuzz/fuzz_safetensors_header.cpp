// libFuzzer target for the safetensors header and checkpoint index parsers. Every input must either parse or
// throw ferry::Error; any other exception, a crash or a sanitizer report is a finding.
// An input starting with '{' is a model.safetensors.index.json (next to one valid shard); anything else is a
// whole .safetensors file, framed in memory so that the hot path never touches the disk.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "planner/error.h"
#include "planner/safetensors_header.h"

namespace {

namespace fs = std::filesystem;
using namespace ferry::planner;

// The shard every index input can name; tests/fuzz/make_corpus.py and replay_corpus.cpp use the same one.
constexpr std::string_view kShardName = "shard.safetensors";
constexpr std::string_view kShardHeader = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

// Sanitizers do not see broken invariants of a successful parse; this makes them findings as well.
void expect(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fuzz_safetensors_header: parsed, but %s\n", what);
  std::abort();
}

void parse_file(const uint8_t* data, size_t size) {
  // read_safetensors_header's framing: 8-byte little-endian length, then that many header bytes.
  if (size < 8) return;
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n > size - 8 || n > static_cast<uint64_t>(kMaxSafetensorsHeaderBytes)) return;
  const std::string_view header(reinterpret_cast<const char*>(data) + 8, n);
  const auto h = parse_safetensors_header(header, static_cast<int64_t>(size), static_cast<int64_t>(n), "fuzz");
  for (const auto& t : h.tensors)
    expect(0 <= t.begin && t.begin <= t.end && t.end <= h.file_bytes - h.data_offset,
           "a tensor range lies outside the data section");
}

// Created once per process (the pid keeps parallel fuzzing jobs apart) and removed at a normal exit.
struct ModelDir {
  fs::path path = fs::temp_directory_path() / ("ferry-fuzz-" + std::to_string(getpid()));
  ModelDir() {
    fs::create_directories(path);
    std::string len(8, '\0');
    for (size_t i = 0; i < 8; ++i) len[i] = static_cast<char>((kShardHeader.size() >> (8 * i)) & 0xff);
    std::ofstream(path / kShardName, std::ios::binary) << len << kShardHeader << std::string(8, '\0');
  }
  ~ModelDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

void parse_index(const uint8_t* data, size_t size) {
  static const ModelDir dir;
  {
    std::ofstream out(dir.path / "model.safetensors.index.json", std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  const auto c = read_checkpoint_headers(dir.path);
  for (const auto& entry : c.by_name) {
    const SafetensorsTensor* t = c.find(entry.first);
    expect(t != nullptr && t->name == entry.first, "by_name points at the wrong tensor");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    if (size > 0 && data[0] == '{')
      parse_index(data, size);
    else
      parse_file(data, size);
  } catch (const ferry::Error&) {
  }
  return 0;
}
