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

#include "planner/core/error.h"
#include "planner/core/safetensors_header.h"
#include "tests/fuzz/fuzz_model_dir.h"

namespace {

namespace fs = std::filesystem;
using namespace ferry;

using ferry_fuzz::ModelDir;

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
  if (n > size - 8 || n > static_cast<uint64_t>(core::kMaxSafetensorsHeaderBytes)) return;
  const std::string_view header(reinterpret_cast<const char*>(data) + 8, n);
  const auto h = core::parse_safetensors_header(header, static_cast<int64_t>(size), static_cast<int64_t>(n), "fuzz");
  for (const auto& t : h.tensors)
    expect(0 <= t.begin && t.begin <= t.end && t.end <= h.file_bytes - h.data_offset,
           "a tensor range lies outside the data section");
}

void parse_index(const uint8_t* data, size_t size) {
  static const ModelDir dir("ferry-fuzz-");
  {
    std::ofstream out(dir.path / "model.safetensors.index.json", std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  const auto c = core::read_checkpoint_headers(dir.path);
  for (const auto& entry : c.by_name) {
    const core::SafetensorsTensor* t = c.find(entry.first);
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
