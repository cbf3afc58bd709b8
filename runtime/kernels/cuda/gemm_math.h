// What the tensor-core GEMM (gemm.cu) computes, as functions that g++ compiles too, so that the CPU test
// (tests/unit/test_cuda_math_gemm.cpp) runs a block's tiling on the host, lane by lane, with the MMA emulated:
// the loads of a weight tile and an input tile, the decoding of each weight format into BF16 codes in shared
// memory, the split of each input into two BF16 halves, the fragment maps of mma.sync m16n8k16, the per-block
// scaling of the partial sums, and where each output goes.
//
// Y[t, r] = sum_k W[r, k]·X[t, k] is computed as D = A·B with A = W (M = weight rows, row-major: the stored
// layout) and B = Xᵀ (N = tokens, "col": each token's k contiguous, as the activations lie). Accuracy: every
// stored weight value (BF16, E4M3, E2M1) is exact in BF16; the block scales (E8M0, powers of two) multiply the
// fp32 partial sum of their block instead. An fp32 input x is x_hi + x_lo with x_hi = bf16(x) and x_lo =
// bf16(x − x_hi), within 2^-16·|x| of x; two MMAs (lo first, then hi) into one fp32 accumulator. An MXFP4 input,
// rounded per 32-block to the activation grid first, is exact in hi + lo at 8 and 16 bits (q·2^k with |q| <
// 2^15: hi takes the top 8 bits, the remainder has at most 7) and within 2^-16 at 24 bits.
#pragma once

#include <cstdint>
#include <cstring>

#include "runtime/kernels/cuda/dtype_math.h"
#include "runtime/kernels/cuda/kv_math.h"
#include "runtime/kernels/cuda/matvec_math.h"

namespace ferry::runtime::cuda {

// A block: 128 weight rows × 64 tokens, k in tiles of 32; 4 warps, each 64 rows × 32 tokens (4 × 4 MMA tiles
// of 16 × 8). Shared rows are padded to 40 BF16 (80 bytes, 20 banks): the 8 rows of a fragment load start on
// banks 0, 20, 8, 28, 16, 4, 24, 12, so the 32 lanes' words fall on 32 different banks.
constexpr int kGemmRows = 128, kGemmTokens = 64, kGemmK = 32;
constexpr int kGemmWarps = 4, kGemmThreads = 32 * kGemmWarps;
constexpr int kGemmWarpRows = 64, kGemmWarpTokens = 32;
constexpr int kGemmMTiles = kGemmWarpRows / 16, kGemmNTiles = kGemmWarpTokens / 8;
constexpr int kGemmStride = 40;

// The fp32 values a lane holds for its warp's 4 × 4 MMA tiles, 4 each.
struct GemmAcc {
  float v[kGemmMTiles][kGemmNTiles][4];
};

// ---- weight formats: one 32-column tile of 128 rows, as 16-byte chunks ----

// kChunks 16-byte chunks a row of a tile (so a thread's share of the 128 rows), kValues values a chunk, kBlockK
// columns a scale block (BF16 has none: 128 bounds the fp32 accumulation chains as FP8's blocks do).
struct GemmBf16 : Bf16Format {
  static constexpr int kChunks = 4, kValues = 8;
  static constexpr int64_t kBlockK = 128;
  FERRY_HD static uint16_t code(const Chunk& c, int i) {
    return static_cast<uint16_t>(word(c, i / 2) >> (16 * (i % 2)));
  }
  FERRY_HD static float tile_scale(const WeightRows&, int64_t, int64_t) { return 1.0f; }
};

// E4M3 in a float has its value's 3 mantissa bits at the top (subnormals become normals): the upper half of
// the float is its exact BF16 code.
struct GemmFp8 : Fp8Format {
  static constexpr int kChunks = 2, kValues = 16;
  static constexpr int64_t kBlockK = 128;
  FERRY_HD static uint16_t code(const Chunk& c, int i) {
    return static_cast<uint16_t>(bits_of_float(e4m3_to_float(static_cast<uint8_t>(word(c, i / 4) >> (8 * (i % 4))))) >>
                                 16);
  }
  FERRY_HD static float tile_scale(const WeightRows& w, int64_t row, int64_t k0) { return scale(w, row, k0); }
};

struct GemmMxfp4 : Mxfp4Format {
  static constexpr int kChunks = 1, kValues = 32;
  static constexpr int64_t kBlockK = 32;
  FERRY_HD static uint16_t code(const Chunk& c, int i) {
    const uint8_t nibble = static_cast<uint8_t>((word(c, i / 8) >> (4 * (i % 8))) & 0xF);  // value 2j: low nibble
    return static_cast<uint16_t>(bits_of_float(e2m1_to_float(nibble)) >> 16);
  }
  FERRY_HD static float tile_scale(const WeightRows& w, int64_t row, int64_t k0) {
    return chunk_scale(w, row, k0 / 32);
  }
};

// ---- the tiles' loads: global memory into registers (for the next tile, while this one computes), then
// decoded into shared memory ----

// A thread's chunks of the weight tile: chunk tid + 128·i is row (tid + 128·i) / kChunks, part % kChunks; the
// scale of row tid. Rows past the view load nothing (zeros).
template <class F>
struct WeightPart {
  Chunk c[F::kChunks];
  float scale;
};

// A weight tile's 16 bytes through the caches: the blocks of the other token tiles read the same tile (unlike
// the matrix-vector kernel's streaming loads, load_chunk).
FERRY_HD Chunk load_tile_chunk(const uint8_t* p) {
#if defined(__CUDA_ARCH__)
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
  return {{v.x, v.y, v.z, v.w}};
#else
  return load_chunk(p);
#endif
}

template <class F>
FERRY_HD void load_weight_part(const WeightRows& w, int64_t row0, int64_t rows, int64_t k0, int tid, WeightPart<F>& p) {
  FERRY_UNROLL
  for (int i = 0; i < F::kChunks; ++i) {
    const int c = tid + kGemmThreads * i, r = c / F::kChunks, part = c % F::kChunks;
    p.c[i] = Chunk{};
    if (r < rows)
      p.c[i] = load_tile_chunk(w.codes + (row0 + r) * F::row_bytes(w.cols) + F::row_bytes(k0 + part * F::kValues));
  }
  p.scale = tid < rows ? F::tile_scale(w, row0 + tid, k0) : 0.0f;
}

// n (a multiple of 8) BF16 codes, packed in pairs, to 16-byte aligned shared memory: 16-byte stores.
FERRY_HD void store_codes(uint16_t* dst, const uint32_t* pairs, int n) {
  for (int i = 0; i < n / 8; ++i) {
#if defined(__CUDA_ARCH__)
    reinterpret_cast<uint4*>(dst)[i] = make_uint4(pairs[4 * i], pairs[4 * i + 1], pairs[4 * i + 2], pairs[4 * i + 3]);
#else
    std::memcpy(dst + 8 * i, pairs + 4 * i, 16);
#endif
  }
}

template <class F>
FERRY_HD void store_weight_part(const WeightPart<F>& p, int tid, uint16_t* sw, float* sscale) {
  FERRY_UNROLL
  for (int i = 0; i < F::kChunks; ++i) {
    const int c = tid + kGemmThreads * i, r = c / F::kChunks, part = c % F::kChunks;
    uint32_t pairs[F::kValues / 2];
    FERRY_UNROLL
    for (int j = 0; j < F::kValues / 2; ++j)
      pairs[j] = F::code(p.c[i], 2 * j) | static_cast<uint32_t>(F::code(p.c[i], 2 * j + 1)) << 16;
    store_codes(sw + r * kGemmStride + part * F::kValues, pairs, F::kValues);
  }
  sscale[tid] = p.scale;
}

// A thread's 16 inputs of the input tile: token tid / 2, columns 16·(tid % 2) .. + 15 of the tile, so that a
// lane pair holds one MXFP4 rounding block (32 columns; tiles start at multiples of 32). Tokens past the tile's
// nt are zeros.
constexpr int kGemmInputs = kGemmTokens * kGemmK / kGemmThreads;
struct InputPart {
  float v[kGemmInputs];
};

FERRY_HD void load_input_part(const float* x, int64_t x_stride, int nt, int64_t k0, int tid, InputPart& p) {
  const int t = tid / 2;
  const float* src = x + t * x_stride + k0 + kGemmInputs * (tid % 2);
  FERRY_UNROLL
  for (int i = 0; i < kGemmInputs; ++i) p.v[i] = t < nt ? src[i] : 0.0f;
}

// The largest |v| of a thread's inputs and whether all are finite: the pair's, combined, is its block's.
FERRY_HD float input_part_amax(const InputPart& p, bool& finite) {
  float amax = 0;
  finite = true;
  for (int i = 0; i < kGemmInputs; ++i) {
    const float a = abs_f(p.v[i]);
    finite = finite && a <= 3.4028234663852886e38f;
    amax = a > amax ? a : amax;
  }
  return amax;
}

// hi = bf16(x), lo = bf16(x − hi) (exact in float: x − hi is below hi's last bit); a non-finite x or hi keeps its
// value in hi, lo 0 (so that inf·w is inf, as on the CPU, not inf − inf).
struct HiLo {
  uint16_t hi, lo;
};
FERRY_HD HiLo split_hi_lo(float x) {
  const uint16_t hi = float_to_bf16_rn(x);
  const float h = bf16_to_float(hi);
  if (!(abs_f(h) <= 3.4028234663852886e38f)) return {hi, 0};
  return {hi, float_to_bf16_rn(sub_rn(x, h))};
}

// Rounds the inputs to the MXFP4 grid (a block holding inf or NaN, or all zeros, is left as it is, as the
// matrix-vector kernel leaves it) when the format asks, splits them and stores both halves.
FERRY_HD void store_input_part(const InputPart& p, bool rounds, float block_amax, bool block_finite, int bits, int tid,
                               uint16_t* sx_hi, uint16_t* sx_lo) {
  const bool round = rounds && block_finite && block_amax > 0;
  const int k = round ? activation_exponent(block_amax, bits) : 0;
  uint32_t hi[kGemmInputs / 2], lo[kGemmInputs / 2];
  FERRY_UNROLL
  for (int i = 0; i < kGemmInputs / 2; ++i) {
    const HiLo a = split_hi_lo(round ? activation_round(p.v[2 * i], k) : p.v[2 * i]);
    const HiLo b = split_hi_lo(round ? activation_round(p.v[2 * i + 1], k) : p.v[2 * i + 1]);
    hi[i] = a.hi | static_cast<uint32_t>(b.hi) << 16, lo[i] = a.lo | static_cast<uint32_t>(b.lo) << 16;
  }
  const int base = (tid / 2) * kGemmStride + kGemmInputs * (tid % 2);
  store_codes(sx_hi + base, hi, kGemmInputs);
  store_codes(sx_lo + base, lo, kGemmInputs);
}

// ---- mma.sync m16n8k16 fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16") ----

// Lane l is (group l / 4, thread-in-group l % 4). Register i of A holds two consecutive BF16 of row
// group + 8·(i % 2), columns 2·tig + 8·(i / 2); register i of B two of token group, k 2·tig + 8·i; value i of C
// row group + 8·(i / 2), token 2·tig + i % 2.
struct FragPos {
  int row, col;
};
FERRY_HD FragPos a_frag_pos(int lane, int reg) { return {lane / 4 + 8 * (reg % 2), 2 * (lane % 4) + 8 * (reg / 2)}; }
FERRY_HD FragPos b_frag_pos(int lane, int reg) { return {lane / 4, 2 * (lane % 4) + 8 * reg}; }
FERRY_HD FragPos c_frag_pos(int lane, int i) { return {lane / 4 + 8 * (i / 2), 2 * (lane % 4) + i % 2}; }

// Two consecutive BF16 of shared memory as one register (the lower column in the low half).
FERRY_HD uint32_t load_pair(const uint16_t* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const uint32_t*>(p);
#else
  uint32_t u;
  std::memcpy(&u, p, sizeof u);
  return u;
#endif
}

// Warp `warp`'s rows start at 64·(warp / 2) of the block's, its tokens at 32·(warp % 2).
FERRY_HD int warp_row0(int warp) { return kGemmWarpRows * (warp / 2); }
FERRY_HD int warp_token0(int warp) { return kGemmWarpTokens * (warp % 2); }

// The A fragment of MMA row tile m at k step kk (0 or 16) of the tile; the B fragment of token tile n.
FERRY_HD void load_a_frag(const uint16_t* sw, int warp, int lane, int m, int kk, uint32_t a[4]) {
  FERRY_UNROLL
  for (int i = 0; i < 4; ++i) {
    const FragPos p = a_frag_pos(lane, i);
    a[i] = load_pair(sw + (warp_row0(warp) + 16 * m + p.row) * kGemmStride + kk + p.col);
  }
}
FERRY_HD void load_b_frag(const uint16_t* sx, int warp, int lane, int n, int kk, uint32_t b[2]) {
  FERRY_UNROLL
  for (int i = 0; i < 2; ++i) {
    const FragPos p = b_frag_pos(lane, i);
    b[i] = load_pair(sx + (warp_token0(warp) + 8 * n + p.row) * kGemmStride + kk + p.col);
  }
}

// Whether the tile ending at column k_end closes a scale block (or the row).
template <class F>
FERRY_HD bool closes_block(int64_t k_end, int64_t cols) {
  return k_end % F::kBlockK == 0 || k_end == cols;
}

// acc += partial·scale of its row (a power of two: exact), partial ← 0.
FERRY_HD void flush_partial(GemmAcc& partial, GemmAcc& acc, const float* sscale, int warp, int lane) {
  FERRY_UNROLL
  for (int m = 0; m < kGemmMTiles; ++m) FERRY_UNROLL
  for (int i = 0; i < 4; ++i) {
    const float s = sscale[warp_row0(warp) + 16 * m + c_frag_pos(lane, i).row];
    FERRY_UNROLL
    for (int n = 0; n < kGemmNTiles; ++n) {
      acc.v[m][n][i] = add_rn(acc.v[m][n][i], mul_rn(partial.v[m][n][i], s));
      partial.v[m][n][i] = 0.0f;
    }
  }
}

// ---- groups: LinearGrouped's experts in one launch ----

// One group: its weight (the whole tensor; rows from row_begin), its tokens [token_begin, + tokens) of x and y,
// and its first 64-token tile in the launch's grid.y.
struct GemmGroup {
  const uint8_t* codes = nullptr;
  const uint8_t* scales = nullptr;
  int64_t row_begin = 0, token_begin = 0;
  int32_t tokens = 0, tile_begin = 0;
};

// The group of token tile `tile`: the last whose tile_begin is <= tile.
FERRY_HD int find_group(const GemmGroup* groups, int count, int tile) {
  int g = 0;
  while (g + 1 < count && groups[g + 1].tile_begin <= tile) ++g;
  return g;
}

// Lane `lane` of warp `warp` writes its values of its warp's tiles: y[token·y_stride + row] for the block's
// rows from row0 (of `rows`) and tokens (of nt).
FERRY_HD void store_acc(const GemmAcc& acc, int warp, int lane, int64_t row0, int64_t rows, int nt, float* y,
                        int64_t y_stride) {
  FERRY_UNROLL
  for (int m = 0; m < kGemmMTiles; ++m) FERRY_UNROLL
  for (int n = 0; n < kGemmNTiles; ++n) FERRY_UNROLL
  for (int i = 0; i < 4; ++i) {
    const FragPos p = c_frag_pos(lane, i);
    const int64_t r = row0 + warp_row0(warp) + 16 * m + p.row;
    const int t = warp_token0(warp) + 8 * n + p.col;
    if (r < rows && t < nt) y[t * y_stride + r] = acc.v[m][n][i];
  }
}

}  // namespace ferry::runtime::cuda
