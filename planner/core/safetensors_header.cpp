#include "planner/core/safetensors_header.h"

#include <fmt/format.h>
#include <algorithm>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <system_error>

#include "planner/core/error.h"

namespace ferry::core {

namespace fs = std::filesystem;
// Ordered, so that tensors keep their header order.
// Plain (sorted) objects: ordered_json looks keys up linearly, which makes a 100k-key header quadratic. The
// header order of tensors is restored from their data offsets, which is the order writers lay them out in.
using json = nlohmann::json;

namespace {

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();
constexpr const char* kIndexName = "model.safetensors.index.json";

// Names and strings come from untrusted files; escaping control bytes keeps every message on one line.
std::string quote_name(std::string_view s) {
  std::string out = "'";
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 15];
    } else {
      out += c;
    }
  }
  return out + "'";
}

// The JSON library's messages quote bytes from the file: keep them printable ASCII and on one line.
std::string one_line(std::string s) {
  for (char& c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7f) c = '?';
  }
  return s;
}

// Headers and indexes are flat: anything nested deeper than this is malformed, and refusing it while parsing
// keeps hostile files from exhausting the stack when a deep value is copied, printed or destroyed.
constexpr int kMaxJsonDepth = 32;

json parse_json(std::string_view text, const std::string& what) {
  try {
    return json::parse(text.begin(), text.end(), [&](int depth, json::parse_event_t, json&) {
      if (depth > kMaxJsonDepth) FERRY_THROW("{} nests JSON deeper than {} levels", what, kMaxJsonDepth);
      return true;
    });
  } catch (const nlohmann::json::exception& e) {  // parse_error, and out_of_range for numbers such as 1e400
    FERRY_THROW("{} is not valid JSON: {}", what, one_line(e.what()));
  }
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

enum class IntKind { Ok, Negative, TooLarge, NotInteger };

// A JSON integer in [0, INT64_MAX]; nlohmann stores large positives as unsigned and huge ones as floats.
IntKind non_negative_int(const json& v, int64_t& out) {
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(kInt64Max)) return IntKind::TooLarge;
    out = static_cast<int64_t>(u);
    return IntKind::Ok;
  }
  if (v.is_number_integer()) {
    out = v.get<int64_t>();
    return out < 0 ? IntKind::Negative : IntKind::Ok;
  }
  return IntKind::NotInteger;
}

std::string int_problem(IntKind k) {
  switch (k) {
    case IntKind::Negative: return "negative";
    case IntKind::TooLarge: return "too large";
    default: return "not an integer";
  }
}

// Element count, or nullopt when the product does not fit in int64 (a zero dimension makes it 0 regardless).
std::optional<int64_t> element_count(const std::vector<int64_t>& shape) {
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
  int64_t n = 1;
  for (const int64_t d : shape) {
    if (n > kInt64Max / d) return std::nullopt;
    n *= d;
  }
  return n;
}

SafetensorsTensor parse_entry(const std::string& file, const std::string& name, const json& e, int64_t data_bytes) {
  const std::string where = file + ": tensor " + quote_name(name);
  if (!e.is_object()) FERRY_THROW("{} is not a JSON object but {}", where, e.type_name());
  SafetensorsTensor t;
  t.name = name;

  const auto dt = e.find("dtype");
  if (dt == e.end() || !dt->is_string()) FERRY_THROW("{} has no dtype string", where);
  const auto& dtype_text = dt->get_ref<const std::string&>();
  const auto dtype = dtype_from_name(dtype_text);
  if (!dtype) FERRY_THROW("{} has unknown dtype {}", where, quote_name(dtype_text));
  t.dtype = *dtype;

  const auto sh = e.find("shape");
  if (sh == e.end() || !sh->is_array()) FERRY_THROW("{} has no shape array", where);
  for (const auto& d : *sh) {
    int64_t n = 0;
    const IntKind k = non_negative_int(d, n);
    if (k != IntKind::Ok) FERRY_THROW("{} has shape entry {} that is {}", where, one_line(d.dump()), int_problem(k));
    t.shape.push_back(n);
  }

  const auto off = e.find("data_offsets");
  if (off == e.end() || !off->is_array() || off->size() != 2) FERRY_THROW("{} needs data_offsets [begin, end]", where);
  for (size_t i = 0; i < 2; ++i) {
    const IntKind k = non_negative_int((*off)[i], i == 0 ? t.begin : t.end);
    if (k != IntKind::Ok)
      FERRY_THROW("{} has data_offsets entry {} that is {}", where, one_line((*off)[i].dump()), int_problem(k));
  }
  if (t.begin > t.end) FERRY_THROW("{} has data_offsets [{}, {}] with begin after end", where, t.begin, t.end);

  const int64_t size = dtype_size(t.dtype);
  const auto elements = element_count(t.shape);
  const bool fits = elements && *elements <= kInt64Max / size;
  if (!fits || *elements * size != t.bytes())
    FERRY_THROW("{} shape {} x {} = {} but data_offsets span {}", where, shape_text(t.shape), dtype_name(t.dtype),
                fits ? fmt::format("{} bytes", *elements * size) : "more bytes than int64 holds (overflow)", t.bytes());

  if (t.end > data_bytes)
    FERRY_THROW("{} data_offsets [{}, {}) run past the end of the {}-byte data section (file truncated?)", where,
                t.begin, t.end, data_bytes);
  return t;
}

}  // namespace

SafetensorsHeader parse_safetensors_header(std::string_view header_json, int64_t file_bytes, int64_t header_bytes,
                                           const std::string& file) {
  FERRY_CHECK(header_bytes >= 0 && header_bytes <= kInt64Max - 8, "{}: header length {} is out of range", file,
              header_bytes);
  SafetensorsHeader h;
  h.file = file;
  h.header_bytes = header_bytes;
  h.data_offset = 8 + header_bytes;
  h.file_bytes = file_bytes;
  if (file_bytes < h.data_offset)
    FERRY_THROW("{}: header length {} exceeds the file size {}", file, header_bytes, file_bytes);
  const int64_t data_bytes = file_bytes - h.data_offset;

  const json j = parse_json(header_json, file + ": header");
  if (!j.is_object()) FERRY_THROW("{}: header is not a JSON object but {}", file, j.type_name());

  for (const auto& [name, entry] : j.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) FERRY_THROW("{}: __metadata__ is not an object but {}", file, entry.type_name());
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) FERRY_THROW("{}: __metadata__ value {} is not a string", file, quote_name(k));
        h.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    h.tensors.push_back(parse_entry(file, name, entry, data_bytes));
  }
  // Layout order; tensors of zero bytes, which share offsets, stay in name order.
  std::stable_sort(h.tensors.begin(), h.tensors.end(),
                   [](const SafetensorsTensor& a, const SafetensorsTensor& b) { return a.begin < b.begin; });

  // With non-empty ranges sorted by begin, any overlap shows up between neighbours.
  std::vector<const SafetensorsTensor*> ranges;
  for (const auto& t : h.tensors)
    if (t.bytes() > 0) ranges.push_back(&t);
  std::sort(ranges.begin(), ranges.end(), [](const auto* a, const auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    const auto& a = *ranges[i - 1];
    const auto& b = *ranges[i];
    if (b.begin < a.end)
      FERRY_THROW("{}: tensors {} [{}, {}) and {} [{}, {}) have overlapping data_offsets", file, quote_name(a.name),
                  a.begin, a.end, quote_name(b.name), b.begin, b.end);
  }
  return h;
}

SafetensorsHeader read_safetensors_header(const fs::path& path) {
  const std::string file = path.filename().string();
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) FERRY_THROW("{}: not a regular file", path.string());
  const auto size = fs::file_size(path, ec);
  if (ec) FERRY_THROW("{}: cannot read its size ({})", path.string(), ec.message());
  if (size > static_cast<uintmax_t>(kInt64Max)) FERRY_THROW("{}: file size out of range", path.string());
  const auto file_bytes = static_cast<int64_t>(size);
  if (file_bytes < 8) FERRY_THROW("{}: {} bytes is too short for a safetensors header length", file, file_bytes);

  std::ifstream in(path, std::ios::binary);
  if (!in) FERRY_THROW("{}: cannot open", path.string());
  unsigned char len[8] = {};
  in.read(reinterpret_cast<char*>(len), 8);
  if (in.gcount() != 8) FERRY_THROW("{}: cannot read the header length", file);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
  // Both checks come before the allocation, so a corrupt length cannot ask for gigabytes.
  if (n > static_cast<uint64_t>(file_bytes - 8))
    FERRY_THROW("{}: header length {} exceeds the file size {}", file, n, file_bytes);
  if (n > static_cast<uint64_t>(kMaxSafetensorsHeaderBytes))
    FERRY_THROW("{}: header length {} is above the {}-byte limit for a header", file, n, kMaxSafetensorsHeaderBytes);

  std::string header(static_cast<size_t>(n), '\0');
  in.read(header.data(), static_cast<std::streamsize>(n));
  if (static_cast<uint64_t>(in.gcount()) != n) FERRY_THROW("{}: cannot read the whole header", file);
  return parse_safetensors_header(header, file_bytes, static_cast<int64_t>(n), file);
}

const SafetensorsTensor* CheckpointHeaders::find(const std::string& name) const {
  const auto it = by_name.find(name);
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
    const auto [it, inserted] = out.by_name.emplace(h.tensors[i].name, std::make_pair(shard, i));
    if (!inserted)
      FERRY_THROW("tensor {} appears in both {} and {}", quote_name(h.tensors[i].name),
                  out.shards[it->second.first].file, h.file);
  }
  out.shards.push_back(std::move(h));
}

json read_index(const fs::path& index) {
  std::ifstream in(index, std::ios::binary);
  if (!in) FERRY_THROW("{}: cannot open", index.string());
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  return parse_json(text, index.string());
}

CheckpointHeaders read_through_index(const fs::path& dir, const fs::path& index) {
  const json j = read_index(index);
  const auto wm = j.is_object() ? j.find("weight_map") : j.end();
  if (!j.is_object() || wm == j.end() || !wm->is_object()) FERRY_THROW("{}: has no weight_map object", index.string());

  std::set<std::string> shard_names;
  for (const auto& [name, shard] : wm->items()) {
    if (!shard.is_string()) FERRY_THROW("{}: weight_map entry {} is not a file name", kIndexName, quote_name(name));
    const auto& s = shard.get_ref<const std::string&>();
    // The index is data, not a path to follow: shards must sit in the model directory itself.
    const bool control = std::any_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20; });
    if (s.empty() || s == "." || s == ".." || control || s.find('/') != std::string::npos ||
        s.find('\\') != std::string::npos)
      FERRY_THROW("{}: shard name {} for tensor {} is not a file in the model directory", kIndexName, quote_name(s),
                  quote_name(name));
    shard_names.insert(s);
  }

  CheckpointHeaders out;
  for (const auto& s : shard_names) {
    std::error_code ec;
    if (!fs::exists(dir / s, ec))
      FERRY_THROW("{} names shard {}, which is missing from {}", kIndexName, quote_name(s), dir.string());
    add_shard(out, read_safetensors_header(dir / s));
  }
  for (const auto& [name, shard] : wm->items()) {
    const auto& s = shard.get_ref<const std::string&>();
    const auto it = out.by_name.find(name);
    if (it == out.by_name.end() || out.shards[it->second.first].file != s)
      FERRY_THROW("{} puts tensor {} in {}, which does not hold it", kIndexName, quote_name(name), s);
  }
  return out;
}

}  // namespace

CheckpointHeaders read_checkpoint_headers(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) FERRY_THROW("{}: not a directory", dir.string());
  const fs::path index = dir / kIndexName;
  if (fs::exists(index, ec)) return read_through_index(dir, index);

  CheckpointHeaders out;
  if (fs::exists(dir / "model.safetensors", ec)) {
    add_shard(out, read_safetensors_header(dir / "model.safetensors"));
    return out;
  }
  std::vector<fs::path> files;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (it->path().extension() == ".safetensors") files.push_back(it->path());
  if (ec) FERRY_THROW("{}: cannot list ({})", dir.string(), ec.message());
  if (files.empty()) FERRY_THROW("{}: holds no {}, model.safetensors or *.safetensors", dir.string(), kIndexName);
  std::sort(files.begin(), files.end());
  for (const auto& f : files) add_shard(out, read_safetensors_header(f));
  return out;
}

}  // namespace ferry::core
