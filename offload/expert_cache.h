// The GPU expert cache's bookkeeping: which routed expert each device slot holds, per MoE layer, which slot a
// missed expert goes to, and the device events that decide each slot's state. It moves no bytes: the streamer
// copies an expert into the slot it was given (Backend::copy_to_device) and hands the cache the copy's event
// (filling()); the compute side reads a slot only between the lookup() that pinned it and the op whose event it
// hands back (reading()). sync() applies what the device has completed: a landed fill makes its slot Ready, a
// finished reader drops its pin. The bare transitions (loaded(), release()) are what sync() applies, for a
// caller that tracks completion itself.
//
// Slot states: Free -> Loading (a copy is queued into it) -> Ready, plus a reader pin count. A slot that is
// Loading or pinned is never chosen as a victim, so a slot is never overwritten while a copy is landing in it or
// a kernel still reads it; when every slot of a layer is busy, lookup() answers NoSlot (compute the expert where
// it lives, or stream it through the stream slots) instead of evicting. Double buffering falls out of the same
// rule: a prefetch for the next layer or step can only take slots nobody holds.
//
// Policies: LRU (default) evicts the slot used least recently; LFU evicts the slot whose expert has been used
// least often, ties broken by least recently used. Use counts are kept per (layer, expert) for the whole life of
// the cache, cached or not: routing popularity belongs to the expert, not to its residency, and an in-cache
// count would restart a popular expert at 1 each time it is evicted and let a burst of one-off experts thrash it.
// A use is a lookup() (hit or miss); prefetch() announces fills but records no use, so that a prefetch followed
// by the compute side's lookup counts once.
//
// Thread-safety: every member function locks one mutex per cache, so a compute thread (lookup, release) and a
// streamer thread (prefetch, loaded, cancel) may share one cache. Victim selection scans a layer's slots: a few
// hundred at most, and only on misses.
#pragma once

#include <cstdint>
#include <mutex>
#include <span>
#include <vector>

#include "runtime/backend/backend.h"

namespace ferry::offload {

enum class CachePolicy : uint8_t { Lru, Lfu };

enum class SlotState : uint8_t {
  Free,     // holds no expert
  Loading,  // an expert's copy is queued into it; not readable until loaded()
  Ready,    // holds its expert's weights
};

const char* slot_state_name(SlotState s);  // "free", "loading", "ready"

enum class LookupKind : uint8_t {
  Hit,     // the expert has a slot (maybe still Loading: see Lookup::ready)
  Miss,    // it had none and was given one, now Loading: queue its copy there
  NoSlot,  // it had none and every slot is Loading or pinned: compute it elsewhere
};

struct Lookup {
  LookupKind kind = LookupKind::NoSlot;
  int slot = -1;       // Hit, Miss: pinned for the caller, who calls release() once done reading
  int evicted = -1;    // Miss: the expert the slot held before; -1 when it was free
  bool ready = false;  // Hit: the copy has landed; false: a prefetch is still loading it, wait for its event
};

// A copy to start: `expert` into `slot`, which is now Loading and unpinned.
struct Fill {
  int expert = -1;
  int slot = -1;
  int evicted = -1;  // the expert the slot held before; -1 when it was free
};

struct CacheStats {
  int64_t hits = 0;            // lookups that found the expert
  int64_t misses = 0;          // lookups that did not, NoSlot included
  int64_t no_slot = 0;         // misses that found every slot busy
  int64_t evictions = 0;       // slots taken from a cached expert, by lookups and prefetches
  int64_t prefetch_fills = 0;  // fills started by prefetch()
};

struct SlotInfo {
  SlotState state = SlotState::Free;
  int expert = -1;  // -1 when Free
  int pins = 0;
};

class ExpertCache {
 public:
  // `slots_per_layer[l]` slots for MoE layer l (the Plan's LayerPlan::cache_slots; 0 is a layer without a cache),
  // each layer holding experts 0 .. experts_per_layer-1. Throws ferry::Error on a negative or oversized count.
  ExpertCache(const std::vector<int64_t>& slots_per_layer, int64_t experts_per_layer,
              CachePolicy policy = CachePolicy::Lru);

  // Records a use of `expert` and, unless NoSlot, pins its slot for the caller.
  Lookup lookup(int layer, int expert);

  // As soon as a layer's router has chosen `experts`: gives each chosen expert that has no slot one that no
  // other chosen expert holds, and returns the copies to start. Stops early, without evicting a busy slot,
  // when the free and evictable slots run out. Pins nothing and records no use.
  std::vector<Fill> prefetch(int layer, std::span<const int> experts);

  // The copy into `slot` has landed: Loading -> Ready.
  void loaded(int layer, int slot);
  // The copy into `slot` failed or was never queued: Loading -> Free, its expert no longer cached.
  void cancel(int layer, int slot);
  // One reader of `slot` is done.
  void release(int layer, int slot);

  // The Loading `slot` is being filled by the copy `copy`: it becomes Ready at the first sync() after it lands.
  void filling(int layer, int slot, runtime::CopyEvent copy);
  // The caller's pin of `slot` is held by the op `op`: released at the first sync() after it has run.
  void reading(int layer, int slot, runtime::ComputeEvent op);
  // Applies what `device` has completed: landed fills and finished readers.
  void sync(const runtime::Backend& device);
  // The copy a Loading slot waits for (none when the caller fills it without an event).
  runtime::CopyEvent fill_event(int layer, int slot) const;
  // Waits on `device` for every fill and reader, then forgets every cached expert: each slot Free (its memory may
  // be freed and allocated again). Stats and use counts stay. Throws when a lookup's pin was never handed to an op.
  void empty(const runtime::Backend& device);

  bool contains(int layer, int expert) const;  // has a slot, Loading or Ready
  CacheStats stats(int layer) const;
  SlotInfo slot_info(int layer, int slot) const;
  int64_t uses(int layer, int expert) const;  // lookups of (layer, expert) so far

  int layers() const { return static_cast<int>(layers_.size()); }
  int slots(int layer) const;
  int experts_per_layer() const { return experts_; }
  CachePolicy policy() const { return policy_; }

 private:
  struct Slot {
    int expert = -1;
    SlotState state = SlotState::Free;
    int pins = 0;
    uint64_t last_use = 0;                       // clock_ value at the slot's last use or fill
    runtime::CopyEvent fill;                     // Loading: the copy landing in it
    std::vector<runtime::ComputeEvent> readers;  // ops holding pins, released by sync()
  };
  struct Layer {
    std::vector<Slot> slots;
    std::vector<int> slot_of;   // per expert, -1 when not cached
    std::vector<int64_t> uses;  // per expert, cached or not
    CacheStats stats;
  };

  Layer& layer_at(int layer);
  const Layer& layer_at(int layer) const;
  void check_expert(int expert) const;
  static void check_slot(const Layer& l, int layer, int slot);
  static Slot& loading_slot(Layer& l, int layer, int slot, const char* call);
  // A Free slot (lowest index) if any, else the policy's victim among Ready unpinned slots whose expert is not
  // in `keep`; -1 when there is none.
  int choose_slot(const Layer& l, std::span<const int> keep) const;
  // Puts `expert` into `slot` as Loading and returns the expert it evicted (-1 when the slot was free).
  int assign(Layer& l, int slot, int expert);

  int experts_ = 0;
  CachePolicy policy_ = CachePolicy::Lru;
  std::vector<Layer> layers_;
  uint64_t clock_ = 0;
  mutable std::mutex mu_;
};

}  // namespace ferry::offload
