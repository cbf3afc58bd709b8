// Vector primitives of the attention and indexer loops (dot products, scaled adds). Two paths — x86-64-v3
// (AVX2 + FMA) and the baseline — picked at load time by the CPU, like the matvec kernels; each has one float
// order, written out in vec.cpp, at every optimisation level.
#pragma once

#include <cstdint>

namespace ferry::runtime::cpu {

float dot(const float* a, const float* b, int64_t n);
// out[i] = dot(a, b + i * b_stride, n) for i < m, bitwise, with several rows' sums in flight at once (dot alone
// waits on one chain of adds).
void dots(const float* a, const float* b, int64_t b_stride, int64_t m, int64_t n, float* out);
// y += a · x
void axpy(float a, const float* x, float* y, int64_t n);
// axpy(a[i], x + i * x_stride, y, n) for i = 0 … m−1 in turn, bitwise, with y held in registers across the rows.
void axpys(const float* a, const float* x, int64_t x_stride, int64_t m, float* y, int64_t n);
// y *= a
void scale(float a, float* y, int64_t n);

// The lightning indexer's scores of m keys [m, dim] for one token's queries q [heads, dim] and head weights w:
// out[j] = sum_h w[h] · max(0, q[h] · key_j).
void indexer_scores(const float* q, const float* w, int64_t heads, int64_t dim, const float* keys, int64_t m,
                    float* out);

}  // namespace ferry::runtime::cpu
