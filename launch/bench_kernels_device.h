// `ferry bench kernels --device cuda:N`: the CUDA kernels of the linear layers at V4-Flash shapes, run through the
// device's Backend as the forward pass runs them: the decode matrix-vector product's GB/s (FP8 non-routed
// projections, MXFP4 routed experts) next to the device's measured copy bandwidth, then each prefill chunk's
// TFLOP/s next to the datasheet BF16 tensor peak; then one decode token's indexer and attention at 64K and 1M
// context, with the GB/s of the KV rows they read. Without a usable GPU it fails with one line.
#pragma once

#include <string>
#include <vector>

namespace ferry::launch {

// `device` is "cuda:N". Weights are cycled through `working_set_mib` of distinct matrices (0: 1 GiB), so that they
// come from device memory, not the L2 cache; token_counts are the prefill chunks (none: decode only).
void run_device_kernel_bench(const std::string& device, int repetitions, int working_set_mib,
                             const std::vector<int>& token_counts);

}  // namespace ferry::launch
