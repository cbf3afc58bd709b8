// The KV-cache row encodings of every --kv-type on the device, as runtime/kernels/cpu/kv_rows.cpp and
// planner/core's codecs write them (tests/unit/test_cuda_math_kv.cpp compares the bytes and the rounded values
// bit for bit on the CPU): bf16 rows; q8_0 / q4_0 blocks of 32 with an f16 scale; fp8 main rows (E4M3 nope dims
// under one UE8M0 scale per 64, BF16 rope dims, the scales padded with zeros) and fp8 indexer keys (FP4 E2M1
// pairs under one UE8M0 scale per 32). A row is encoded in units a thread each: a quantisation block, a BF16
// value, or the zero padding of the scales. Only IEEE float operations, so the device rounds as the CPU does.
#pragma once

#include <cstdint>

#include "runtime/kernels/cuda/device_math.h"
#include "runtime/kernels/cuda/dtype_math.h"

namespace ferry::runtime::cuda {

// A row layout (planner::KvRowLayout) in terms the kernels take.
enum class KvFormat : int { Bf16, Q8, Q4, Fp8Main, Fp4Indexer };
struct KvRow {
  KvFormat format = KvFormat::Bf16;
  int64_t dims = 0, rope_dims = 0, bytes = 0;
};

constexpr int64_t kKvFp8Block = 64, kKvFp4Block = 32, kKvQBlock = 32;

FERRY_HD bool is_nan(float f) { return (bits_of_float(f) & 0x7FFFFFFFu) > 0x7F800000u; }
FERRY_HD float abs_f(float f) { return float_from_bits(bits_of_float(f) & 0x7FFFFFFFu); }

FERRY_HD uint16_t float_to_bf16_rn(float f) {
  const uint32_t x = bits_of_float(f);
  if (is_nan(f)) return static_cast<uint16_t>((x >> 16) | 0x40);
  return static_cast<uint16_t>((x + 0x7FFF + ((x >> 16) & 1)) >> 16);
}

FERRY_HD float f16_to_float(uint16_t h) {
  const int exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  float v;
  if (exp == 0)
    v = scale_pow2(static_cast<float>(mant), -24);
  else if (exp == 31)
    v = float_from_bits(mant ? 0x7FC00000u : 0x7F800000u);
  else
    v = scale_pow2(static_cast<float>(mant | 0x400), exp - 25);
  return (h >> 15) ? -v : v;
}

FERRY_HD uint16_t float_to_f16_rn(float f) {
  const uint32_t x = bits_of_float(f);
  const auto sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const float a = abs_f(f);
  if (is_nan(f)) return static_cast<uint16_t>(sign | 0x7E00);
  if (a >= 65520.0f) return static_cast<uint16_t>(sign | 0x7C00);
  if (a < 0x1p-14f) return static_cast<uint16_t>(sign | static_cast<uint16_t>(round_even(mul_rn(a, 0x1p24f))));
  const uint32_t mant = x & 0x7FFFFF;
  const int exp = static_cast<int>((x >> 23) & 0xFF) - 127;
  uint32_t h = (static_cast<uint32_t>(exp + 15) << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1FFF;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;
  return static_cast<uint16_t>(sign | h);
}

// The nearest of the n non-negative codes (values increasing with the code) to a >= 0, ties to the even code.
template <class Decode>
FERRY_HD uint8_t nearest_code(float a, int n, Decode decode) {
  int lo = 0, hi = n - 1;
  if (a >= decode(hi)) return static_cast<uint8_t>(hi);
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (decode(mid) <= a)
      lo = mid;
    else
      hi = mid;
  }
  const float dl = sub_rn(a, decode(lo)), dh = sub_rn(decode(hi), a);
  if (dl < dh) return static_cast<uint8_t>(lo);
  if (dh < dl) return static_cast<uint8_t>(hi);
  return static_cast<uint8_t>(lo % 2 == 0 ? lo : hi);
}

struct E4m3Decode {
  FERRY_HD float operator()(int c) const { return e4m3_to_float(static_cast<uint8_t>(c)); }
};
struct E2m1Decode {
  FERRY_HD float operator()(int c) const { return e2m1_to_float(static_cast<uint8_t>(c)); }
};

// RNE, saturating; NaN -> 0x7F (E4M3) / 0x7 (E2M1).
FERRY_HD uint8_t float_to_e4m3_rn(float f) {
  if (is_nan(f)) return 0x7F;
  const uint8_t code = nearest_code(abs_f(f), 0x7F, E4m3Decode{});
  return (bits_of_float(f) >> 31) ? static_cast<uint8_t>(code | 0x80) : code;
}

FERRY_HD uint8_t float_to_e2m1_rn(float f) {
  if (is_nan(f)) return 0x7;
  const uint8_t code = nearest_code(abs_f(f), 8, E2m1Decode{});
  return (bits_of_float(f) >> 31) ? static_cast<uint8_t>(code | 8) : code;
}

// ceil(log2(a)) for a finite a > 0.
FERRY_HD int ceil_log2(float a) {
  const uint32_t u = bits_of_float(a), e = (u >> 23) & 0xFF, m = u & 0x7FFFFF;
  const int ilog = e != 0 ? static_cast<int>(e) - 127 : highest_bit(m) - 149;
  const bool power_of_two = e != 0 ? m == 0 : (m & (m - 1)) == 0;
  return power_of_two ? ilog : ilog + 1;
}

// max |x[i]| as the CPU takes it (std::max, so a NaN never replaces the maximum).
FERRY_HD float max_abs(const float* x, int64_t n) {
  float m = 0;
  for (int64_t i = 0; i < n; ++i) m = m < abs_f(x[i]) ? abs_f(x[i]) : m;
  return m;
}

// The power-of-two block rounding of DeepSeek's act_quant (FP8, floor 1e-4) and fp4_act_quant (FP4): the
// scale's exponent e; the codes of x·2^-e, written by `put(i, code)`, and x replaced by what they decode to.
template <bool kFp4, class Put>
FERRY_HD int pow2_block(float* x, int64_t n, Put put) {
  const float top = kFp4 ? 6.0f : 448.0f, floor = kFp4 ? 6.0f * 0x1p-126f : 1e-4f;
  const float amax = max_abs(x, n);
  const int e = ceil_log2(div_rn(amax < floor ? floor : amax, top));
  const float inv = scale_pow2(1.0f, -e);
  const int c = e < -127 ? -127 : e > 127 ? 127 : e;
  const float s = e8m0_to_float(static_cast<uint8_t>(c + 127));
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t code = kFp4 ? float_to_e2m1_rn(mul_rn(x[i], inv)) : float_to_e4m3_rn(mul_rn(x[i], inv));
    put(i, code);
    x[i] = mul_rn(kFp4 ? e2m1_to_float(code) : e4m3_to_float(code), s);
  }
  return c + 127;
}

// A q8_0 / q4_0 block: [f16 d = amax / qmax][codes], x replaced by q·d.
FERRY_HD void q_block(float* x, int64_t n, bool four, uint8_t* out) {
  const float qmax = four ? 7.0f : 127.0f, qmin = four ? -8.0f : -127.0f;
  const uint16_t d16 = float_to_f16_rn(div_rn(max_abs(x, n), qmax));
  const float d = f16_to_float(d16);
  out[0] = static_cast<uint8_t>(d16 & 0xFF), out[1] = static_cast<uint8_t>(d16 >> 8);
  uint8_t* codes = out + 2;
  if (four)
    for (int64_t i = 0; i < kKvQBlock / 2; ++i) codes[i] = 0x88;
  for (int64_t i = 0; i < n; ++i) {
    float q = 0;
    if (d != 0) {
      q = round_even(div_rn(x[i], d));
      q = q < qmin ? qmin : (qmax < q ? qmax : q);
    }
    x[i] = mul_rn(q, d);
    if (four) {
      const auto c = static_cast<uint8_t>(static_cast<int>(q) + 8);
      codes[i / 2] = (i % 2) ? static_cast<uint8_t>((codes[i / 2] & 0x0F) | (c << 4))
                             : static_cast<uint8_t>((codes[i / 2] & 0xF0) | c);
    } else {
      codes[i] = static_cast<uint8_t>(static_cast<int8_t>(q));
    }
  }
}

// The number of units a row is encoded in.
FERRY_HD int64_t kv_units(const KvRow& l) {
  switch (l.format) {
    case KvFormat::Bf16: return l.dims;
    case KvFormat::Q8:
    case KvFormat::Q4: return (l.dims + kKvQBlock - 1) / kKvQBlock;
    case KvFormat::Fp4Indexer: return l.dims / kKvFp4Block;
    case KvFormat::Fp8Main: break;
  }
  return (l.dims - l.rope_dims + kKvFp8Block - 1) / kKvFp8Block + l.rope_dims + 1;
}

struct PutByte {
  uint8_t* out;
  FERRY_HD void operator()(int64_t i, uint8_t code) const { out[i] = code; }
};
struct PutNibble {  // FP4 pairs: the even value in the low nibble
  uint8_t* out;
  FERRY_HD void operator()(int64_t i, uint8_t code) const {
    uint8_t& b = out[i / 2];
    b = (i % 2) ? static_cast<uint8_t>((b & 0x0F) | (code << 4)) : static_cast<uint8_t>((b & 0xF0) | (code & 0xF));
  }
};

// Unit u of row x (rounded in place) into its stored bytes `out`; units touch disjoint values and bytes.
FERRY_HD void encode_kv_unit(const KvRow& l, float* x, uint8_t* out, int64_t u) {
  switch (l.format) {
    case KvFormat::Bf16: {
      const uint16_t b = float_to_bf16_rn(x[u]);
      out[2 * u] = static_cast<uint8_t>(b & 0xFF), out[2 * u + 1] = static_cast<uint8_t>(b >> 8);
      x[u] = bf16_to_float(b);
      return;
    }
    case KvFormat::Q8:
    case KvFormat::Q4: {
      const bool four = l.format == KvFormat::Q4;
      const int64_t n = l.dims - u * kKvQBlock < kKvQBlock ? l.dims - u * kKvQBlock : kKvQBlock;
      q_block(x + u * kKvQBlock, n, four, out + u * (2 + (four ? kKvQBlock / 2 : kKvQBlock)));
      return;
    }
    case KvFormat::Fp4Indexer:
      out[l.dims / 2 + u] = static_cast<uint8_t>(
          pow2_block<true>(x + u * kKvFp4Block, kKvFp4Block, PutNibble{out + u * kKvFp4Block / 2}));
      return;
    case KvFormat::Fp8Main: break;
  }
  const int64_t nope = l.dims - l.rope_dims, blocks = (nope + kKvFp8Block - 1) / kKvFp8Block;
  uint8_t* scales = out + nope + 2 * l.rope_dims;
  if (u < blocks) {
    const int64_t n = nope - u * kKvFp8Block < kKvFp8Block ? nope - u * kKvFp8Block : kKvFp8Block;
    scales[u] = static_cast<uint8_t>(pow2_block<false>(x + u * kKvFp8Block, n, PutByte{out + u * kKvFp8Block}));
  } else if (u < blocks + l.rope_dims) {
    const int64_t i = nope + (u - blocks);
    const uint16_t b = float_to_bf16_rn(x[i]);
    out[nope + 2 * (i - nope)] = static_cast<uint8_t>(b & 0xFF);
    out[nope + 2 * (i - nope) + 1] = static_cast<uint8_t>(b >> 8);
    x[i] = bf16_to_float(b);
  } else {
    for (int64_t b = blocks; b < l.bytes - (nope + 2 * l.rope_dims); ++b) scales[b] = 0;
  }
}

// ---- decoding: value i of a stored row, as decode_kv_row returns it (the same single products) ----

FERRY_HD uint16_t load_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

// A kernel that reads rows (attention, the indexer) decodes each value where it uses it, in registers.
FERRY_HD float decode_kv_value(const KvRow& l, const uint8_t* row, int64_t i) {
  switch (l.format) {
    case KvFormat::Bf16: return bf16_to_float(load_u16(row + 2 * i));
    case KvFormat::Q8:
    case KvFormat::Q4: {
      const bool four = l.format == KvFormat::Q4;
      const uint8_t* block = row + i / kKvQBlock * (2 + (four ? kKvQBlock / 2 : kKvQBlock));
      const int64_t j = i % kKvQBlock;
      const int q =
          four ? ((j % 2) ? (block[2 + j / 2] >> 4) : (block[2 + j / 2] & 0xF)) - 8 : static_cast<int8_t>(block[2 + j]);
      return mul_rn(static_cast<float>(q), f16_to_float(load_u16(block)));
    }
    case KvFormat::Fp4Indexer: {
      const uint8_t pair = row[i / 2];
      const float v = e2m1_to_float(static_cast<uint8_t>((i % 2) ? pair >> 4 : pair & 0xF));
      return mul_rn(v, e8m0_to_float(row[l.dims / 2 + i / kKvFp4Block]));
    }
    case KvFormat::Fp8Main: break;
  }
  const int64_t nope = l.dims - l.rope_dims;
  if (i >= nope) return bf16_to_float(load_u16(row + nope + 2 * (i - nope)));
  return mul_rn(e4m3_to_float(row[i]), e8m0_to_float(row[nope + 2 * l.rope_dims + i / kKvFp8Block]));
}

}  // namespace ferry::runtime::cuda
