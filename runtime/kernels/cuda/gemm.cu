// The tensor-core GEMM of prefill chunks (kernels.h, launch_gemm): BF16, FP8 E4M3 (128×128 E8M0 blocks) and
// MXFP4 weights read in their stored encodings, a 128-row × 32-column tile at a time, decoded to BF16 in shared
// memory (exact: no dequantized copy anywhere); the inputs split into BF16 hi + lo; mma.sync m16n8k16 BF16 with
// fp32 accumulation, on every architecture from sm_80 (FP8 MMA on sm_89/90 would halve the weight's shared
// memory and skip the decode: a later step). The per-element work is gemm_math.h's, which the CPU test
// simulates block by block. One stage of shared memory: the next tile's global loads go to registers while the
// MMAs of this one run.
#include "runtime/kernels/cuda/gemm_math.h"
#include "runtime/kernels/cuda/kernels.h"

namespace ferry::runtime::cuda {

namespace {

__device__ __forceinline__ void mma_bf16(float d[4], const uint32_t a[4], const uint32_t b[2]) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Both k steps of a tile for the warp's tiles: the lo halves first, then the hi ones, into the partial sums.
// Token tiles past the block's nt (a chunk's last tile, a small group) are skipped: warp-uniform.
__device__ __forceinline__ void mma_tile(const uint16_t* sw, const uint16_t* sx_hi, const uint16_t* sx_lo, int warp,
                                         int lane, int nt, GemmAcc& part) {
#pragma unroll
  for (int kk = 0; kk < kGemmK; kk += 16) {
    uint32_t a[kGemmMTiles][4], bh[kGemmNTiles][2], bl[kGemmNTiles][2];
#pragma unroll
    for (int m = 0; m < kGemmMTiles; ++m) load_a_frag(sw, warp, lane, m, kk, a[m]);
#pragma unroll
    for (int n = 0; n < kGemmNTiles; ++n) {
      load_b_frag(sx_hi, warp, lane, n, kk, bh[n]);
      load_b_frag(sx_lo, warp, lane, n, kk, bl[n]);
    }
#pragma unroll
    for (int n = 0; n < kGemmNTiles; ++n)
      if (warp_token0(warp) + 8 * n < nt)
#pragma unroll
        for (int m = 0; m < kGemmMTiles; ++m) {
          mma_bf16(part.v[m][n], a[m], bl[n]);
          mma_bf16(part.v[m][n], a[m], bh[n]);
        }
  }
}

template <class F>
__global__ void __launch_bounds__(kGemmThreads) gemm_kernel(GemmArgs a) {
  __shared__ __align__(16) uint16_t sw[kGemmRows * kGemmStride];
  __shared__ __align__(16) uint16_t sx_hi[kGemmTokens * kGemmStride];
  __shared__ __align__(16) uint16_t sx_lo[kGemmTokens * kGemmStride];
  __shared__ float sscale[kGemmRows];
  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int tile = static_cast<int>(blockIdx.y);
  const GemmGroup& g = a.group[find_group(a.group, a.groups, tile)];
  const int64_t t0 = int64_t{tile - g.tile_begin} * kGemmTokens;
  const int nt = static_cast<int>(g.tokens - t0 < kGemmTokens ? g.tokens - t0 : kGemmTokens);
  const int64_t r0 = int64_t{blockIdx.x} * kGemmRows;
  const int64_t rows = a.rows - r0 < kGemmRows ? a.rows - r0 : kGemmRows;
  const float* x = a.x + (g.token_begin + t0) * a.x_stride;
  const WeightRows w{g.codes, g.scales, a.cols};

  GemmAcc acc = {}, part = {};
  WeightPart<F> wp;
  InputPart xp;
  load_weight_part<F>(w, g.row_begin + r0, rows, 0, tid, wp);
  load_input_part(x, a.x_stride, nt, 0, tid, xp);
  for (int64_t k0 = 0; k0 < a.cols; k0 += kGemmK) {
    __syncthreads();  // the previous tile's MMAs are done with shared memory
    store_weight_part<F>(wp, tid, sw, sscale);
    bool finite = true;
    float amax = 0;
    if (F::kRoundsInput) {
      amax = input_part_amax(xp, finite);
      amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, 1));
      finite = finite && __shfl_xor_sync(0xFFFFFFFFu, finite, 1);
    }
    store_input_part(xp, F::kRoundsInput, amax, finite, a.bits, tid, sx_hi, sx_lo);
    __syncthreads();
    if (k0 + kGemmK < a.cols) {
      load_weight_part<F>(w, g.row_begin + r0, rows, k0 + kGemmK, tid, wp);
      load_input_part(x, a.x_stride, nt, k0 + kGemmK, tid, xp);
    }
    mma_tile(sw, sx_hi, sx_lo, warp, lane, nt, part);
    if (closes_block<F>(k0 + kGemmK, a.cols)) flush_partial(part, acc, sscale, warp, lane);
  }
  store_acc(acc, warp, lane, r0, a.rows, nt, a.y + (g.token_begin + t0) * a.y_stride, a.y_stride);
}

}  // namespace

cudaError_t launch_gemm(const GemmArgs& a, cudaStream_t stream) {
  if (a.rows == 0 || a.tiles == 0) return cudaSuccess;
  if (a.groups < 1 || a.groups > kGemmMaxGroups || a.tiles > 65535 || a.cols % kGemmK != 0 || a.cols <= 0)
    return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>((a.rows + kGemmRows - 1) / kGemmRows), static_cast<unsigned>(a.tiles));
  switch (a.format) {
    case MatvecFormat::BF16: gemm_kernel<GemmBf16><<<grid, kGemmThreads, 0, stream>>>(a); break;
    case MatvecFormat::FP8: gemm_kernel<GemmFp8><<<grid, kGemmThreads, 0, stream>>>(a); break;
    case MatvecFormat::MXFP4: gemm_kernel<GemmMxfp4><<<grid, kGemmThreads, 0, stream>>>(a); break;
    case MatvecFormat::F32: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace ferry::runtime::cuda
