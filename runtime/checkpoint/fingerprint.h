// What identifies a checkpoint without reading its weights: a hash of config.json, one of every shard's tensor
// headers (names, dtypes, shapes, offsets, file sizes), and one of a few pages sampled from every shard's data (so
// that checkpoints of the same shapes, another seed or fine-tune, differ too). Ranks under mpirun compare them
// before loading; saved KV sessions carry them.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace ferry::runtime {

struct CheckpointFingerprint {
  uint64_t config = 0;   // FNV-1a of config.json's bytes
  uint64_t headers = 0;  // FNV-1a of every shard's tensor entries, in shard and offset order
  uint64_t weights = 0;  // FNV-1a of the pages at the start, middle and end of every shard's data section
  int64_t shards = 0;
  int64_t tensors = 0;
  bool operator==(const CheckpointFingerprint&) const = default;
  // "config 1a2b…, 3 shards, 1234 tensors, headers 5e6f…, weights 9c0d…"
  std::string describe() const;
  // What differs from `other`, in words ("config.json differs", "the tensor headers differ (2 shards vs 3)").
  std::string difference(const CheckpointFingerprint& other) const;
};

// Reads config.json and the safetensors headers of `dir`; throws ferry::Error naming a missing or broken file.
CheckpointFingerprint checkpoint_fingerprint(const std::filesystem::path& dir);

}  // namespace ferry::runtime
