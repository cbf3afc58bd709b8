#include "runtime/kernels/cpu/matvec.h"
#include "runtime/kernels/cpu/matvec_fp8.h"
#include "runtime/kernels/cpu/matvec_rows.h"

#include <algorithm>
#include <array>
#include <string>
#include <vector>

#include "planner/core/dtype_codec.h"
#include "planner/core/error.h"

#ifdef FERRY_MATVEC_X86
// GCC 12 reports its own AVX-512 intrinsics' "undefined" placeholder registers as maybe uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace ferry::runtime::cpu {

namespace {

using detail::Fp8Rows;
using detail::kFp8Block;
constexpr int kMaxTile = detail::kFp8MaxTile;

// One weight row against a tile of T tokens x + t * x_stride: out[t] = row . x[t]. Each token's arithmetic is
// the same sequence whatever T is (T = 1 is the matvec), so its result does not depend on the tile; the tile
// only shares the decoding of the weight bytes among its tokens.
using Fp8Tile = void (*)(const uint8_t* w, const uint8_t* scales, int64_t cols, const float* x, int64_t x_stride,
                         float* out);

// ---- portable rows ----

template <int T>
void fp8_tile_portable(const uint8_t* w, const uint8_t* scales, int64_t cols, const float* x, int64_t x_stride,
                       float* out) {
  const core::Fp8DecodeTables& t = core::fp8_decode_tables();
  float total[T] = {};
  for (int64_t c0 = 0, b = 0; c0 < cols; c0 += kFp8Block, ++b) {
    const int64_t c1 = std::min(cols, c0 + kFp8Block);
    float s[T] = {};
    for (int64_t c = c0; c < c1; ++c) {
      const float v = t.e4m3[w[c]];
      for (int k = 0; k < T; ++k) s[k] += v * x[k * x_stride + c];
    }
    for (int k = 0; k < T; ++k) total[k] += s[k] * t.e8m0[scales[b]];
  }
  for (int k = 0; k < T; ++k) out[k] = total[k];
}

#ifdef FERRY_MATVEC_X86

// ---- AVX-512 rows ----

#define FERRY_FP8_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

// The AVX2 path's F16 bit patterns (matvec_fp8_avx2.cpp, F16Decode) into one register: lanes 0..7 its `lo`,
// 8..15 its `hi`.
FERRY_FP8_AVX512 inline __m512 fp8_decode16_512(const uint8_t* p) {
  const __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm512_cvtph_ps(_mm256_and_si256(_mm256_slli_epi16(w, 7), _mm256_set1_epi16(static_cast<short>(0xBF80))));
}

// fp8_hsum(lo + hi) of four accumulators (lo, hi: their low and high 8 lanes), one per lane, each by the same pairs
// of additions as fp8_hsum: lanes i and i+4, then 0 and 2 with 1 and 3, then those two. A block's end then costs a
// few shuffles per four rows instead of a reduction per row.
FERRY_FP8_AVX512 inline __m128 fp8_hsum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  // [lo + hi of a0 | of a1] and [... of a2 | of a3]
  const __m512 v01 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_f32x4(a0, a1, _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 v23 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_f32x4(a2, a3, _MM_SHUFFLE(3, 2, 3, 2)));
  // 128-bit lane r: lanes i + (i+4) of row r's eight
  const __m512 u = _mm512_add_ps(_mm512_shuffle_f32x4(v01, v23, _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_f32x4(v01, v23, _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 p = _mm512_add_ps(u, _mm512_shuffle_ps(u, u, _MM_SHUFFLE(3, 2, 3, 2)));  // 0 + 2, 1 + 3
  const __m512 h = _mm512_add_ps(p, _mm512_movehdup_ps(p));                             // (0 + 2) + (1 + 3)
  const __m512i lane0 = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  return _mm512_castps512_ps128(_mm512_permutexvar_ps(lane0, h));
}

constexpr int kFp8Rows = 4;  // rows per AVX-512 tile: each x load serves them all, and their FMA chains interleave

// R rows (`cols` apart, row i's scales at sc[i]) against T tokens: y[k * y_stride + i] = row i . x[k]. Each
// accumulator holds the AVX2 path's s0 in its low and s1 in its high lanes, and each block ends as there
// (fp8_block_total), so every row gets the AVX2 path's bits.
template <int R, int T>
FERRY_FP8_AVX512 void fp8_tile_avx512(const uint8_t* w, const uint8_t* const* sc, int64_t cols, const float* x,
                                      int64_t x_stride, float* y, int64_t y_stride) {
  const core::Fp8DecodeTables& t = core::fp8_decode_tables();
  float total[T][R] = {};
  __m128 total4[T];  // four rows: the totals kept in a register, lane i for row i
  for (int k = 0; k < T; ++k) total4[k] = _mm_setzero_ps();
  for (int64_t c0 = 0, b = 0; c0 < cols; c0 += kFp8Block, ++b) {
    const int64_t c1 = std::min(cols, c0 + kFp8Block);
    detail::fp8_prefetch<R>(w, cols, c0);
    __m512 acc[R][T];
    for (int i = 0; i < R; ++i)
      for (int k = 0; k < T; ++k) acc[i][k] = _mm512_setzero_ps();
    int64_t c = c0;
    for (; c + 16 <= c1; c += 16) {
      __m512 xv[T];
#pragma GCC unroll 4
      for (int k = 0; k < T; ++k) xv[k] = _mm512_loadu_ps(x + k * x_stride + c);
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        const __m512 wv = fp8_decode16_512(w + i * cols + c);
#pragma GCC unroll 4
        for (int k = 0; k < T; ++k) acc[i][k] = _mm512_fmadd_ps(wv, xv[k], acc[i][k]);
      }
    }
    if constexpr (R == 4) {
      if (c == c1) {  // a whole block, no tail: the four rows' ends at once
        const __m128 scale = _mm_setr_ps(t.e8m0[sc[0][b]], t.e8m0[sc[1][b]], t.e8m0[sc[2][b]], t.e8m0[sc[3][b]]);
        for (int k = 0; k < T; ++k) {
          const __m128 block = _mm_fmadd_ps(fp8_hsum4(acc[0][k], acc[1][k], acc[2][k], acc[3][k]), _mm_set1_ps(256.0f),
                                            _mm_setzero_ps());
          total4[k] = _mm_fmadd_ps(block, scale, total4[k]);
        }
        continue;
      }
      for (int k = 0; k < T; ++k) _mm_storeu_ps(total[k], total4[k]);
    }
    for (int i = 0; i < R; ++i) {
      for (int k = 0; k < T; ++k) {
        const __m256 lo = _mm512_castps512_ps256(acc[i][k]);
        const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[i][k]), 1));
        total[k][i] = detail::fp8_block_total(t, _mm256_add_ps(lo, hi), w + i * cols, x + k * x_stride, c, c1,
                                              t.e8m0[sc[i][b]], total[k][i]);
      }
    }
    if constexpr (R == 4)
      for (int k = 0; k < T; ++k) total4[k] = _mm_loadu_ps(total[k]);
  }
  if constexpr (R == 4)
    for (int k = 0; k < T; ++k) _mm_storeu_ps(total[k], total4[k]);
  for (int i = 0; i < R; ++i)
    for (int k = 0; k < T; ++k) y[k * y_stride + i] = total[k][i];
}

template <int T>
void fp8_rows_avx512(const uint8_t* w, const uint8_t* scales, int64_t scale_cols, int64_t r0, int64_t r1, int64_t cols,
                     const float* x, int64_t x_stride, float* y, int64_t y_stride) {
  const uint8_t* sc[kFp8Rows];
  int64_t r = r0;
  for (; r + kFp8Rows <= r1; r += kFp8Rows) {
    for (int i = 0; i < kFp8Rows; ++i) sc[i] = scales + ((r + i) / kFp8Block) * scale_cols;
    fp8_tile_avx512<kFp8Rows, T>(w + r * cols, sc, cols, x, x_stride, y + r, y_stride);
  }
  for (; r < r1; ++r) {
    sc[0] = scales + (r / kFp8Block) * scale_cols;
    fp8_tile_avx512<1, T>(w + r * cols, sc, cols, x, x_stride, y + r, y_stride);
  }
}

#undef FERRY_FP8_AVX512

#endif  // FERRY_MATVEC_X86

// The one-row tiles, a row at a time.
template <Fp8Tile tile, int T>
void fp8_rows_by_one(const uint8_t* w, const uint8_t* scales, int64_t scale_cols, int64_t r0, int64_t r1, int64_t cols,
                     const float* x, int64_t x_stride, float* y, int64_t y_stride) {
  for (int64_t r = r0; r < r1; ++r) {
    float out[T];
    tile(w + r * cols, scales + (r / kFp8Block) * scale_cols, cols, x, x_stride, out);
    for (int t = 0; t < T; ++t) y[t * y_stride + r] = out[t];
  }
}

using Fp8Kernels = std::array<Fp8Rows, kMaxTile>;  // by tokens in the tile, 1 … kMaxTile

bool fp8_has(CpuIsa isa) {
  if (isa == CpuIsa::Portable) return true;
#ifdef FERRY_MATVEC_X86
  __builtin_cpu_init();  // we may run before the runtime's own CPU detection
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (isa == CpuIsa::Avx2) return avx2;
  if (isa == CpuIsa::Avx512)
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
#endif
  return false;
}

const Fp8Kernels& fp8_kernels(CpuIsa isa) {
  FERRY_CHECK(fp8_has(isa), "FP8: the {} code path is not one this CPU has", isa_name(isa));
  static const Fp8Kernels portable = {
      fp8_rows_by_one<fp8_tile_portable<1>, 1>, fp8_rows_by_one<fp8_tile_portable<2>, 2>,
      fp8_rows_by_one<fp8_tile_portable<3>, 3>, fp8_rows_by_one<fp8_tile_portable<4>, 4>};
#ifdef FERRY_MATVEC_X86
  static const Fp8Kernels avx2 = {detail::fp8_avx2_rows[0], detail::fp8_avx2_rows[1], detail::fp8_avx2_rows[2],
                                  detail::fp8_avx2_rows[3]};
  static const Fp8Kernels avx512 = {fp8_rows_avx512<1>, fp8_rows_avx512<2>, fp8_rows_avx512<3>, fp8_rows_avx512<4>};
  if (isa == CpuIsa::Avx2) return avx2;
  if (isa == CpuIsa::Avx512) return avx512;
#endif
  return portable;
}

// The best FP8 path up to the MXFP4 one (FERRY_CPU_ISA): the AVX-512 and AVX2 paths give the same bits.
CpuIsa fp8_chosen() {
  static const CpuIsa isa = [] {
    const std::vector<CpuIsa> have = fp8_isas();
    CpuIsa best = CpuIsa::Portable;
    for (CpuIsa i : have)
      if (static_cast<int>(i) <= static_cast<int>(mxfp4_isa())) best = i;
    return best;
  }();
  return isa;
}

// Each tile of up to kMaxTile tokens passes over a range of rows small enough to stay in cache, so the weight
// comes from RAM once for all n tokens and its bytes are decoded once per tile. n = 1 is the matvec.
void run_fp8(CpuIsa isa, const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x, int64_t n,
             int64_t x_stride, float* y, int64_t y_stride) {
  detail::check_matvec_shape(rows, cols, "matvec_fp8");
  FERRY_CHECK(n >= 0, "matmul_fp8: negative token count");
  const Fp8Kernels& kernels = fp8_kernels(isa);
  const int64_t scale_cols = (cols + kFp8Block - 1) / kFp8Block;
#ifdef FERRY_MATVEC_X86
  if (isa == CpuIsa::Avx2 && n == 1) {  // x scaled once, for rows that read the weight bytes as floats directly
    const std::vector<float> xs = detail::fp8_avx2_scaled_x(x, cols);
    detail::for_each_row_range(rows, cols, [&](int64_t r0, int64_t r1) {
      detail::fp8_avx2_matvec_rows(w, scales, scale_cols, r0, r1, cols, x, xs.empty() ? nullptr : xs.data(), y);
    });
    return;
  }
#endif
  detail::for_each_row_range(rows, cols, [&](int64_t r0, int64_t r1) {
    for (int64_t t0 = 0; t0 < n; t0 += kMaxTile) {
      const int nt = static_cast<int>(std::min<int64_t>(kMaxTile, n - t0));
      kernels[size_t(nt - 1)](w, scales, scale_cols, r0, r1, cols, x + t0 * x_stride, x_stride, y + t0 * y_stride,
                              y_stride);
    }
  });
}

}  // namespace

void matvec_fp8(const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x, float* y) {
  run_fp8(fp8_chosen(), w, scales, rows, cols, x, 1, 0, y, 1);
}

void matmul_fp8(const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x, int64_t n,
                int64_t x_stride, float* y, int64_t y_stride) {
  run_fp8(fp8_chosen(), w, scales, rows, cols, x, n, x_stride, y, y_stride);
}

std::vector<CpuIsa> fp8_isas() {
  std::vector<CpuIsa> v;
  for (CpuIsa i : {CpuIsa::Portable, CpuIsa::Avx2, CpuIsa::Avx512})
    if (fp8_has(i)) v.push_back(i);
  return v;
}

const char* matvec_isa() { return isa_name(fp8_chosen()); }

namespace detail {

void matvec_fp8_portable(const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x,
                         float* y) {
  matmul_fp8_portable(w, scales, rows, cols, x, 1, 0, y, 1);
}

void matmul_fp8_portable(const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x, int64_t n,
                         int64_t x_stride, float* y, int64_t y_stride) {
  run_fp8(CpuIsa::Portable, w, scales, rows, cols, x, n, x_stride, y, y_stride);
}

void matvec_fp8_on(CpuIsa isa, const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x,
                   float* y) {
  run_fp8(isa, w, scales, rows, cols, x, 1, 0, y, 1);
}

void matmul_fp8_on(CpuIsa isa, const uint8_t* w, const uint8_t* scales, int64_t rows, int64_t cols, const float* x,
                   int64_t n, int64_t x_stride, float* y, int64_t y_stride) {
  run_fp8(isa, w, scales, rows, cols, x, n, x_stride, y, y_stride);
}

}  // namespace detail

}  // namespace ferry::runtime::cpu
