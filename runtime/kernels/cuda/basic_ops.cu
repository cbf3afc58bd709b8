// Embedding gather, RMSNorm, RoPE and the MTP's stream sum on the device, each element computed by the
// functions of dtype_math.h / norm_rope_math.h that the CPU tests compare with the CPU kernels.
#include <algorithm>

#include "runtime/kernels/cuda/dtype_math.h"
#include "runtime/kernels/cuda/kernel_util.cuh"
#include "runtime/kernels/cuda/kernels.h"
#include "runtime/kernels/cuda/norm_rope_math.h"

namespace ferry::runtime::cuda {

namespace {

constexpr int kThreads = 256;

// One block per output row (token, stream): the token's table row, decoded, with 16-byte stores where the row
// allows them.
__global__ void __launch_bounds__(kThreads) embed_kernel(EmbedArgs a) {
  for (int64_t r = blockIdx.x; r < a.n * a.copies; r += gridDim.x) {
    const uint16_t* row = a.table + static_cast<int64_t>(a.tokens[r / a.copies]) * a.cols;
    float* out = a.out + r * a.cols;
    for (int64_t k = threadIdx.x; k < a.cols; k += kThreads) out[k] = bf16_to_float(row[k]);
  }
}

// One block per row: the sum of squares in double (as the CPU's), then each element scaled. out may alias x:
// each thread reads only the elements it writes, after the sum.
__global__ void __launch_bounds__(kThreads) rms_norm_kernel(RmsNormArgs a) {
  __shared__ double shared[kThreads / 32];
  for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
    const float* x = a.x + r * a.x_stride;
    float* out = a.out + r * a.out_stride;
    double ss = 0;
    for (int64_t k = threadIdx.x; k < a.dim; k += kThreads) ss += square(x[k]);
    const float inv = rms_inverse(block_sum<kThreads>(ss, shared), a.dim, a.eps);
    for (int64_t k = threadIdx.x; k < a.dim; k += kThreads)
      out[k] = rms_scale(x[k], inv, a.weight ? a.weight[k] : 1.0f);
  }
}

// One thread per (token, frequency): the cosine and sine once, applied to that pair of every head.
__global__ void __launch_bounds__(kThreads) rope_kernel(RopeArgs a) {
  const int64_t total = a.n * a.count;
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < total; i += int64_t{gridDim.x} * kThreads) {
    const int64_t t = i / a.count, f = i % a.count;
    float c = 0, s = 0;
    rope_cos_sin(a.freqs[f], a.p0 + t, a.inverse, c, s);
    for (int64_t h = 0; h < a.heads; ++h) {
      float* v = a.x + (t * a.heads + h) * a.head_dim + a.offset + 2 * f;
      rope_pair(v[0], v[1], c, s);
    }
  }
}

__global__ void __launch_bounds__(kThreads) add_streams_kernel(AddStreamsArgs a) {
  const int64_t total = a.n * a.streams * a.d;
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < total; i += int64_t{gridDim.x} * kThreads) {
    const int64_t t = i / (a.streams * a.d), j = i % a.d;
    a.out[i] = add_rn(a.a[t * a.d + j], a.b[i]);
  }
}

}  // namespace

cudaError_t launch_embed(const EmbedArgs& a, cudaStream_t stream) {
  if (a.n * a.copies * a.cols == 0) return cudaSuccess;
  embed_kernel<<<grid_for(a.n * a.copies, 1), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t launch_rms_norm(const RmsNormArgs& a, cudaStream_t stream) {
  if (a.rows * a.dim == 0) return cudaSuccess;
  rms_norm_kernel<<<grid_for(a.rows, 1), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t launch_rope(const RopeArgs& a, cudaStream_t stream) {
  if (a.n * a.count == 0) return cudaSuccess;
  rope_kernel<<<grid_for(a.n * a.count, kThreads), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t launch_add_streams(const AddStreamsArgs& a, cudaStream_t stream) {
  if (a.n * a.streams * a.d == 0) return cudaSuccess;
  add_streams_kernel<<<grid_for(a.n * a.streams * a.d, kThreads), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace ferry::runtime::cuda
