// The compressors on the device (compress_math.h): every entry that completes in the chunk in a block of its own,
// reading its positions from the chunk's projections or the state the previous chunk left; then the state this
// chunk leaves. The state stays on the device between chunks, as the host's does in host memory.
#include "runtime/kernels/cuda/compress_math.h"
#include "runtime/kernels/cuda/indexer_math.h"
#include "runtime/kernels/cuda/kernel_util.cuh"
#include "runtime/kernels/cuda/kernels.h"
#include "runtime/kernels/cuda/kv_math.h"
#include "runtime/kernels/cuda/norm_rope_math.h"

namespace ferry::runtime::cuda {

namespace {

constexpr int kThreads = 256;

__device__ CompressView view_of(const CompressArgs& a) {
  return {a.a, a.s, a.ape, a.state_kv, a.state_score, a.n, a.p0, a.ratio, a.dim, a.width};
}

// Entry j's values pooled and normalised: the sum of squares in double, in the host's order (one thread adds
// the squares the block computed), so that the inverse rms is the host's bit for bit.
__device__ void pool_and_normalise(const CompressArgs& a, int64_t j, float* e, double* sq) {
  const CompressView v = view_of(a);
  __shared__ float inv;
  for (int64_t k = threadIdx.x; k < a.dim; k += kThreads) {
    e[k] = compress_pool(v, j, k);
    sq[k] = square(e[k]);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double ss = 0;
    for (int64_t k = 0; k < a.dim; ++k) ss = dadd_rn(ss, sq[k]);
    inv = rms_inverse(ss, a.dim, a.eps);
  }
  __syncthreads();
  for (int64_t k = threadIdx.x; k < a.dim; k += kThreads) e[k] = rms_scale(e[k], inv, a.norm ? a.norm[k] : 1.0f);
  __syncthreads();
}

// One block per entry: pooled, normalised, rotated at ratio·j, (indexer) Hadamard-transformed, encoded.
__global__ void __launch_bounds__(kThreads) compress_entry_kernel(CompressArgs a) {
  __shared__ float e[kCompressMaxDim];
  __shared__ double sq[kCompressMaxDim];
  int64_t begin = 0, end = 0;
  compress_entries(a.p0, a.n, a.ratio, begin, end);
  for (int64_t j = begin + blockIdx.x; j < end; j += gridDim.x) {
    pool_and_normalise(a, j, e, sq);
    const int64_t off = a.dim - 2 * a.count;
    for (int64_t i = threadIdx.x; i < a.count; i += kThreads) {
      float c = 0, s = 0;
      rope_cos_sin(a.freqs[i], a.ratio * j, false, c, s);
      rope_pair(e[off + 2 * i], e[off + 2 * i + 1], c, s);
    }
    __syncthreads();
    if (a.indexer) {
      for (int64_t h = 1; h < a.dim; h *= 2) {
        for (int64_t m = threadIdx.x; m < a.dim / 2; m += kThreads) hadamard_pair(e, h, m);
        __syncthreads();
      }
      const float scale = hadamard_scale(a.dim);
      for (int64_t k = threadIdx.x; k < a.dim; k += kThreads) e[k] = mul_rn(e[k], scale);
      __syncthreads();
    }
    const int64_t units = kv_units(a.layout);
    for (int64_t u = threadIdx.x; u < units; u += kThreads) encode_kv_unit(a.layout, e, a.rows + j * a.layout.bytes, u);
    __syncthreads();  // `e` is the next entry's
  }
}

// Ratio 4, one thread per column: rows 0…3 may take rows 4…7 as they were, so every new value of the column is
// read before any is written.
__global__ void __launch_bounds__(kThreads) compress_state4_kernel(CompressArgs a) {
  const CompressView v = view_of(a);
  for (int64_t c = blockIdx.x * int64_t{kThreads} + threadIdx.x; c < a.width; c += int64_t{gridDim.x} * kThreads) {
    float value[8], score[8];
    bool changed[8];
#pragma unroll
    for (int row = 0; row < 8; ++row) changed[row] = compress_new_state(v, row, c, value[row], score[row]);
#pragma unroll
    for (int row = 0; row < 8; ++row)
      if (changed[row]) {
        a.state_kv[row * a.width + c] = value[row];
        a.state_score[row * a.width + c] = score[row];
      }
  }
}

// Other ratios, one thread per (row, column): a row's new value comes from the chunk alone.
__global__ void __launch_bounds__(kThreads) compress_state_kernel(CompressArgs a) {
  const CompressView v = view_of(a);
  const int64_t total = a.ratio * a.width;
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < total; i += int64_t{gridDim.x} * kThreads) {
    float value = 0, score = 0;
    if (compress_new_state(v, i / a.width, i % a.width, value, score)) {
      a.state_kv[i] = value;
      a.state_score[i] = score;
    }
  }
}

}  // namespace

cudaError_t launch_compress(const CompressArgs& a, cudaStream_t stream) {
  if (a.n == 0 || a.width == 0) return cudaSuccess;
  int64_t begin = 0, end = 0;
  compress_entries(a.p0, a.n, a.ratio, begin, end);
  if (end > begin) {
    compress_entry_kernel<<<grid_for(end - begin, 1), kThreads, 0, stream>>>(a);
    if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  }
  // Stream order: the entries have read the state before it changes.
  if (a.ratio == 4)
    compress_state4_kernel<<<grid_for(a.width, kThreads), kThreads, 0, stream>>>(a);
  else
    compress_state_kernel<<<grid_for(a.ratio * a.width, kThreads), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace ferry::runtime::cuda
