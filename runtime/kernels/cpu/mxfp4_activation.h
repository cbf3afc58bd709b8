// The activation side of the MXFP4 integer kernels (matvec_mxfp4.cpp).
//
// Why integers: an E2M1 weight times two is an integer in [-12, 12], and its block scale is a power of two.
// If the activation is also a block of integers with a power-of-two scale, every 32-element block product is
// an integer, and the CPU forms it with byte dot products (AVX2 vpmaddubsw, VNNI vpdpbusd) at several times
// the rate of float decode + FMA. That is what lets a memory-bound expert matvec approach the RAM bandwidth.
//
// The rounding, per block of 32 values: k = the smallest integer with max|x| <= qmax * 2^k, q = rne(x / 2^k),
// with q held as 2 or 3 signed bytes (q = sum_j part_j * 256^j):
//  - Int24 (the default, qmax = 8355711): the step is 2^-23 of the block's largest value, the resolution
//    float32 itself has there, so the forward pass stays as exact as float arithmetic (docs/forward-semantics.md).
//  - Int16 (qmax = 32639): one product fewer per byte of weight, for the fastest CPU experts; the step is 2^-15
//    of the block's largest value, still 2^12 times finer than the FP8 activations of DeepSeek's own kernels.
//  - Int8 (qmax = 127): one byte per value, so a byte dot product does a whole product (a third of int24's
//    instructions) and a block's 32 products fit one int32 lane (|sum| < 2^16, exact in float too); the step
//    is 2^-7 of the block's largest value, the class of DeepSeek's FP8 activations. Its kernels
//    (matvec_mxfp4_int8.cpp) read the `lanes` layout below.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>

#include "planner/core/weight_view.h"

namespace ferry::runtime::cpu {

// Cache-line-aligned storage: the kernels' 32- and 64-byte loads of the planes then never straddle two lines.
template <class T>
struct CacheLineAllocator {
  using value_type = T;
  CacheLineAllocator() = default;
  template <class U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  T* allocate(size_t n) {
    void* p = std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64);
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { std::free(p); }
  friend bool operator==(CacheLineAllocator, CacheLineAllocator) { return true; }
};
template <class T>
using CacheLineVector = std::vector<T, CacheLineAllocator<T>>;

struct Mxfp4Activation {
  int64_t cols = 0;    // multiple of 32
  int64_t blocks = 0;  // cols / 32
  int parts = 3;       // bytes per value: 1 (Int8), 2 (Int16) or 3 (Int24)
  // part[j] of q, most significant first, split by element parity to match the weight bytes (element 2i in
  // the low nibble of byte i): block b's 16 even (odd) elements at [16 b, 16 b + 16). Padded with zeros to a
  // multiple of 16 blocks so that vector loads past the last block are harmless.
  CacheLineVector<int8_t> even[3], odd[3];
  // 12 * (sum of q over elements 8m .. 8m+7 of block b) at [4 b + m]: the kernels look weights up as
  // 2 * e2m1 + 12 (an unsigned byte, as vpmaddubsw and vpdpbusd need) and subtract this per 32-bit lane.
  CacheLineVector<int32_t> correction;
  // k_b - 1 at [b] (the -1 undoes the factor two of the integer weights); a block holding inf or NaN gets a
  // huge exponent, so its products come out inf/NaN instead of silently finite.
  CacheLineVector<int32_t> exponent;
  // Int8 only, the planes regrouped so that one int32 lane of a byte dot product sums a whole block: per group
  // of 16 blocks, 8 vectors of 64 bytes (4 of even elements, then 4 of odd ones); 4-byte lane p of vector v
  // holds bytes 4 (v % 4) .. 4 (v % 4) + 3 of block kLaneBlock[p] of that plane. The block order within each
  // half of 8 lanes (0 2 4 6 1 3 5 7) is the one a 4x4 transpose of 256-bit registers yields, so the AVX2
  // kernels read the same layout as the AVX-512 ones, a half group at a time.
  CacheLineVector<int8_t> lanes;
  CacheLineVector<int32_t> lane_bias;  // -12 * (sum of q over the block) at [16 g + p]
  CacheLineVector<float> lane_scale;   // 2^(k - 1) at [16 g + p]; inf for a non-finite block
};

// The block (within its group of 16) at lane p of the Int8 layout.
constexpr int kLaneBlock[16] = {0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15};

// The largest |q| of a precision.
int32_t activation_qmax(core::ActivationBits bits);
// The block exponent k for a finite amax > 0 (exact: scaling by powers of two is exact in float).
int mxfp4_activation_exponent(float amax, core::ActivationBits bits);

// On AVX2 (unless FERRY_CPU_ISA=portable) a vector path computes bitwise the portable result.
void quantize_mxfp4_activation(const float* x, int64_t cols, Mxfp4Activation& out, core::ActivationBits bits);

namespace detail {
// The element-by-element definition, always available, for tests to compare the vector path with.
void quantize_mxfp4_activation_portable(const float* x, int64_t cols, Mxfp4Activation& out, core::ActivationBits bits);
}  // namespace detail

}  // namespace ferry::runtime::cpu
