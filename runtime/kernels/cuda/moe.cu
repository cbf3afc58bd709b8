// The MoE layer's small ops on the device: the router, the gather of an expert's input rows and the weighted
// combine of the experts' outputs, each value computed by the functions of moe_math.h that the CPU tests compare
// with the host's ops.
#include "runtime/kernels/cuda/kernel_util.cuh"
#include "runtime/kernels/cuda/kernels.h"
#include "runtime/kernels/cuda/moe_math.h"

namespace ferry::runtime::cuda {

namespace {

constexpr int kThreads = 256;

// Shared memory: the token's scores, then its biased scores (score routing).
__global__ void __launch_bounds__(kThreads) route_kernel(RouteArgs a) {
  extern __shared__ float score[];
  float* biased = score + a.experts;
  __shared__ int32_t chosen[kMaxRouteK];
  const int64_t E = a.experts, k = a.k;
  for (int64_t t = blockIdx.x; t < a.n; t += gridDim.x) {
    float* logits = a.scores + t * E;
    for (int64_t e = threadIdx.x; e < E; e += kThreads) {
      const float s = route_score(logits[e]);
      logits[e] = score[e] = s;
      if (a.bias) biased[e] = add_rn(s, a.bias[e]);
    }
    __syncthreads();
    if (a.tid2eid) {
      for (int64_t i = threadIdx.x; i < k; i += kThreads) chosen[i] = a.tid2eid[int64_t{a.tokens[t]} * k + i];
    } else {
      for (int64_t e = threadIdx.x; e < E; e += kThreads) {
        const int64_t rank = route_rank(biased, E, e);
        if (rank < k) chosen[rank] = static_cast<int32_t>(e);
      }
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < k; i += kThreads) a.ids[t * k + i] = chosen[i];
    if (threadIdx.x == 0) route_weights(score, chosen, k, a.scaling, a.weights + t * k);
    __syncthreads();  // `score` and `chosen` are the next token's
  }
}

__global__ void __launch_bounds__(kThreads) gather_rows_kernel(GatherRowsArgs a) {
  for (int64_t i = blockIdx.x; i < a.m; i += gridDim.x) {
    const float* src = a.src + (a.index[i] / a.div) * a.d;
    for (int64_t j = threadIdx.x; j < a.d; j += kThreads) a.dst[i * a.d + j] = src[j];
  }
}

__global__ void __launch_bounds__(kThreads) moe_combine_kernel(MoeCombineArgs a) {
  __shared__ int32_t pos[kMaxRouteK];
  __shared__ float wt[kMaxRouteK];
  __shared__ int found;
  __shared__ bool valid;  // the token has exactly k positions (else its row is NaN: no read out of bounds)
  const int64_t k = a.k, d = a.d;
  for (int64_t t = blockIdx.x; t < a.n; t += gridDim.x) {
    if (threadIdx.x == 0) found = 0;
    __syncthreads();
    for (int64_t p = threadIdx.x; p < a.n * k; p += kThreads)
      if (a.order[p] / k == t) {
        const int slot = atomicAdd(&found, 1);
        if (slot < kMaxRouteK) pos[slot] = static_cast<int32_t>(p);
      }
    __syncthreads();
    if (threadIdx.x == 0) {
      valid = found == k;
      if (valid) {
        sort_positions(pos, k);
        for (int64_t i = 0; i < k; ++i) wt[i] = a.weights[a.order[pos[i]]];
      }
    }
    __syncthreads();
    for (int64_t j = threadIdx.x; j < d; j += kThreads)
      a.y[t * d + j] =
          valid ? combine_value(wt, pos, k, a.expert_out, d, j, a.y[t * d + j], a.add) : __int_as_float(0x7FC00000);
    __syncthreads();  // `pos`, `wt` and `found` are the next token's
  }
}

}  // namespace

cudaError_t launch_route(const RouteArgs& a, cudaStream_t stream) {
  if (a.n * a.experts == 0) return cudaSuccess;
  const size_t shared = sizeof(float) * static_cast<size_t>(2 * a.experts);
  route_kernel<<<grid_for(a.n, 1), kThreads, shared, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t launch_gather_rows(const GatherRowsArgs& a, cudaStream_t stream) {
  if (a.m * a.d == 0) return cudaSuccess;
  gather_rows_kernel<<<grid_for(a.m, 1), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t launch_moe_combine(const MoeCombineArgs& a, cudaStream_t stream) {
  if (a.n * a.d == 0) return cudaSuccess;
  moe_combine_kernel<<<grid_for(a.n, 1), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace ferry::runtime::cuda
