// Vector primitives of the attention and indexer loops (dot products, scaled adds). Built twice — for
// x86-64-v3 (AVX2 + FMA) and the baseline — and picked at load time by the CPU, like the matvec kernels.
#pragma once

#include <cstdint>

namespace ferry::runtime::cpu {

float dot(const float* a, const float* b, int64_t n);
// y += a · x
void axpy(float a, const float* x, float* y, int64_t n);
// y *= a
void scale(float a, float* y, int64_t n);

}  // namespace ferry::runtime::cpu
