#include "offload/expert_cache.h"

#include <algorithm>
#include <limits>
#include <string>
#include <utility>

#include "planner/core/error.h"

namespace ferry::offload {

const char* slot_state_name(SlotState s) {
  switch (s) {
    case SlotState::Free: return "free";
    case SlotState::Loading: return "loading";
    case SlotState::Ready: return "ready";
  }
  return "?";
}

ExpertCache::ExpertCache(const std::vector<int64_t>& slots_per_layer, int64_t experts_per_layer, CachePolicy policy)
    : policy_(policy) {
  constexpr int64_t kMaxIndex = std::numeric_limits<int>::max();
  FERRY_CHECK(experts_per_layer >= 0 && experts_per_layer <= kMaxIndex,
              "expert cache: experts per layer {} out of range", experts_per_layer);
  experts_ = static_cast<int>(experts_per_layer);
  layers_.resize(slots_per_layer.size());
  for (size_t i = 0; i < slots_per_layer.size(); ++i) {
    const int64_t n = slots_per_layer[i];
    // More slots than experts could never all be filled: a planning error, not a bigger cache.
    FERRY_CHECK(n >= 0 && n <= experts_per_layer, "expert cache: layer {} has {} slots for {} experts", i, n,
                experts_per_layer);
    layers_[i].slots.resize(static_cast<size_t>(n));
    layers_[i].slot_of.assign(static_cast<size_t>(experts_), -1);
    layers_[i].uses.assign(static_cast<size_t>(experts_), 0);
  }
}

const ExpertCache::Layer& ExpertCache::layer_at(int layer) const {
  FERRY_CHECK(layer >= 0 && layer < layers(), "expert cache: layer {} out of range ({} layers)", layer, layers());
  return layers_[static_cast<size_t>(layer)];
}

ExpertCache::Layer& ExpertCache::layer_at(int layer) {
  return const_cast<Layer&>(std::as_const(*this).layer_at(layer));
}

void ExpertCache::check_expert(int expert) const {
  FERRY_CHECK(expert >= 0 && expert < experts_, "expert cache: expert {} out of range ({} per layer)", expert,
              experts_);
}

void ExpertCache::check_slot(const Layer& l, int layer, int slot) {
  FERRY_CHECK(slot >= 0 && static_cast<size_t>(slot) < l.slots.size(),
              "expert cache: slot {} out of range (layer {} has {})", slot, layer, l.slots.size());
}

int ExpertCache::choose_slot(const Layer& l, std::span<const int> keep) const {
  int best = -1;
  for (size_t i = 0; i < l.slots.size(); ++i) {
    const Slot& s = l.slots[i];
    if (s.state == SlotState::Free) return static_cast<int>(i);
    if (s.state != SlotState::Ready || s.pins > 0) continue;
    if (std::find(keep.begin(), keep.end(), s.expert) != keep.end()) continue;
    if (best < 0) {
      best = static_cast<int>(i);
      continue;
    }
    const Slot& b = l.slots[static_cast<size_t>(best)];
    bool better = s.last_use < b.last_use;
    if (policy_ == CachePolicy::Lfu) {
      const int64_t su = l.uses[static_cast<size_t>(s.expert)], bu = l.uses[static_cast<size_t>(b.expert)];
      better = su < bu || (su == bu && better);
    }
    if (better) best = static_cast<int>(i);
  }
  return best;
}

int ExpertCache::assign(Layer& l, int slot, int expert) {
  Slot& s = l.slots[static_cast<size_t>(slot)];
  const int evicted = s.expert;
  if (evicted >= 0) {
    l.slot_of[static_cast<size_t>(evicted)] = -1;
    ++l.stats.evictions;
  }
  s.expert = expert;
  s.state = SlotState::Loading;
  s.last_use = ++clock_;
  l.slot_of[static_cast<size_t>(expert)] = slot;
  return evicted;
}

Lookup ExpertCache::lookup(int layer, int expert) {
  std::lock_guard lock(mu_);
  Layer& l = layer_at(layer);
  check_expert(expert);
  ++l.uses[static_cast<size_t>(expert)];
  Lookup r;
  const int cached = l.slot_of[static_cast<size_t>(expert)];
  if (cached >= 0) {
    Slot& s = l.slots[static_cast<size_t>(cached)];
    ++l.stats.hits;
    ++s.pins;
    s.last_use = ++clock_;
    r.kind = LookupKind::Hit;
    r.slot = cached;
    r.ready = s.state == SlotState::Ready;
    return r;
  }
  ++l.stats.misses;
  const int slot = choose_slot(l, {});
  if (slot < 0) {
    ++l.stats.no_slot;
    return r;
  }
  r.kind = LookupKind::Miss;
  r.slot = slot;
  r.evicted = assign(l, slot, expert);
  ++l.slots[static_cast<size_t>(slot)].pins;
  return r;
}

std::vector<Fill> ExpertCache::prefetch(int layer, std::span<const int> experts) {
  std::lock_guard lock(mu_);
  Layer& l = layer_at(layer);
  // Validate everything first so that a bad list changes nothing.
  for (int e : experts) check_expert(e);
  std::vector<Fill> fills;
  for (int e : experts) {
    if (l.slot_of[static_cast<size_t>(e)] >= 0) continue;
    const int slot = choose_slot(l, experts);
    if (slot < 0) break;  // filling only makes slots busier: none will free up within this call
    fills.push_back(Fill{e, slot, assign(l, slot, e)});
    ++l.stats.prefetch_fills;
  }
  return fills;
}

// The slot a streamer's call names, which must be Loading.
ExpertCache::Slot& ExpertCache::loading_slot(Layer& l, int layer, int slot, const char* call) {
  Slot& s = l.slots[static_cast<size_t>(slot)];
  FERRY_CHECK(s.state == SlotState::Loading, "expert cache: {} on layer {} slot {}, which is {}, not loading", call,
              layer, slot, slot_state_name(s.state));
  return s;
}

void ExpertCache::loaded(int layer, int slot) {
  std::lock_guard lock(mu_);
  Layer& l = layer_at(layer);
  check_slot(l, layer, slot);
  Slot& s = loading_slot(l, layer, slot, "loaded()");
  s.state = SlotState::Ready;
}

void ExpertCache::cancel(int layer, int slot) {
  std::lock_guard lock(mu_);
  Layer& l = layer_at(layer);
  check_slot(l, layer, slot);
  Slot& s = loading_slot(l, layer, slot, "cancel()");
  // A reader still pinning it would wait for a copy that never lands.
  FERRY_CHECK(s.pins == 0, "expert cache: cancel() on layer {} slot {}, which {} reader(s) still pin", layer, slot,
              s.pins);
  l.slot_of[static_cast<size_t>(s.expert)] = -1;
  s.expert = -1;
  s.state = SlotState::Free;
}

void ExpertCache::release(int layer, int slot) {
  std::lock_guard lock(mu_);
  Layer& l = layer_at(layer);
  check_slot(l, layer, slot);
  Slot& s = l.slots[static_cast<size_t>(slot)];
  FERRY_CHECK(s.pins > 0, "expert cache: release() of layer {} slot {}, which is not pinned", layer, slot);
  --s.pins;
}

void ExpertCache::filling(int layer, int slot, runtime::CopyEvent copy) {
  std::lock_guard lock(mu_);
  Layer& l = layer_at(layer);
  check_slot(l, layer, slot);
  loading_slot(l, layer, slot, "filling()").fill = copy;
}

void ExpertCache::reading(int layer, int slot, runtime::ComputeEvent op) {
  std::lock_guard lock(mu_);
  Layer& l = layer_at(layer);
  check_slot(l, layer, slot);
  Slot& s = l.slots[static_cast<size_t>(slot)];
  FERRY_CHECK(s.pins > static_cast<int>(s.readers.size()),
              "expert cache: reading() of layer {} slot {}, which the caller has not pinned", layer, slot);
  s.readers.push_back(op);
}

void ExpertCache::sync(const runtime::Backend& device) {
  std::lock_guard lock(mu_);
  for (Layer& l : layers_)
    for (Slot& s : l.slots) {
      if (s.state == SlotState::Loading && s.fill.sequence != 0 && device.completed(s.fill)) {
        s.state = SlotState::Ready;
        s.fill = {};
      }
      const auto ran = [&](runtime::ComputeEvent e) { return device.completed(e); };
      const auto done = std::remove_if(s.readers.begin(), s.readers.end(), ran);
      s.pins -= static_cast<int>(s.readers.end() - done);
      s.readers.erase(done, s.readers.end());
    }
}

void ExpertCache::empty(const runtime::Backend& device) {
  std::lock_guard lock(mu_);
  for (Layer& l : layers_) {
    for (Slot& s : l.slots) {
      if (s.state == SlotState::Loading && s.fill.sequence != 0) device.wait(s.fill);
      for (const runtime::ComputeEvent& r : s.readers) device.wait(r);
      FERRY_CHECK(s.pins == static_cast<int>(s.readers.size()),
                  "expert cache: emptied while a lookup holds a slot that no op reads");
      s = Slot{};
    }
    std::fill(l.slot_of.begin(), l.slot_of.end(), -1);
  }
}

runtime::CopyEvent ExpertCache::fill_event(int layer, int slot) const {
  std::lock_guard lock(mu_);
  const Layer& l = layer_at(layer);
  check_slot(l, layer, slot);
  return l.slots[static_cast<size_t>(slot)].fill;
}

bool ExpertCache::contains(int layer, int expert) const {
  std::lock_guard lock(mu_);
  const Layer& l = layer_at(layer);
  check_expert(expert);
  return l.slot_of[static_cast<size_t>(expert)] >= 0;
}

CacheStats ExpertCache::stats(int layer) const {
  std::lock_guard lock(mu_);
  return layer_at(layer).stats;
}

SlotInfo ExpertCache::slot_info(int layer, int slot) const {
  std::lock_guard lock(mu_);
  const Layer& l = layer_at(layer);
  check_slot(l, layer, slot);
  const Slot& s = l.slots[static_cast<size_t>(slot)];
  return SlotInfo{s.state, s.expert, s.pins};
}

int64_t ExpertCache::uses(int layer, int expert) const {
  std::lock_guard lock(mu_);
  const Layer& l = layer_at(layer);
  check_expert(expert);
  return l.uses[static_cast<size_t>(expert)];
}

int ExpertCache::slots(int layer) const {
  std::lock_guard lock(mu_);
  return static_cast<int>(layer_at(layer).slots.size());
}

}  // namespace ferry::offload
