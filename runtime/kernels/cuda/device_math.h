// What the per-element math headers of the CUDA kernels (*_math.h) share: FERRY_HD marks a function that both
// g++ (the CPU tests of tests/unit/test_cuda_math.cpp) and nvcc (the kernels) compile, and the few primitives
// whose spelling differs between the two: bit casts, products and sums that nvcc must not contract into an FMA
// (the CPU rounds each one), exact scaling by powers of two, rounding to an integer. C++17: nvcc compiles them
// as such (kernels/cuda/CMakeLists.txt).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FERRY_HD __host__ __device__ __forceinline__
#else
#define FERRY_HD inline
#endif

namespace ferry::runtime::cuda {

FERRY_HD float float_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

FERRY_HD uint32_t bits_of_float(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

// a·b, a + b and a − b each rounded once: nvcc would otherwise fuse a·c − b·s into an FMA, which the CPU does not.
FERRY_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

FERRY_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

FERRY_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

FERRY_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

FERRY_HD double dmul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

FERRY_HD double dadd_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// a·b + c rounded once: the device's FMA, std::fma on the host (what the CPU kernels' explicit FMAs compute).
FERRY_HD float fma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// expf, log1pf and sqrtf: on the device CUDA's (expf and log1pf within 2 ulp of the exact value, sqrtf exact),
// on the host glibc's (what the CPU kernels call).
FERRY_HD float exp_f(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  return std::exp(x);
#endif
}

FERRY_HD float log1p_f(float x) {
#if defined(__CUDA_ARCH__)
  return log1pf(x);
#else
  return std::log1p(x);
#endif
}

FERRY_HD float sqrt_f(float x) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(x);
#else
  return std::sqrt(x);
#endif
}

// x·2^k, exact while the result is a float (normal or subnormal without lost bits).
FERRY_HD float scale_pow2(float x, int k) {
#if defined(__CUDA_ARCH__)
  return ldexpf(x, k);
#else
  return std::ldexp(x, k);
#endif
}

// Round to nearest, ties to even (the default rounding mode on the host; rintf is always that on the device).
FERRY_HD float round_even(float x) {
#if defined(__CUDA_ARCH__)
  return rintf(x);
#else
  return std::nearbyint(x);
#endif
}

// The index of the highest set bit of u != 0.
FERRY_HD int highest_bit(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return 31 - __clz(static_cast<int>(u));
#else
  return 31 - __builtin_clz(u);
#endif
}

}  // namespace ferry::runtime::cuda
