#include "runtime/kernels/cpu/vec.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define FERRY_VEC_X86 1
#endif

// The order of every float operation of dot, axpy and indexer_scores is written out (intrinsics on x86-64-v3,
// lane-structured loops elsewhere, compiled with -ffp-contract=off) rather than left to the vectorizer, so that
// it is the same at every optimisation level: the kernels that reproduce it (dots, axpys, matvec_bf16.cpp,
// attention) and the tests that check them bitwise hold in the sanitizer build (-O1) too. The orders are those
// that GCC's `omp simd` loops had at -O2 and up, so the logits did not move.

// scale has one rounding per element, so no order to keep: GCC's function multiversioning (one clone per
// target, resolved once through an ifunc) vectorises it as it likes (compiled with -fopenmp-simd).
#ifdef FERRY_VEC_X86
#define FERRY_VEC_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FERRY_VEC_CLONES
#endif

namespace ferry::runtime::cpu {

namespace {

// The baseline order (SSE2, no FMA): four lanes of multiply-then-add over the whole 4-element steps, the
// remaining elements added into lane 0, the lanes added in order to 0.
float dot_base(const float* a, const float* b, int64_t n) {
  float lane[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int k = 0; k < 4; ++k) lane[k] += a[i + k] * b[i + k];
  for (; i < n; ++i) lane[0] += a[i] * b[i];
  float s = 0.0f;
  for (int k = 0; k < 4; ++k) s += lane[k];
  return s;
}

void axpy_base(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

float relu(float d) { return d > 0 ? d : 0.0f; }

#ifdef FERRY_VEC_X86

// The x86-64-v3 order, for R rows of b at once: one 8-lane FMA accumulator per row over the whole 8-element
// steps, the remaining elements fused into lane 0, the lanes added in order to 0 (matvec_bf16.cpp keeps the same
// order for BF16 rows).
template <int R>
__attribute__((target("avx2,fma"))) void dot_rows_v3(const float* a, const float* b, int64_t b_stride, int64_t n,
                                                     float* out) {
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 av = _mm256_loadu_ps(a + i);
    for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(av, _mm256_loadu_ps(b + r * b_stride + i), acc[r]);
  }
  for (int r = 0; r < R; ++r) {
    alignas(32) float lane[8];
    _mm256_store_ps(lane, acc[r]);
    for (int64_t k = i; k < n; ++k)
      lane[0] = _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a[k]), _mm_set_ss(b[r * b_stride + k]), _mm_set_ss(lane[0])));
    float s = 0.0f;
    for (int k = 0; k < 8; ++k) s += lane[k];
    out[r] = s;
  }
}

float dot_v3(const float* a, const float* b, int64_t n) {
  float s;
  dot_rows_v3<1>(a, b, 0, n, &s);
  return s;
}

// Lane r of the result: ((0 + a[r][0]) + a[r][1]) + … + a[r][7], dot_rows_v3's sum of a row's lanes, for 8 rows
// at once (an 8x8 transpose, then the lanes added as vectors in the same order).
__attribute__((target("avx2,fma"))) __m256 lane_sums8_v3(const __m256 a[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(a[0], a[1]), t1 = _mm256_unpackhi_ps(a[0], a[1]);
  const __m256 t2 = _mm256_unpacklo_ps(a[2], a[3]), t3 = _mm256_unpackhi_ps(a[2], a[3]);
  const __m256 t4 = _mm256_unpacklo_ps(a[4], a[5]), t5 = _mm256_unpackhi_ps(a[4], a[5]);
  const __m256 t6 = _mm256_unpacklo_ps(a[6], a[7]), t7 = _mm256_unpackhi_ps(a[6], a[7]);
  // s_k holds lane k (low half) and lane k + 4 (high half) of rows 0-3, then of rows 4-7.
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 lane[8] = {_mm256_permute2f128_ps(s0, s4, 0x20), _mm256_permute2f128_ps(s1, s5, 0x20),
                          _mm256_permute2f128_ps(s2, s6, 0x20), _mm256_permute2f128_ps(s3, s7, 0x20),
                          _mm256_permute2f128_ps(s0, s4, 0x31), _mm256_permute2f128_ps(s1, s5, 0x31),
                          _mm256_permute2f128_ps(s2, s6, 0x31), _mm256_permute2f128_ps(s3, s7, 0x31)};
  __m256 s = _mm256_setzero_ps();
  for (int k = 0; k < 8; ++k) s = _mm256_add_ps(s, lane[k]);
  return s;
}

// dot_rows_v3<8> for n a multiple of 8 (no remainder to fuse into lane 0), the 8 sums as one vector (lane r:
// row r), each bit for bit: 8 independent FMA chains keep both FMA pipes busy where 4 wait on their latency.
__attribute__((target("avx2,fma"))) __m256 dot_rows8_v3(const float* a, const float* b, int64_t b_stride, int64_t n) {
  __m256 acc[8];
  for (int r = 0; r < 8; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 av = _mm256_loadu_ps(a + i);
    for (int r = 0; r < 8; ++r) acc[r] = _mm256_fmadd_ps(av, _mm256_loadu_ps(b + r * b_stride + i), acc[r]);
  }
  return lane_sums8_v3(acc);
}

__attribute__((target("avx2,fma"))) void dots_v3(const float* a, const float* b, int64_t b_stride, int64_t m, int64_t n,
                                                 float* out) {
  int64_t i = 0;
  if (n % 8 == 0)
    for (; i + 8 <= m; i += 8) _mm256_storeu_ps(out + i, dot_rows8_v3(a, b + i * b_stride, b_stride, n));
  for (; i + 4 <= m; i += 4) dot_rows_v3<4>(a, b + i * b_stride, b_stride, n, out + i);
  for (; i < m; ++i) dot_rows_v3<1>(a, b + i * b_stride, b_stride, n, out + i);
}

// One FMA per element, a · x + y, whatever the vector width.
__attribute__((target("avx2,fma"))) void axpy_v3(float a, const float* x, float* y, int64_t n) {
  const __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] = _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(x[i]), _mm_set_ss(y[i])));
}

// axpy_v3 for m rows in turn, with a span of y held in registers across the rows.
__attribute__((target("avx2,fma"))) void axpys_v3(const float* a, const float* x, int64_t x_stride, int64_t m, float* y,
                                                  int64_t n) {
  constexpr int kSpan = 8;  // registers of y in flight: independent FMA chains across the rows
  int64_t k = 0;
  for (; k + 8 * kSpan <= n; k += 8 * kSpan) {
    __m256 acc[kSpan];
    for (int j = 0; j < kSpan; ++j) acc[j] = _mm256_loadu_ps(y + k + 8 * j);
    for (int64_t i = 0; i < m; ++i) {
      const __m256 ai = _mm256_set1_ps(a[i]);
      for (int j = 0; j < kSpan; ++j)
        acc[j] = _mm256_fmadd_ps(ai, _mm256_loadu_ps(x + i * x_stride + k + 8 * j), acc[j]);
    }
    for (int j = 0; j < kSpan; ++j) _mm256_storeu_ps(y + k + 8 * j, acc[j]);
  }
  for (; k < n; ++k) {
    __m128 acc = _mm_set_ss(y[k]);
    for (int64_t i = 0; i < m; ++i) acc = _mm_fmadd_ss(_mm_set_ss(a[i]), _mm_set_ss(x[i * x_stride + k]), acc);
    y[k] = _mm_cvtss_f32(acc);
  }
}

// Each head's dot in dot_v3's order, the heads' weighted sum fused: score = relu(d) · w[h] + score. One key at
// a time: its 64 dots and its sum over the heads are each one chain of dependent FMAs (the remainder's path).
__attribute__((target("avx2,fma"))) void indexer_scores_one_v3(const float* q, const float* w, int64_t heads,
                                                               int64_t dim, const float* key, float* out) {
  __m128 score = _mm_setzero_ps();
  for (int64_t h = 0; h < heads; ++h)
    score = _mm_fmadd_ss(_mm_set_ss(relu(dot_v3(q + h * dim, key, dim))), _mm_set_ss(w[h]), score);
  *out = _mm_cvtss_f32(score);
}

// indexer_scores_one_v3 for 8 keys at once (dim a multiple of 8): the 8 keys' dots with one head are 8
// independent FMA chains sharing each load of the query, and the heads' sum runs one key per lane, so every
// operation of every key is the one-key path's, in its order, without waiting on one chain at a time.
__attribute__((target("avx2,fma"))) void indexer_scores8_v3(const float* q, const float* w, int64_t heads, int64_t dim,
                                                            const float* keys, float* out) {
  const __m256 zero = _mm256_setzero_ps();
  __m256 score = zero;
  for (int64_t h = 0; h < heads; ++h) {
    const __m256 d = dot_rows8_v3(q + h * dim, keys, dim, dim);
    // max(d, +0) is relu(d) bit for bit: +0 for a NaN, -0 or +0 (the second operand wins those).
    score = _mm256_fmadd_ps(_mm256_max_ps(d, zero), _mm256_set1_ps(w[h]), score);
  }
  _mm256_storeu_ps(out, score);
}

__attribute__((target("avx2,fma"))) void indexer_scores_v3(const float* q, const float* w, int64_t heads, int64_t dim,
                                                           const float* keys, int64_t m, float* out) {
  int64_t j = 0;
  if (dim % 8 == 0)
    for (; j + 8 <= m; j += 8) indexer_scores8_v3(q, w, heads, dim, keys + j * dim, out + j);
  for (; j < m; ++j) indexer_scores_one_v3(q, w, heads, dim, keys + j * dim, out + j);
}

bool have_v3() {
  static const bool v3 = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("x86-64-v3");
  }();
  return v3;
}

#endif  // FERRY_VEC_X86

}  // namespace

float dot(const float* a, const float* b, int64_t n) {
#ifdef FERRY_VEC_X86
  if (have_v3()) return dot_v3(a, b, n);
#endif
  return dot_base(a, b, n);
}

void dots(const float* a, const float* b, int64_t b_stride, int64_t m, int64_t n, float* out) {
#ifdef FERRY_VEC_X86
  if (have_v3()) return dots_v3(a, b, b_stride, m, n, out);
#endif
  for (int64_t i = 0; i < m; ++i) out[i] = dot_base(a, b + i * b_stride, n);
}

void axpy(float a, const float* x, float* y, int64_t n) {
#ifdef FERRY_VEC_X86
  if (have_v3()) return axpy_v3(a, x, y, n);
#endif
  axpy_base(a, x, y, n);
}

void axpys(const float* a, const float* x, int64_t x_stride, int64_t m, float* y, int64_t n) {
#ifdef FERRY_VEC_X86
  if (have_v3()) return axpys_v3(a, x, x_stride, m, y, n);
#endif
  for (int64_t i = 0; i < m; ++i) axpy_base(a[i], x + i * x_stride, y, n);
}

FERRY_VEC_CLONES void scale(float a, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] *= a;
}

void indexer_scores(const float* q, const float* w, int64_t heads, int64_t dim, const float* keys, int64_t m,
                    float* out) {
#ifdef FERRY_VEC_X86
  if (have_v3()) return indexer_scores_v3(q, w, heads, dim, keys, m, out);
#endif
  for (int64_t j = 0; j < m; ++j) {
    float score = 0;
    for (int64_t h = 0; h < heads; ++h) score += w[h] * relu(dot_base(q + h * dim, keys + j * dim, dim));
    out[j] = score;
  }
}

}  // namespace ferry::runtime::cpu
