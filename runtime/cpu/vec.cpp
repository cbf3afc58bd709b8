#include "runtime/cpu/vec.h"

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
