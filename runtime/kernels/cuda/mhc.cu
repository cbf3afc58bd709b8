// mHC on the device: the pre-mix, the post-mix and the head's reduction of the streams, each value computed by
// the functions of hc_math.h that the CPU tests compare with the CPU's hc_pre / hc_post / hc_head.
#include "runtime/kernels/cuda/hc_math.h"
#include "runtime/kernels/cuda/kernel_util.cuh"
#include "runtime/kernels/cuda/kernels.h"
#include "runtime/kernels/cuda/norm_rope_math.h"

namespace ferry::runtime::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxLogits = (2 + kMaxHc) * kMaxHc;

// The token's `rows` mix logits into `logit` (shared memory), for every thread of the block: the streams' sum of
// squares over the block, then each row of fn dotted with the streams by one warp, both in double.
__device__ void hc_logits(const float* H, int64_t n, const float* fn, int64_t rows, double eps, float* logit,
                          double* shared) {
  double ss = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) ss += square(H[i]);
  const double r = hc_inverse_rms(block_sum<kThreads>(ss, shared), n, eps);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t m = warp; m < rows; m += kWarps) {
    const float* w = fn + m * n;
    double acc = 0;
    for (int64_t i = lane; i < n; i += 32) acc += dmul_rn(static_cast<double>(w[i]), static_cast<double>(H[i]));
    acc = warp_sum(acc);
    if (lane == 0) logit[m] = hc_logit(acc, r);
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads) hc_pre_kernel(HcPreArgs a) {
  __shared__ double shared[kWarps];
  __shared__ float logit[kMaxLogits];
  __shared__ float weights[2 * kMaxHc + kMaxHc * kMaxHc];  // pre, post, comb
  const int64_t hc = a.hc, mw = 2 * hc + hc * hc;
  for (int64_t t = blockIdx.x; t < a.n; t += gridDim.x) {
    const float* H = a.H + t * hc * a.d;
    hc_logits(H, hc * a.d, a.fn, (2 + hc) * hc, a.norm_eps, logit, shared);
    if (threadIdx.x == 0)
      hc_pre_weights(logit, hc, a.scale, a.base, a.sinkhorn_iters, static_cast<float>(a.hc_eps), weights, weights + hc,
                     weights + 2 * hc);
    __syncthreads();
    for (int64_t i = threadIdx.x; i < mw; i += kThreads) a.mix[t * mw + i] = weights[i];
    for (int64_t k = threadIdx.x; k < a.d; k += kThreads) a.x[t * a.d + k] = hc_weighted_sum(weights, H, hc, a.d, k);
    __syncthreads();  // `logit` and `weights` are the next token's
  }
}

__global__ void __launch_bounds__(kThreads) hc_head_kernel(HcHeadArgs a) {
  __shared__ double shared[kWarps];
  __shared__ float logit[kMaxHc];
  __shared__ float weights[kMaxHc];
  const int64_t hc = a.hc;
  for (int64_t t = blockIdx.x; t < a.n; t += gridDim.x) {
    const float* H = a.H + t * hc * a.d;
    hc_logits(H, hc * a.d, a.fn, hc, a.norm_eps, logit, shared);
    if (threadIdx.x < hc)
      weights[threadIdx.x] = hc_gate(logit[threadIdx.x], a.scale[0], a.base[threadIdx.x], static_cast<float>(a.hc_eps));
    __syncthreads();
    for (int64_t k = threadIdx.x; k < a.d; k += kThreads) a.y[t * a.d + k] = hc_weighted_sum(weights, H, hc, a.d, k);
    __syncthreads();
  }
}

// One thread per (token, column): the column's streams read into registers before any is written (in place).
__global__ void __launch_bounds__(kThreads) hc_post_kernel(HcPostArgs a) {
  const int64_t hc = a.hc, mw = 2 * hc + hc * hc, total = a.n * a.d;
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < total; i += int64_t{gridDim.x} * kThreads) {
    const int64_t t = i / a.d, k = i % a.d;
    float* H = a.H + t * hc * a.d + k;
    const float* m = a.mix + t * mw;
    float old[kMaxHc];
    for (int64_t s = 0; s < hc; ++s) old[s] = H[s * a.d];
    for (int64_t j = 0; j < hc; ++j) H[j * a.d] = hc_post_value(m + hc, m + 2 * hc, hc, j, a.y[t * a.d + k], old);
  }
}

}  // namespace

cudaError_t launch_hc_pre(const HcPreArgs& a, cudaStream_t stream) {
  if (a.n * a.d == 0) return cudaSuccess;
  hc_pre_kernel<<<grid_for(a.n, 1), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t launch_hc_post(const HcPostArgs& a, cudaStream_t stream) {
  if (a.n * a.d == 0) return cudaSuccess;
  hc_post_kernel<<<grid_for(a.n * a.d, kThreads), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t launch_hc_head(const HcHeadArgs& a, cudaStream_t stream) {
  if (a.n * a.d == 0) return cudaSuccess;
  hc_head_kernel<<<grid_for(a.n, 1), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace ferry::runtime::cuda
