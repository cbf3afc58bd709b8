// MXFP4 matrix-vector products on integers (see mxfp4_activation.h for why and for the activation rounding).
//
// Per 32-element block b of a row: S_b = sum_i (2 e2m1(w_i)) q_i, summed exactly in int32 per lane of 8
// elements (|lane| < 2^30), and y = sum_b S_b * 2^(e_b - 127) * 2^(k_b - 1). Every path computes the same lane
// sums; they differ only in the order of the float additions (and, for int24 lanes above 2^24, the int-to-float
// rounding, which is float32's resolution again). The weight nibbles are looked up as u = 2 e2m1 + 12 (an unsigned byte)
// and the activation's precomputed 12 * sum q is subtracted, so no sign fix-ups sit in the inner loop.
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "runtime/cpu/matvec.h"
#include "runtime/cpu/matvec_rows.h"
#include "runtime/dtype_codec.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define FERRY_MXFP4_X86 1
// GCC 12 reports its own AVX-512 intrinsics' "undefined" placeholder registers as maybe uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace ferry::runtime::cpu {

namespace {

constexpr int64_t kBlock = 32;

// 2 e2m1(code) for the 16 E2M1 codes (sign, 2 exponent bits, 1 mantissa bit): 0, 1, 2, 3, 4, 6, 8, 12 and
// their negatives. A constant table: a function-local static would put its guard check into the inner loops.
constexpr int8_t twice_e2m1(int c) {
  const int e = (c >> 1) & 3, m = c & 1;
  const int mag = e == 0 ? m : (2 + m) << (e - 1);
  return static_cast<int8_t>(c & 8 ? -mag : mag);
}
struct Lut {
  alignas(16) uint8_t offset[16];  // 2 e2m1(code) + 12, in [0, 24]
  int8_t twice[16];                // 2 e2m1(code), in [-12, 12]
};
constexpr Lut make_lut() {
  Lut l{};
  for (int c = 0; c < 16; ++c) {
    l.twice[c] = twice_e2m1(c);
    l.offset[c] = static_cast<uint8_t>(l.twice[c] + 12);
  }
  return l;
}
constexpr Lut kLut = make_lut();

// 2^(e - 127) from a biased exponent field, clamped: <= 0 flushes to 0 (products below 2^-126), >= 255 is inf.
inline float scale_of(int32_t e) {
  const uint32_t bits = static_cast<uint32_t>(std::clamp<int32_t>(e, 0, 255)) << 23;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline int32_t q_at(const std::vector<int8_t>* part, int parts, int64_t at) {
  int32_t q = 0;
  for (int j = 0; j < parts; ++j) q = q * 256 + int32_t(part[j][size_t(at)]);
  return q;
}

using RowFn = float (*)(const uint8_t* codes, const uint8_t* scales, const Mxfp4Activation& a);

float row_portable(const uint8_t* codes, const uint8_t* scales, const Mxfp4Activation& a) {
  const Lut& t = kLut;
  float total = 0.0f;
  for (int64_t b = 0; b < a.blocks; ++b) {
    // Lane by lane (8 elements each) as the vector paths, so int32 never overflows (|lane| < 2^30).
    float block = 0.0f;
    for (int m = 0; m < 4; ++m) {
      int32_t s = 0;
      for (int64_t i = b * 16 + 4 * m; i < b * 16 + 4 * m + 4; ++i) {
        const uint8_t byte = codes[i];
        s += t.twice[fp4_low(byte)] * q_at(a.even, a.parts, i) + t.twice[fp4_high(byte)] * q_at(a.odd, a.parts, i);
      }
      block += static_cast<float>(s);
    }
    total += block * scale_of(int32_t(scales[b]) + a.exponent[size_t(b)]);
  }
  return total;
}

#ifdef FERRY_MXFP4_X86

// The activation arrays as plain pointers, read once per row: through `const Mxfp4Activation&` the compiler
// reloads each vector's data pointer at every use.
struct Planes {
  const int8_t* even[3];
  const int8_t* odd[3];
  const int32_t* correction;
  const int32_t* exponent;
  explicit Planes(const Mxfp4Activation& a) : correction(a.correction.data()), exponent(a.exponent.data()) {
    for (int j = 0; j < a.parts; ++j) {
      even[j] = a.even[j].data();
      odd[j] = a.odd[j].data();
    }
    for (int j = a.parts; j < 3; ++j) even[j] = odd[j] = nullptr;
  }
};

// 32 (64) activation bytes of one plane array, from block b on (macros: lambdas would not inherit the
// functions' target attributes).
#define X256(v) _mm256_loadu_si256(reinterpret_cast<const __m256i*>((v) + 16 * b))
#define X512(v) _mm512_loadu_si512((v) + 16 * b)

__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Bytes ahead of the current block to prefetch: far enough to cover DRAM latency at this kernel's rate, and
// into the next row (rows are contiguous); the hardware prefetchers stop at 4 KiB pages, this does not.
constexpr int64_t kPrefetchAhead = 2048;

// Two blocks per step on 256-bit registers. `step` looks the 32 code bytes `c` of blocks b and b+1 (zeros past
// the row's last block) up with one vpshufb per nibble into `we` (even elements, low nibbles) and `wo` (odd
// elements, high nibbles); the pair kernel's `lanes` reduces them against the activation planes into 8 int32
// lanes (0-3 block b, 4-7 block b+1, 8 elements each) with the +12 offset's correction subtracted; `step`
// scales them by the blocks' scales (taken from s8 by index) into acc.
#define PAIR_STEP(target)                                                                                       \
  target static __m256 step(__m256i c, __m256i table, __m256i nibble, const Planes& a, int64_t b, __m256 s8,   \
                            __m256i index, __m256 acc) {                                                        \
    const __m256i we = _mm256_shuffle_epi8(table, _mm256_and_si256(c, nibble));                                 \
    const __m256i wo = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(c, 4), nibble));           \
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes(we, wo, a, b)), _mm256_permutevar8x32_ps(s8, index), acc);  \
  }

// AVX2: vpmaddubsw against each activation byte plane, vpmaddwd folds pairs (x256 for the high planes).
template <int P>
struct PairAvx2 {
  __attribute__((target("avx2,fma"))) static __m256i lanes(__m256i we, __m256i wo, const Planes& a, int64_t b) {
#define PLANE256(j) _mm256_add_epi16(_mm256_maddubs_epi16(we, X256(a.even[j])), _mm256_maddubs_epi16(wo, X256(a.odd[j])))
    const __m256i x256 = _mm256_set1_epi16(256);
    // q = sum_j part_j 256^(P-1-j): the high planes are folded in x256 steps (vpmaddwd by 256, then shifts).
    __m256i s = _mm256_madd_epi16(PLANE256(0), x256);
    if constexpr (P == 3) s = _mm256_add_epi32(_mm256_slli_epi32(s, 8), _mm256_madd_epi16(PLANE256(1), x256));
    s = _mm256_add_epi32(s, _mm256_madd_epi16(PLANE256(P - 1), _mm256_set1_epi16(1)));
#undef PLANE256
    return _mm256_sub_epi32(s, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.correction + 4 * b)));
  }
  PAIR_STEP(__attribute__((target("avx2,fma"))))
};

// AVX-VNNI (Alder Lake and later client cores, which have no AVX-512): vpdpbusd on 256-bit registers does the
// byte products and the pair folding of a plane in one instruction: 16 instead of 23 vector operations per
// pair for int24, where the AVX2 path is bound by its vector ports, not by memory.
template <int P>
struct PairAvxVnni {
  __attribute__((target("avx2,fma,avxvnni"))) static __m256i lanes(__m256i we, __m256i wo, const Planes& a,
                                                                   int64_t b) {
    __m256i h = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), we, X256(a.even[0]));
    h = _mm256_dpbusd_avx_epi32(h, wo, X256(a.odd[0]));
    if constexpr (P == 3) {
      h = _mm256_dpbusd_avx_epi32(_mm256_slli_epi32(h, 8), we, X256(a.even[1]));
      h = _mm256_dpbusd_avx_epi32(h, wo, X256(a.odd[1]));
    }
    __m256i t = _mm256_sub_epi32(_mm256_slli_epi32(h, 8), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.correction + 4 * b)));
    t = _mm256_dpbusd_avx_epi32(t, we, X256(a.even[P - 1]));
    return _mm256_dpbusd_avx_epi32(t, wo, X256(a.odd[P - 1]));
  }
  PAIR_STEP(__attribute__((target("avx2,fma,avxvnni"))))
};
#undef PAIR_STEP

// Eight blocks' scales 2^(e_w - 127) * 2^(k - 1) as floats, built in the exponent field.
__attribute__((target("avx2,fma"))) inline __m256 scales8_avx2(uint64_t scale_bytes, const int32_t* exponent) {
  __m256i e = _mm256_add_epi32(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(scale_bytes))),
                               _mm256_loadu_si256(reinterpret_cast<const __m256i*>(exponent)));
  e = _mm256_min_epi32(_mm256_max_epi32(e, _mm256_setzero_si256()), _mm256_set1_epi32(255));
  return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
}

// One row on 256-bit registers with the pair kernel `Pair`. A macro body instantiated under each ISA's target
// attribute: a function cannot inline code for an ISA it was not compiled for.
#define ROW256_BODY(Pair)                                                                                      \
  const Planes pl(a);                                                                                          \
  const __m256i table = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kLut.offset))); \
  const __m256i nibble = _mm256_set1_epi8(0x0F);                                                               \
  const __m256i i0 = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1), i1 = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3); \
  const __m256i i2 = _mm256_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5), i3 = _mm256_setr_epi32(6, 6, 6, 6, 7, 7, 7, 7); \
  auto codes_at = [codes](int64_t b) { return reinterpret_cast<const __m256i*>(codes + 16 * b); };              \
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();                                               \
  _mm_prefetch(reinterpret_cast<const char*>(scales + a.blocks), _MM_HINT_T0); /* the next row's scales */      \
  int64_t g = 0;                                                                                               \
  for (; g + 8 <= a.blocks; g += 8) { /* whole groups of eight blocks, unrolled */                             \
    _mm_prefetch(reinterpret_cast<const char*>(codes + 16 * g + kPrefetchAhead), _MM_HINT_T0);                 \
    _mm_prefetch(reinterpret_cast<const char*>(codes + 16 * g + kPrefetchAhead + 64), _MM_HINT_T0);            \
    uint64_t sb;                                                                                               \
    std::memcpy(&sb, scales + g, sizeof sb);                                                                   \
    const __m256 s8 = scales8_avx2(sb, pl.exponent + g);                                                       \
    acc0 = Pair::step(_mm256_loadu_si256(codes_at(g)), table, nibble, pl, g, s8, i0, acc0);                                             \
    acc1 = Pair::step(_mm256_loadu_si256(codes_at(g + 2)), table, nibble, pl, g + 2, s8, i1, acc1);                                     \
    acc0 = Pair::step(_mm256_loadu_si256(codes_at(g + 4)), table, nibble, pl, g + 4, s8, i2, acc0);                                     \
    acc1 = Pair::step(_mm256_loadu_si256(codes_at(g + 6)), table, nibble, pl, g + 6, s8, i3, acc1);                                     \
  }                                                                                                            \
  if (g < a.blocks) { /* fewer than eight blocks left: never read past the row's codes or scales */            \
    const int64_t nb = a.blocks - g;                                                                           \
    uint64_t sb = 0;                                                                                           \
    std::memcpy(&sb, scales + g, static_cast<size_t>(nb));                                                     \
    const __m256 s8 = scales8_avx2(sb, pl.exponent + g);                                                       \
    const __m256i index[4] = {i0, i1, i2, i3};                                                                 \
    for (int64_t j = 0; j < nb; j += 2) {                                                                      \
      const __m256i c = j + 1 < nb ? _mm256_loadu_si256(codes_at(g + j))                                       \
                                   : _mm256_zextsi128_si256(                                                   \
                                         _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16 * (g + j)))); \
      acc0 = Pair::step(c, table, nibble, pl, g + j, s8, index[j / 2], acc0);                                                           \
    }                                                                                                          \
  }                                                                                                            \
  return hsum256(_mm256_add_ps(acc0, acc1))

template <int P>
__attribute__((target("avx2,fma"))) float row_avx2(const uint8_t* codes, const uint8_t* scales,
                                                   const Mxfp4Activation& a) {
  ROW256_BODY(PairAvx2<P>);
}

template <int P>
__attribute__((target("avx2,fma,avxvnni"))) float row_avxvnni(const uint8_t* codes, const uint8_t* scales,
                                                              const Mxfp4Activation& a) {
  ROW256_BODY(PairAvxVnni<P>);
}
#undef ROW256_BODY

// Four blocks per step with 512-bit registers; vpdpbusd does the byte products and the pair folding in one
// instruction, and masked loads cover a row whose block count is not a multiple of four.
template <int P>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) float row_avx512(const uint8_t* codes,
                                                                                  const uint8_t* scales,
                                                                                  const Mxfp4Activation& a) {
  const Planes pl(a);
  const __m512i table = _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(kLut.offset)));
  const __m512i nibble = _mm512_set1_epi8(0x0F), zero = _mm512_setzero_si512(), e_hi = _mm512_set1_epi32(255);
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  _mm_prefetch(reinterpret_cast<const char*>(scales + a.blocks), _MM_HINT_T0);  // the next row's scales
  for (int64_t g = 0; g < a.blocks; g += 16) {
    const int64_t nb = std::min<int64_t>(16, a.blocks - g);
    const __mmask16 scale_mask = static_cast<__mmask16>((1u << nb) - 1);
    __m512i e = _mm512_add_epi32(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(scale_mask, scales + g)),
                                 _mm512_loadu_si512(pl.exponent + g));
    e = _mm512_min_epi32(_mm512_max_epi32(e, zero), e_hi);
    const __m512 s16 = _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
    for (int64_t j = 0; j < nb; j += 4) {
      const int64_t b = g + j, nq = std::min<int64_t>(4, nb - j);
      _mm_prefetch(reinterpret_cast<const char*>(codes + 16 * b + kPrefetchAhead), _MM_HINT_T0);
      const __mmask64 code_mask = nq == 4 ? ~__mmask64{0} : (__mmask64{1} << (16 * nq)) - 1;
      const __m512i c = _mm512_maskz_loadu_epi8(code_mask, codes + 16 * b);
      const __m512i we = _mm512_shuffle_epi8(table, _mm512_and_si512(c, nibble));
      const __m512i wo = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(c, 4), nibble));
      __m512i h = _mm512_dpbusd_epi32(zero, we, X512(pl.even[0]));
      h = _mm512_dpbusd_epi32(h, wo, X512(pl.odd[0]));
      if constexpr (P == 3) {
        h = _mm512_dpbusd_epi32(_mm512_slli_epi32(h, 8), we, X512(pl.even[1]));
        h = _mm512_dpbusd_epi32(h, wo, X512(pl.odd[1]));
      }
      __m512i t = _mm512_sub_epi32(_mm512_slli_epi32(h, 8), _mm512_loadu_si512(pl.correction + 4 * b));
      t = _mm512_dpbusd_epi32(t, we, X512(pl.even[P - 1]));
      t = _mm512_dpbusd_epi32(t, wo, X512(pl.odd[P - 1]));
      const int p = static_cast<int>(j);
      const __m512i idx = _mm512_setr_epi32(p, p, p, p, p + 1, p + 1, p + 1, p + 1, p + 2, p + 2, p + 2, p + 2, p + 3,
                                            p + 3, p + 3, p + 3);
      const __m512 sc = _mm512_permutexvar_ps(idx, s16);
      if ((j & 4) == 0)
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), sc, acc0);
      else
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), sc, acc1);
    }
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

#undef X256
#undef X512

#endif  // FERRY_MXFP4_X86

bool cpu_has(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::Portable: return true;
#ifdef FERRY_MXFP4_X86
    case CpuIsa::Avx2:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case CpuIsa::AvxVnni:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("avxvnni");
    case CpuIsa::Avx512:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#else
    default: return false;
#endif
  }
  return false;
}

RowFn row_fn(CpuIsa isa, int parts) {
  switch (isa) {
#ifdef FERRY_MXFP4_X86
    case CpuIsa::Avx2: return parts == 2 ? row_avx2<2> : row_avx2<3>;
    case CpuIsa::AvxVnni: return parts == 2 ? row_avxvnni<2> : row_avxvnni<3>;
    case CpuIsa::Avx512: return parts == 2 ? row_avx512<2> : row_avx512<3>;
#endif
    default: return row_portable;
  }
}

// The best path the CPU has, or the one FERRY_CPU_ISA (portable | avx2 | avxvnni | avx512) names.
CpuIsa chosen() {
  static const CpuIsa isa = [] {
    const std::vector<CpuIsa> have = mxfp4_isas();
    CpuIsa best = have.back();
    if (const char* cap = std::getenv("FERRY_CPU_ISA")) {
      const std::string want = cap;
      std::string names;
      for (CpuIsa i : have) {
        if (want == isa_name(i)) return i;
        names += std::string(names.empty() ? "" : ", ") + isa_name(i);
      }
      throw Error("FERRY_CPU_ISA=" + want + ": not a code path this CPU has (it has " + names + ")");
    }
    return best;
  }();
  return isa;
}

void run(CpuIsa isa, const uint8_t* codes, const uint8_t* scales, int64_t rows, const Mxfp4Activation& a, float* y) {
  detail::check_matvec_shape(rows, a.cols, "matvec_mxfp4");
  FERRY_CHECK(a.parts == 2 || a.parts == 3, "matvec_mxfp4: activation not prepared");
  const RowFn fn = row_fn(isa, a.parts);
  const int64_t row_bytes = a.cols / 2;
  detail::for_each_row(rows, row_bytes, [&](int64_t r) { y[r] = fn(codes + r * row_bytes, scales + r * a.blocks, a); });
}

}  // namespace

const char* isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::Portable: return "portable";
    case CpuIsa::Avx2: return "avx2";
    case CpuIsa::AvxVnni: return "avxvnni";
    case CpuIsa::Avx512: return "avx512";
  }
  return "?";
}

std::vector<CpuIsa> mxfp4_isas() {
  std::vector<CpuIsa> v;
  for (CpuIsa i : {CpuIsa::Portable, CpuIsa::Avx2, CpuIsa::AvxVnni, CpuIsa::Avx512})
    if (cpu_has(i)) v.push_back(i);
  return v;
}

CpuIsa mxfp4_isa() { return chosen(); }

void matvec_mxfp4(const uint8_t* codes, const uint8_t* scales, int64_t rows, const Mxfp4Activation& x, float* y) {
  run(chosen(), codes, scales, rows, x, y);
}

void matvec_mxfp4(const uint8_t* codes, const uint8_t* scales, int64_t rows, int64_t cols, const float* x, float* y) {
  detail::check_matvec_shape(rows, cols, "matvec_mxfp4");
  FERRY_CHECK(cols % kBlock == 0,
              "matvec_mxfp4: cols must be a multiple of 32 (the MXFP4 block), got " + std::to_string(cols));
  if (rows == 0) return;
  Mxfp4Activation a;  // per call, not thread_local: a TBB thread waiting in run() may steal another matvec
  quantize_mxfp4_activation(x, cols, a);
  run(chosen(), codes, scales, rows, a, y);
}

namespace detail {

void matvec_mxfp4_on(CpuIsa isa, const uint8_t* codes, const uint8_t* scales, int64_t rows,
                     const Mxfp4Activation& x, float* y) {
  FERRY_CHECK(cpu_has(isa), std::string("matvec_mxfp4: this CPU has no ") + isa_name(isa) + " path");
  run(isa, codes, scales, rows, x, y);
}

}  // namespace detail

}  // namespace ferry::runtime::cpu
