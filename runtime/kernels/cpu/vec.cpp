#include "runtime/kernels/cpu/vec.h"

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
