#include "runtime/cpu/mxfp4_activation.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "planner/error.h"

namespace ferry::runtime::cpu {

namespace {
constexpr int64_t kBlock = 32;
constexpr int64_t kPadBlocks = 16;  // the AVX-512 kernel reads 16 blocks of exponents at once
constexpr int32_t kNonFiniteExponent = 1 << 20;
std::atomic<ActivationBits> g_bits{ActivationBits::Int24};

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

const char* activation_bits_name(ActivationBits bits) { return bits == ActivationBits::Int16 ? "int16" : "int24"; }
ActivationBits expert_activation_bits() { return g_bits.load(std::memory_order_relaxed); }
void set_expert_activation_bits(ActivationBits bits) { g_bits.store(bits, std::memory_order_relaxed); }

// Every part a signed byte: 127 * (1 + 256 [+ 65536]).
int32_t activation_qmax(ActivationBits bits) { return bits == ActivationBits::Int16 ? 32639 : 8355711; }

int mxfp4_activation_exponent(float amax, ActivationBits bits) {
  // 2^e <= amax < 2^(e+1), so amax / 2^(e-b) is in [2^b, 2^(b+1)) and qmax is just below 2^(b+1): at most one
  // step up.
  const int b = bits == ActivationBits::Int16 ? 14 : 22;
  uint32_t u;
  std::memcpy(&u, &amax, sizeof u);
  const int e = (u >> 23) & 255;
  int k = (e != 0 ? e - 127 : std::ilogb(amax)) - b;  // exponent field, or ilogb for subnormals
  if (std::ldexp(amax, -k) > static_cast<float>(activation_qmax(bits))) ++k;
  return k;
}

void quantize_mxfp4_activation(const float* x, int64_t cols, Mxfp4Activation& a, ActivationBits bits) {
  FERRY_CHECK(cols % kBlock == 0, "MXFP4 activation: cols must be a multiple of 32, got " + std::to_string(cols));
  const int64_t blocks = cols / kBlock;
  const int64_t padded = (blocks + kPadBlocks - 1) / kPadBlocks * kPadBlocks;
  a.cols = cols;
  a.blocks = blocks;
  a.parts = bits == ActivationBits::Int16 ? 2 : 3;
  for (int j = 0; j < 3; ++j) {
    const size_t n = j < a.parts ? static_cast<size_t>(padded * 16) : 0;
    a.even[j].assign(n, 0);
    a.odd[j].assign(n, 0);
  }
  a.correction.assign(static_cast<size_t>(padded * 4), 0);
  a.exponent.assign(static_cast<size_t>(padded), 0);
  for (int64_t b = 0; b < blocks; ++b) {
    const float* xb = x + b * kBlock;
    float amax = 0.0f;
    bool finite = true;
    for (int64_t i = 0; i < kBlock; ++i) {
      finite = finite && std::isfinite(xb[i]);
      amax = std::max(amax, std::fabs(xb[i]));
    }
    if (!finite) {
      a.exponent[size_t(b)] = kNonFiniteExponent;
      continue;
    }
    if (amax == 0.0f) continue;  // all q = 0
    const int k = mxfp4_activation_exponent(amax, bits);
    a.exponent[size_t(b)] = k - 1;
    // x / 2^k is exact either way; the product with 2^-k is faster but 2^-k overflows float for blocks whose
    // amax is below ~2^-105.
    const bool tiny = k < -100;
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
}

}  // namespace ferry::runtime::cpu
