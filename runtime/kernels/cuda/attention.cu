// Attention on the device (ops::Attention), flash-attention style: a block per (token, group of heads), a warp per
// head; at decode, a block per part of a token's rows too (flash-decoding, attention_math.h's split), merged by
// a second kernel. The token's rows (window, then compressed entries) pass through shared memory one key tile at a
// time, decoded there from their stored bytes (attention_math.h's row_value), so that each stored value is decoded once
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

// A head's partial of part `part` (split launches): its max and sum, then its accumulator.
__device__ __forceinline__ float* partial_of(const AttentionArgs& a, int64_t t, int64_t part, int64_t head) {
  return a.partials + ((t * a.slots + part) * a.heads + head) * (a.head_dim + kAttentionPartialHeader);
}

__device__ __forceinline__ void store_partial(const AttentionArgs& a, const HeadState& h, int64_t t, int64_t part,
                                              int64_t head) {
  const int lane = threadIdx.x % kAttentionLanes;
  float* p = partial_of(a, t, part, head);
  if (lane == 0) p[0] = h.softmax.max, p[1] = h.softmax.sum;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int64_t k = lane + int64_t{kAttentionLanes} * j;
    if (k < a.head_dim) p[kAttentionPartialHeader + k] = h.acc[j];
  }
}

// A block per (token, head group), and per part of the token's rows when kSplit: the rows folded a key tile at a
// time, then the head's output (unsplit) or its partial state.
template <bool kSplit>
__global__ void __launch_bounds__(kThreads) attention_kernel(AttentionArgs a) {
  extern __shared__ float shared[];
  const int64_t hd = a.head_dim, tile_rows = attention_tile_rows(hd);
  const int warp = threadIdx.x / kAttentionLanes, lane = threadIdx.x % kAttentionLanes;
  float* tile = shared;                                                    // [tile_rows, hd]
  float* scores = shared + tile_rows * hd + warp * kAttentionMaxTileRows;  // the warp's
  const int64_t groups = (a.heads + kWarps - 1) / kWarps, slots = kSplit ? a.slots : 1;
  const float scale = attention_scale(hd);
  for (int64_t b = blockIdx.x; b < a.n * groups * slots; b += gridDim.x) {
    const int64_t part = b % slots, t = b / slots / groups, head = b / slots % groups * kWarps + warp;
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
    const int64_t part_rows =
        kSplit ? attention_part_rows(total, tile_rows, a.max_parts, kAttentionMinPartTiles) : total;
    const int64_t begin = part * part_rows, end = total - begin < part_rows ? total : begin + part_rows;
    if (kSplit && begin >= end) continue;  // the token has fewer parts than slots (the whole block)
    for (int64_t i0 = begin; i0 < end; i0 += tile_rows) {
      const int64_t m = end - i0 < tile_rows ? end - i0 : tile_rows;
      __syncthreads();  // every warp is done with the previous tile
      for (int64_t i = warp; i < m; i += kWarps) {
        const RowRef row = token_row(a.rows, l, i0 + i);
        for (int64_t k = lane; k < hd; k += kAttentionLanes) tile[i * hd + k] = row_value(a.rows.layout, row, k);
      }
      __syncthreads();
      if (active) fold_tile(h, tile, m, hd, scale, scores);
    }
    if (active && kSplit) store_partial(a, h, t, part, head);
    if (active && !kSplit) finish_head(a, h, t, head, l.p);
  }
}

// Split launches: a block per (token, head group), a warp per head merging the token's parts in order
// (softmax_merge), then the sink and the inverse RoPE as the unsplit kernel applies them.
__global__ void __launch_bounds__(kThreads) attention_merge_kernel(AttentionArgs a) {
  const int64_t hd = a.head_dim, tile_rows = attention_tile_rows(hd);
  const int warp = threadIdx.x / kAttentionLanes, lane = threadIdx.x % kAttentionLanes;
  const int64_t groups = (a.heads + kWarps - 1) / kWarps;
  for (int64_t b = blockIdx.x; b < a.n * groups; b += gridDim.x) {
    const int64_t t = b / groups, head = b % groups * kWarps + warp;
    if (head >= a.heads) continue;  // the whole warp
    const TokenRows l = token_rows(a.rows, t);
    const int64_t part_rows = attention_part_rows(l.size(), tile_rows, a.max_parts, kAttentionMinPartTiles);
    const int64_t parts = attention_parts(l.size(), part_rows);
    HeadState h;
    for (int64_t part = 0; part < parts; ++part) {
      const float* p = partial_of(a, t, part, head);
      const SoftmaxState st{p[0], p[1]};
      const MergeScales sc = part ? softmax_merge(h.softmax, st) : MergeScales{};
      if (!part) h.softmax = st;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int64_t k = lane + int64_t{kAttentionLanes} * j;
        const float v = k < hd ? p[kAttentionPartialHeader + k] : 0.0f;
        h.acc[j] = part ? merge_accumulator(h.acc[j], v, sc) : v;
      }
    }
    finish_head(a, h, t, head, l.p);
  }
}

// The device's multiprocessors, asked once (0 if the query fails: the error is then the launch's).
int sm_count() {
  static const int sms = [] {
    int device = 0, count = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return 0;
    return cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) == cudaSuccess ? count : 0;
  }();
  return sms;
}

}  // namespace

cudaError_t launch_attention(const AttentionArgs& args, cudaStream_t stream) {
  if (args.n == 0 || args.heads == 0) return cudaSuccess;
  AttentionArgs a = args;
  const int64_t tile_rows = attention_tile_rows(a.head_dim);
  const size_t bytes = static_cast<size_t>(tile_rows * a.head_dim + kWarps * kAttentionMaxTileRows) * sizeof(float);
  const int64_t groups = (a.heads + kWarps - 1) / kWarps;
  a.max_parts =
      a.partials ? attention_split_parts(a.rows, a.n, a.heads, a.head_dim, a.n * groups, sm_count(), a.partial_floats)
                 : 0;
  a.slots = a.max_parts ? attention_part_slots(attention_rows_bound(a.rows, a.n), tile_rows, a.max_parts,
                                               kAttentionMinPartTiles)
                        : 1;
  if (!a.max_parts) {
    attention_kernel<false><<<grid_for(a.n * groups, 1), kThreads, bytes, stream>>>(a);
    return cudaGetLastError();
  }
  attention_kernel<true><<<grid_for(a.n * groups * a.slots, 1), kThreads, bytes, stream>>>(a);
  attention_merge_kernel<<<grid_for(a.n * groups, 1), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace ferry::runtime::cuda
