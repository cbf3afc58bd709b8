// The FP8 kernels' shared pieces (matvec.cpp: dispatch, portable and AVX-512 rows; matvec_fp8_avx2.cpp: AVX2
// rows): the row-range signature, the prefetch ahead of a tile of rows, and the end of a 128-column block,
// which every vector path shares so that they all give the same bits.
#pragma once

#include <cstdint>
#include <vector>

#include "planner/core/dtype_codec.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FERRY_MATVEC_X86 1
#endif

namespace ferry::runtime::cpu::detail {

constexpr int64_t kFp8Block = 128;  // FP8: one E8M0 scale per 128x128 tile
constexpr int kFp8MaxTile = 4;      // tokens per pass of the multi-token kernels

// Rows [r0, r1) against a tile of T tokens: y[t * y_stride + r] for t < T, r in the range.
using Fp8Rows = void (*)(const uint8_t* w, const uint8_t* scales, int64_t scale_cols, int64_t r0, int64_t r1,
                         int64_t cols, const float* x, int64_t x_stride, float* y, int64_t y_stride);

#ifdef FERRY_MATVEC_X86

constexpr int64_t kFp8PrefetchAhead = 2048;  // bytes
// Tiles up to this size (rows up to 2048 columns) prefetch the next tile as one run; longer rows gain nothing
// from it (3072 columns) or lose (4096: the run sits a whole tile ahead of the rows being read).
constexpr int64_t kFp8ShortTileBytes = 8 << 10;

// Software prefetch for a tile of R rows `cols` apart (and the tile after it, which starts R rows on), at the
// block starting at column c0: the hardware prefetchers stop at 4 KiB pages, and without this the kernels wait
// on DRAM latency.
template <int R>
inline void fp8_prefetch(const uint8_t* w, int64_t cols, int64_t c0) {
  if (R > 1 && R * cols <= kFp8ShortTileBytes) {
    // Short rows: the tile is one run of R·cols bytes, and the next tile the run after it. Each block
    // prefetches R·128 bytes of the next run in address order, so that the whole of it is requested during
    // this tile as one sequential stream (one core: 16 GB/s for 1024-column rows, against 10 with the
    // per-row streams below, whose requests jump a row apart).
    const uint8_t* next = w + R * cols + R * c0;
#pragma GCC unroll 8
    for (int i = 0; i < 2 * R; ++i) _mm_prefetch(reinterpret_cast<const char*>(next + 64 * i), _MM_HINT_T0);
  } else {
    // Each row's stream kFp8PrefetchAhead bytes ahead; past its row's end, into the row the next tile starts
    // with, R rows on (one row: the bytes right after it).
    const int64_t ahead = c0 + kFp8PrefetchAhead + (c0 + kFp8PrefetchAhead < cols ? 0 : (R - 1) * cols);
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(w + i * cols + ahead), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(w + i * cols + ahead + 64), _MM_HINT_T0);
    }
  }
}

__attribute__((target("avx2,fma"))) inline float fp8_hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One rounding, a * b + c: the block sums below are fused multiply-adds, and each path says so explicitly so that
// they all give the same bits.
__attribute__((target("avx2,fma"))) inline float fp8_fmadd(float a, float b, float c) {
  return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)));
}

// The end of a 128-column block for one row and token: `v` the 8 lanes of its vector steps (each lane value *
// 2^-8 times x summed; + its lanes 8..15 for AVX-512), then the columns past the last whole 16-column step from
// the exact table, then the block scale. The tables are passed in: a call to fetch them here would make the
// caller spill its registers.
__attribute__((target("avx2,fma"))) inline float fp8_block_total(const core::Fp8DecodeTables& t, __m256 v,
                                                                 const uint8_t* w, const float* x, int64_t c,
                                                                 int64_t c1, float scale, float total) {
  float tail = 0.0f;
  for (int64_t i = c; i < c1; ++i) tail = fp8_fmadd(t.e4m3[w[i]], x[i], tail);
  const float block = fp8_fmadd(fp8_hsum(v), 256.0f, tail);  // undo the 2^-8 of the vector steps
  return fp8_fmadd(block, scale, total);
}

// The AVX2 rows for tiles of T = 1 … kFp8MaxTile tokens (fp8_avx2_rows[T - 1]).
extern const Fp8Rows fp8_avx2_rows[kFp8MaxTile];

// One token's rows [r0, r1) on AVX2, y[r] = row r . x, with `xs` fp8_avx2_scaled_x's copy of x (null when it
// gave none): the rows then read the weight bytes as floats with integer operations alone, otherwise as
// fp8_avx2_rows[0] does; the bits are the same either way.
void fp8_avx2_matvec_rows(const uint8_t* w, const uint8_t* scales, int64_t scale_cols, int64_t r0, int64_t r1,
                          int64_t cols, const float* x, const float* xs, float* y);
// x * 2^112, or nothing when some |x[i]| >= 2^16 or is not a number (the copy would not be x exactly scaled).
std::vector<float> fp8_avx2_scaled_x(const float* x, int64_t cols);

#endif  // FERRY_MATVEC_X86

}  // namespace ferry::runtime::cpu::detail
