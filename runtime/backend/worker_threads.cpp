#include "runtime/backend/worker_threads.h"

#include <hwloc.h>
#include <tbb/global_control.h>
#include <tbb/task_scheduler_observer.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

#include <fmt/format.h>

#include "planner/core/error.h"

namespace ferry::runtime {
namespace {

// The machine's topology, loaded once, and the cpusets of the cores this process may run on, in hwloc's order.
class Cores {
 public:
  Cores() {
    if (hwloc_topology_init(&topology_) != 0) return;
    if (hwloc_topology_load(topology_) != 0) {
      hwloc_topology_destroy(topology_);
      topology_ = nullptr;
      return;
    }
    const hwloc_const_cpuset_t allowed = hwloc_topology_get_allowed_cpuset(topology_);
    for (hwloc_obj_t c = hwloc_get_next_obj_by_type(topology_, HWLOC_OBJ_CORE, nullptr); c != nullptr;
         c = hwloc_get_next_obj_by_type(topology_, HWLOC_OBJ_CORE, c)) {
      if (!hwloc_bitmap_intersects(c->cpuset, allowed)) continue;
      hwloc_bitmap_t set = hwloc_bitmap_dup(c->cpuset);
      hwloc_bitmap_and(set, set, allowed);
      cpusets_.push_back(set);
    }
    if (cpusets_.empty()) {  // no cores named: one per allowed hardware thread
      cores_named_ = false;
      unsigned pu = 0;
      hwloc_bitmap_foreach_begin(pu, allowed) {
        hwloc_bitmap_t set = hwloc_bitmap_alloc();
        hwloc_bitmap_only(set, pu);
        cpusets_.push_back(set);
      }
      hwloc_bitmap_foreach_end();
    }
  }
  ~Cores() {
    for (hwloc_bitmap_t s : cpusets_) hwloc_bitmap_free(s);
    if (topology_) hwloc_topology_destroy(topology_);
  }
  Cores(const Cores&) = delete;
  Cores& operator=(const Cores&) = delete;

  int count() const { return static_cast<int>(cpusets_.size()); }
  bool cores_named() const { return cores_named_; }
  hwloc_topology_t topology() const { return topology_; }
  hwloc_const_cpuset_t core(int i) const { return cpusets_[static_cast<size_t>(i) % cpusets_.size()]; }

 private:
  hwloc_topology_t topology_ = nullptr;
  std::vector<hwloc_bitmap_t> cpusets_;
  bool cores_named_ = true;
};

const Cores& cores() {
  static const Cores c;
  return c;
}

std::mutex config_mutex;
int requested_threads = 0;
int default_threads = 0;  // 0: every allowed core (one process on the host)
int first_core = 0;       // this process's share of the cores starts here
std::unique_ptr<tbb::global_control> thread_cap;
std::atomic<int64_t> core_bindings_made{0};

}  // namespace

// Pins a thread entering the arena to the core of its slot. The calling thread of execute() gets its own binding
// back when it leaves; a thread may enter one arena from inside another (nested execute), so what each entry
// changed is kept on a stack of the thread's own and undone in turn. A oneTBB worker leaving its outermost arena
// stays on its core instead: it only ever computes in arenas, and entering the same core again (it takes its last
// slot back when free) then costs no system call on the way into every parallel region.
class CorePinning : public tbb::task_scheduler_observer {
 public:
  explicit CorePinning(tbb::task_arena& arena) : tbb::task_scheduler_observer(arena) { observe(true); }
  ~CorePinning() override {
    observe(false);
    // A worker still in the arena (one arriving after the last region) hears of no exit: its entry is undone when
    // it next enters or leaves an arena.
    alive_->store(false);
  }

  void on_scheduler_entry(bool is_worker) override {
    leave_ended_arenas();
    const Cores& c = cores();
    const int slot = tbb::this_task_arena::current_thread_index();
    Entry entry{alive_, bound_, nullptr, false};
    // Left as it is where the thread may not be bound (a container, mpirun's binding).
    if (c.topology() && c.count() > 0 && slot >= 0) {
      const int core = (first_core + slot) % c.count();
      if (core != bound_) entry.rebound = bind(core, !(is_worker && entries_.empty()), entry);
    }
    entries_.push_back(std::move(entry));
  }
  void on_scheduler_exit(bool) override {
    leave_ended_arenas();
    if (entries_.empty()) return;  // entered before the observer began observing
    leave();
  }

 private:
  static constexpr int kOwnBinding = -1;
  // What one arena entry changed: the binding before it (a core, or the thread's own, kept in `own`).
  struct Entry {
    std::shared_ptr<const std::atomic<bool>> arena_alive;
    int bound;
    hwloc_bitmap_t own;
    bool rebound;
  };

  // Binds the thread to `core`; its own binding, where it had one and it will be put back, is kept in `entry`.
  // False where the thread may not be bound.
  static bool bind(int core, bool put_back, Entry& entry) {
    const Cores& c = cores();
    if (bound_ == kOwnBinding && put_back) {
      entry.own = hwloc_bitmap_alloc();
      if (hwloc_get_cpubind(c.topology(), entry.own, HWLOC_CPUBIND_THREAD) != 0) {
        hwloc_bitmap_free(entry.own);
        entry.own = nullptr;
        return false;
      }
    }
    if (hwloc_set_cpubind(c.topology(), c.core(core), HWLOC_CPUBIND_THREAD) != 0) {
      hwloc_bitmap_free(entry.own);
      entry.own = nullptr;
      return false;
    }
    bound_ = core;
    core_bindings_made.fetch_add(1, std::memory_order_relaxed);
    return true;
  }

  // Undoes the innermost entry. Unchanged, or a worker leaving its outermost arena: it stays on its core.
  static void leave() {
    const Entry entry = std::move(entries_.back());
    entries_.pop_back();
    if (!entry.rebound || (entry.bound == kOwnBinding && !entry.own)) return;
    const Cores& c = cores();
    hwloc_set_cpubind(c.topology(), entry.own ? entry.own : c.core(entry.bound), HWLOC_CPUBIND_THREAD);
    hwloc_bitmap_free(entry.own);
    bound_ = entry.bound;
  }
  // The thread left arenas whose observer had stopped without hearing of it (the innermost entries: the arenas it
  // entered from there were left before).
  static void leave_ended_arenas() {
    while (!entries_.empty() && !entries_.back().arena_alive->load()) leave();
  }

  const std::shared_ptr<std::atomic<bool>> alive_ = std::make_shared<std::atomic<bool>>(true);
  static thread_local int bound_;                   // the core the thread is bound to, or kOwnBinding
  static thread_local std::vector<Entry> entries_;  // one for each arena the thread is in
};

thread_local int CorePinning::bound_ = CorePinning::kOwnBinding;
thread_local std::vector<CorePinning::Entry> CorePinning::entries_;

void set_worker_threads(int threads, int host_rank, int host_ranks) {
  FERRY_CHECK(threads >= 0 && threads <= 4096, "--threads must be in [0, 4096], not {}", threads);
  FERRY_CHECK(host_ranks >= 1 && host_rank >= 0 && host_rank < host_ranks, "rank {} of {} on this host", host_rank,
              host_ranks);
  std::lock_guard lock(config_mutex);
  requested_threads = threads;
  default_threads = host_ranks > 1 ? std::max(1, allowed_physical_cores() / host_ranks) : 0;
  first_core = host_rank * worker_threads();
  thread_cap = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism,
                                                     static_cast<size_t>(worker_threads()));
}

int allowed_physical_cores(bool* counted_hardware_threads) {
  if (counted_hardware_threads) *counted_hardware_threads = !cores().cores_named();
  return std::max(1, cores().count());
}

int64_t core_bindings() { return core_bindings_made.load(std::memory_order_relaxed); }

int worker_threads() {
  return requested_threads > 0 ? requested_threads : default_threads > 0 ? default_threads : allowed_physical_cores();
}

std::string worker_threads_text() {
  const int n = worker_threads(), c = allowed_physical_cores();
  if (requested_threads == 0 && default_threads > 0)
    return fmt::format("{} thread{}, this rank's share of {} physical core{}, pinned", n, n == 1 ? "" : "s", c,
                       c == 1 ? "" : "s");
  if (requested_threads == 0) return fmt::format("{} thread{}, one per physical core, pinned", n, n == 1 ? "" : "s");
  return fmt::format("{} thread{} (--threads; {} physical core{}), pinned", n, n == 1 ? "" : "s", c, c == 1 ? "" : "s");
}

WorkerArena::WorkerArena(int threads)
    : threads_(threads > 0 ? threads : worker_threads()),
      arena_(std::make_unique<tbb::task_arena>(threads_)),
      pinning_(std::make_unique<CorePinning>(*arena_)) {}

WorkerArena::~WorkerArena() = default;

}  // namespace ferry::runtime
