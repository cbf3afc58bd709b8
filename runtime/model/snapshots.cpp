#include "runtime/model/snapshots.h"

#include <algorithm>
#include <cstring>

#include "planner/core/error.h"

namespace ferry::runtime {

namespace {

template <class T>
size_t byte_size(const DeviceVector<T>& v) {
  return v.size() * sizeof(T);
}

// Every volatile buffer of the cache, in the snapshot's order: calls f(data, bytes) for each.
template <class Cache, class F>
void for_each_volatile(Cache& cache, F&& f) {
  for (int64_t l = 0; l < cache.n_layers(); ++l) {
    auto& L = cache.layer(l);
    f(L.window.data(), byte_size(L.window));
    for (auto* s : {&L.main_state, &L.index_state}) {
      f(s->kv.data(), byte_size(s->kv));
      f(s->score.data(), byte_size(s->score));
    }
  }
}

// The stored form of a snapshot of position `pos` (snapshots.h): calls f(offset, bytes) for each part kept of the
// layers this cache holds (of layer `only` alone when >= 0), the offset into the snapshot's buffer.
template <class F>
void for_each_stored(const KvCache& cache, int64_t pos, F&& f, int64_t only = -1) {
  size_t at = 0;
  for (int64_t l = 0; l < cache.n_layers(); ++l) {
    const LayerKv& L = cache.layer(l);
    const bool wanted = only < 0 || l == only;
    if (wanted) f(at, static_cast<size_t>(std::min(pos, L.window_rows) * cache.main_layout().bytes));
    at += byte_size(L.window);
    for (const CompressorState* s : {&L.main_state, &L.index_state})
      for (const DeviceVector<float>* v : {&s->kv, &s->score}) {
        if (wanted) f(at, byte_size(*v));
        at += byte_size(*v);
      }
  }
}

size_t volatile_bytes(const KvCache& cache) {
  size_t total = 0;
  for_each_volatile(cache, [&](const void*, size_t n) { total += n; });
  return total;
}

}  // namespace

KvSnapshots::KvSnapshots(int64_t keep) : keep_(keep) {
  FERRY_CHECK(keep >= 1, "snapshot_keep must be at least 1, not {}", keep);
}

KvSnapshots::Snapshot& KvSnapshots::push(int64_t pos) {
  FERRY_CHECK(snaps_.empty() || snaps_.back().pos < pos, "snapshot at {} after one at {}", pos, snaps_.back().pos);
  Snapshot s;
  if (count() == keep_) {
    s = std::move(snaps_.front());
    snaps_.pop_front();
  }
  s.pos = pos;
  snaps_.push_back(std::move(s));
  return snaps_.back();
}

void KvSnapshots::save(const KvCache& cache, int64_t pos) {
  Snapshot& s = push(pos);
  s.bytes.resize(volatile_bytes(cache));
  size_t at = 0;
  for_each_volatile(cache, [&](const void* p, size_t n) {
    if (n) std::memcpy(s.bytes.data() + at, p, n);
    at += n;
  });
}

void KvSnapshots::drop_after(int64_t pos) {
  while (!snaps_.empty() && snaps_.back().pos > pos) snaps_.pop_back();
}

const KvSnapshots::Snapshot* KvSnapshots::at_or_before(int64_t pos) const {
  for (auto it = snaps_.rbegin(); it != snaps_.rend(); ++it)
    if (it->pos <= pos) return &*it;
  return nullptr;
}

int64_t KvSnapshots::latest_at_or_before(int64_t pos) const {
  const Snapshot* snap = at_or_before(pos);
  return snap ? snap->pos : 0;
}

int64_t KvSnapshots::restore(KvCache& cache, int64_t pos) const {
  const Snapshot* snap = at_or_before(pos);
  if (!snap) {
    cache.clear();
    return 0;
  }
  size_t at = 0;
  for_each_volatile(cache, [&](void* p, size_t n) {
    if (n) std::memcpy(p, snap->bytes.data() + at, n);
    at += n;
  });
  for (int64_t l = 0; l < cache.n_layers(); ++l) {
    LayerKv& L = cache.layer(l);
    L.n_compressed = L.ratio > 0 ? snap->pos / L.ratio : 0;
  }
  return snap->pos;
}

int64_t KvSnapshots::bytes() const {
  int64_t b = 0;
  for (const Snapshot& s : snaps_) b += static_cast<int64_t>(s.bytes.capacity());
  return b;
}

int64_t KvSnapshots::stored_layer_bytes(const KvCache& cache, int64_t l, int64_t pos) {
  const LayerShape& S = cache.shape(l);
  return std::min(pos, S.window_rows) * cache.main_layout().bytes +
         2 * (S.state_floats + S.index_state_floats) * static_cast<int64_t>(sizeof(float));
}

int64_t KvSnapshots::stored_bytes(const KvCache& cache, int64_t pos) {
  int64_t total = 0;
  for (int64_t l = 0; l < cache.n_layers(); ++l) total += stored_layer_bytes(cache, l, pos);
  return total;
}

void KvSnapshots::store_layer(const KvCache& cache, int64_t i, int64_t l,
                              const std::function<void(const void*, size_t)>& put) const {
  const Snapshot& s = snaps_.at(static_cast<size_t>(i));
  for_each_stored(
      cache, s.pos, [&](size_t at, size_t n) { put(s.bytes.data() + at, n); }, l);
}

void KvSnapshots::load(const KvCache& cache, int64_t pos, const std::function<void(void*, size_t)>& get) {
  Snapshot& s = push(pos);
  s.bytes.assign(volatile_bytes(cache), 0);
  for_each_stored(cache, pos, [&](size_t at, size_t n) { get(s.bytes.data() + at, n); });
}

std::vector<int64_t> KvSnapshots::positions() const {
  std::vector<int64_t> p;
  for (const Snapshot& s : snaps_) p.push_back(s.pos);
  return p;
}

}  // namespace ferry::runtime
