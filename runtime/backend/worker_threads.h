// The threads that compute on the CPU: how many, and where they run.
//   How many: one per physical core this process may run on by default. oneTBB's default is one per hardware
//   thread, which puts two threads of a memory-bound kernel on one core's load ports and gains nothing; `--threads`
//   overrides. The count also caps oneTBB's threads in the whole process (tbb::global_control).
//   Where: a session computes in an arena of its own, as wide as the count (WorkerArena), so that the thread
//   index its tile loops see is below the width its workspace was sized for, and sessions computing at once (one
//   per rank-0 slot under mpirun) never wait for each other's arena slot. While a thread computes there it is
//   pinned with hwloc to the core of its arena slot, cores in hwloc's order (a NUMA node's cores together). The
//   thread that called execute() gets its own binding back when it returns; oneTBB's workers stay on their core
//   when they leave, so that joining the next parallel region on the same core costs no system call (work that
//   runs outside these arenas, in oneTBB's default arena, may find them there). Routed experts bound to a NUMA
//   node are computed by that node's arena (numa_arenas.h).
#pragma once

#include <tbb/task_arena.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

namespace ferry::runtime {

// Sets the process's worker count (0: one per physical core); call before sessions are made. `host_rank` of
// `host_ranks` processes sharing this host (ranks under mpirun): by default each gets an equal share of the cores it
// may run on, and its workers are pinned to its own share (cores from host_rank x count on).
void set_worker_threads(int threads, int host_rank = 0, int host_ranks = 1);
// The count in effect: set_worker_threads's, or this process's share of the physical cores it may run on.
int worker_threads();
// The physical cores this process may run on (hwloc: the cores with a hardware thread in its allowed cpuset), as the
// workers count them and the hardware probe reports them. Where hwloc names no cores, its allowed hardware threads,
// and `*counted_hardware_threads` (if given) is set.
int allowed_physical_cores(bool* counted_hardware_threads = nullptr);
// How many times a thread has been bound to a core since the process began: a system call each, on the way into a
// parallel region (tests check that a thread entering the core it is on again makes none).
int64_t core_bindings();
// For timing lines: "2 threads, one per physical core, pinned" or "3 threads (--threads; 2 physical cores), pinned".
std::string worker_threads_text();

class CorePinning;

class WorkerArena {
 public:
  explicit WorkerArena(int threads = 0);  // 0: worker_threads()
  ~WorkerArena();
  WorkerArena(const WorkerArena&) = delete;
  WorkerArena& operator=(const WorkerArena&) = delete;

  int threads() const { return threads_; }
  // Runs `f` in the arena (tbb::parallel_for inside uses its threads) and returns when it has finished.
  template <class F>
  void execute(F&& f) {
    arena_->execute(std::forward<F>(f));
  }

 private:
  int threads_;
  std::unique_ptr<tbb::task_arena> arena_;
  std::unique_ptr<CorePinning> pinning_;
};

}  // namespace ferry::runtime
