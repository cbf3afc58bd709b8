// The matrix-vector product straight from the stored weight encodings (F32, BF16, FP8 E4M3 with 128×128 E8M0
// blocks, MXFP4 with per-32 E8M0 scales), for decode: memory-bound, so each weight byte is read once, in 16-byte
// streaming loads, and decoded in registers. A block of 8 warps first stages a tile of up to 4 tokens' inputs in
// shared memory (MXFP4: rounded per block of 32 as the CPU's integer kernels round them); then each warp takes
// one weight row, each lane its chunks of it (matvec_math.h), and the lanes' sums meet in a shuffle tree.
#include <algorithm>

#include "runtime/kernels/cuda/dtype_math.h"
#include "runtime/kernels/cuda/kernels.h"
#include "runtime/kernels/cuda/matvec_math.h"

namespace ferry::runtime::cuda {

namespace {

constexpr int kWarps = 8, kThreads = 32 * kWarps;
constexpr int kMaxTile = 4;                 // tokens per block
constexpr int64_t kSharedBytes = 48 << 10;  // what a block gets without opting in

// Rounds the staged inputs per block of 32 (a warp a block, a lane a value) as mxfp4_activation.h does. A block
// holding inf or NaN is left as it is: its products are then inf or NaN, as the CPU's are.
__device__ void round_input_blocks(float* xs, int64_t values, int bits) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t b = warp; b < values / 32; b += kWarps) {
    const float v = xs[b * 32 + lane];
    float amax = fabsf(v);
    for (int off = 16; off > 0; off /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, off));
    const bool finite = __all_sync(0xFFFFFFFFu, isfinite(v));
    if (finite && amax > 0) xs[b * 32 + lane] = activation_round(v, activation_exponent(amax, bits));
  }
}

// T: the most tokens a block takes (1 for decode, so that it holds no registers for others). Two blocks an SM at
// least: 16 warps streaming.
template <class F, int T>
__global__ void __launch_bounds__(kThreads, 2) matvec_kernel(MatvecArgs a, int tile, bool aligned) {
  extern __shared__ float4 shared[];
  float* xs = reinterpret_cast<float*>(shared);
  const int64_t t0 = int64_t{blockIdx.y} * tile;
  const int nt = static_cast<int>(a.n - t0 < tile ? a.n - t0 : tile);
  for (int t = 0; t < nt; ++t)
    for (int64_t k = threadIdx.x; k < a.cols; k += kThreads) xs[t * a.cols + k] = a.x[(t0 + t) * a.x_stride + k];
  if (F::kRoundsInput) {
    __syncthreads();
    round_input_blocks(xs, nt * a.cols, a.bits);
  }
  __syncthreads();
  const int64_t r = int64_t{blockIdx.x} * kWarps + threadIdx.x / 32;
  if (r >= a.rows) return;
  const WeightRows w{a.codes, a.scales, a.cols};
  const int lane = threadIdx.x % 32;
  float acc[T] = {};
  if (aligned)
    lane_row_chunks<F, T>(w, a.row_begin + r, xs, nt, lane, acc);
  else
    lane_row_values<F, T>(w, a.row_begin + r, xs, nt, lane, acc);
#pragma unroll
  for (int t = 0; t < T; ++t)
    for (int off = 16; off > 0; off /= 2) acc[t] += __shfl_xor_sync(0xFFFFFFFFu, acc[t], off);
  if (lane == 0)
    for (int t = 0; t < nt; ++t) a.y[(t0 + t) * a.y_stride + r] = acc[t];
}

template <class F>
cudaError_t launch(const MatvecArgs& a, cudaStream_t stream) {
  const int tile = static_cast<int>(std::min<int64_t>({kMaxTile, a.n, kSharedBytes / (4 * a.cols)}));
  const bool aligned = reinterpret_cast<uintptr_t>(a.codes) % 16 == 0 && F::row_bytes(a.cols) % 16 == 0;
  const dim3 grid(static_cast<unsigned>((a.rows + kWarps - 1) / kWarps),
                  static_cast<unsigned>((a.n + tile - 1) / tile));
  const auto shared = static_cast<size_t>(tile * a.cols * 4);
  if (tile == 1)
    matvec_kernel<F, 1><<<grid, kThreads, shared, stream>>>(a, tile, aligned);
  else
    matvec_kernel<F, kMaxTile><<<grid, kThreads, shared, stream>>>(a, tile, aligned);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_matvec(const MatvecArgs& a, cudaStream_t stream) {
  if (a.rows == 0 || a.n == 0) return cudaSuccess;
  if (a.cols <= 0 || a.cols > kMatvecMaxCols || (a.format == MatvecFormat::MXFP4 && a.cols % 32 != 0))
    return cudaErrorInvalidValue;
  switch (a.format) {
    case MatvecFormat::F32: return launch<F32Format>(a, stream);
    case MatvecFormat::BF16: return launch<Bf16Format>(a, stream);
    case MatvecFormat::FP8: return launch<Fp8Format>(a, stream);
    case MatvecFormat::MXFP4: return launch<Mxfp4Format>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace ferry::runtime::cuda
