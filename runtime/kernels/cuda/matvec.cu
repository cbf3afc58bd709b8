// The matrix-vector product straight from the stored weight encodings (F32, BF16, FP8 E4M3 with 128×128 E8M0
// blocks, MXFP4 with per-32 E8M0 scales), for decode: memory-bound, so each weight byte is read once, in 16-byte
// streaming loads, and decoded in registers (dtype_math.h).
//
// A block of 8 warps first stages a tile of up to 4 tokens' inputs in shared memory (MXFP4: rounded per block of
// 32 as the CPU's integer kernels round them); then each warp takes one weight row. Lane l loads 16-byte chunks
// l, l + 32, ... of the row and multiplies each with the chunk's inputs, read from shared memory as float4s in an
// order rotated by lane so that the 8 lanes of a quarter-warp hit 8 different bank groups (in plain order a
// chunk of 16 FP8 or 32 FP4 values puts 4 or 8 lanes on the same banks). A chunk never straddles a scale block
// (16 | 128, 32 | 32): its products are summed, then scaled once. The lanes' sums meet in a shuffle tree.
#include <algorithm>

#include "runtime/kernels/cuda/dtype_math.h"
#include "runtime/kernels/cuda/kernels.h"

namespace ferry::runtime::cuda {

namespace {

constexpr int kWarps = 8, kThreads = 32 * kWarps;
constexpr int kMaxTile = 4;                 // tokens per block
constexpr int64_t kSharedBytes = 48 << 10;  // what a block gets without opting in

__device__ uint32_t word(const uint4& w, int i) { return i == 0 ? w.x : i == 1 ? w.y : i == 2 ? w.z : w.w; }

// A format: kUnroll 16-byte loads in flight per lane (fewer for MXFP4, whose chunks hold 32 values each);
// kPerChunk values per 16 bytes, decoded 4 at a time (group g of kGroups); the scale of chunk c of a row; one
// value decoded alone (the path for rows that are not 16-byte aligned).
struct F32Format {
  static constexpr int kUnroll = 4;
  static constexpr int kPerChunk = 4, kGroups = 1;
  static constexpr bool kRoundsInput = false;
  __device__ static int64_t row_bytes(int64_t cols) { return 4 * cols; }
  __device__ static void decode(const uint4& w, int, float v[4]) {
    v[0] = float_from_bits(w.x), v[1] = float_from_bits(w.y), v[2] = float_from_bits(w.z), v[3] = float_from_bits(w.w);
  }
  __device__ static float chunk_scale(const MatvecArgs&, int64_t, int64_t) { return 1.0f; }
  __device__ static float value(const MatvecArgs& a, int64_t row, int64_t k) {
    return reinterpret_cast<const float*>(a.codes)[row * a.cols + k];
  }
};

struct Bf16Format {
  static constexpr int kUnroll = 4;
  static constexpr int kPerChunk = 8, kGroups = 2;
  static constexpr bool kRoundsInput = false;
  __device__ static int64_t row_bytes(int64_t cols) { return 2 * cols; }
  __device__ static void decode(const uint4& w, int g, float v[4]) {
    const uint32_t lo = word(w, 2 * g), hi = word(w, 2 * g + 1);
    v[0] = bf16_to_float(static_cast<uint16_t>(lo)), v[1] = bf16_to_float(static_cast<uint16_t>(lo >> 16));
    v[2] = bf16_to_float(static_cast<uint16_t>(hi)), v[3] = bf16_to_float(static_cast<uint16_t>(hi >> 16));
  }
  __device__ static float chunk_scale(const MatvecArgs&, int64_t, int64_t) { return 1.0f; }
  __device__ static float value(const MatvecArgs& a, int64_t row, int64_t k) {
    return bf16_to_float(reinterpret_cast<const uint16_t*>(a.codes)[row * a.cols + k]);
  }
};

struct Fp8Format {
  static constexpr int kUnroll = 4;
  static constexpr int kPerChunk = 16, kGroups = 4;
  static constexpr bool kRoundsInput = false;
  static constexpr int64_t kBlock = 128;
  __device__ static int64_t row_bytes(int64_t cols) { return cols; }
  __device__ static void decode(const uint4& w, int g, float v[4]) {
    const uint32_t b = word(w, g);
    for (int i = 0; i < 4; ++i) v[i] = e4m3_to_float(static_cast<uint8_t>(b >> (8 * i)));
  }
  __device__ static float scale(const MatvecArgs& a, int64_t row, int64_t k) {
    const int64_t scale_cols = (a.cols + kBlock - 1) / kBlock;
    return e8m0_to_float(a.scales[(row / kBlock) * scale_cols + k / kBlock]);
  }
  __device__ static float chunk_scale(const MatvecArgs& a, int64_t row, int64_t c) {
    return scale(a, row, c * kPerChunk);
  }
  __device__ static float value(const MatvecArgs& a, int64_t row, int64_t k) {
    return e4m3_to_float(a.codes[row * a.cols + k]) * scale(a, row, k);
  }
};

struct Mxfp4Format {
  static constexpr int kUnroll = 2;
  static constexpr int kPerChunk = 32, kGroups = 8;
  static constexpr bool kRoundsInput = true;
  static constexpr int64_t kBlock = 32;
  __device__ static int64_t row_bytes(int64_t cols) { return cols / 2; }
  __device__ static void decode(const uint4& w, int g, float v[4]) {
    const uint32_t h = word(w, g / 2) >> (16 * (g % 2));  // values 4g .. 4g + 3: low nibble first
    for (int i = 0; i < 4; ++i) v[i] = e2m1_to_float(static_cast<uint8_t>((h >> (4 * i)) & 0xF));
  }
  __device__ static float chunk_scale(const MatvecArgs& a, int64_t row, int64_t c) {
    return e8m0_to_float(a.scales[row * (a.cols / kBlock) + c]);
  }
  __device__ static float value(const MatvecArgs& a, int64_t row, int64_t k) {
    const uint8_t byte = a.codes[row * (a.cols / 2) + k / 2];
    return e2m1_to_float(static_cast<uint8_t>(k % 2 ? byte >> 4 : byte & 0xF)) *
           e8m0_to_float(a.scales[row * (a.cols / kBlock) + k / kBlock]);
  }
};

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

// One row against the tile of nt <= T tokens, 16-byte chunks per lane.
template <class F, int T>
__device__ void row_chunks(const MatvecArgs& a, int64_t row, const float* xs, int nt, float acc[T]) {
  const int lane = threadIdx.x % 32;
  const int rot = (lane / (8 / F::kGroups)) % F::kGroups;
  const int64_t chunks = F::row_bytes(a.cols) / 16;
  const uint4* w = reinterpret_cast<const uint4*>(a.codes + row * F::row_bytes(a.cols));
  for (int64_t c0 = lane; c0 < chunks; c0 += 32 * F::kUnroll) {
    uint4 wv[F::kUnroll] = {};
    float sc[F::kUnroll] = {};
#pragma unroll
    for (int u = 0; u < F::kUnroll; ++u)
      if (c0 + 32 * u < chunks) {
        wv[u] = __ldcs(w + c0 + 32 * u);  // read once: do not keep it in cache
        sc[u] = F::chunk_scale(a, row, c0 + 32 * u);
      }
#pragma unroll
    for (int u = 0; u < F::kUnroll; ++u) {
      const int64_t c = c0 + 32 * u;
      if (c >= chunks) break;
      float part[T] = {};
#pragma unroll
      for (int j = 0; j < F::kGroups; ++j) {
        const int g = (j + rot) % F::kGroups;
        float v[4];
        F::decode(wv[u], g, v);
        const int64_t e = c * F::kPerChunk + 4 * g;
#pragma unroll
        for (int t = 0; t < T; ++t)
          if (t < nt) {
            const float4 x = *reinterpret_cast<const float4*>(xs + t * a.cols + e);
            part[t] = fmaf(v[0], x.x, fmaf(v[1], x.y, fmaf(v[2], x.z, fmaf(v[3], x.w, part[t]))));
          }
      }
#pragma unroll
      for (int t = 0; t < T; ++t) acc[t] = fmaf(part[t], sc[u], acc[t]);
    }
  }
}

// One row against the tile, a value at a time (rows that are not 16-byte aligned).
template <class F, int T>
__device__ void row_values(const MatvecArgs& a, int64_t row, const float* xs, int nt, float acc[T]) {
  for (int64_t k = threadIdx.x % 32; k < a.cols; k += 32) {
    const float w = F::value(a, row, k);
#pragma unroll
    for (int t = 0; t < T; ++t)
      if (t < nt) acc[t] = fmaf(w, xs[t * a.cols + k], acc[t]);
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
  float acc[T] = {};
  if (aligned)
    row_chunks<F, T>(a, a.row_begin + r, xs, nt, acc);
  else
    row_values<F, T>(a, a.row_begin + r, xs, nt, acc);
#pragma unroll
  for (int t = 0; t < T; ++t)
    for (int off = 16; off > 0; off /= 2) acc[t] += __shfl_xor_sync(0xFFFFFFFFu, acc[t], off);
  if (threadIdx.x % 32 == 0)
    for (int t = 0; t < nt; ++t) a.y[(t0 + t) * a.y_stride + r] = acc[t];
}

template <class F>
cudaError_t launch(const MatvecArgs& a, int64_t row_bytes, cudaStream_t stream) {
  const int tile = static_cast<int>(std::min<int64_t>({kMaxTile, a.n, kSharedBytes / (4 * a.cols)}));
  const bool aligned = reinterpret_cast<uintptr_t>(a.codes) % 16 == 0 && row_bytes % 16 == 0;
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
    case MatvecFormat::F32: return launch<F32Format>(a, 4 * a.cols, stream);
    case MatvecFormat::BF16: return launch<Bf16Format>(a, 2 * a.cols, stream);
    case MatvecFormat::FP8: return launch<Fp8Format>(a, a.cols, stream);
    case MatvecFormat::MXFP4: return launch<Mxfp4Format>(a, a.cols / 2, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace ferry::runtime::cuda
