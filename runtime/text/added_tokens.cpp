#include "runtime/text/added_tokens.h"

#include "planner/core/error.h"

namespace ferry::runtime {

void AddedTokenMatcher::Trie::add(std::string_view word, int32_t token) {
  first_byte[static_cast<unsigned char>(word[0])] = true;
  uint32_t node = 0;
  for (char c : word) {
    const uint32_t key = node << 8 | static_cast<unsigned char>(c);
    auto it = edges.find(key);
    if (it == edges.end()) {
      FERRY_CHECK(ends.size() < (1u << 24), "the added tokens are too long in total (over 16 MB)");
      it = edges.emplace(key, static_cast<int32_t>(ends.size())).first;
      ends.push_back(-1);
    }
    node = static_cast<uint32_t>(it->second);
  }
  ends[node] = token;
}

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedToken>& tokens) : tokens_(tokens) {
  for (size_t i = 0; i < tokens_.size(); ++i)
    (tokens_[i].normalized ? normalized_ : raw_).add(tokens_[i].content, static_cast<int32_t>(i));
}

void AddedTokenMatcher::split_with(const Trie& trie, std::string_view text, bool parse_special,
                                   std::vector<TextSegment>& out) const {
  size_t plain_start = 0;
  for (size_t i = 0; i < text.size();) {
    if (!trie.first_byte[static_cast<unsigned char>(text[i])]) {
      ++i;
      continue;
    }
    int32_t found = -1;
    size_t found_end = 0;
    uint32_t node = 0;
    for (size_t j = i; j < text.size(); ++j) {
      auto it = trie.edges.find(node << 8 | static_cast<unsigned char>(text[j]));
      if (it == trie.edges.end()) break;
      node = static_cast<uint32_t>(it->second);
      if (trie.ends[node] >= 0) {
        found = trie.ends[node];
        found_end = j + 1;
      }
    }
    if (found < 0) {
      ++i;
      continue;
    }
    if (tokens_[found].special && !parse_special) {
      i = found_end;  // stays in the plain stretch
      continue;
    }
    if (i > plain_start) out.push_back({text.substr(plain_start, i - plain_start), -1});
    out.push_back({text.substr(i, found_end - i), tokens_[found].id});
    i = plain_start = found_end;
  }
  if (plain_start < text.size()) out.push_back({text.substr(plain_start), -1});
}

std::vector<TextSegment> AddedTokenMatcher::split(std::string_view text, bool parse_special) const {
  std::vector<TextSegment> first, out;
  split_with(raw_, text, parse_special, first);
  for (const TextSegment& s : first) {
    if (s.token >= 0)
      out.push_back(s);
    else
      split_with(normalized_, s.text, parse_special, out);
  }
  return out;
}

}  // namespace ferry::runtime
