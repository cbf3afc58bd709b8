// What one lane of the matrix-vector kernel (matvec.cu) computes, as functions that g++ compiles too, so that
// the CPU tests (tests/unit/test_cuda_math.cpp) run all 32 lanes of a warp on the host and compare the warp's
// sum with the CPU kernels: the decoding of a 16-byte chunk of each weight format (which value sits in which
// bits), its scale, the lane's chunks and their rotated order, the tile of tokens.
//
// Lane l takes the 16-byte chunks l, l + 32, ... of a row. It reads a chunk's inputs from shared memory as
// float4s in an order rotated by lane, so that the 8 lanes of a quarter-warp hit 8 different bank groups: in
// plain order a chunk of 16 FP8 or 32 FP4 values would put 4 or 8 lanes on the same banks. A chunk never
// straddles a scale block (16 | 128, 32 | 32): its products are summed, then scaled once.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "runtime/kernels/cuda/dtype_math.h"

// Unrolled in the device pass only: the host compiler (g++ under nvcc, or alone) knows no such pragma.
#if defined(__CUDA_ARCH__)
#define FERRY_UNROLL _Pragma("unroll")
#else
#define FERRY_UNROLL
#endif

namespace ferry::runtime::cuda {

enum class MatvecFormat : uint8_t { F32, BF16, FP8, MXFP4 };

// The whole stored tensor: rows of `cols` values; scales as the format has them.
struct WeightRows {
  const uint8_t* codes = nullptr;
  const uint8_t* scales = nullptr;  // FP8: [ceil(rows/128), ceil(cols/128)]; MXFP4: [rows, cols/32]
  int64_t cols = 0;
};

// 16 bytes of a weight row, as one load brings them.
struct alignas(16) Chunk {
  uint32_t w[4];
};

// A streaming load on the device: the weight is read once, so it should not displace what the cache holds.
FERRY_HD Chunk load_chunk(const uint8_t* p) {
#if defined(__CUDA_ARCH__)
  const uint4 v = __ldcs(reinterpret_cast<const uint4*>(p));
  return {{v.x, v.y, v.z, v.w}};
#else
  Chunk c;
  std::memcpy(&c, p, sizeof c);
  return c;
#endif
}

// Word i of a chunk by selection, not indexing: a dynamic index would put the chunk in local memory.
FERRY_HD uint32_t word(const Chunk& c, int i) { return i == 0 ? c.w[0] : i == 1 ? c.w[1] : i == 2 ? c.w[2] : c.w[3]; }

// Four consecutive inputs (16-byte aligned in shared memory on the device).
FERRY_HD void load4(const float* p, float v[4]) {
#if defined(__CUDA_ARCH__)
  const float4 x = *reinterpret_cast<const float4*>(p);
  v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
#else
  v[0] = p[0], v[1] = p[1], v[2] = p[2], v[3] = p[3];
#endif
}

// The group (of 4 values) a lane reads at step j of a chunk of `groups` groups: lane l's chunk starts at float4
// groups·l, and the 8 lanes of a quarter-warp then read float4s groups·l + g whose bank groups (mod 8) differ.
FERRY_HD int rotated_group(int j, int lane, int groups) { return (j + lane / (8 / groups)) % groups; }

// A format: kUnroll 16-byte loads in flight per lane (fewer for MXFP4, whose chunks hold 32 values each);
// kPerChunk values per 16 bytes, decoded 4 at a time (group g of kGroups); the scale of chunk c of a row; one
// value decoded alone (the path for rows that are not 16-byte aligned).
struct F32Format {
  static constexpr int kUnroll = 4, kPerChunk = 4, kGroups = 1;
  static constexpr bool kRoundsInput = false;
  FERRY_HD static int64_t row_bytes(int64_t cols) { return 4 * cols; }
  FERRY_HD static void decode(const Chunk& c, int, float v[4]) {
    for (int i = 0; i < 4; ++i) v[i] = float_from_bits(word(c, i));
  }
  FERRY_HD static float chunk_scale(const WeightRows&, int64_t, int64_t) { return 1.0f; }
  FERRY_HD static float value(const WeightRows& w, int64_t row, int64_t k) {
    uint32_t u;
    std::memcpy(&u, w.codes + 4 * (row * w.cols + k), sizeof u);
    return float_from_bits(u);
  }
};

struct Bf16Format {
  static constexpr int kUnroll = 4, kPerChunk = 8, kGroups = 2;
  static constexpr bool kRoundsInput = false;
  FERRY_HD static int64_t row_bytes(int64_t cols) { return 2 * cols; }
  FERRY_HD static void decode(const Chunk& c, int g, float v[4]) {
    const uint32_t lo = word(c, 2 * g), hi = word(c, 2 * g + 1);  // little-endian: the low half first
    v[0] = bf16_to_float(static_cast<uint16_t>(lo)), v[1] = bf16_to_float(static_cast<uint16_t>(lo >> 16));
    v[2] = bf16_to_float(static_cast<uint16_t>(hi)), v[3] = bf16_to_float(static_cast<uint16_t>(hi >> 16));
  }
  FERRY_HD static float chunk_scale(const WeightRows&, int64_t, int64_t) { return 1.0f; }
  FERRY_HD static float value(const WeightRows& w, int64_t row, int64_t k) {
    const uint8_t* p = w.codes + 2 * (row * w.cols + k);
    return bf16_to_float(static_cast<uint16_t>(p[0] | (p[1] << 8)));
  }
};

struct Fp8Format {
  static constexpr int kUnroll = 4, kPerChunk = 16, kGroups = 4;
  static constexpr bool kRoundsInput = false;
  static constexpr int64_t kBlock = 128;
  FERRY_HD static int64_t row_bytes(int64_t cols) { return cols; }
  FERRY_HD static void decode(const Chunk& c, int g, float v[4]) {
    const uint32_t b = word(c, g);
    for (int i = 0; i < 4; ++i) v[i] = e4m3_to_float(static_cast<uint8_t>(b >> (8 * i)));
  }
  FERRY_HD static float scale(const WeightRows& w, int64_t row, int64_t k) {
    const int64_t scale_cols = (w.cols + kBlock - 1) / kBlock;
    return e8m0_to_float(w.scales[(row / kBlock) * scale_cols + k / kBlock]);
  }
  FERRY_HD static float chunk_scale(const WeightRows& w, int64_t row, int64_t c) {
    return scale(w, row, c * kPerChunk);
  }
  FERRY_HD static float value(const WeightRows& w, int64_t row, int64_t k) {
    return mul_rn(e4m3_to_float(w.codes[row * w.cols + k]), scale(w, row, k));
  }
};

struct Mxfp4Format {
  static constexpr int kUnroll = 2, kPerChunk = 32, kGroups = 8;
  static constexpr bool kRoundsInput = true;
  static constexpr int64_t kBlock = 32;
  FERRY_HD static int64_t row_bytes(int64_t cols) { return cols / 2; }
  FERRY_HD static void decode(const Chunk& c, int g, float v[4]) {
    const uint32_t h = word(c, g / 2) >> (16 * (g % 2));  // values 4g .. 4g + 3: value 2i in byte i's low nibble
    for (int i = 0; i < 4; ++i) v[i] = e2m1_to_float(static_cast<uint8_t>((h >> (4 * i)) & 0xF));
  }
  FERRY_HD static float chunk_scale(const WeightRows& w, int64_t row, int64_t c) {
    return e8m0_to_float(w.scales[row * (w.cols / kBlock) + c]);
  }
  FERRY_HD static float value(const WeightRows& w, int64_t row, int64_t k) {
    const uint8_t byte = w.codes[row * (w.cols / 2) + k / 2];
    return mul_rn(e2m1_to_float(static_cast<uint8_t>(k % 2 ? byte >> 4 : byte & 0xF)),
                  e8m0_to_float(w.scales[row * (w.cols / kBlock) + k / kBlock]));
  }
};

// Lane `lane`'s share of row `row` against the tile of nt <= T tokens xs ([nt, cols]), 16-byte chunks: added to
// acc[t]. The row must start 16-byte aligned.
template <class F, int T>
FERRY_HD void lane_row_chunks(const WeightRows& w, int64_t row, const float* xs, int nt, int lane, float acc[T]) {
  const int64_t chunks = F::row_bytes(w.cols) / 16;
  const uint8_t* base = w.codes + row * F::row_bytes(w.cols);
  for (int64_t c0 = lane; c0 < chunks; c0 += 32 * F::kUnroll) {
    Chunk wv[F::kUnroll] = {};
    float sc[F::kUnroll] = {};
    FERRY_UNROLL
    for (int u = 0; u < F::kUnroll; ++u)
      if (c0 + 32 * u < chunks) {
        wv[u] = load_chunk(base + 16 * (c0 + 32 * u));
        sc[u] = F::chunk_scale(w, row, c0 + 32 * u);
      }
    FERRY_UNROLL
    for (int u = 0; u < F::kUnroll; ++u) {
      const int64_t c = c0 + 32 * u;
      if (c >= chunks) break;
      float part[T] = {};
      FERRY_UNROLL
      for (int j = 0; j < F::kGroups; ++j) {
        const int g = rotated_group(j, lane, F::kGroups);
        float v[4];
        F::decode(wv[u], g, v);
        const int64_t e = c * F::kPerChunk + 4 * g;
        FERRY_UNROLL
        for (int t = 0; t < T; ++t)
          if (t < nt) {
            float x[4];
            load4(xs + t * w.cols + e, x);
            part[t] = fmaf(v[0], x[0], fmaf(v[1], x[1], fmaf(v[2], x[2], fmaf(v[3], x[3], part[t]))));
          }
      }
      FERRY_UNROLL
      for (int t = 0; t < T; ++t) acc[t] = fmaf(part[t], sc[u], acc[t]);
    }
  }
}

// The same a value at a time, for rows that are not 16-byte aligned.
template <class F, int T>
FERRY_HD void lane_row_values(const WeightRows& w, int64_t row, const float* xs, int nt, int lane, float acc[T]) {
  for (int64_t k = lane; k < w.cols; k += 32) {
    const float v = F::value(w, row, k);
    FERRY_UNROLL
    for (int t = 0; t < T; ++t)
      if (t < nt) acc[t] = fmaf(v, xs[t * w.cols + k], acc[t]);
  }
}

}  // namespace ferry::runtime::cuda
