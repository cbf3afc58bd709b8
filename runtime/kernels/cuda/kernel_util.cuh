// What the kernels share (nvcc only): grid sizes, and sums across a warp and a block.
#pragma once

#include <algorithm>
#include <cstdint>

namespace ferry::runtime::cuda {

// Blocks for `work` items of `per_block` each, within the grid's x limit (the kernels loop over the rest).
inline unsigned grid_for(int64_t work, int64_t per_block) {
  return static_cast<unsigned>(std::clamp<int64_t>((work + per_block - 1) / per_block, 1, int64_t{1} << 30));
}

__device__ __forceinline__ double warp_sum(double v) {
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xFFFFFFFFu, v, off);
  return v;
}

// The sum of a block's values (each thread's partial), in every thread; `shared` holds a value per warp of the
// block's kThreads.
template <int kThreads>
__device__ double block_sum(double v, double* shared) {
  v = warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  double total = 0;
  for (int w = 0; w < kThreads / 32; ++w) total += shared[w];
  __syncthreads();  // `shared` may be reused by the next row
  return total;
}

}  // namespace ferry::runtime::cuda
