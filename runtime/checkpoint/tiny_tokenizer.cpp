#include "runtime/checkpoint/tiny_tokenizer.h"

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "planner/core/error.h"
#include "runtime/text/byte_level.h"

namespace ferry::runtime {

namespace {

using Json = nlohmann::ordered_json;

// DeepSeek's exact strings (U+FF5C FULLWIDTH VERTICAL LINE, U+2581 LOWER ONE EIGHTH BLOCK): chat templates and
// generation stop conditions match them byte for byte.
constexpr std::array<const char*, 3> kSpecialTokens = {
    "<\uFF5C"
    "begin\u2581of\u2581sentence\uFF5C>",
    "<\uFF5C"
    "end\u2581of\u2581sentence\uFF5C>",
    "<\uFF5C\u2581pad\u2581\uFF5C>",
};
constexpr int kFirstByteId = 3;
constexpr int kFirstMergeId = kFirstByteId + 256;

// DeepSeek V3's pre-tokenizer regexes, copied from its tokenizer.json: digits in groups of up to three, runs of
// CJK and kana, then GPT-2-like words, punctuation and whitespace.
constexpr std::array<const char*, 3> kSplitPatterns = {
    "\\p{N}{1,3}",
    "[\u4E00-\u9FA5\u3040-\u309F\u30A0-\u30FF]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
};

// What the merges are learned from. Mixed on purpose (prose, code, numbers, Chinese) so that the tiny vocabulary
// has multi-byte tokens of every kind the runtime's tokenizer paths must handle. Changing it changes every tiny
// checkpoint's tokenizer.json.
constexpr std::string_view kTrainingText =
    "The quick brown fox jumps over the lazy dog. The dog did not mind; it was asleep in the sun.\n"
    "A tokenizer turns text into numbers, and the model turns those numbers into the next token. When the\n"
    "model is large, the weights are split across many devices, and each device holds only the layers and the\n"
    "experts that the plan gives it. The runtime reads the checkpoint, places every tensor where the plan says,\n"
    "and then serves requests: it encodes the prompt, runs the prefill, and decodes one token at a time until\n"
    "the end of the sentence or the length limit. Memory is the scarce resource: the key and value cache grows\n"
    "with every token, so the planner counts bytes before it starts, and it refuses a plan that does not fit.\n"
    "Tests should be small and fast. A tiny model with random weights is enough to check that the loader reads\n"
    "the same names, shapes and data types as the real one, that the shards agree with the index, and that the\n"
    "tokenizer round-trips the text it is given. If something is wrong, the error message should say what and\n"
    "where, in one line, so that the person reading it knows which file to open and which setting to change.\n"
    "There are three kinds of attention layers in this model, and there is a mixture of experts in every block;\n"
    "some experts are chosen by a hash of the token id, the others by a learned score. This is the way it is.\n"
    "\n"
    "#include <cstdint>\n"
    "#include <vector>\n"
    "\n"
    "int64_t sum_of_squares(const std::vector<int64_t>& values) {\n"
    "  int64_t total = 0;\n"
    "  for (int64_t value : values) total += value * value;\n"
    "  return total;\n"
    "}\n"
    "\n"
    "def load_config(path):\n"
    "    with open(path, \"r\", encoding=\"utf-8\") as f:\n"
    "        config = json.load(f)\n"
    "    if config.get(\"vocab_size\", 0) <= 0:\n"
    "        raise ValueError(f\"bad vocab_size in {path}\")\n"
    "    return config\n"
    "\n"
    "for i in range(10):\n"
    "    print(i, i * i, self.layers[i].name)\n"
    "\n"
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 4096 65536 3.14159 2.71828 1e-5 0.001 -7 +12 50%\n"
    "On 2024-12-26 the release had 671 billion parameters, 37 billion active per token, and 61 layers.\n"
    "Version 1.0.3 costs $19.99; order #2048 shipped at 08:30 on 2025/01/15 with 3 boxes of 144 items each.\n"
    "\n"
    "今天天气很好，我们一起去公园散步。模型把文字变成数字，再把数字变成下一个词。\n"
    "这是一个很小的模型，它的权重是随机的，但是它的文件格式和真正的模型一样。\n"
    "我们的程序读取检查点，把每一个张量放到计划指定的设备上，然后开始生成文本。\n"
    "如果内存不够，计划就会失败，并且告诉用户应该修改哪一个设置。中文和英文可以一起出现在同一句话里。\n"
    "深度学习的模型越来越大，一台机器放不下，所以我们需要很多台机器一起工作。\n";

struct CodePoint {
  char32_t value;
  size_t begin;  // byte offset in the text
  size_t end;
};

// The training text is ours and valid UTF-8, so the lead byte alone gives each length.
std::vector<CodePoint> decode_utf8(std::string_view text) {
  std::vector<CodePoint> out;
  for (size_t i = 0; i < text.size();) {
    auto lead = static_cast<unsigned char>(text[i]);
    size_t len = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
    char32_t c = len == 1 ? lead : lead & (0x7F >> len);
    for (size_t k = 1; k < len; ++k) c = (c << 6) | (static_cast<unsigned char>(text[i + k]) & 0x3F);
    out.push_back({c, i, i + len});
    i += len;
  }
  return out;
}

enum class Kind { kDigit, kCjk, kSpace, kNewline, kLetter, kPunct };

// Close enough to the Unicode classes in kSplitPatterns for the training text's characters.
Kind kind_of(char32_t c) {
  if (c >= '0' && c <= '9') return Kind::kDigit;
  if ((c >= 0x4E00 && c <= 0x9FA5) || (c >= 0x3040 && c <= 0x30FF)) return Kind::kCjk;
  if (c == ' ' || c == '\t') return Kind::kSpace;
  if (c == '\r' || c == '\n') return Kind::kNewline;
  if (c < 0x80) return ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') ? Kind::kLetter : Kind::kPunct;
  if ((c >= 0x2000 && c <= 0x206F) || (c >= 0x3000 && c <= 0x303F) || (c >= 0xFF00 && c <= 0xFFEF)) return Kind::kPunct;
  return Kind::kLetter;
}

// Splits the text roughly as kSplitPatterns do, so that the learned merges are ones the real pre-tokenizer can
// reach: a word keeps one leading space (byte-level "Ġ") and no merge crosses a chunk boundary.
std::vector<std::string> pre_split(std::string_view text) {
  std::vector<CodePoint> cps = decode_utf8(text);
  const size_t n = cps.size();
  auto kind = [&](size_t k) { return kind_of(cps[k].value); };
  auto is_space = [&](size_t k) { return kind(k) == Kind::kSpace || kind(k) == Kind::kNewline; };
  auto is_word = [&](size_t k) { return kind(k) == Kind::kLetter || kind(k) == Kind::kPunct; };
  std::vector<std::string> chunks;
  for (size_t i = 0; i < n;) {
    size_t j = i + 1;
    if (kind(i) == Kind::kDigit) {
      while (j < n && j - i < 3 && kind(j) == Kind::kDigit) ++j;
    } else if (kind(i) == Kind::kCjk) {
      while (j < n && kind(j) == Kind::kCjk) ++j;
    } else if (cps[i].value == ' ' && j < n && is_word(j)) {
      if (kind(j) == Kind::kLetter) {
        while (j < n && kind(j) == Kind::kLetter) ++j;
      } else {
        while (j < n && kind(j) == Kind::kPunct) ++j;
        while (j < n && kind(j) == Kind::kNewline) ++j;
      }
    } else if (kind(i) == Kind::kLetter) {
      while (j < n && kind(j) == Kind::kLetter) ++j;
    } else if (kind(i) == Kind::kPunct) {
      if (cps[i].value < 0x80 && j < n && cps[j].value < 0x80 && kind(j) == Kind::kLetter) {
        while (j < n && cps[j].value < 0x80 && kind(j) == Kind::kLetter) ++j;
      } else {
        while (j < n && kind(j) == Kind::kPunct) ++j;
        while (j < n && kind(j) == Kind::kNewline) ++j;
      }
    } else {
      while (j < n && is_space(j)) ++j;
      // The run's last space belongs to the word after it, as `\s+(?!\S)` leaves it.
      if (j < n && j - 1 > i && cps[j - 1].value == ' ' && is_word(j)) --j;
    }
    chunks.emplace_back(text.substr(cps[i].begin, cps[j - 1].end - cps[i].begin));
    i = j;
  }
  return chunks;
}

// DeepSeek's three ByteLevel stages differ only in these flags.
Json byte_level(bool add_prefix_space, bool trim_offsets, bool use_regex) {
  return {{"type", "ByteLevel"},
          {"add_prefix_space", add_prefix_space},
          {"trim_offsets", trim_offsets},
          {"use_regex", use_regex}};
}

struct Word {
  std::vector<int> symbols;  // token ids
  int64_t count;
};

// The vocabulary as the trainer grows it: tokens in id order, the id of every token, the merges in rank order.
struct Vocabulary {
  std::vector<std::string> tokens;
  std::map<std::string, int> ids;
  std::vector<std::string> merges;
};

Vocabulary base_vocabulary() {
  Vocabulary v;
  v.tokens.assign(kSpecialTokens.begin(), kSpecialTokens.end());
  const std::array<std::string, 256>& byte_symbols = byte_level_symbols();
  v.tokens.insert(v.tokens.end(), byte_symbols.begin(), byte_symbols.end());
  for (size_t id = 0; id < v.tokens.size(); ++id) v.ids.emplace(v.tokens[id], static_cast<int>(id));
  return v;
}

// The training text's pre-tokenized chunks, each once with its count, as byte tokens.
std::vector<Word> training_words() {
  // std::map keeps the words, and so the pair counts, in one order on every platform.
  std::map<std::string, int64_t> chunk_counts;
  for (const std::string& chunk : pre_split(kTrainingText)) ++chunk_counts[chunk];
  std::vector<Word> words;
  for (const auto& [chunk, count] : chunk_counts) {
    Word word{{}, count};
    for (char byte : chunk) word.symbols.push_back(kFirstByteId + static_cast<unsigned char>(byte));
    words.push_back(std::move(word));
  }
  return words;
}

// The most frequent adjacent pair not in `rejected`, or none if every pair is rejected.
std::optional<std::pair<int, int>> most_frequent_pair(const std::vector<Word>& words,
                                                      const std::set<std::pair<int, int>>& rejected,
                                                      const std::vector<std::string>& tokens) {
  std::map<std::pair<int, int>, int64_t> pair_counts;
  for (const Word& word : words)
    for (size_t k = 0; k + 1 < word.symbols.size(); ++k)
      pair_counts[{word.symbols[k], word.symbols[k + 1]}] += word.count;

  // Ties go to the lexicographically smallest (left, right) strings so the choice does not depend on id order or
  // container iteration.
  const std::pair<int, int>* best = nullptr;
  int64_t best_count = 0;
  for (const auto& [pair, count] : pair_counts) {
    if (rejected.count(pair)) continue;
    bool better = best == nullptr || count > best_count ||
                  (count == best_count && std::tie(tokens[pair.first], tokens[pair.second]) <
                                              std::tie(tokens[best->first], tokens[best->second]));
    if (better) {
      best = &pair;
      best_count = count;
    }
  }
  if (best == nullptr) return std::nullopt;
  return *best;
}

// Replaces every (left, right) in the words, scanning left to right, with `merged_id`.
void apply_merge(std::vector<Word>& words, int left, int right, int merged_id) {
  for (Word& word : words) {
    std::vector<int> out;
    out.reserve(word.symbols.size());
    for (size_t k = 0; k < word.symbols.size(); ++k) {
      if (k + 1 < word.symbols.size() && word.symbols[k] == left && word.symbols[k + 1] == right) {
        out.push_back(merged_id);
        ++k;
      } else {
        out.push_back(word.symbols[k]);
      }
    }
    word.symbols = std::move(out);
  }
}

// Byte-level BPE on the training text until the vocabulary holds `vocab_size` tokens.
Vocabulary train_bpe(int vocab_size) {
  Vocabulary v = base_vocabulary();
  std::vector<Word> words = training_words();
  // Pairs whose concatenation is already a token (reached through another split): a second merge to the same
  // token would add no vocabulary and could name a result older than one of its parts, so they are never merged.
  std::set<std::pair<int, int>> rejected;
  while (v.tokens.size() < static_cast<size_t>(vocab_size)) {
    const std::optional<std::pair<int, int>> best = most_frequent_pair(words, rejected, v.tokens);
    FERRY_CHECK(best.has_value(),
                "tiny tokenizer: vocab_size {} is larger than the built-in training text supports ({})", vocab_size,
                v.tokens.size());
    const auto [left, right] = *best;
    std::string merged = v.tokens[left] + v.tokens[right];
    if (v.ids.count(merged)) {
      rejected.insert({left, right});
      continue;
    }
    const int merged_id = static_cast<int>(v.tokens.size());
    v.tokens.push_back(merged);
    v.ids.emplace(merged, merged_id);
    v.merges.push_back(v.tokens[left] + " " + v.tokens[right]);
    apply_merge(words, left, right, merged_id);
  }
  return v;
}

// The pre-tokenizer of DeepSeek's tokenizer.json: the split regexes, then bytes to symbols.
Json pre_tokenizer() {
  Json pretokenizers = Json::array();
  for (const char* pattern : kSplitPatterns) {
    pretokenizers.push_back(
        {{"type", "Split"}, {"pattern", {{"Regex", pattern}}}, {"behavior", "Isolated"}, {"invert", false}});
  }
  pretokenizers.push_back(byte_level(false, true, false));
  return {{"type", "Sequence"}, {"pretokenizers", pretokenizers}};
}

// The keys in the order Hugging Face's tokenizers writes them (ordered_json keeps insertion order).
std::string tokenizer_json(const Vocabulary& v) {
  Json json;
  json["version"] = "1.0";
  json["truncation"] = nullptr;
  json["padding"] = nullptr;
  json["added_tokens"] = Json::array();
  for (size_t id = 0; id < kSpecialTokens.size(); ++id) {
    json["added_tokens"].push_back({{"id", id},
                                    {"content", kSpecialTokens[id]},
                                    {"single_word", false},
                                    {"lstrip", false},
                                    {"rstrip", false},
                                    {"normalized", false},
                                    {"special", true}});
  }
  json["normalizer"] = nullptr;
  json["pre_tokenizer"] = pre_tokenizer();
  json["post_processor"] = byte_level(true, false, true);
  json["decoder"] = byte_level(true, true, true);
  Json vocab = Json::object();
  for (size_t id = 0; id < v.tokens.size(); ++id) vocab[v.tokens[id]] = id;
  json["model"] = {{"type", "BPE"},
                   {"dropout", nullptr},
                   {"unk_token", nullptr},
                   {"continuing_subword_prefix", nullptr},
                   {"end_of_word_suffix", nullptr},
                   {"fuse_unk", false},
                   {"byte_fallback", false},
                   {"vocab", vocab},
                   {"merges", v.merges}};
  return json.dump(2);
}

}  // namespace

std::string make_tiny_tokenizer_json(int vocab_size) {
  FERRY_CHECK(vocab_size >= kFirstMergeId + 1,
              "tiny tokenizer: vocab_size {} is below {} (3 special tokens, 256 bytes and at least one merge)",
              vocab_size, kFirstMergeId + 1);
  return tokenizer_json(train_bpe(vocab_size));
}

}  // namespace ferry::runtime
