#include "runtime/text/bpe.h"

#include <algorithm>
#include <map>
#include <queue>

namespace ferry::runtime {

namespace {

constexpr size_t kCacheEntries = 1 << 16;
constexpr size_t kCachedWordBytes = 64;  // longer words rarely repeat

// Heap or grouped by rank: see merge_by_rank.
constexpr int32_t kQueuedWordBytes = 4096;

}  // namespace

Bpe::Bpe(const std::array<int32_t, 256>& byte_ids, const std::vector<Merge>& merges,
         std::unordered_map<std::string, int32_t> whole_words)
    : byte_ids_(byte_ids), merges_(merges), whole_words_(std::move(whole_words)) {
  rules_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    // A pair listed twice keeps its last rank, as Hugging Face's merge map (built in file order) does.
    rules_[pair_key(merges[rank].left, merges[rank].right)] = static_cast<int32_t>(rank);
  }
}

void Bpe::encode(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (word.size() == 1) {
    out.push_back(byte_ids_[static_cast<unsigned char>(word[0])]);
    return;
  }
  if (!whole_words_.empty()) {
    if (auto it = whole_words_.find(std::string(word)); it != whole_words_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kCachedWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (auto it = cache_.find(std::string(word)); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= kCacheEntries) cache_.clear();
    cache_.emplace(std::string(word), std::vector<int32_t>(out.begin() + static_cast<ptrdiff_t>(first), out.end()));
  }
}

void Bpe::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  const auto n = static_cast<int32_t>(word.size());
  std::vector<Symbol> symbols(n);
  for (int32_t i = 0; i < n; ++i)
    symbols[i] = {byte_ids_[static_cast<unsigned char>(word[i])], i - 1, i + 1 < n ? i + 1 : -1, true};
  if (n <= kQueuedWordBytes)
    merge_queued(symbols);
  else
    merge_by_rank(symbols);
  for (int32_t i = 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
}

void Bpe::merge_at(std::vector<Symbol>& symbols, int32_t left, int32_t result) {
  Symbol& l = symbols[left];
  Symbol& r = symbols[l.next];
  l.id = result;
  r.alive = false;
  l.next = r.next;
  if (r.next >= 0) symbols[r.next].prev = left;
}

bool Bpe::is_pair(const std::vector<Symbol>& symbols, int32_t left, int32_t rank) const {
  const Symbol& l = symbols[left];
  return l.alive && l.next >= 0 && l.id == merges_[rank].left && symbols[l.next].id == merges_[rank].right;
}

int32_t Bpe::rank_at(const std::vector<Symbol>& symbols, int32_t left) const {
  if (left < 0 || symbols[left].next < 0) return -1;
  auto it = rules_.find(pair_key(symbols[left].id, symbols[symbols[left].next].id));
  return it == rules_.end() ? -1 : it->second;
}

// One heap entry per candidate, (rank, position): the lowest rank first, the leftmost among equal ones.
void Bpe::merge_queued(std::vector<Symbol>& symbols) const {
  using Candidate = std::pair<int32_t, int32_t>;
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  auto consider = [&](int32_t left) {
    if (const int32_t rank = rank_at(symbols, left); rank >= 0) queue.push({rank, left});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) consider(i);
  while (!queue.empty()) {
    const auto [rank, left] = queue.top();
    queue.pop();
    if (!is_pair(symbols, left, rank)) continue;  // an overlapping candidate merged first, or a neighbour changed
    merge_at(symbols, left, merges_[rank].result);
    consider(symbols[left].prev);
    consider(left);
  }
}

// The same order for long words, with candidates grouped by rank: a rank names one pair, so its candidates
// merge left to right. A heap entry per candidate makes a megabyte of spaces several times slower, the heap
// outgrowing the caches.
void Bpe::merge_by_rank(std::vector<Symbol>& symbols) const {
  std::map<int32_t, std::vector<int32_t>> lefts_by_rank;
  auto consider = [&](int32_t left) {
    if (const int32_t rank = rank_at(symbols, left); rank >= 0) lefts_by_rank[rank].push_back(left);
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) consider(i);
  while (!lefts_by_rank.empty()) {
    const int32_t rank = lefts_by_rank.begin()->first;
    std::vector<int32_t> lefts = std::move(lefts_by_rank.begin()->second);
    lefts_by_rank.erase(lefts_by_rank.begin());
    std::sort(lefts.begin(), lefts.end());
    for (size_t k = 0; k < lefts.size(); ++k) {
      if (!is_pair(symbols, lefts[k], rank)) continue;
      merge_at(symbols, lefts[k], merges_[rank].result);
      consider(symbols[lefts[k]].prev);
      consider(lefts[k]);
      // No merge makes a pair of its own rank (the result is longer than either part), but in a file whose
      // merges are not in training order one can make a pair of a lower rank, which must merge first.
      if (!lefts_by_rank.empty() && lefts_by_rank.begin()->first < rank && k + 1 < lefts.size()) {
        lefts_by_rank[rank].assign(lefts.begin() + static_cast<ptrdiff_t>(k) + 1, lefts.end());
        break;
      }
    }
  }
}

}  // namespace ferry::runtime
