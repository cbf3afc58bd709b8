#include "runtime/text/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "planner/core/error.h"
#include "runtime/text/added_tokens.h"
#include "runtime/text/bpe.h"
#include "runtime/text/byte_level.h"
#include "runtime/text/regex_split.h"
#include "runtime/text/utf8.h"

namespace ferry::runtime {

namespace {

using Json = nlohmann::json;

// Far above any real vocabulary (DeepSeek's is 128,815); it bounds the id tables a malformed file can ask for.
constexpr int64_t kMaxVocab = 1 << 24;
constexpr const char* kDeepSeekBos =
    "<\uFF5C"
    "begin\u2581of\u2581sentence\uFF5C>";

// The parts of tokenizer.json ferry reads, with every error prefixed by where it came from.
class Reader {
 public:
  explicit Reader(std::string source) : source_(std::move(source)) {}

  // A message is a fmt format string with its arguments, formatted only when a check fails: check() runs once per
  // vocabulary entry and merge.
  template <class... A>
  [[noreturn]] void fail(fmt::format_string<A...> format, A&&... a) const {
    FERRY_THROW("{}: {}", source_, fmt::format(format, std::forward<A>(a)...));
  }
  template <class... A>
  void check(bool ok, fmt::format_string<A...> format, A&&... a) const {
    if (!ok) fail(format, std::forward<A>(a)...);
  }

  const Json& object(const Json& parent, const char* key, const std::string& where) const {
    check(parent.contains(key) && parent[key].is_object(), "{} must have an object '{}'", where, key);
    return parent[key];
  }
  const Json& array(const Json& parent, const char* key, const std::string& where) const {
    check(parent.contains(key) && parent[key].is_array(), "{} must have an array '{}'", where, key);
    return parent[key];
  }
  std::string string(const Json& parent, const char* key, const std::string& where) const {
    check(parent.contains(key) && parent[key].is_string(), "{} must have a string '{}'", where, key);
    return parent[key].get<std::string>();
  }
  bool flag(const Json& parent, const char* key, bool fallback, const std::string& where) const {
    if (!parent.contains(key) || parent[key].is_null()) return fallback;
    check(parent[key].is_boolean(), "{}: '{}' must be true or false", where, key);
    return parent[key].get<bool>();
  }
  int32_t id(const Json& value, const std::string& where) const {
    check(value.is_number_integer() && value.get<int64_t>() >= 0 && value.get<int64_t>() < kMaxVocab,
          "{}: the id must be an integer in [0, {}), not {}", where, kMaxVocab, value.dump());
    return static_cast<int32_t>(value.get<int64_t>());
  }
  // A setting ferry does not implement must be absent, null or the neutral value.
  void require_unset(const Json& parent, const char* key, const std::string& where) const {
    if (!parent.contains(key)) return;
    const Json& v = parent[key];
    check(v.is_null() || v == false || v == "" || v == 0, "{}: '{}' = {} is not supported by ferry's tokenizer", where,
          key, v.dump());
  }
  std::string type(const Json& part, const std::string& where) const {
    check(part.is_object(), "{} must be an object", where);
    return string(part, "type", where);
  }

 private:
  std::string source_;
};

// The only normalizer DeepSeek's file has is an empty Sequence: text is not changed.
void check_normalizer(const Reader& r, const Json& root) {
  if (!root.contains("normalizer") || root["normalizer"].is_null()) return;
  const Json& n = root["normalizer"];
  const std::string type = r.type(n, "the normalizer");
  r.check(type == "Sequence" && n.contains("normalizers") && n["normalizers"].is_array() && n["normalizers"].empty(),
          "unsupported normalizer '{}' (ferry supports none, or an empty Sequence)", type);
}

std::vector<std::string> read_pre_tokenizer(const Reader& r, const Json& root) {
  r.check(root.contains("pre_tokenizer") && !root["pre_tokenizer"].is_null(),
          "has no pre_tokenizer (ferry expects a Sequence of regex Splits ending in ByteLevel)");
  const Json& pre = root["pre_tokenizer"];
  std::vector<Json> steps;
  if (r.type(pre, "the pre_tokenizer") == "Sequence") {
    for (const Json& step : r.array(pre, "pretokenizers", "the Sequence pre_tokenizer")) steps.push_back(step);
  } else {
    steps.push_back(pre);
  }
  std::vector<std::string> patterns;
  for (size_t k = 0; k < steps.size(); ++k) {
    const std::string where = fmt::format("pre-tokenizer {}", k);
    const Json& step = steps[k];
    const std::string type = r.type(step, where);
    if (type == "ByteLevel") {
      r.check(k + 1 == steps.size(), "{}: ByteLevel must be the last pre-tokenizer", where);
      r.require_unset(step, "add_prefix_space", where);
      r.require_unset(step, "use_regex", where);
      return patterns;
    }
    r.check(type == "Split", "unsupported pre-tokenizer '{}' (ferry supports Split and ByteLevel)", type);
    const Json& pattern = r.object(step, "pattern", where);
    r.check(pattern.contains("Regex") && pattern["Regex"].is_string(),
            "{}: only Split patterns of the form {{\"Regex\": ...}} are supported", where);
    const std::string behavior = r.string(step, "behavior", where);
    r.check(behavior == "Isolated", "{}: unsupported Split behavior '{}' (ferry supports Isolated)", where, behavior);
    r.require_unset(step, "invert", where);
    patterns.push_back(pattern["Regex"].get<std::string>());
  }
  r.fail("the pre_tokenizer does not end in ByteLevel, so it is not a byte-level BPE tokenizer");
}

std::vector<AddedToken> read_added_tokens(const Reader& r, const Json& root) {
  std::vector<AddedToken> tokens;
  if (!root.contains("added_tokens") || root["added_tokens"].is_null()) return tokens;
  for (const Json& a : r.array(root, "added_tokens", "the file")) {
    const std::string where = fmt::format("added token {}", tokens.size());
    r.check(a.is_object() && a.contains("id"), "{} must be an object with an id", where);
    AddedToken t;
    t.id = r.id(a["id"], where);
    t.content = r.string(a, "content", where);
    r.check(!t.content.empty(), "{} has an empty content", where);
    r.check(first_invalid_utf8(t.content) == std::string::npos, "{} is not valid UTF-8", where);
    t.special = r.flag(a, "special", false, where);
    t.normalized = r.flag(a, "normalized", !t.special, where);
    for (const char* key : {"lstrip", "rstrip", "single_word"}) r.require_unset(a, key, where + " '" + t.content + "'");
    tokens.push_back(std::move(t));
  }
  return tokens;
}

// "left right" (the usual form) or ["left", "right"] (newer files).
std::pair<std::string, std::string> merge_parts(const Reader& r, const Json& m, size_t rank) {
  const std::string where = fmt::format("merge {}", rank);
  if (m.is_array()) {
    r.check(m.size() == 2 && m[0].is_string() && m[1].is_string(), "{} must be two strings", where);
    return {m[0].get<std::string>(), m[1].get<std::string>()};
  }
  r.check(m.is_string(), "{} must be a string \"left right\" or an array of two strings", where);
  const std::string s = m.get<std::string>();
  const size_t space = s.find(' ');
  const bool two_parts =
      space != std::string::npos && space > 0 && space + 1 < s.size() && s.find(' ', space + 1) == std::string::npos;
  r.check(two_parts, "{} '{}' is not two tokens separated by one space", where, s);
  return {s.substr(0, space), s.substr(space + 1)};
}

}  // namespace

struct Tokenizer::Impl {
  std::vector<std::string> text;   // by id, as in tokenizer.json
  std::vector<std::string> bytes;  // by id, what decode gives
  std::vector<uint8_t> known, special;
  std::unordered_map<std::string, int32_t> ids;  // token text -> id; added tokens win over the model's vocabulary
  std::unique_ptr<AddedTokenMatcher> added;
  std::unique_ptr<SplitSequence> pre_tokenizer;
  std::unique_ptr<Bpe> bpe;
  std::optional<int32_t> bos;
};

// Builds the tables from the parsed file (a friend of Tokenizer, for Impl).
struct TokenizerLoader {
  static std::shared_ptr<Tokenizer::Impl> build(const Reader& r, const Json& root);
  static std::shared_ptr<Tokenizer::Impl> parse(std::string_view text, const std::string& source);
};

std::shared_ptr<Tokenizer::Impl> TokenizerLoader::build(const Reader& r, const Json& root) {
  r.check(root.is_object(), "expected a JSON object at the top level");
  auto impl = std::make_shared<Tokenizer::Impl>();

  const Json& model = r.object(root, "model", "the file");
  const std::string type = model.contains("type") ? r.string(model, "type", "the model") : "BPE";
  r.check(type == "BPE", "unsupported model type '{}' (ferry reads byte-level BPE tokenizers)", type);
  for (const char* key : {"dropout", "byte_fallback", "continuing_subword_prefix", "end_of_word_suffix"})
    r.require_unset(model, key, "the BPE model");
  check_normalizer(r, root);
  impl->pre_tokenizer = std::make_unique<SplitSequence>(read_pre_tokenizer(r, root));
  const Json& decoder = root.contains("decoder") ? root["decoder"] : Json();
  r.check(decoder.is_object() && decoder.value("type", "") == "ByteLevel",
          "unsupported decoder {} (ferry supports ByteLevel)",
          decoder.is_object() ? fmt::format("'{}'", decoder.value("type", "?")) : decoder.dump());

  const Json& vocab = r.object(model, "vocab", "the BPE model");
  const std::vector<AddedToken> added = read_added_tokens(r, root);
  int32_t max_id = -1;
  for (const auto& [token, id] : vocab.items()) max_id = std::max(max_id, r.id(id, "vocab entry '" + token + "'"));
  for (const AddedToken& a : added) max_id = std::max(max_id, a.id);
  r.check(max_id >= 0, "the vocabulary is empty");
  const size_t n = static_cast<size_t>(max_id) + 1;
  impl->text.resize(n);
  impl->bytes.resize(n);
  impl->known.assign(n, 0);
  impl->special.assign(n, 0);
  std::unordered_map<std::string, int32_t> model_ids;
  model_ids.reserve(vocab.size());
  for (const auto& [token, value] : vocab.items()) {
    const int32_t id = value.get<int32_t>();
    r.check(!impl->known[id], "vocab id {} is given to both '{}' and '{}'", id, impl->text[id], token);
    impl->known[id] = 1;
    impl->text[id] = token;
    model_ids.emplace(token, id);
  }
  impl->ids = model_ids;
  for (const AddedToken& a : added) {
    impl->known[a.id] = 1;
    impl->text[a.id] = a.content;
    impl->special[a.id] = a.special;
    impl->ids[a.content] = a.id;
  }
  // Hugging Face's ByteLevel decoder: a token made of alphabet characters is bytes; any other (an added token
  // such as "<｜User｜>") is its own UTF-8.
  for (size_t id = 0; id < n; ++id)
    if (impl->known[id]) impl->bytes[id] = byte_level_decode(impl->text[id]).value_or(impl->text[id]);

  std::array<int32_t, 256> byte_ids{};
  for (int b = 0; b < 256; ++b) {
    auto it = model_ids.find(byte_level_symbols()[b]);
    r.check(it != model_ids.end(),
            "the vocabulary lacks the byte-level token '{}' of byte {}, so it is not a byte-level BPE vocabulary",
            byte_level_symbols()[b], b);
    byte_ids[b] = it->second;
  }
  std::vector<Bpe::Merge> merges;
  const Json& merge_list = r.array(model, "merges", "the BPE model");
  merges.reserve(merge_list.size());
  for (const Json& m : merge_list) {
    const auto [left, right] = merge_parts(r, m, merges.size());
    auto id_of = [&](const std::string& token) {
      auto it = model_ids.find(token);
      r.check(it != model_ids.end(), "merge {} '{} {}': '{}' is not in the vocabulary", merges.size(), left, right,
              token);
      return it->second;
    };
    merges.push_back({id_of(left), id_of(right), id_of(left + right)});
  }
  std::unordered_map<std::string, int32_t> whole_words;
  if (r.flag(model, "ignore_merges", false, "the BPE model")) {
    for (const auto& [token, id] : model_ids)
      if (auto b = byte_level_decode(token)) whole_words.emplace(std::move(*b), id);
  }
  impl->bpe = std::make_unique<Bpe>(byte_ids, merges, std::move(whole_words));
  impl->added = std::make_unique<AddedTokenMatcher>(added);
  if (auto it = impl->ids.find(kDeepSeekBos); it != impl->ids.end()) impl->bos = it->second;
  return impl;
}

std::shared_ptr<Tokenizer::Impl> TokenizerLoader::parse(std::string_view text, const std::string& source) {
  const Reader r(source);
  Json root;
  try {
    root = Json::parse(text);
  } catch (const Json::exception& e) {
    r.fail("not valid JSON: {}", e.what());
  }
  try {
    return build(r, root);
  } catch (const Json::exception& e) {
    r.fail("{}", e.what());  // a value of an unexpected type that no check above names
  }
}

namespace {

std::string read_file(const std::string& path) {
  std::error_code ec;
  FERRY_CHECK(std::filesystem::is_regular_file(path, ec), "tokenizer file '{}' does not exist or is not a file", path);
  std::ifstream in(path, std::ios::binary);
  FERRY_CHECK(in.good(), "cannot open tokenizer file '{}'", path);
  std::ostringstream text;
  text << in.rdbuf();
  FERRY_CHECK(!in.bad(), "cannot read tokenizer file '{}'", path);
  return text.str();
}

// tokenizer_config.json's bos_token: a string or an AddedToken object {"content": ...}.
std::optional<std::string> configured_bos(const std::string& config_path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(config_path, ec)) return std::nullopt;
  const Reader r(config_path);
  Json config;
  try {
    config = Json::parse(read_file(config_path));
  } catch (const Json::exception& e) {
    r.fail("not valid JSON: {}", e.what());
  }
  if (!config.is_object() || !config.contains("bos_token")) return std::nullopt;
  const Json& bos = config["bos_token"];
  if (bos.is_string()) return bos.get<std::string>();
  if (bos.is_object() && bos.contains("content") && bos["content"].is_string())
    return bos["content"].get<std::string>();
  r.check(bos.is_null(), "bos_token must be a string or an object with a string 'content'");
  return std::nullopt;
}

}  // namespace

Tokenizer::Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

Tokenizer Tokenizer::from_file(const std::string& path) {
  return Tokenizer(TokenizerLoader::parse(read_file(path), path));
}

Tokenizer Tokenizer::from_json_text(std::string_view json_text) {
  return Tokenizer(TokenizerLoader::parse(json_text, "tokenizer.json"));
}

Tokenizer Tokenizer::from_model_dir(const std::string& dir) {
  const std::filesystem::path d(dir);
  std::error_code ec;
  FERRY_CHECK(std::filesystem::is_directory(d, ec), "model directory '{}' does not exist", dir);
  const std::string json = (d / "tokenizer.json").string();
  FERRY_CHECK(std::filesystem::is_regular_file(json, ec), "'{}' has no tokenizer.json", dir);
  auto impl = TokenizerLoader::parse(read_file(json), json);
  const std::string config = (d / "tokenizer_config.json").string();
  if (std::optional<std::string> bos = configured_bos(config)) {
    auto it = impl->ids.find(*bos);
    FERRY_CHECK(it != impl->ids.end(), "{}: bos_token '{}' is not a token of tokenizer.json", config, *bos);
    impl->bos = it->second;
  }
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool parse_special) const {
  const size_t bad = first_invalid_utf8(text);
  FERRY_CHECK(bad == std::string_view::npos, "the text is not valid UTF-8 (at byte {})", bad);
  FERRY_CHECK(text.size() < INT32_MAX, "the text is too long to tokenize at once (2 GiB or more)");
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  for (const TextSegment& segment : impl_->added->split(text, parse_special)) {
    if (segment.token >= 0) {
      ids.push_back(segment.token);
      continue;
    }
    for (std::string_view piece : impl_->pre_tokenizer->split(segment.text)) impl_->bpe->encode(piece, ids);
  }
  return ids;
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  FERRY_CHECK(id >= 0 && id < vocab_size() && impl_->known[id],
              "token id {} is not in the tokenizer's vocabulary ({} ids)", id, vocab_size());
  return impl_->bytes[id];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string bytes;
  for (int32_t id : ids) {
    const std::string& b = token_bytes(id);
    if (!(skip_special && impl_->special[id])) bytes += b;
  }
  std::string text;
  append_utf8_lossy(bytes, true, text);
  return text;
}

std::optional<int32_t> Tokenizer::token_id(std::string_view token_text) const {
  auto it = impl_->ids.find(std::string(token_text));
  if (it == impl_->ids.end()) return std::nullopt;
  return it->second;
}

std::string Tokenizer::token_text(int32_t id) const {
  token_bytes(id);  // the range check
  return impl_->text[id];
}

bool Tokenizer::is_special(int32_t id) const { return id >= 0 && id < vocab_size() && impl_->special[id]; }

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->text.size()); }

std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos; }

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(&tokenizer), skip_special_(skip_special) {}

std::string StreamDecoder::push(int32_t id) {
  const std::string& bytes = tokenizer_->token_bytes(id);
  if (skip_special_ && tokenizer_->is_special(id)) return {};
  pending_ += bytes;
  std::string out;
  pending_.erase(0, append_utf8_lossy(pending_, false, out));
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  append_utf8_lossy(pending_, true, out);
  pending_.clear();
  return out;
}

}  // namespace ferry::runtime
