// The model directory that index inputs are read against, shared by the fuzz target and the corpus replay so that
// both see the same shard: one tensor 'w', F32 [2], in shard.safetensors (tests/fuzz/make_corpus.py names it).
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>

namespace ferry_fuzz {

constexpr std::string_view kShardName = "shard.safetensors";
constexpr std::string_view kShardHeader = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

// Created once per process (the pid keeps parallel jobs apart) and removed at a normal exit.
struct ModelDir {
  std::filesystem::path path;
  explicit ModelDir(const std::string& prefix)
      : path(std::filesystem::temp_directory_path() / (prefix + std::to_string(getpid()))) {
    std::filesystem::create_directories(path);
    std::string len(8, '\0');
    for (size_t i = 0; i < 8; ++i) len[i] = static_cast<char>((kShardHeader.size() >> (8 * i)) & 0xff);
    std::ofstream(path / kShardName, std::ios::binary) << len << kShardHeader << std::string(8, '\0');
  }
  ~ModelDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

}  // namespace ferry_fuzz
