// `ferry bench kernels`: GB/s of the CPU expert (MXFP4) and FP8 matrix-vector kernels at V4-Flash shapes, next
// to a STREAM-like triad measured in the same run, then the prefill (multi-token) kernels' GFLOP/s for chunks of
// n tokens next to the per-token schedule they replaced. Every MXFP4 code path the CPU has is measured (AVX2 is
// the baseline every x86-64-v3 machine runs; AVX-512 where present).
#pragma once

#include <vector>

namespace ferry::launch {

// GB/s of a STREAM triad (a = b + s*c over 768 MiB) on all the task arena's threads, best of `reps`.
double triad_gbps(int reps);

// Weights are cycled through `working_set_mib` of distinct matrices (0: twice the last-level cache, at least
// 256 MiB), so they come from RAM, not the caches. Runs on the worker threads (worker_threads.h: set_worker_threads
// first). token_counts: the chunk sizes of the prefill part (none: skip it).
void run_kernel_bench(int repetitions, int working_set_mib, const std::vector<int>& token_counts);

}  // namespace ferry::launch
