#include "runtime/kernels/cpu/kv_rows.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "planner/core/dtype_codec.h"
#include "planner/core/error.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define FERRY_KV_X86 1
#endif

namespace ferry::runtime {

namespace {

constexpr int64_t kFp8Block = 64;  // nope dims share one UE8M0 scale per 64
constexpr int64_t kFp4Block = 32;
constexpr int64_t kQBlock = 32;

// ceil(log2(a)) for a > 0, exactly: frexp gives a = m · 2^e with m in [0.5, 1).
int ceil_log2(float a) {
  int e = 0;
  const float m = std::frexp(a, &e);
  return m == 0.5f ? e - 1 : e;
}

float max_abs(const float* x, int64_t n) {
  float m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

uint8_t e8m0_code(int exponent) { return core::e8m0_from_exponent(std::clamp(exponent, -127, 127)); }

void put_u16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
uint16_t get_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// llama.cpp-sized blocks of 32 with an f16 scale d = f16(amax / qmax): [d][codes].
void encode_q_block(float* x, int64_t n, bool four_bit, uint8_t* out) {
  const float qmax = four_bit ? 7.0f : 127.0f, qmin = four_bit ? -8.0f : -127.0f;
  const uint16_t d16 = core::float_to_f16(max_abs(x, n) / qmax);
  const float d = core::f16_to_float(d16);
  put_u16(out, d16);
  uint8_t* codes = out + 2;
  if (four_bit) std::memset(codes, 0x88, static_cast<size_t>(kQBlock / 2));
  for (int64_t i = 0; i < n; ++i) {
    const float q = d == 0 ? 0.0f : std::clamp(std::nearbyint(x[i] / d), qmin, qmax);
    x[i] = q * d;
    if (four_bit) {
      const uint8_t c = static_cast<uint8_t>(static_cast<int>(q) + 8);
      codes[i / 2] = (i % 2) ? static_cast<uint8_t>((codes[i / 2] & 0x0F) | (c << 4))
                             : static_cast<uint8_t>((codes[i / 2] & 0xF0) | c);
    } else {
      codes[i] = static_cast<uint8_t>(static_cast<int8_t>(q));
    }
  }
}

void decode_q_block(const uint8_t* in, int64_t n, bool four_bit, float* x) {
  const float d = core::f16_to_float(get_u16(in));
  const uint8_t* codes = in + 2;
  for (int64_t i = 0; i < n; ++i) {
    const int q = four_bit ? ((i % 2) ? (codes[i / 2] >> 4) : (codes[i / 2] & 0xF)) - 8 : static_cast<int8_t>(codes[i]);
    x[i] = static_cast<float>(q) * d;
  }
}

int64_t q_block_bytes(bool four_bit) { return 2 + (four_bit ? kQBlock / 2 : kQBlock); }

// Decoding runs for every row attention gathers: table lookups instead of the scalar decoders' ldexp.
struct DecodeTables {
  float e4m3[256], e8m0[256], e2m1[16];
  DecodeTables() {
    for (int i = 0; i < 256; ++i) e4m3[i] = core::e4m3_to_float(static_cast<uint8_t>(i));
    for (int i = 0; i < 256; ++i) e8m0[i] = core::e8m0_to_float(static_cast<uint8_t>(i));
    for (int i = 0; i < 16; ++i) e2m1[i] = core::e2m1_to_float(static_cast<uint8_t>(i));
  }
};
const DecodeTables& tables() {
  static const DecodeTables t;
  return t;
}

// An FP4 indexer row, the scalar way: each code's value from the table times its block's scale.
void decode_fp4_row(const uint8_t* in, int64_t dims, float* x) {
  const DecodeTables& tb = tables();
  const uint8_t* scales = in + dims / 2;
  for (int64_t i = 0; i < dims; i += 2) {
    const float s = tb.e8m0[scales[i / kFp4Block]];
    x[i] = tb.e2m1[core::fp4_low(in[i / 2])] * s;
    x[i + 1] = tb.e2m1[core::fp4_high(in[i / 2])] * s;
  }
}

#ifdef FERRY_KV_X86
// decode_fp4_row 8 values a step (dims a multiple of 32): each code's magnitude from the same 8-entry table, its
// sign bit set afterwards (so code 8 is -0, as in the table), times the same scale: the scalar products, bit for
// bit. The indexer decodes every compressed key of a layer at each decode step: 25 ns a 128-dim key, not 74.
__attribute__((target("avx2"))) void decode_fp4_row_avx2(const uint8_t* in, int64_t dims, float* x) {
  const DecodeTables& tb = tables();
  const uint8_t* scales = in + dims / 2;
  const __m256 magnitude = _mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f);
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);  // value 2k: low nibble of byte k
  const __m256i nibble = _mm256_set1_epi32(0xF), sign = _mm256_set1_epi32(8);
  for (int64_t i = 0; i < dims; i += 8) {
    uint32_t packed;
    std::memcpy(&packed, in + i / 2, sizeof packed);
    const __m256i codes =
        _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(packed)), shifts), nibble);
    const __m256i sign_bits = _mm256_slli_epi32(_mm256_and_si256(codes, sign), 28);
    const __m256 v = _mm256_or_ps(_mm256_permutevar8x32_ps(magnitude, codes), _mm256_castsi256_ps(sign_bits));
    _mm256_storeu_ps(x + i, _mm256_mul_ps(v, _mm256_set1_ps(tb.e8m0[scales[i / kFp4Block]])));
  }
}

bool have_avx2() {
  static const bool avx2 = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
  }();
  return avx2;
}
#endif

}  // namespace

uint8_t quantize_fp8_block(const float* x, int64_t n, uint8_t* codes) {
  const float amax = std::max(max_abs(x, n), 1e-4f);
  const int e = ceil_log2(amax / core::kE4M3Max);
  const float inv = std::ldexp(1.0f, -e);
  for (int64_t i = 0; i < n; ++i) codes[i] = core::float_to_e4m3(x[i] * inv);
  return e8m0_code(e);
}

uint8_t quantize_fp4_block(const float* x, int64_t n, uint8_t* codes) {
  const float amax = std::max(max_abs(x, n), core::kE2M1Max * 0x1p-126f);
  const int e = ceil_log2(amax / core::kE2M1Max);
  const float inv = std::ldexp(1.0f, -e);
  for (int64_t i = 0; i < n; ++i) codes[i] = core::float_to_e2m1(x[i] * inv);
  return e8m0_code(e);
}

void encode_kv_row(const planner::KvRowLayout& l, float* x, uint8_t* out) {
  using planner::KvType;
  switch (l.type) {
    case KvType::BF16:
      for (int64_t i = 0; i < l.dims; ++i) {
        const uint16_t b = core::float_to_bf16(x[i]);
        put_u16(out + 2 * i, b);
        x[i] = core::bf16_to_float(b);
      }
      return;
    case KvType::Q8_0:
    case KvType::Q4_0: {
      const bool four = l.type == KvType::Q4_0;
      for (int64_t b = 0; b * kQBlock < l.dims; ++b) {
        const int64_t n = std::min(kQBlock, l.dims - b * kQBlock);
        encode_q_block(x + b * kQBlock, n, four, out + b * q_block_bytes(four));
      }
      return;
    }
    case KvType::FP8: break;
  }
  if (l.indexer) {  // FP4 codes (two per byte) then one UE8M0 scale per 32
    FERRY_CHECK(l.dims % kFp4Block == 0, "indexer key dims must be a multiple of 32");
    uint8_t codes[kFp4Block];
    uint8_t* scales = out + l.dims / 2;
    for (int64_t b = 0; b < l.dims / kFp4Block; ++b) {
      float* v = x + b * kFp4Block;
      scales[b] = quantize_fp4_block(v, kFp4Block, codes);
      const float s = core::e8m0_to_float(scales[b]);
      for (int64_t i = 0; i < kFp4Block; i += 2) {
        out[(b * kFp4Block + i) / 2] = core::fp4_pack(codes[i], codes[i + 1]);
        v[i] = core::e2m1_to_float(codes[i]) * s;
        v[i + 1] = core::e2m1_to_float(codes[i + 1]) * s;
      }
    }
    return;
  }
  // Main row: E4M3 nope dims, BF16 rope dims, then the UE8M0 scales (padded to 8 bytes).
  const int64_t nope = l.dims - l.rope_dims;
  uint8_t* rope = out + nope;
  uint8_t* scales = rope + 2 * l.rope_dims;
  std::memset(scales, 0, static_cast<size_t>(l.bytes - (nope + 2 * l.rope_dims)));
  for (int64_t b = 0; b * kFp8Block < nope; ++b) {
    const int64_t n = std::min(kFp8Block, nope - b * kFp8Block);
    float* v = x + b * kFp8Block;
    scales[b] = quantize_fp8_block(v, n, out + b * kFp8Block);
    const float s = core::e8m0_to_float(scales[b]);
    for (int64_t i = 0; i < n; ++i) v[i] = core::e4m3_to_float(out[b * kFp8Block + i]) * s;
  }
  for (int64_t i = 0; i < l.rope_dims; ++i) {
    const uint16_t b = core::float_to_bf16(x[nope + i]);
    put_u16(rope + 2 * i, b);
    x[nope + i] = core::bf16_to_float(b);
  }
}

void decode_kv_row(const planner::KvRowLayout& l, const uint8_t* in, float* x) {
  using planner::KvType;
  switch (l.type) {
    case KvType::BF16:
      for (int64_t i = 0; i < l.dims; ++i) x[i] = core::bf16_to_float(get_u16(in + 2 * i));
      return;
    case KvType::Q8_0:
    case KvType::Q4_0: {
      const bool four = l.type == KvType::Q4_0;
      for (int64_t b = 0; b * kQBlock < l.dims; ++b) {
        const int64_t n = std::min(kQBlock, l.dims - b * kQBlock);
        decode_q_block(in + b * q_block_bytes(four), n, four, x + b * kQBlock);
      }
      return;
    }
    case KvType::FP8: break;
  }
  const DecodeTables& tb = tables();
  if (l.indexer) {
#ifdef FERRY_KV_X86
    if (l.dims % kFp4Block == 0 && have_avx2()) return decode_fp4_row_avx2(in, l.dims, x);
#endif
    return decode_fp4_row(in, l.dims, x);
  }
  const int64_t nope = l.dims - l.rope_dims;
  const uint8_t* rope = in + nope;
  const uint8_t* scales = rope + 2 * l.rope_dims;
  for (int64_t i = 0; i < nope; ++i) x[i] = tb.e4m3[in[i]] * tb.e8m0[scales[i / kFp8Block]];
  for (int64_t i = 0; i < l.rope_dims; ++i) x[nope + i] = core::bf16_to_float(get_u16(rope + 2 * i));
}

void round_indexer_query(planner::KvType t, float* q, int64_t n) {
  if (t != planner::KvType::FP8) return;
  uint8_t codes[kFp4Block];
  for (int64_t b = 0; b * kFp4Block < n; ++b) {
    const int64_t m = std::min(kFp4Block, n - b * kFp4Block);
    float* v = q + b * kFp4Block;
    const float s = core::e8m0_to_float(quantize_fp4_block(v, m, codes));
    for (int64_t i = 0; i < m; ++i) v[i] = core::e2m1_to_float(codes[i]) * s;
  }
}

}  // namespace ferry::runtime
