// Attention on the device (ops::Attention), flash-attention style: a block per (token, group of heads), a warp per
// head. The token's rows (window, then compressed entries) pass through shared memory one key tile at a time,
// decoded there from their stored bytes (attention_math.h's row_value), so that each stored value is decoded once
// per block for all of its heads and nothing grows with the context. Each step is a function of attention_math.h
// that tests/unit/test_cuda_math_attention.cpp runs, in this order, on the CPU against the host's op.
#include "runtime/kernels/cuda/attention_math.h"
#include "runtime/kernels/cuda/kernel_util.cuh"
#include "runtime/kernels/cuda/kernels.h"

namespace ferry::runtime::cuda {

namespace {

constexpr int kWarps = kAttentionHeadsPerBlock, kThreads = kAttentionLanes * kWarps;
constexpr int kPerLane = kAttentionMaxValuesPerLane;
constexpr unsigned kFullMask = 0xFFFFFFFFu;

// The sum of the lanes' values by a butterfly: lane l adds lane l^off's value for off = 16, 8, 4, 2, 1; every lane
// ends with the same bits (a + b == b + a).
__device__ __forceinline__ float warp_sum_f(float v) {
  for (int off = kAttentionLanes / 2; off > 0; off /= 2) v = add_rn(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

// One head's state: its query and accumulator values lane + 32·j, and its online softmax.
struct HeadState {
  float q[kPerLane], acc[kPerLane];
  SoftmaxState softmax;
};

// Folds the tile's m rows (shared memory, [m, hd]) into the warp's head: every row's score (a warp sum of the
// lanes' FMA chains), the tile's largest, the state rescaled to it, then each row's weight into the sum and the
// accumulator, rows in order. `scores` is the warp's own shared row of kAttentionMaxTileRows.
__device__ __forceinline__ void fold_tile(HeadState& h, const float* tile, int64_t m, int64_t hd, float scale,
                                          float* scores) {
  const int lane = threadIdx.x % kAttentionLanes;
  float tile_max = -INFINITY;
  for (int64_t i = 0; i < m; ++i) {
    float d = 0;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t k = lane + int64_t{kAttentionLanes} * j;
      if (k < hd) d = lane_dot(d, h.q[j], tile[i * hd + k]);
    }
    const float s = attention_score(warp_sum_f(d), scale);
    if (lane == 0) scores[i] = s;
    tile_max = fold_max(tile_max, s);
  }
  __syncwarp();  // lane 0's scores, for every lane
  const float rescale = softmax_enter_tile(h.softmax, tile_max);
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) h.acc[j] = accumulate_rescaled(h.acc[j], rescale);
  for (int64_t i = 0; i < m; ++i) {
    const float w = softmax_take(h.softmax, scores[i]);
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t k = lane + int64_t{kAttentionLanes} * j;
      if (k < hd) h.acc[j] = accumulate_row(h.acc[j], w, tile[i * hd + k]);
    }
  }
}

// The head's output: the sink in the denominator, the rope dims rotated back (a pair is held by lanes 2i, 2i+1).
__device__ __forceinline__ void finish_head(const AttentionArgs& a, const HeadState& h, int64_t t, int64_t head,
                                            int64_t pos) {
  const int lane = threadIdx.x % kAttentionLanes;
  const float denom = attention_denominator(h.softmax, a.sink[head]);
  float* o = a.o + (t * a.heads + head) * a.head_dim;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int64_t k = lane + int64_t{kAttentionLanes} * j;
    const float v = attention_output(h.acc[j], denom);
    const float other = __shfl_xor_sync(kFullMask, v, 1);
    if (k < a.head_dim) o[k] = unrope_value(v, other, k, a.head_dim, a.count, a.freqs, pos);
  }
}

__global__ void __launch_bounds__(kThreads) attention_kernel(AttentionArgs a) {
  extern __shared__ float shared[];
  const int64_t hd = a.head_dim, tile_rows = attention_tile_rows(hd);
  const int warp = threadIdx.x / kAttentionLanes, lane = threadIdx.x % kAttentionLanes;
  float* tile = shared;                                                    // [tile_rows, hd]
  float* scores = shared + tile_rows * hd + warp * kAttentionMaxTileRows;  // the warp's
  const int64_t groups = (a.heads + kWarps - 1) / kWarps;
  const float scale = attention_scale(hd);
  for (int64_t b = blockIdx.x; b < a.n * groups; b += gridDim.x) {
    const int64_t t = b / groups, head = b % groups * kWarps + warp;
    const bool active = head < a.heads;  // the last group's spare warps only stage rows
    HeadState h;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t k = lane + int64_t{kAttentionLanes} * j;
      h.q[j] = active && k < hd ? a.q[(t * a.heads + head) * hd + k] : 0.0f;
      h.acc[j] = 0;
    }
    const TokenRows l = token_rows(a.rows, t);
    const int64_t total = l.size();
    for (int64_t i0 = 0; i0 < total; i0 += tile_rows) {
      const int64_t m = total - i0 < tile_rows ? total - i0 : tile_rows;
      __syncthreads();  // every warp is done with the previous tile
      for (int64_t i = warp; i < m; i += kWarps) {
        const RowRef row = token_row(a.rows, l, i0 + i);
        for (int64_t k = lane; k < hd; k += kAttentionLanes) tile[i * hd + k] = row_value(a.rows.layout, row, k);
      }
      __syncthreads();
      if (active) fold_tile(h, tile, m, hd, scale, scores);
    }
    if (active) finish_head(a, h, t, head, l.p);
  }
}

}  // namespace

cudaError_t launch_attention(const AttentionArgs& a, cudaStream_t stream) {
  if (a.n == 0 || a.heads == 0) return cudaSuccess;
  const int64_t tile_rows = attention_tile_rows(a.head_dim);
  const size_t bytes = static_cast<size_t>(tile_rows * a.head_dim + kWarps * kAttentionMaxTileRows) * sizeof(float);
  const int64_t groups = (a.heads + kWarps - 1) / kWarps;
  attention_kernel<<<grid_for(a.n * groups, 1), kThreads, bytes, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace ferry::runtime::cuda
