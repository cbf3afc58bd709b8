// The AVX2 FP8 rows (matvec.cpp dispatches to them). Every row keeps one order of float operations: per
// 128-column block, lane j of s0 sums the columns c + j and lane j of s1 the columns c + 8 + j of each 16-column
// step, then fp8_block_total's additions (below four sums at once, by the same pairs). So a row's bits depend
// neither on the tile, the token count nor the decode, and the AVX-512 rows (matvec.cpp) give them too.
//
// One token (decode: memory-bound) reads each row as one sequential stream, with two blocks in flight for
// independent multiply-add chains, and its bytes become floats by integer operations (BitsDecode). Tiles of
// several rows, which share each load of x, run faster in cache but read DRAM slower here (Zen 3, two cores:
// 4 rows of 1024 columns 13 GB/s, one row 20), so only the multi-token tiles use them: their rows come from cache.
#include "runtime/kernels/cpu/matvec_fp8.h"

#ifdef FERRY_MATVEC_X86

#include <cmath>

namespace ferry::runtime::cpu::detail {

namespace {

#define FERRY_FP8_AVX2 __attribute__((target("avx2,fma,f16c")))

// Sixteen E4M3 bytes to floats holding value * 2^-8, through F16: E4M3 is F16 with the exponent bias 7 instead
// of 15 and 3 mantissa bits instead of 10, so (sign << 15) | (magnitude << 7) is an F16 holding value * 2^-8,
// subnormals included. F16C then converts to float exactly; every result is a normal float. The byte
// sign-extended to 16 bits and shifted left 7 has the sign in bits 15 and 14, and the mask clears bit 14.
struct F16Decode {
  FERRY_FP8_AVX2 static void decode(const uint8_t* p, __m256& lo, __m256& hi) {
    const __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m256i h = _mm256_and_si256(_mm256_slli_epi16(w, 7), _mm256_set1_epi16(static_cast<short>(0xBF80)));
    lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
    hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
  }
};

// Sixteen E4M3 bytes to floats holding value * 2^-120, by integer operations alone: (sign << 31) | (magnitude
// << 20) puts E4M3's exponent and mantissa at the bottom of float's, which is value * 2^-120 for every code,
// the subnormal ones as float subnormals. Against x * 2^112 each product is the same real number as
// F16Decode's against x, so each fused multiply-add rounds to the same float, without F16C's two conversions a
// step (they take the FMA ports on Zen 3). It needs |x| < 2^16 and subnormal inputs read as such (no DAZ).
struct BitsDecode {
  FERRY_FP8_AVX2 static void decode(const uint8_t* p, __m256& lo, __m256& hi) {
    const __m256i mask = _mm256_set1_epi32(static_cast<int>(0x87F00000u));
    const __m256i a = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    const __m256i b = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8)));
    lo = _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(a, 20), mask));
    hi = _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(b, 20), mask));
  }
};

// fp8_hsum(v0) … fp8_hsum(v3) in lanes 0 … 3, each by its pairs: lanes i and i + 4, then 0 + 2 with 1 + 3, then those.
FERRY_FP8_AVX2 inline __m128 hsum4(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
  // [v0's lanes i + (i+4) | v1's] and [v2's | v3's]
  const __m256 a01 = _mm256_add_ps(_mm256_permute2f128_ps(v0, v1, 0x20), _mm256_permute2f128_ps(v0, v1, 0x31));
  const __m256 a23 = _mm256_add_ps(_mm256_permute2f128_ps(v2, v3, 0x20), _mm256_permute2f128_ps(v2, v3, 0x31));
  // 0 + 2 and 1 + 3: v0's and v2's in the low 128 bits, v1's and v3's in the high
  const __m256 p = _mm256_add_ps(_mm256_shuffle_ps(a01, a23, _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm256_shuffle_ps(a01, a23, _MM_SHUFFLE(3, 2, 3, 2)));
  const __m256 h =
      _mm256_add_ps(_mm256_shuffle_ps(p, p, _MM_SHUFFLE(2, 0, 2, 0)), _mm256_shuffle_ps(p, p, _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm_unpacklo_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// A tile: R rows `cols` apart (row i's scales at sc[i]), B consecutive 128-column blocks of each at a time, T
// tokens xs + k * x_stride; its sums s0, s1 of row i, block j, token k at (j * R + i) * T + k.

// The 16-column steps over [c, c_end) of the tile's first block and the same columns of the B - 1 after it,
// into new sums.
template <class Decode, int R, int B, int T>
FERRY_FP8_AVX2 inline void fp8_steps(const uint8_t* w, int64_t cols, const float* xs, int64_t x_stride, int64_t c,
                                     int64_t c_end, __m256* s0, __m256* s1) {
  for (int n = 0; n < R * B * T; ++n) s0[n] = s1[n] = _mm256_setzero_ps();
  for (; c < c_end; c += 16) {
#pragma GCC unroll 4
    for (int j = 0; j < B; ++j) {
      const int64_t cj = c + j * kFp8Block;
      __m256 x0[T], x1[T];
      for (int k = 0; k < T; ++k) {
        x0[k] = _mm256_loadu_ps(xs + k * x_stride + cj);
        x1[k] = _mm256_loadu_ps(xs + k * x_stride + cj + 8);
      }
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        __m256 lo, hi;
        Decode::decode(w + i * cols + cj, lo, hi);
#pragma GCC unroll 4
        for (int k = 0; k < T; ++k) {
          const int n = (j * R + i) * T + k;
          s0[n] = _mm256_fmadd_ps(lo, x0[k], s0[n]);
          s1[n] = _mm256_fmadd_ps(hi, x1[k], s1[n]);
        }
      }
    }
  }
}

// B whole blocks from column c0 (block b): the steps, then each block's end in column order, as fp8_block_total
// with no tail, four rows or tokens at a time. total[i * T + k]: row i's for token k.
template <class Decode, int R, int B, int T>
FERRY_FP8_AVX2 inline void fp8_blocks(const core::Fp8DecodeTables& t, const uint8_t* w, const uint8_t* const* sc,
                                      int64_t cols, const float* xs, int64_t x_stride, int64_t c0, int64_t b,
                                      float* total) {
  constexpr int N = R * T;
  for (int j = 0; j < B; ++j) fp8_prefetch<R>(w, cols, c0 + j * kFp8Block);
  __m256 s0[B * N], s1[B * N];
  fp8_steps<Decode, R, B, T>(w, cols, xs, x_stride, c0, c0 + kFp8Block, s0, s1);
  for (int j = 0; j < B; ++j) {
    float scale[N];
    for (int i = 0; i < R; ++i)
      for (int k = 0; k < T; ++k) scale[i * T + k] = t.e8m0[sc[i][b + j]];
    const __m256* a0 = s0 + j * N;
    const __m256* a1 = s1 + j * N;
    int n = 0;
    for (; n + 4 <= N; n += 4) {
      const __m128 h = hsum4(_mm256_add_ps(a0[n], a1[n]), _mm256_add_ps(a0[n + 1], a1[n + 1]),
                             _mm256_add_ps(a0[n + 2], a1[n + 2]), _mm256_add_ps(a0[n + 3], a1[n + 3]));
      const __m128 block = _mm_fmadd_ps(h, _mm_set1_ps(256.0f), _mm_setzero_ps());  // fp8_block_total's, tail 0
      _mm_storeu_ps(total + n, _mm_fmadd_ps(block, _mm_loadu_ps(scale + n), _mm_loadu_ps(total + n)));
    }
    for (; n < N; ++n)
      total[n] = fp8_block_total(t, _mm256_add_ps(a0[n], a1[n]), nullptr, nullptr, 0, 0, scale[n], total[n]);
  }
}

// The tile against its T tokens: y[k * y_stride + i] = row i . x[k]. The steps read xs, x as Decode needs it;
// the columns past the last whole step read x.
template <class Decode, int R, int B, int T>
FERRY_FP8_AVX2 void fp8_tile(const uint8_t* w, const uint8_t* const* sc, int64_t cols, const float* x, const float* xs,
                             int64_t x_stride, float* y, int64_t y_stride) {
  constexpr int N = R * T;
  const core::Fp8DecodeTables& t = core::fp8_decode_tables();
  float total[N] = {};
  int64_t c0 = 0, b = 0;
  for (; c0 + B * kFp8Block <= cols; c0 += B * kFp8Block, b += B)
    fp8_blocks<Decode, R, B, T>(t, w, sc, cols, xs, x_stride, c0, b, total);
  for (; c0 + kFp8Block <= cols; c0 += kFp8Block, ++b)
    fp8_blocks<Decode, R, 1, T>(t, w, sc, cols, xs, x_stride, c0, b, total);
  if (c0 < cols) {  // a partial last block
    __m256 s0[N], s1[N];
    const int64_t c = c0 + (cols - c0) / 16 * 16;
    fp8_steps<Decode, R, 1, T>(w, cols, xs, x_stride, c0, c, s0, s1);
    for (int i = 0; i < R; ++i)
      for (int k = 0; k < T; ++k)
        total[i * T + k] = fp8_block_total(t, _mm256_add_ps(s0[i * T + k], s1[i * T + k]), w + i * cols,
                                           x + k * x_stride, c, cols, t.e8m0[sc[i][b]], total[i * T + k]);
  }
  for (int i = 0; i < R; ++i)
    for (int k = 0; k < T; ++k) y[k * y_stride + i] = total[i * T + k];
}

// Rows [r0, r1) in tiles of R, the rest one at a time.
template <class Decode, int R, int B, int T>
void fp8_rows(const uint8_t* w, const uint8_t* scales, int64_t scale_cols, int64_t r0, int64_t r1, int64_t cols,
              const float* x, const float* xs, int64_t x_stride, float* y, int64_t y_stride) {
  const uint8_t* sc[R];
  int64_t r = r0;
  for (; r + R <= r1; r += R) {
    for (int i = 0; i < R; ++i) sc[i] = scales + ((r + i) / kFp8Block) * scale_cols;
    fp8_tile<Decode, R, B, T>(w + r * cols, sc, cols, x, xs, x_stride, y + r, y_stride);
  }
  for (; r < r1; ++r) {
    sc[0] = scales + (r / kFp8Block) * scale_cols;
    fp8_tile<Decode, 1, B, T>(w + r * cols, sc, cols, x, xs, x_stride, y + r, y_stride);
  }
}

// Tiles by tokens T: rows and blocks in flight, with the 2·R·B·T sums in registers and room for the decoding
// (16 ymm). One token: one row, two blocks; two or three: two rows.
constexpr int kRowsFor[kFp8MaxTile + 1] = {0, 1, 2, 2, 1};
constexpr int kBlocksFor[kFp8MaxTile + 1] = {0, 2, 1, 1, 1};

template <int T>
void fp8_rows_f16(const uint8_t* w, const uint8_t* scales, int64_t scale_cols, int64_t r0, int64_t r1, int64_t cols,
                  const float* x, int64_t x_stride, float* y, int64_t y_stride) {
  fp8_rows<F16Decode, kRowsFor[T], kBlocksFor[T], T>(w, scales, scale_cols, r0, r1, cols, x, x, x_stride, y, y_stride);
}

constexpr unsigned kMxcsrDaz = 1u << 6;  // denormals are zero

}  // namespace

const Fp8Rows fp8_avx2_rows[kFp8MaxTile] = {fp8_rows_f16<1>, fp8_rows_f16<2>, fp8_rows_f16<3>, fp8_rows_f16<4>};

void fp8_avx2_matvec_rows(const uint8_t* w, const uint8_t* scales, int64_t scale_cols, int64_t r0, int64_t r1,
                          int64_t cols, const float* x, const float* xs, float* y) {
  // MXCSR is per thread: this one's decides whether the subnormal codes' floats read as such.
  if (xs == nullptr || (_mm_getcsr() & kMxcsrDaz) != 0)
    fp8_rows<F16Decode, kRowsFor[1], kBlocksFor[1], 1>(w, scales, scale_cols, r0, r1, cols, x, x, 0, y, 1);
  else
    fp8_rows<BitsDecode, kRowsFor[1], kBlocksFor[1], 1>(w, scales, scale_cols, r0, r1, cols, x, xs, 0, y, 1);
}

FERRY_FP8_AVX2 std::vector<float> fp8_avx2_scaled_x(const float* x, int64_t cols) {
  constexpr float kScale = 0x1p112f, kLimit = 0x1p16f;
  std::vector<float> xs(static_cast<size_t>(cols));
  __m256 out = _mm256_setzero_ps();  // lanes where some |x| >= 2^16 or is NaN
  int64_t i = 0;
  for (; i + 8 <= cols; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 abs = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
    out = _mm256_or_ps(out, _mm256_cmp_ps(abs, _mm256_set1_ps(kLimit), _CMP_NLT_UQ));
    _mm256_storeu_ps(xs.data() + i, _mm256_mul_ps(v, _mm256_set1_ps(kScale)));
  }
  bool fits = _mm256_movemask_ps(out) == 0;
  for (; i < cols; ++i) {
    fits = fits && std::fabs(x[i]) < kLimit;
    xs[size_t(i)] = x[i] * kScale;
  }
  if (!fits) xs.clear();
  return xs;
}

#undef FERRY_FP8_AVX2

}  // namespace ferry::runtime::cpu::detail

#endif  // FERRY_MATVEC_X86
