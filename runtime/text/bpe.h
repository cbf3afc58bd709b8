// Byte-level BPE (the `BPE` model of Hugging Face tokenizers without dropout, unknown token or byte fallback):
// a pre-token's bytes start as one token each, and the adjacent pair with the lowest merge rank is merged,
// leftmost first among equal ranks, until no adjacent pair has a merge.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ferry::runtime {

class Bpe {
 public:
  struct Merge {
    int32_t left, right, result;  // token ids; the rank is the merge's index
  };

  // `byte_ids[b]`: the token of byte b alone. `whole_words` (Hugging Face's ignore_merges) maps byte strings to
  // tokens that a pre-token equal to one of them becomes directly; empty when merges always apply.
  Bpe(const std::array<int32_t, 256>& byte_ids, const std::vector<Merge>& merges,
      std::unordered_map<std::string, int32_t> whole_words = {});

  // Appends the tokens of `word` (raw bytes) to `out`. Thread-safe.
  void encode(std::string_view word, std::vector<int32_t>& out) const;

 private:
  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }
  // Symbol i starts at byte i of the word, so a smaller index is further left.
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // -1 at the ends
    bool alive;
  };
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;
  void merge_queued(std::vector<Symbol>& symbols) const;
  void merge_by_rank(std::vector<Symbol>& symbols) const;
  // Merges symbols[left] with the symbol after it into `result`; the caller has checked that they form the pair.
  static void merge_at(std::vector<Symbol>& symbols, int32_t left, int32_t result);
  bool is_pair(const std::vector<Symbol>& symbols, int32_t left, int32_t rank) const;
  int32_t rank_at(const std::vector<Symbol>& symbols, int32_t left) const;  // -1: no merge for the pair

  std::array<int32_t, 256> byte_ids_;
  std::vector<Merge> merges_;                    // by rank
  std::unordered_map<uint64_t, int32_t> rules_;  // (left, right) -> rank
  std::unordered_map<std::string, int32_t> whole_words_;
  // Words recur (" the", " of"), so their tokens are kept; bounded by clearing when full.
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace ferry::runtime
