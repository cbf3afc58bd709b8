#include "runtime/backend/worker_threads.h"

#include <hwloc.h>
#include <tbb/global_control.h>
#include <tbb/task_scheduler_observer.h>

#include <algorithm>
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
  hwloc_topology_t topology() const { return topology_; }
  hwloc_const_cpuset_t core(int i) const { return cpusets_[static_cast<size_t>(i) % cpusets_.size()]; }

 private:
  hwloc_topology_t topology_ = nullptr;
  std::vector<hwloc_bitmap_t> cpusets_;
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

}  // namespace

// Pins a thread entering the arena to the core of its slot, and puts its own binding back when it leaves. A thread
// may enter one arena from inside another (nested execute): the bindings it had are kept on a stack of its own.
class CorePinning : public tbb::task_scheduler_observer {
 public:
  explicit CorePinning(tbb::task_arena& arena) : tbb::task_scheduler_observer(arena) { observe(true); }
  ~CorePinning() override { observe(false); }

  void on_scheduler_entry(bool) override {
    const Cores& c = cores();
    const int slot = tbb::this_task_arena::current_thread_index();
    hwloc_bitmap_t before = nullptr;  // stays null where the thread may not be bound (a container, mpirun's binding)
    if (c.topology() && c.count() > 0 && slot >= 0) {
      before = hwloc_bitmap_alloc();
      if (hwloc_get_cpubind(c.topology(), before, HWLOC_CPUBIND_THREAD) != 0 ||
          hwloc_set_cpubind(c.topology(), c.core(first_core + slot), HWLOC_CPUBIND_THREAD) != 0) {
        hwloc_bitmap_free(before);
        before = nullptr;
      }
    }
    saved_.push_back(before);
  }
  void on_scheduler_exit(bool) override {
    if (saved_.empty()) return;  // entered before the observer began observing
    hwloc_bitmap_t before = saved_.back();
    saved_.pop_back();
    if (!before) return;
    hwloc_set_cpubind(cores().topology(), before, HWLOC_CPUBIND_THREAD);
    hwloc_bitmap_free(before);
  }

 private:
  static thread_local std::vector<hwloc_bitmap_t> saved_;  // the thread's bindings before each arena it is in
};

thread_local std::vector<hwloc_bitmap_t> CorePinning::saved_;

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

int allowed_physical_cores() { return std::max(1, cores().count()); }

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
