#include "runtime/checkpoint/safetensors_writer.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "planner/core/error.h"
#include "planner/core/file_io.h"

namespace ferry::runtime {

namespace fs = std::filesystem;

namespace {

void check_size(const TensorData& t) {
  int64_t n = 1;
  for (int64_t d : t.shape) n *= d;
  FERRY_CHECK(n * core::dtype_size(t.dtype) == static_cast<int64_t>(t.bytes.size()),
              "tensor '{}' holds {} bytes, its shape needs {}", t.name, t.bytes.size(), n * core::dtype_size(t.dtype));
}

void write_atomically(const fs::path& file, const std::string& header, const std::vector<const TensorData*>& tensors) {
  core::write_file_atomically(file, [&](std::ostream& out) {
    const uint64_t n = header.size();
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    for (const auto* t : tensors)
      out.write(reinterpret_cast<const char*>(t->bytes.data()), static_cast<std::streamsize>(t->bytes.size()));
  });
}

}  // namespace

void write_safetensors(const fs::path& file, const std::vector<const TensorData*>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json h;
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    h["__metadata__"] = m;
  }
  int64_t offset = 0;
  for (const auto* t : tensors) {
    check_size(*t);
    FERRY_CHECK(!h.contains(t->name), "tensor '{}' added twice", t->name);
    const int64_t end = offset + static_cast<int64_t>(t->bytes.size());
    h[t->name] = {
        {"dtype", std::string(core::dtype_name(t->dtype))}, {"shape", t->shape}, {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  write_atomically(file, header, tensors);
}

std::vector<std::string> write_sharded_checkpoint(const fs::path& dir, const std::vector<TensorData>& tensors,
                                                  int shards) {
  FERRY_CHECK(shards >= 1, "a checkpoint needs at least one shard");
  int64_t total = 0;
  for (const auto& t : tensors) total += static_cast<int64_t>(t.bytes.size());
  FERRY_CHECK(tensors.size() >= static_cast<size_t>(shards), "{} tensors cannot fill {} shards", tensors.size(),
              shards);
  // Fill shards in order up to an equal share of the bytes, like Hugging Face's max_shard_size splitting,
  // while leaving at least one tensor for every later shard: an empty shard would be absent from the index.
  std::vector<std::vector<const TensorData*>> groups(static_cast<size_t>(shards));
  const int64_t target = (total + shards - 1) / shards;
  size_t cur = 0;
  int64_t in_cur = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int64_t b = static_cast<int64_t>(tensors[i].bytes.size());
    const size_t later = static_cast<size_t>(shards) - 1 - cur;
    const bool must_move = tensors.size() - i == later;
    const bool full = later > 0 && in_cur + b > target;
    if (!groups[cur].empty() && (must_move || full)) {
      ++cur;
      in_cur = 0;
    }
    groups[cur].push_back(&tensors[i]);
    in_cur += b;
  }
  std::vector<std::string> names;
  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", total}};
  index["weight_map"] = nlohmann::ordered_json::object();
  char buf[64];
  for (int s = 0; s < shards; ++s) {
    std::snprintf(buf, sizeof buf, "model-%05d-of-%05d.safetensors", s + 1, shards);
    names.emplace_back(buf);
    write_safetensors(dir / buf, groups[static_cast<size_t>(s)], {{"format", "pt"}});
    for (const auto* t : groups[static_cast<size_t>(s)]) index["weight_map"][t->name] = buf;
  }
  std::ofstream out(dir / "model.safetensors.index.json", std::ios::trunc);
  out << index.dump(2) << "\n";
  if (!out) FERRY_THROW("cannot write {}", (dir / "model.safetensors.index.json").string());
  return names;
}

}  // namespace ferry::runtime
