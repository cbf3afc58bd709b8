#include "runtime/kernels/cpu/vec.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// GCC's function multiversioning: one clone per target, resolved once through an ifunc. The loops carry
// `omp simd` so that the float reductions vectorise (compiled with -fopenmp-simd; no OpenMP runtime).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FERRY_VEC_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FERRY_VEC_CLONES
#endif

namespace ferry::runtime::cpu {

FERRY_VEC_CLONES float dot(const float* a, const float* b, int64_t n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)

namespace {

// dot's x86-64-v3 clone step for step, for R rows of b at once: one 8-lane FMA accumulator per row over the whole
// 8-element steps, the remaining elements fused into lane 0, the lanes added in order to 0 (matvec_bf16.cpp
// keeps the same order for BF16 rows).
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

void dots_v3(const float* a, const float* b, int64_t b_stride, int64_t m, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) dot_rows_v3<4>(a, b + i * b_stride, b_stride, n, out + i);
  for (; i < m; ++i) dot_rows_v3<1>(a, b + i * b_stride, b_stride, n, out + i);
}

// axpy's x86-64-v3 clone is one FMA per element, a · x + y; rows are applied to a span of y in turn, as there.
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

// Where dot's and axpy's x86-64-v3 clones run (the test their resolvers make), so do these copies of their order.
bool have_v3() {
  static const bool v3 = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("x86-64-v3");
  }();
  return v3;
}

}  // namespace

#endif

void axpys(const float* a, const float* x, int64_t x_stride, int64_t m, float* y, int64_t n) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (have_v3()) return axpys_v3(a, x, x_stride, m, y, n);
#endif
  for (int64_t i = 0; i < m; ++i) axpy(a[i], x + i * x_stride, y, n);
}

void dots(const float* a, const float* b, int64_t b_stride, int64_t m, int64_t n, float* out) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (have_v3()) return dots_v3(a, b, b_stride, m, n, out);
#endif
  for (int64_t i = 0; i < m; ++i) out[i] = dot(a, b + i * b_stride, n);
}

FERRY_VEC_CLONES void axpy(float a, const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

FERRY_VEC_CLONES void scale(float a, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] *= a;
}

}  // namespace ferry::runtime::cpu

namespace ferry::runtime::cpu {

FERRY_VEC_CLONES void indexer_scores(const float* q, const float* w, int64_t heads, int64_t dim, const float* keys,
                                     int64_t m, float* out) {
  for (int64_t j = 0; j < m; ++j) {
    const float* key = keys + j * dim;
    float score = 0;
    for (int64_t h = 0; h < heads; ++h) {
      const float* qh = q + h * dim;
      float d = 0;
#pragma omp simd reduction(+ : d)
      for (int64_t k = 0; k < dim; ++k) d += qh[k] * key[k];
      score += w[h] * (d > 0 ? d : 0.0f);
    }
    out[j] = score;
  }
}

}  // namespace ferry::runtime::cpu
