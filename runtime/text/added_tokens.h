// Hugging Face's added tokens (DeepSeek's "<｜begin▁of▁sentence｜>", "<｜User｜>", "<think>", ...): found in the raw
// text before pre-tokenization, so that no regex or merge ever splits them.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ferry::runtime {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;     // skipped by decode(skip_special), and plain text when special tokens are not parsed
  bool normalized = false;  // matched after the normalizer: in a second pass (ferry's tokenizers have none)
};

struct TextSegment {
  std::string_view text;
  int32_t token = -1;  // the added token's id, or -1: plain text for the pre-tokenizer
};

class AddedTokenMatcher {
 public:
  explicit AddedTokenMatcher(const std::vector<AddedToken>& tokens);

  // Splits `text` as Hugging Face does: leftmost match first and the longest one at a position; tokens with
  // normalized=false over the whole text, then those with normalized=true in the plain stretches left. With
  // `parse_special` false a special token's match stays plain text (and hides whatever it overlaps).
  std::vector<TextSegment> split(std::string_view text, bool parse_special) const;

 private:
  // A byte trie: edges keyed by (node << 8 | byte); ends_[node] = index into tokens_, or -1.
  struct Trie {
    std::unordered_map<uint32_t, int32_t> edges;
    std::vector<int32_t> ends{-1};
    std::array<bool, 256> first_byte{};
    void add(std::string_view word, int32_t token);
  };
  void split_with(const Trie& trie, std::string_view text, bool parse_special, std::vector<TextSegment>& out) const;

  std::vector<AddedToken> tokens_;
  Trie raw_, normalized_;
};

}  // namespace ferry::runtime
