// Copies of a sequence's volatile KV state, so that a session can go back to an earlier position without
// recomputing the whole prefix (prefix reuse, rollback). What later tokens overwrite is each layer's window ring
// (position p's row at slot p % W) and its compressors' pending blocks; compressed rows and indexer keys below
// n_compressed never change afterwards, and n_compressed itself is position / ratio — neither needs a copy.
// Snapshots live in plain host memory, whatever device holds the cache (whose buffers are host-addressable).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
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

  // Session files (session_file.h) hold each snapshot in a form that no context length changes: per layer the
  // window slots in use at its position (the first min(pos, window_rows)), then the compressor states. A window
  // of min(ctx, W) rows holds the same slots in use at any position a context holds, so a snapshot saved with
  // one context loads into a session of another. The sizes come from the layers' shapes, so a rank that holds
  // only some layers knows every layer's part.
  static int64_t stored_bytes(const KvCache& cache, int64_t pos);
  static int64_t stored_layer_bytes(const KvCache& cache, int64_t l, int64_t pos);
  // Writes layer l's part of the i-th kept snapshot (0: the oldest) in the stored form, in calls put(data, bytes);
  // nothing for a layer the cache does not hold.
  void store_layer(const KvCache& cache, int64_t i, int64_t l,
                   const std::function<void(const void*, size_t)>& put) const;
  // Keeps a snapshot of position `pos` (after every kept one, the oldest dropped beyond `keep`) read in the stored
  // form by calls get(data, bytes): the parts of the layers the cache holds, in layer order; the window slots not
  // in use are zero (nothing reads them before they are written again).
  void load(const KvCache& cache, int64_t pos, const std::function<void(void*, size_t)>& get);

 private:
  struct Snapshot {
    int64_t pos = 0;
    std::vector<uint8_t> bytes;  // per layer: window ring, main state kv + score, indexer state kv + score
  };
  const Snapshot* at_or_before(int64_t pos) const;
  // The snapshot to fill for position `pos`: the oldest one's buffer when `keep` are held.
  Snapshot& push(int64_t pos);

  int64_t keep_;
  std::deque<Snapshot> snaps_;  // ascending positions
};

}  // namespace ferry::runtime
