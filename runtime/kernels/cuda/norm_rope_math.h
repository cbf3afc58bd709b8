// The per-element math of RMSNorm and RoPE on the device, as runtime/kernels/cpu/ops.cpp computes it (the CPU
// tests of tests/unit/test_cuda_math.cpp compare them bit for bit): the sum of squares in double, the inverse
// rms rounded to float, then w·(x·r); the rotation angle pos·freq in double, its cosine and sine rounded to
// float, and each rotated value a·c − b·s from products rounded one by one.
#pragma once

#include <cmath>
#include <cstdint>

#include "runtime/kernels/cuda/device_math.h"

namespace ferry::runtime::cuda {

// One term of the sum of squares.
FERRY_HD double square(float x) { return dmul_rn(static_cast<double>(x), static_cast<double>(x)); }

// 1 / sqrt(mean(x²) + eps) from the sum of squares of n values.
FERRY_HD float rms_inverse(double sum_squares, int64_t n, double eps) {
  return static_cast<float>(1.0 / ::sqrt(sum_squares / static_cast<double>(n) + eps));
}

// One normalised value: w·(x·r), w = 1 without a weight.
FERRY_HD float rms_scale(float x, float r, float w) { return mul_rn(w, mul_rn(x, r)); }

// The cosine and sine of the pair turned by pos·freq (backwards when `inverse`).
FERRY_HD void rope_cos_sin(double freq, int64_t pos, bool inverse, float& c, float& s) {
  const double angle = (inverse ? -1.0 : 1.0) * static_cast<double>(pos) * freq;
  c = static_cast<float>(::cos(angle));
  s = static_cast<float>(::sin(angle));
}

// The pair (a, b) rotated by (c, s), in place.
FERRY_HD void rope_pair(float& a, float& b, float c, float s) {
  const float a0 = a, b0 = b;
  a = sub_rn(mul_rn(a0, c), mul_rn(b0, s));
  b = add_rn(mul_rn(a0, s), mul_rn(b0, c));
}

}  // namespace ferry::runtime::cuda
