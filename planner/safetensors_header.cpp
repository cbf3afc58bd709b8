#include "planner/safetensors_header.h"

#include <algorithm>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "planner/error.h"

namespace ferry::planner {

namespace fs = std::filesystem;
// Ordered, so that tensors keep their header order.
using json = nlohmann::ordered_json;

namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

bool non_negative_int(const json& v) {
  return (v.is_number_unsigned() || v.is_number_integer()) && !(v.is_number_integer() && v.get<int64_t>() < 0);
}

int64_t to_int(const json& v) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    return u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ? -1 : static_cast<int64_t>(u);
  }
  return v.get<int64_t>();
}

SafetensorsTensor parse_entry(const std::string& file, const std::string& name, const json& e, int64_t data_bytes) {
  const std::string where = file + ": tensor '" + name + "'";
  if (!e.is_object()) FERRY_THROW(where + " is not a JSON object");
  SafetensorsTensor t;
  t.name = name;
  auto dt = e.find("dtype");
  if (dt == e.end() || !dt->is_string()) FERRY_THROW(where + " has no dtype string");
  const auto dtype = dtype_from_name(dt->get<std::string>());
  if (!dtype) FERRY_THROW(where + " has unknown dtype '" + dt->get<std::string>() + "'");
  t.dtype = *dtype;
  auto sh = e.find("shape");
  if (sh == e.end() || !sh->is_array()) FERRY_THROW(where + " has no shape array");
  int64_t elements = 1;
  bool overflow = false;
  for (const auto& d : *sh) {
    if (!non_negative_int(d) || to_int(d) < 0) FERRY_THROW(where + " has a negative or non-integer shape entry " + d.dump());
    const int64_t n = to_int(d);
    t.shape.push_back(n);
    if (n != 0 && elements > std::numeric_limits<int64_t>::max() / n) overflow = true;
    else elements *= n;
  }
  auto off = e.find("data_offsets");
  if (off == e.end() || !off->is_array() || off->size() != 2 || !non_negative_int((*off)[0]) || !non_negative_int((*off)[1]))
    FERRY_THROW(where + " needs data_offsets [begin, end] of non-negative integers");
  t.begin = to_int((*off)[0]);
  t.end = to_int((*off)[1]);
  if (t.begin < 0 || t.end < 0 || t.begin > t.end) FERRY_THROW(where + " has data_offsets with begin after end");
  const int64_t size = dtype_size(t.dtype);
  if (overflow || elements > std::numeric_limits<int64_t>::max() / size || elements * size != t.bytes())
    FERRY_THROW(where + " shape " + shape_text(t.shape) + " x " + std::string(dtype_name(t.dtype)) + " = " +
                (overflow ? std::string("overflow") : std::to_string(elements * size)) + " bytes but data_offsets span " +
                std::to_string(t.bytes()));
  if (t.end > data_bytes)
    FERRY_THROW(where + " data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                ") run past the data section of " + std::to_string(data_bytes) + " bytes (truncated file?)");
  return t;
}

}  // namespace

SafetensorsHeader parse_safetensors_header(std::string_view header_json, int64_t file_bytes, int64_t header_bytes,
                                           const std::string& file) {
  SafetensorsHeader h;
  h.file = file;
  h.header_bytes = header_bytes;
  h.data_offset = 8 + header_bytes;
  h.file_bytes = file_bytes;
  const int64_t data_bytes = file_bytes - h.data_offset;
  if (data_bytes < 0) FERRY_THROW(file + ": header length " + std::to_string(header_bytes) + " exceeds the file size " + std::to_string(file_bytes));
  json j;
  try {
    j = json::parse(header_json.begin(), header_json.end());
  } catch (const nlohmann::json::parse_error& e) {
    std::string what = e.what();
    std::replace(what.begin(), what.end(), '\n', ' ');
    FERRY_THROW(file + ": header is not valid JSON: " + what);
  }
  if (!j.is_object()) FERRY_THROW(file + ": header is not a JSON object");
  for (const auto& [name, entry] : j.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) FERRY_THROW(file + ": __metadata__ is not an object");
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) FERRY_THROW(file + ": __metadata__ value '" + k + "' is not a string");
        h.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    h.tensors.push_back(parse_entry(file, name, entry, data_bytes));
  }
  // Overlaps: sort the non-empty ranges and compare neighbours.
  std::vector<const SafetensorsTensor*> ranges;
  for (const auto& t : h.tensors)
    if (t.bytes() > 0) ranges.push_back(&t);
  std::sort(ranges.begin(), ranges.end(), [](const auto* a, const auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i]->begin < ranges[i - 1]->end)
      FERRY_THROW(file + ": tensors '" + ranges[i - 1]->name + "' and '" + ranges[i]->name + "' have overlapping data_offsets");
  return h;
}

SafetensorsHeader read_safetensors_header(const fs::path& path) {
  const std::string file = path.filename().string();
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (ec) FERRY_THROW(path.string() + ": cannot read (" + ec.message() + ")");
  const int64_t file_bytes = static_cast<int64_t>(size);
  if (file_bytes < 8) FERRY_THROW(file + ": " + std::to_string(file_bytes) + " bytes is too short for a safetensors header");
  std::ifstream in(path, std::ios::binary);
  if (!in) FERRY_THROW(path.string() + ": cannot open");
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
  if (n > static_cast<uint64_t>(file_bytes - 8))
    FERRY_THROW(file + ": header length " + std::to_string(n) + " exceeds the file size " + std::to_string(file_bytes));
  if (n > static_cast<uint64_t>(kMaxSafetensorsHeaderBytes))
    FERRY_THROW(file + ": header length " + std::to_string(n) + " is larger than " + std::to_string(kMaxSafetensorsHeaderBytes) + " bytes");
  std::string header(static_cast<size_t>(n), '\0');
  in.read(header.data(), static_cast<std::streamsize>(n));
  if (static_cast<uint64_t>(in.gcount()) != n) FERRY_THROW(file + ": could not read the whole header");
  return parse_safetensors_header(header, file_bytes, static_cast<int64_t>(n), file);
}

const SafetensorsTensor* CheckpointHeaders::find(const std::string& name) const {
  auto it = by_name.find(name);
  return it == by_name.end() ? nullptr : &shards[it->second.first].tensors[it->second.second];
}

int64_t CheckpointHeaders::total_tensor_bytes() const {
  int64_t sum = 0;
  for (const auto& s : shards)
    for (const auto& t : s.tensors) sum += t.bytes();
  return sum;
}

namespace {

void add_shard(CheckpointHeaders& out, SafetensorsHeader h) {
  const size_t shard = out.shards.size();
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    auto [it, inserted] = out.by_name.emplace(h.tensors[i].name, std::make_pair(shard, i));
    if (!inserted)
      FERRY_THROW("tensor '" + h.tensors[i].name + "' appears in both " + out.shards[it->second.first].file + " and " + h.file);
  }
  out.shards.push_back(std::move(h));
}

}  // namespace

CheckpointHeaders read_checkpoint_headers(const fs::path& dir) {
  CheckpointHeaders out;
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::exists(index)) {
    json j;
    try {
      std::ifstream in(index);
      j = json::parse(in);
    } catch (const nlohmann::json::parse_error& e) {
      std::string what = e.what();
      std::replace(what.begin(), what.end(), '\n', ' ');
      FERRY_THROW("model.safetensors.index.json is not valid JSON: " + what);
    }
    auto wm = j.find("weight_map");
    if (!j.is_object() || wm == j.end() || !wm->is_object()) FERRY_THROW("model.safetensors.index.json has no weight_map object");
    std::set<std::string> shard_names;
    for (const auto& [name, shard] : wm->items()) {
      if (!shard.is_string()) FERRY_THROW("model.safetensors.index.json: weight_map entry '" + name + "' is not a file name");
      const std::string s = shard.get<std::string>();
      if (s.find('/') != std::string::npos || s == "..")
        FERRY_THROW("model.safetensors.index.json: shard name '" + s + "' must be a file in the model directory");
      shard_names.insert(s);
    }
    for (const auto& s : shard_names) {
      if (!fs::exists(dir / s)) FERRY_THROW("model.safetensors.index.json names shard " + s + ", which is missing");
      add_shard(out, read_safetensors_header(dir / s));
    }
    for (const auto& [name, shard] : wm->items()) {
      auto it = out.by_name.find(name);
      if (it == out.by_name.end() || out.shards[it->second.first].file != shard.get<std::string>())
        FERRY_THROW("model.safetensors.index.json puts tensor '" + name + "' in " + shard.get<std::string>() + ", which does not hold it");
    }
    return out;
  }
  if (fs::exists(dir / "model.safetensors")) {
    add_shard(out, read_safetensors_header(dir / "model.safetensors"));
    return out;
  }
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().extension() == ".safetensors") files.push_back(e.path());
  if (ec) FERRY_THROW(dir.string() + ": cannot list (" + ec.message() + ")");
  if (files.empty()) FERRY_THROW(dir.string() + " holds no safetensors files");
  std::sort(files.begin(), files.end());
  for (const auto& f : files) add_shard(out, read_safetensors_header(f));
  return out;
}

}  // namespace ferry::planner
