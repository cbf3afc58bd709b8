// A checkpoint on disk, memory-mapped: validated headers first (planner/core/safetensors_header.h), then lazy
// access to any tensor's bytes. Nothing is read until it is touched, so a rank or the planner can use only
// the tensors or byte ranges it needs of a 150 GB or 800 GB checkpoint.
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "planner/core/safetensors_header.h"

namespace ferry::runtime {

// A read-only memory map of a whole file (RAII).
class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& file);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  std::span<const std::byte> bytes() const { return {static_cast<const std::byte*>(data_), size_}; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

class Checkpoint {
 public:
  // A directory (sharded through its index, or model.safetensors) or a single .safetensors file.
  static Checkpoint open(const std::filesystem::path& path);

  const core::CheckpointHeaders& headers() const { return headers_; }
  bool has(const std::string& name) const { return headers_.find(name) != nullptr; }
  const core::SafetensorsTensor& info(const std::string& name) const;  // throws naming the tensor
  // The tensor's bytes inside the mapped shard (the shard is mapped on first use).
  std::span<const std::byte> bytes(const std::string& name) const;

 private:
  std::filesystem::path dir_;
  core::CheckpointHeaders headers_;
  mutable std::vector<std::unique_ptr<MappedFile>> maps_;  // one per shard, mapped lazily
};

}  // namespace ferry::runtime
