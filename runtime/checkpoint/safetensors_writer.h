// Writing safetensors files and sharded checkpoints (model-NNNNN-of-NNNNN.safetensors + index), byte for byte
// deterministic: tensors in the order added, header padded with spaces to 8 bytes as Hugging Face writes it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "planner/core/dtype.h"

namespace ferry::runtime {

struct TensorData {
  std::string name;
  core::DType dtype = core::DType::BF16;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  // exactly shape x dtype size
};

// One file. Throws ferry::Error when a tensor's bytes do not match its shape or the file cannot be written;
// writes through a temporary file, so a failed write leaves no partial file behind.
void write_safetensors(const std::filesystem::path& file, const std::vector<const TensorData*>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Splits `tensors` (in order) into `shards` files of about equal size plus model.safetensors.index.json.
// Returns the shard file names.
std::vector<std::string> write_sharded_checkpoint(const std::filesystem::path& dir,
                                                  const std::vector<TensorData>& tensors, int shards);

}  // namespace ferry::runtime
