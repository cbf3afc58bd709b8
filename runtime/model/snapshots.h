// Copies of a sequence's volatile KV state, so that a session can go back to an earlier position without
// recomputing the whole prefix (prefix reuse, rollback). What later tokens overwrite is each layer's window ring
// (position p's row at slot p % W) and its compressors' pending blocks; compressed rows and indexer keys below
// n_compressed never change afterwards, and n_compressed itself is position / ratio — neither needs a copy.
// Snapshots live in plain host memory, whatever device holds the cache (whose buffers are host-addressable).
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "runtime/model/kv_cache.h"

namespace ferry::runtime {

class KvSnapshots {
 public:
  // Keeps at most `keep` snapshots, the most recent ones.
  explicit KvSnapshots(int64_t keep);

  // Copies the cache's volatile state as it is at position `pos` (the cache's writers have finished), dropping the
  // oldest snapshot beyond `keep` (its buffer is reused).
  void save(const KvCache& cache, int64_t pos);
  // Forgets the snapshots of positions after `pos`.
  void drop_after(int64_t pos);
  // The position of the latest snapshot at or before `pos`; 0 when there is none (the empty sequence).
  int64_t latest_at_or_before(int64_t pos) const;
  // Puts the cache back to position latest_at_or_before(pos) and returns that position: from its snapshot, or
  // cleared when there is none. Positions at and after it are then free to be recomputed.
  int64_t restore(KvCache& cache, int64_t pos) const;
  void clear() { snaps_.clear(); }

  // Host bytes held, measured from the buffers: planner::kv_snapshot_bytes(config, type, ctx, count()).
  int64_t bytes() const;
  int64_t count() const { return static_cast<int64_t>(snaps_.size()); }
  std::vector<int64_t> positions() const;

 private:
  struct Snapshot {
    int64_t pos = 0;
    std::vector<uint8_t> bytes;  // per layer: window ring, main state kv + score, indexer state kv + score
  };
  const Snapshot* at_or_before(int64_t pos) const;

  int64_t keep_;
  std::deque<Snapshot> snaps_;  // ascending positions
};

}  // namespace ferry::runtime
