// `ferry bench kernels`: GB/s of the CPU expert (MXFP4) and FP8 matrix-vector kernels at V4-Flash shapes, next
// to a STREAM-like triad measured in the same run.
#pragma once

namespace ferry::launch {

// Weights are cycled through `working_set_mib` of distinct matrices, so they come from RAM, not the caches.
void run_kernel_bench(int repetitions, int working_set_mib);

}  // namespace ferry::launch
