// Safetensors headers, validated, without reading any tensor data: the planner takes exact per-tensor bytes from
// them, and the runtime's checkpoint reader maps the ranges they describe.
// Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}, __metadata__},
// then the data section; offsets are relative to the data section, end exclusive.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "planner/core/dtype.h"

namespace ferry::core {

struct SafetensorsTensor {
  std::string name;
  DType dtype = DType::BF16;
  std::vector<int64_t> shape;
  int64_t begin = 0;  // byte offsets within the data section, end exclusive
  int64_t end = 0;
  int64_t bytes() const { return end - begin; }
};

struct SafetensorsHeader {
  std::string file;          // as given, for messages
  int64_t header_bytes = 0;  // N
  int64_t data_offset = 0;   // 8 + N: where the data section starts in the file
  int64_t file_bytes = 0;
  std::vector<SafetensorsTensor> tensors;  // in data-offset order (the order writers lay tensors out in)
  std::map<std::string, std::string> metadata;
};

// Headers above this size are refused before any allocation (the largest real ones are a few MB).
constexpr int64_t kMaxSafetensorsHeaderBytes = 100LL << 20;

// Parses and validates a header: JSON object; each entry's dtype known, shape non-negative integers,
// data_offsets two integers with begin <= end; shape x dtype size == end - begin; every range inside the data
// section; no two ranges overlapping; __metadata__ string to string. Throws ferry::Error with one line naming
// the file, the tensor and the problem.
SafetensorsHeader parse_safetensors_header(std::string_view header_json, int64_t file_bytes, int64_t header_bytes,
                                           const std::string& file);

// Reads only the length and the header of `file` (never the data: real shards are ~4 GB); the length must fit
// inside the file and stay under kMaxSafetensorsHeaderBytes before anything is allocated. Messages name the
// file by its filename.
SafetensorsHeader read_safetensors_header(const std::filesystem::path& file);

// Every shard of a checkpoint directory: through model.safetensors.index.json when present (each shard read
// once; every weight_map entry must be in the shard it names), else model.safetensors, else every
// *.safetensors file in name order. A tensor in two shards, or an index naming a missing shard, is an error.
struct CheckpointHeaders {
  std::vector<SafetensorsHeader> shards;
  std::unordered_map<std::string, std::pair<size_t, size_t>> by_name;  // name -> (shard, tensor)
  const SafetensorsTensor* find(const std::string& name) const;
  int64_t total_tensor_bytes() const;
};
CheckpointHeaders read_checkpoint_headers(const std::filesystem::path& dir);

}  // namespace ferry::core
