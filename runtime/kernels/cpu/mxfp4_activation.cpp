#include "runtime/kernels/cpu/mxfp4_activation.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "planner/core/error.h"
#include "runtime/kernels/cpu/matvec.h"

namespace ferry::runtime::cpu {

namespace {
constexpr int64_t kBlock = 32;
constexpr int64_t kPadBlocks = 16;  // the AVX-512 kernel reads 16 blocks of exponents at once
constexpr int32_t kNonFiniteExponent = 1 << 20;
constexpr int kTinyExponent = -100;  // below it 2^-k overflows float

// 2^e for a normal exponent, built in the exponent field (no library call per block).
inline float pow2(int e) {
  const uint32_t u = static_cast<uint32_t>(e + 127) << 23;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round to nearest, ties to even (the default rounding mode); |v| < 2^23 here.
inline int32_t round_to_int(float v) {
#if defined(__x86_64__)
  return _mm_cvtss_si32(_mm_set_ss(v));  // SSE: inlined, where lrint may be a library call
#else
  return static_cast<int32_t>(std::lrint(v));
#endif
}
}  // namespace

// Every part a signed byte: 127 * (1 [+ 256 [+ 65536]]).
int32_t activation_qmax(core::ActivationBits bits) {
  switch (bits) {
    case core::ActivationBits::Int8: return 127;
    case core::ActivationBits::Int16: return 32639;
    case core::ActivationBits::Int24: return 8355711;
  }
  return 0;
}

int mxfp4_activation_exponent(float amax, core::ActivationBits bits) {
  // 2^e <= amax < 2^(e+1), so amax / 2^(e-b) is in [2^b, 2^(b+1)) and qmax is just below 2^(b+1): at most one
  // step up.
  const int b = bits == core::ActivationBits::Int8 ? 6 : bits == core::ActivationBits::Int16 ? 14 : 22;
  uint32_t u;
  std::memcpy(&u, &amax, sizeof u);
  const int e = (u >> 23) & 255;
  int k = (e != 0 ? e - 127 : std::ilogb(amax)) - b;  // exponent field, or ilogb for subnormals
  if (std::ldexp(amax, -k) > static_cast<float>(activation_qmax(bits))) ++k;
  return k;
}

namespace {

// Block b of a from its 32 values: the definition, element by element.
void quantize_block_portable(const float* xb, core::ActivationBits bits, Mxfp4Activation& a, int64_t b) {
  float amax = 0.0f;
  bool finite = true;
  for (int64_t i = 0; i < kBlock; ++i) {
    finite = finite && std::isfinite(xb[i]);
    amax = std::max(amax, std::fabs(xb[i]));
  }
  if (!finite) {
    a.exponent[size_t(b)] = kNonFiniteExponent;
    return;
  }
  if (amax == 0.0f) return;  // all q = 0
  const int k = mxfp4_activation_exponent(amax, bits);
  a.exponent[size_t(b)] = k - 1;
  // x / 2^k is exact either way; the product with 2^-k is faster but 2^-k overflows float for blocks whose
  // amax is below ~2^-105.
  const bool tiny = k < kTinyExponent;
  const float inv = tiny ? 0.0f : pow2(-k);
  int32_t q[kBlock];
  int32_t lane_sum[4] = {0, 0, 0, 0};
  for (int64_t i = 0; i < kBlock; ++i) {
    q[i] = round_to_int(tiny ? std::ldexp(xb[i], -k) : xb[i] * inv);
    lane_sum[i / 8] += q[i];
  }
  // Bytes, least significant first, each in [-128, 127]; written after the loop above so that the int8 stores
  // (which may alias anything) do not slow the arithmetic.
  for (int j = a.parts - 1; j >= 0; --j) {
    int8_t* even = a.even[j].data() + b * 16;
    int8_t* odd = a.odd[j].data() + b * 16;
    for (int64_t i = 0; i < kBlock; ++i) {
      const int32_t part = ((q[i] + 128) & 255) - 128;
      (i % 2 == 0 ? even : odd)[i / 2] = static_cast<int8_t>(part);
      q[i] = (q[i] - part) >> 8;  // exact: q - part is a multiple of 256
    }
  }
  for (int m = 0; m < 4; ++m) a.correction[size_t(b * 4 + m)] = 12 * lane_sum[m];
}

#if defined(__x86_64__)
// The same on AVX2, bitwise: the same float products and the same round-to-nearest-even conversion (MXCSR's,
// as _mm_cvtss_si32 in the portable path), the bytes split by the same integer steps. Decoding a token runs
// the rounding once per expert input, serially before the matvec's threads start: in scalar code it was 4-8%
// of a V4-Flash expert matvec. Returns false, leaving the block to the portable path, for a block whose amax
// is so small that 2^-k overflows float.
__attribute__((target("avx2"))) bool quantize_block_avx2(const float* xb, core::ActivationBits bits, Mxfp4Activation& a,
                                                         int64_t b) {
  __m256 v[4];
  const __m256i exponent_field = _mm256_set1_epi32(0x7f800000);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256i nonfinite = _mm256_setzero_si256();
  __m256 vmax = _mm256_setzero_ps();
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_loadu_ps(xb + 8 * i);
    const __m256i u = _mm256_castps_si256(v[i]);
    nonfinite = _mm256_or_si256(nonfinite, _mm256_cmpeq_epi32(_mm256_and_si256(u, exponent_field), exponent_field));
    vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, v[i]));
  }
  if (!_mm256_testz_si256(nonfinite, nonfinite)) {
    a.exponent[size_t(b)] = kNonFiniteExponent;
    return true;
  }
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  const float amax = _mm_cvtss_f32(m);
  if (amax == 0.0f) return true;
  const int k = mxfp4_activation_exponent(amax, bits);
  if (k < kTinyExponent) return false;
  a.exponent[size_t(b)] = k - 1;
  const __m256 inv = _mm256_set1_ps(pow2(-k));
  __m256i q[4];
  for (int i = 0; i < 4; ++i) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));
  // Lane sums of 8 elements each (q[i] is lane i): three horizontal adds, then the two halves.
  const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(q[0], q[1]), _mm256_hadd_epi32(q[2], q[3]));
  const __m128i sums = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(a.correction.data() + 4 * b), _mm_mullo_epi32(sums, _mm_set1_epi32(12)));
  // After the two packs each 128-bit half holds elements {0-3, 8-11, 16-19, 24-27} (low) and {4-7, 12-15,
  // 20-23, 28-31} (high) in order; `parity` gathers each half's even elements before its odd ones, and the
  // 16-bit unpacks interleave the halves' pairs back into element order: 0 2 | 4 6 | 8 10 ... and 1 3 | 5 7 ...
  const __m256i parity = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12,
                                          14, 1, 3, 5, 7, 9, 11, 13, 15);
  const __m256i c128 = _mm256_set1_epi32(128), c255 = _mm256_set1_epi32(255);
  for (int j = a.parts - 1; j >= 0; --j) {
    __m256i part[4];
    for (int i = 0; i < 4; ++i) {
      part[i] = _mm256_sub_epi32(_mm256_and_si256(_mm256_add_epi32(q[i], c128), c255), c128);
      q[i] = _mm256_srai_epi32(_mm256_sub_epi32(q[i], part[i]), 8);  // exact: q - part is a multiple of 256
    }
    const __m256i bytes = _mm256_shuffle_epi8(
        _mm256_packs_epi16(_mm256_packs_epi32(part[0], part[1]), _mm256_packs_epi32(part[2], part[3])), parity);
    const __m128i lo = _mm256_castsi256_si128(bytes), hi = _mm256_extracti128_si256(bytes, 1);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(a.even[j].data() + b * 16), _mm_unpacklo_epi16(lo, hi));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(a.odd[j].data() + b * 16), _mm_unpackhi_epi16(lo, hi));
  }
  return true;
}

bool have_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}
#endif

// The Int8 lane layout (mxfp4_activation.h) from the planes, 4 bytes at a time; the bias and scale of each
// block from its lane sums and exponent.
void fill_lanes(Mxfp4Activation& a, int64_t padded) {
  a.lanes.resize(static_cast<size_t>(padded * 32));
  a.lane_bias.resize(static_cast<size_t>(padded));
  a.lane_scale.resize(static_cast<size_t>(padded));
  for (int64_t g = 0; g < padded / 16; ++g) {
    for (int p = 0; p < 16; ++p) {
      const int64_t b = 16 * g + kLaneBlock[p];
      for (int v = 0; v < 8; ++v) {
        const int8_t* plane = (v < 4 ? a.even[0] : a.odd[0]).data() + 16 * b + 4 * (v % 4);
        std::memcpy(a.lanes.data() + 512 * g + 64 * v + 4 * p, plane, 4);
      }
      const int32_t* c = a.correction.data() + 4 * b;
      a.lane_bias[size_t(16 * g + p)] = -(c[0] + c[1] + c[2] + c[3]);
      const int32_t e = a.exponent[size_t(b)];
      a.lane_scale[size_t(16 * g + p)] = e == kNonFiniteExponent ? INFINITY : std::ldexp(1.0f, e);
    }
  }
}

void quantize(const float* x, int64_t cols, Mxfp4Activation& a, core::ActivationBits bits, bool vector) {
  FERRY_CHECK(cols % kBlock == 0, "MXFP4 activation: cols must be a multiple of 32, got {}", cols);
  const int64_t blocks = cols / kBlock;
  const int64_t padded = (blocks + kPadBlocks - 1) / kPadBlocks * kPadBlocks;
  a.cols = cols;
  a.blocks = blocks;
  a.parts = static_cast<int>(bits) / 8;
  for (int j = 0; j < 3; ++j) {
    const size_t n = j < a.parts ? static_cast<size_t>(padded * 16) : 0;
    a.even[j].assign(n, 0);
    a.odd[j].assign(n, 0);
  }
  a.correction.assign(static_cast<size_t>(padded * 4), 0);
  a.exponent.assign(static_cast<size_t>(padded), 0);
  for (int64_t b = 0; b < blocks; ++b) {
#if defined(__x86_64__)
    if (vector && quantize_block_avx2(x + b * kBlock, bits, a, b)) continue;
#endif
    quantize_block_portable(x + b * kBlock, bits, a, b);
  }
  if (a.parts == 1) {
    fill_lanes(a, padded);
  } else {
    a.lanes.clear();
    a.lane_bias.clear();
    a.lane_scale.clear();
  }
}

}  // namespace

void quantize_mxfp4_activation(const float* x, int64_t cols, Mxfp4Activation& a, core::ActivationBits bits) {
#if defined(__x86_64__)
  static const bool vector = have_avx2() && mxfp4_isa() != CpuIsa::Portable;
#else
  constexpr bool vector = false;
#endif
  quantize(x, cols, a, bits, vector);
}

namespace detail {
void quantize_mxfp4_activation_portable(const float* x, int64_t cols, Mxfp4Activation& a, core::ActivationBits bits) {
  quantize(x, cols, a, bits, false);
}
}  // namespace detail

}  // namespace ferry::runtime::cpu
