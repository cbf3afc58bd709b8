#include "runtime/checkpoint/fingerprint.h"

#include <fmt/format.h>

#include <string_view>

#include "planner/core/dtype.h"
#include "planner/core/error.h"
#include "planner/core/file_io.h"
#include "planner/core/safetensors_header.h"

namespace ferry::runtime {

namespace {

// FNV-1a, 64 bits: stable across processes and machines (std::hash is not).
struct Fnv {
  uint64_t h = 1469598103934665603ULL;
  void add(std::string_view bytes) {
    for (const unsigned char c : bytes) h = (h ^ c) * 1099511628211ULL;
  }
  void add(int64_t v) { add(std::string_view(reinterpret_cast<const char*>(&v), sizeof v)); }
};

}  // namespace

std::string CheckpointFingerprint::describe() const {
  return fmt::format("config {:016x}, {} shards, {} tensors, headers {:016x}", config, shards, tensors, headers);
}

std::string CheckpointFingerprint::difference(const CheckpointFingerprint& o) const {
  if (config != o.config) return "config.json differs";
  if (shards != o.shards) return fmt::format("the checkpoint has {} shards, not {}", shards, o.shards);
  if (tensors != o.tensors) return fmt::format("the checkpoint has {} tensors, not {}", tensors, o.tensors);
  if (headers != o.headers) return "the tensor headers differ (dtypes, shapes, offsets or file sizes)";
  return "";
}

CheckpointFingerprint checkpoint_fingerprint(const std::filesystem::path& dir) {
  const std::filesystem::path config = dir / "config.json";
  FERRY_CHECK(std::filesystem::is_regular_file(config), "{} has no config.json", dir.string());
  CheckpointFingerprint f;
  Fnv c;
  c.add(core::read_text_file(config));
  f.config = c.h;
  const core::CheckpointHeaders headers = core::read_checkpoint_headers(dir);
  Fnv h;
  for (const core::SafetensorsHeader& shard : headers.shards) {
    h.add(std::filesystem::path(shard.file).filename().string());
    h.add(shard.file_bytes);
    for (const core::SafetensorsTensor& t : shard.tensors) {
      h.add(t.name);
      h.add(static_cast<int64_t>(t.dtype));
      for (const int64_t d : t.shape) h.add(d);
      h.add(t.begin);
      h.add(t.end);
      ++f.tensors;
    }
  }
  f.headers = h.h;
  f.shards = static_cast<int64_t>(headers.shards.size());
  return f;
}

}  // namespace ferry::runtime
