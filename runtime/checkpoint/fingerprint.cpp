#include "runtime/checkpoint/fingerprint.h"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
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

// Bytes read at each of three places of a shard's data: a few milliseconds even for ~4 GB shards on a cold disk.
constexpr int64_t kSampleBytes = 4096;

void add_weight_samples(Fnv& h, const std::filesystem::path& dir, const core::SafetensorsHeader& shard) {
  const std::filesystem::path path = dir / shard.file;
  std::ifstream in(path, std::ios::binary);
  FERRY_CHECK(in, "{}: cannot open", path.string());
  const int64_t data = shard.file_bytes - shard.data_offset;
  const int64_t n = std::min(kSampleBytes, data);
  std::string page(static_cast<size_t>(n), '\0');
  for (const int64_t at : {int64_t{0}, (data - n) / 2, data - n}) {
    in.seekg(shard.data_offset + at);
    in.read(page.data(), n);
    FERRY_CHECK(in.gcount() == n, "{}: cannot read {} bytes at offset {}", path.string(), n, shard.data_offset + at);
    h.add(page);
  }
}

}  // namespace

std::string CheckpointFingerprint::describe() const {
  return fmt::format("config {:016x}, {} shards, {} tensors, headers {:016x}, weights {:016x}", config, shards, tensors,
                     headers, weights);
}

std::string CheckpointFingerprint::difference(const CheckpointFingerprint& o) const {
  if (config != o.config) return "config.json differs";
  if (shards != o.shards) return fmt::format("the checkpoint has {} shards, not {}", shards, o.shards);
  if (tensors != o.tensors) return fmt::format("the checkpoint has {} tensors, not {}", tensors, o.tensors);
  if (headers != o.headers) return "the tensor headers differ (dtypes, shapes, offsets or file sizes)";
  if (weights != o.weights) return "the weights differ (pages sampled from every shard)";
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
  Fnv h, w;
  for (const core::SafetensorsHeader& shard : headers.shards) {
    add_weight_samples(w, dir, shard);
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
  f.weights = w.h;
  f.shards = static_cast<int64_t>(headers.shards.size());
  return f;
}

}  // namespace ferry::runtime
