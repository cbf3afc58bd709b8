// MXFP4 matrix-vector products on integers (see mxfp4_activation.h for why and for the activation rounding).
//
// Per 32-element block b of a row: S_b = sum_i (2 e2m1(w_i)) q_i, summed exactly in int32 per lane of 8
// elements (|lane| < 2^30), and y = sum_b S_b * 2^(e_b - 127) * 2^(k_b - 1). Every path computes the same lane
// sums; they differ only in the order of the float additions (and, for int24 lanes above 2^24, the int-to-float
// rounding, which is float32's resolution again). The weight nibbles are looked up as u = 2 e2m1 + 12 (an unsigned
// byte) and the activation's precomputed 12 * sum q is subtracted, so no sign fix-ups sit in the inner loop.
//
// Prefill (matmul_mxfp4) runs the same kernels on a tile of tokens: one weight row's nibbles are decoded once
// and reduced against each token's planes in turn. Only the integer lane sums (exact) are shared work; each
// token's float operations are those of the matvec in the same order, hence bitwise its result.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "planner/core/dtype_codec.h"
#include "runtime/kernels/cpu/matvec.h"
#include "runtime/kernels/cpu/matvec_mxfp4_int8.h"
#include "runtime/kernels/cpu/matvec_rows.h"

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

inline int32_t q_at(const CacheLineVector<int8_t>* part, int parts, int64_t at) {
  int32_t q = 0;
  for (int j = 0; j < parts; ++j) q = q * 256 + int32_t(part[j][size_t(at)]);
  return q;
}

// Rows [0, rows) of a weight (row-major from `codes` / `scales`) against a tile of T tokens:
// y[t * y_stride + r] = row r . x[t]. Each token's float arithmetic is the same sequence whatever T is (T = 1
// is the matvec), so a token's result does not depend on its tile; the tile only shares the weight's decoding
// (and its reads) among the tokens. A call takes a run of rows so that the setup (the activation pointers, the
// constants) is paid once per run, not once per row: at V4's 1 KiB rows it was a fifth of the AVX2 time.
using TileFn = void (*)(const uint8_t* codes, const uint8_t* scales, int64_t rows, const Mxfp4Activation* a, float* y,
                        int64_t y_stride);
constexpr int kMaxTile = 4;

template <int T>
void row_portable(const uint8_t* codes, const uint8_t* scales, const Mxfp4Activation* a, float* out) {
  const Lut& lut = kLut;
  float total[T] = {};
  for (int64_t b = 0; b < a[0].blocks; ++b) {
    // Lane by lane (8 elements each) as the vector paths, so int32 never overflows (|lane| < 2^30).
    float block[T] = {};
    for (int m = 0; m < 4; ++m) {
      int32_t s[T] = {};
      for (int64_t i = b * 16 + 4 * m; i < b * 16 + 4 * m + 4; ++i) {
        const int32_t lo = lut.twice[core::fp4_low(codes[i])], hi = lut.twice[core::fp4_high(codes[i])];
        for (int t = 0; t < T; ++t) s[t] += lo * q_at(a[t].even, a[t].parts, i) + hi * q_at(a[t].odd, a[t].parts, i);
      }
      for (int t = 0; t < T; ++t) block[t] += static_cast<float>(s[t]);
    }
    for (int t = 0; t < T; ++t) total[t] += block[t] * scale_of(int32_t(scales[b]) + a[t].exponent[size_t(b)]);
  }
  for (int t = 0; t < T; ++t) out[t] = total[t];
}

template <int T>
void tile_portable(const uint8_t* codes, const uint8_t* scales, int64_t rows, const Mxfp4Activation* a, float* y,
                   int64_t y_stride) {
  const int64_t row_bytes = a[0].cols / 2, blocks = a[0].blocks;
  for (int64_t r = 0; r < rows; ++r) {
    float out[T];
    row_portable<T>(codes + r * row_bytes, scales + r * blocks, a, out);
    for (int t = 0; t < T; ++t) y[t * y_stride + r] = out[t];
  }
}

#ifdef FERRY_MXFP4_X86

// The activation arrays as plain pointers, read once per row: through `const Mxfp4Activation&` the compiler
// reloads each vector's data pointer at every use.
struct Planes {
  const int8_t* even[3];
  const int8_t* odd[3];
  const int32_t* correction = nullptr;
  const int32_t* exponent = nullptr;
  Planes() = default;
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
// into the next row (rows are contiguous); the hardware prefetchers stop at 4 KiB pages, this does not. Into L2
// (T1), not L1: at 2 KiB ahead that measured 4-8% faster from RAM on every path (Xeon, 2 threads), and it
// leaves L1 to the activation planes, which every row re-reads.
constexpr int64_t kPrefetchAhead = 2048;

// The first kPrefetchAhead bytes of a run of rows, which the in-loop prefetches (always that far ahead) never
// ask for: a run starts cold (a new expert, or a range the other threads did not just read).
inline void prefetch_run_start(const uint8_t* codes, int64_t bytes) {
  for (int64_t at = 0; at < std::min(bytes, kPrefetchAhead); at += 64)
    _mm_prefetch(reinterpret_cast<const char*>(codes + at), _MM_HINT_T1);
}

// Two blocks per step on 256-bit registers. `step` looks the 32 code bytes `c` of blocks b and b+1 (zeros past
// the row's last block) up with one vpshufb per nibble into `we` (even elements, low nibbles) and `wo` (odd
// elements, high nibbles), once for the tile's T tokens; the pair kernel's `lanes` reduces them against one
// token's activation planes into 8 int32 lanes (0-3 block b, 4-7 block b+1, 8 elements each) with the +12
// offset's correction subtracted; `step` scales them by the token's block scales (taken from s8[t] by index)
// into acc[t].
#define PAIR_STEP(target)                                                                                            \
  template <int T>                                                                                                   \
  target __attribute__((always_inline)) static void step(__m256i c, __m256i table, __m256i nibble, const Planes* a,  \
                                                         int64_t b, const __m256* s8, __m256i index, __m256* acc) {  \
    const __m256i we = _mm256_shuffle_epi8(table, _mm256_and_si256(c, nibble));                                      \
    const __m256i wo = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(c, 4), nibble));                \
    _Pragma("GCC unroll 8") for (int t = 0; t < T; ++t) acc[t] =                                                     \
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes(we, wo, a[t], b)), _mm256_permutevar8x32_ps(s8[t], index), acc[t]); \
  }

// AVX2: vpmaddubsw against each activation byte plane, vpmaddwd folds pairs (x256 for the high planes).
template <int P>
struct PairAvx2 {
  __attribute__((target("avx2,fma"), always_inline)) static __m256i lanes(__m256i we, __m256i wo, const Planes& a,
                                                                          int64_t b) {
#define PLANE256(j) \
  _mm256_add_epi16(_mm256_maddubs_epi16(we, X256(a.even[j])), _mm256_maddubs_epi16(wo, X256(a.odd[j])))
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
  __attribute__((target("avx2,fma,avxvnni"), always_inline)) static __m256i lanes(__m256i we, __m256i wo,
                                                                                  const Planes& a, int64_t b) {
    __m256i h = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), we, X256(a.even[0]));
    h = _mm256_dpbusd_avx_epi32(h, wo, X256(a.odd[0]));
    if constexpr (P == 3) {
      h = _mm256_dpbusd_avx_epi32(_mm256_slli_epi32(h, 8), we, X256(a.even[1]));
      h = _mm256_dpbusd_avx_epi32(h, wo, X256(a.odd[1]));
    }
    __m256i t = _mm256_sub_epi32(_mm256_slli_epi32(h, 8),
                                 _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.correction + 4 * b)));
    t = _mm256_dpbusd_avx_epi32(t, we, X256(a.even[P - 1]));
    return _mm256_dpbusd_avx_epi32(t, wo, X256(a.odd[P - 1]));
  }
  PAIR_STEP(__attribute__((target("avx2,fma,avxvnni"))))
};
#undef PAIR_STEP

// Eight blocks' scales 2^(e_w - 127) * 2^(k - 1) as floats, built in the exponent field from the weight's
// exponents `ew` (shared by the tile) and one token's.
__attribute__((target("avx2,fma"))) inline __m256 scales8_avx2(__m256i ew, const int32_t* exponent) {
  __m256i e = _mm256_add_epi32(ew, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(exponent)));
  e = _mm256_min_epi32(_mm256_max_epi32(e, _mm256_setzero_si256()), _mm256_set1_epi32(255));
  return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
}
__attribute__((target("avx2,fma"))) inline __m256i weight_exponents8(uint64_t scale_bytes) {
  return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(scale_bytes)));
}

// Rows against T tokens on 256-bit registers with the pair kernel `Pair`. A macro body instantiated under
// each ISA's target attribute: a function cannot inline code for an ISA it was not compiled for.
#define TILE256_BODY(Pair)                                                                                          \
  Planes pl[T];                                                                                                     \
  prefetch_run_start(codes, rows*(a[0].cols / 2));                                                                  \
  for (int t = 0; t < T; ++t) pl[t] = Planes(a[t]);                                                                 \
  const int64_t blocks = a[0].blocks, row_bytes = a[0].cols / 2;                                                    \
  const __m256i table = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kLut.offset))); \
  const __m256i nibble = _mm256_set1_epi8(0x0F);                                                                    \
  const __m256i i0 = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1), i1 = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3);     \
  const __m256i i2 = _mm256_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5), i3 = _mm256_setr_epi32(6, 6, 6, 6, 7, 7, 7, 7);     \
  const __m256i index[4] = {i0, i1, i2, i3};                                                                        \
  for (int64_t r = 0; r < rows; ++r, codes += row_bytes, scales += blocks) {                                        \
    auto codes_at = [codes](int64_t b) { return reinterpret_cast<const __m256i*>(codes + 16 * b); };                \
    __m256 acc0[T], acc1[T], s8[T];                                                                                 \
    for (int t = 0; t < T; ++t) acc0[t] = acc1[t] = _mm256_setzero_ps();                                            \
    _mm_prefetch(reinterpret_cast<const char*>(scales + blocks), _MM_HINT_T0); /* the next row's scales */          \
    int64_t g = 0;                                                                                                  \
    for (; g + 8 <= blocks; g += 8) { /* whole groups of eight blocks, unrolled */                                  \
      _mm_prefetch(reinterpret_cast<const char*>(codes + 16 * g + kPrefetchAhead), _MM_HINT_T1);                    \
      _mm_prefetch(reinterpret_cast<const char*>(codes + 16 * g + kPrefetchAhead + 64), _MM_HINT_T1);               \
      uint64_t sb;                                                                                                  \
      std::memcpy(&sb, scales + g, sizeof sb);                                                                      \
      const __m256i ew = weight_exponents8(sb);                                                                     \
      for (int t = 0; t < T; ++t) s8[t] = scales8_avx2(ew, pl[t].exponent + g);                                     \
      Pair::template step<T>(_mm256_loadu_si256(codes_at(g)), table, nibble, pl, g, s8, i0, acc0);                  \
      Pair::template step<T>(_mm256_loadu_si256(codes_at(g + 2)), table, nibble, pl, g + 2, s8, i1, acc1);          \
      Pair::template step<T>(_mm256_loadu_si256(codes_at(g + 4)), table, nibble, pl, g + 4, s8, i2, acc0);          \
      Pair::template step<T>(_mm256_loadu_si256(codes_at(g + 6)), table, nibble, pl, g + 6, s8, i3, acc1);          \
    }                                                                                                               \
    if (g < blocks) { /* fewer than eight blocks left: never read past the row's codes or scales */                 \
      const int64_t nb = blocks - g;                                                                                \
      uint64_t sb = 0;                                                                                              \
      std::memcpy(&sb, scales + g, static_cast<size_t>(nb));                                                        \
      const __m256i ew = weight_exponents8(sb);                                                                     \
      for (int t = 0; t < T; ++t) s8[t] = scales8_avx2(ew, pl[t].exponent + g);                                     \
      for (int64_t j = 0; j < nb; j += 2) {                                                                         \
        const __m256i c =                                                                                           \
            j + 1 < nb                                                                                              \
                ? _mm256_loadu_si256(codes_at(g + j))                                                               \
                : _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16 * (g + j))));  \
        Pair::template step<T>(c, table, nibble, pl, g + j, s8, index[j / 2], acc0);                                \
      }                                                                                                             \
    }                                                                                                               \
    for (int t = 0; t < T; ++t) y[t * y_stride + r] = hsum256(_mm256_add_ps(acc0[t], acc1[t]));                     \
  }

template <int P, int T>
__attribute__((target("avx2,fma"))) void tile_avx2(const uint8_t* codes, const uint8_t* scales, int64_t rows,
                                                   const Mxfp4Activation* a, float* y, int64_t y_stride) {
  TILE256_BODY(PairAvx2<P>);
}

template <int P, int T>
__attribute__((target("avx2,fma,avxvnni"))) void tile_avxvnni(const uint8_t* codes, const uint8_t* scales, int64_t rows,
                                                              const Mxfp4Activation* a, float* y, int64_t y_stride) {
  TILE256_BODY(PairAvxVnni<P>);
}
#undef TILE256_BODY

// Four blocks per step with 512-bit registers: the 64 code bytes `c` of blocks b .. b+3 (zeros past the row's
// last block) decoded once for the tile, then per token vpdpbusd does the byte products and the pair folding in
// one instruction, and the lanes are scaled by the token's block scales (taken from s16[t] by idx) into acc[t].
template <int P, int T>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), always_inline)) inline void quad_avx512(
    __m512i c, __m512i table, const Planes* pl, int64_t b, const __m512* s16, __m512i idx, __m512* acc) {
  const __m512i nibble = _mm512_set1_epi8(0x0F), zero = _mm512_setzero_si512();
  const __m512i we = _mm512_shuffle_epi8(table, _mm512_and_si512(c, nibble));
  const __m512i wo = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(c, 4), nibble));
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    const Planes& q = pl[t];
    __m512i h = _mm512_dpbusd_epi32(zero, we, X512(q.even[0]));
    h = _mm512_dpbusd_epi32(h, wo, X512(q.odd[0]));
    if constexpr (P == 3) {
      h = _mm512_dpbusd_epi32(_mm512_slli_epi32(h, 8), we, X512(q.even[1]));
      h = _mm512_dpbusd_epi32(h, wo, X512(q.odd[1]));
    }
    __m512i s = _mm512_sub_epi32(_mm512_slli_epi32(h, 8), _mm512_loadu_si512(q.correction + 4 * b));
    s = _mm512_dpbusd_epi32(s, we, X512(q.even[P - 1]));
    s = _mm512_dpbusd_epi32(s, wo, X512(q.odd[P - 1]));
    acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_permutexvar_ps(idx, s16[t]), acc[t]);
  }
}

// One row against T tokens, sixteen blocks (one group of scales) per iteration, quads alternating between two
// accumulators; masked loads cover a row whose block count is not a multiple of sixteen.
template <int P, int T>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void tile_avx512(const uint8_t* codes,
                                                                                 const uint8_t* scales, int64_t rows,
                                                                                 const Mxfp4Activation* a, float* y,
                                                                                 int64_t y_stride) {
  Planes pl[T];
  prefetch_run_start(codes, rows * (a[0].cols / 2));
  for (int t = 0; t < T; ++t) pl[t] = Planes(a[t]);
  const int64_t blocks = a[0].blocks;
  const __m512i table = _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(kLut.offset)));
  const __m512i zero = _mm512_setzero_si512(), e_hi = _mm512_set1_epi32(255);
  const __m512i k0 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __m512i k4 = _mm512_add_epi32(k0, _mm512_set1_epi32(4)), k8 = _mm512_add_epi32(k0, _mm512_set1_epi32(8));
  const __m512i k12 = _mm512_add_epi32(k0, _mm512_set1_epi32(12));
  const int64_t row_bytes = a[0].cols / 2;
  for (int64_t r = 0; r < rows; ++r, codes += row_bytes, scales += blocks) {
    __m512 acc0[T], acc1[T], s16[T];
    for (int t = 0; t < T; ++t) acc0[t] = acc1[t] = _mm512_setzero_ps();
    _mm_prefetch(reinterpret_cast<const char*>(scales + blocks), _MM_HINT_T0);  // the next row's scales
    // Scales 2^(e_w - 127) * 2^(k - 1) of blocks g .. g+15 for every token, built in the exponent field.
    auto group_scales = [&](int64_t g, int64_t nb) __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) {
      const __m512i ew = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << nb) - 1), scales + g));
      for (int t = 0; t < T; ++t) {
        const __m512i e = _mm512_add_epi32(ew, _mm512_loadu_si512(pl[t].exponent + g));
        s16[t] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_min_epi32(_mm512_max_epi32(e, zero), e_hi), 23));
      }
    };
    auto quad = [&](int64_t b, int64_t nq) __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) {
      _mm_prefetch(reinterpret_cast<const char*>(codes + 16 * b + kPrefetchAhead), _MM_HINT_T1);
      const __mmask64 mask = nq >= 4 ? ~__mmask64{0} : (__mmask64{1} << (16 * nq)) - 1;
      return _mm512_maskz_loadu_epi8(mask, codes + 16 * b);
    };
    int64_t g = 0;
    for (; g + 16 <= blocks; g += 16) {
      group_scales(g, 16);
      quad_avx512<P, T>(quad(g, 4), table, pl, g, s16, k0, acc0);
      quad_avx512<P, T>(quad(g + 4, 4), table, pl, g + 4, s16, k4, acc1);
      quad_avx512<P, T>(quad(g + 8, 4), table, pl, g + 8, s16, k8, acc0);
      quad_avx512<P, T>(quad(g + 12, 4), table, pl, g + 12, s16, k12, acc1);
    }
    if (g < blocks) {  // fewer than sixteen blocks left
      const int64_t nb = blocks - g;
      group_scales(g, nb);
      quad_avx512<P, T>(quad(g, nb), table, pl, g, s16, k0, acc0);
      if (nb > 4) quad_avx512<P, T>(quad(g + 4, nb - 4), table, pl, g + 4, s16, k4, acc1);
      if (nb > 8) quad_avx512<P, T>(quad(g + 8, nb - 8), table, pl, g + 8, s16, k8, acc0);
      if (nb > 12) quad_avx512<P, T>(quad(g + 12, nb - 12), table, pl, g + 12, s16, k12, acc1);
    }
    for (int t = 0; t < T; ++t) y[t * y_stride + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t]));
  }
}

#undef X256
#undef X512

#endif  // FERRY_MXFP4_X86

bool cpu_has(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::Portable: return true;
#ifdef FERRY_MXFP4_X86
    case CpuIsa::Avx2: __builtin_cpu_init(); return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
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

// A path's kernel for `parts` activation bytes and a tile of `tokens` (1 .. kMaxTile) tokens.
TileFn tile_fn(CpuIsa isa, int parts, int tokens) {
  const int at = (parts == 3 ? kMaxTile : 0) + tokens - 1;
#define FERRY_TILES(f) \
  { f<2, 1>, f<2, 2>, f<2, 3>, f<2, 4>, f<3, 1>, f<3, 2>, f<3, 3>, f<3, 4> }
  switch (isa) {
#ifdef FERRY_MXFP4_X86
    case CpuIsa::Avx2: {
      static constexpr TileFn k[] = FERRY_TILES(tile_avx2);
      return k[at];
    }
    case CpuIsa::AvxVnni: {
      static constexpr TileFn k[] = FERRY_TILES(tile_avxvnni);
      return k[at];
    }
    case CpuIsa::Avx512: {
      static constexpr TileFn k[] = FERRY_TILES(tile_avx512);
      return k[at];
    }
#endif
    default: {
      static constexpr TileFn k[] = {tile_portable<1>, tile_portable<2>, tile_portable<3>, tile_portable<4>};
      return k[tokens - 1];
    }
  }
#undef FERRY_TILES
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
      FERRY_THROW("FERRY_CPU_ISA={}: not a code path this CPU has (it has {})", want, names);
    }
    return best;
  }();
  return isa;
}

void check_activations(const Mxfp4Activation* x, int64_t n, int64_t rows) {
  detail::check_matvec_shape(rows, n > 0 ? x[0].cols : 0, "matvec_mxfp4");
  for (int64_t t = 0; t < n; ++t)
    FERRY_CHECK(x[t].parts >= 1 && x[t].parts <= 3 && x[t].cols == x[0].cols && x[t].parts == x[0].parts,
                "matvec_mxfp4: activations not prepared alike");
}

// Tokens per tile: up to kMaxTile, as many as have their activations fit in 32 KiB of L1 together, since each
// row of the tile re-reads them all (an int24 activation is 7 times the bytes of a weight row). Past that, the
// activations stream from L2 and a larger tile is slower than a smaller one (measured on AVX-512 and AVX-VNNI).
int64_t tile_tokens(const Mxfp4Activation& a) {
  const int64_t bytes =
      a.cols * a.parts + a.blocks * 4 * int64_t(sizeof(int32_t)) + a.blocks * int64_t(sizeof(int32_t));
  return std::clamp<int64_t>((32 << 10) / bytes, 1, kMaxTile);
}

// Each tile of up to kMaxTile tokens passes over a range of rows small enough to stay in cache, so the weight
// comes from RAM once for all n tokens and each weight vector is decoded once per tile. n = 1 is the matvec.
void run_tiles(CpuIsa isa, const uint8_t* codes, const uint8_t* scales, int64_t rows, const Mxfp4Activation* x,
               int64_t n, float* y, int64_t y_stride) {
  check_activations(x, n, rows);
  if (n == 0 || rows == 0) return;
  const int64_t row_bytes = x[0].cols / 2, blocks = x[0].blocks;
  if (x[0].parts == 1 && isa != CpuIsa::Portable) {  // Int8: its own kernels, all n tokens per row
    detail::for_each_row_range(rows, row_bytes, [&](int64_t r0, int64_t r1) {
      detail::mxfp4_int8_rows(isa, codes + r0 * row_bytes, scales + r0 * blocks, r1 - r0, x, n, y + r0, y_stride);
    });
    return;
  }
  const int64_t tile = tile_tokens(x[0]);
  detail::for_each_row_range(rows, row_bytes, [&](int64_t r0, int64_t r1) {
    for (int64_t t0 = 0; t0 < n; t0 += tile) {
      const int nt = static_cast<int>(std::min<int64_t>(tile, n - t0));
      tile_fn(isa, x[0].parts, nt)(codes + r0 * row_bytes, scales + r0 * blocks, r1 - r0, x + t0,
                                   y + t0 * y_stride + r0, y_stride);
    }
  });
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
  run_tiles(chosen(), codes, scales, rows, &x, 1, y, 1);
}

void matmul_mxfp4(const uint8_t* codes, const uint8_t* scales, int64_t rows, const Mxfp4Activation* x, int64_t n,
                  float* y, int64_t y_stride) {
  run_tiles(chosen(), codes, scales, rows, x, n, y, y_stride);
}

void matvec_mxfp4(const uint8_t* codes, const uint8_t* scales, int64_t rows, int64_t cols, const float* x, float* y,
                  core::ActivationBits bits) {
  detail::check_matvec_shape(rows, cols, "matvec_mxfp4");
  FERRY_CHECK(cols % kBlock == 0, "matvec_mxfp4: cols must be a multiple of 32 (the MXFP4 block), got {}", cols);
  if (rows == 0) return;
  Mxfp4Activation a;  // per call, not thread_local: a TBB thread waiting in run_tiles() may steal another matvec
  quantize_mxfp4_activation(x, cols, a, bits);
  run_tiles(chosen(), codes, scales, rows, &a, 1, y, 1);
}

namespace detail {

void matvec_mxfp4_on(CpuIsa isa, const uint8_t* codes, const uint8_t* scales, int64_t rows, const Mxfp4Activation& x,
                     float* y) {
  FERRY_CHECK(cpu_has(isa), "matvec_mxfp4: this CPU has no {} path", isa_name(isa));
  run_tiles(isa, codes, scales, rows, &x, 1, y, 1);
}

void matmul_mxfp4_on(CpuIsa isa, const uint8_t* codes, const uint8_t* scales, int64_t rows, const Mxfp4Activation* x,
                     int64_t n, float* y, int64_t y_stride) {
  FERRY_CHECK(cpu_has(isa), "matmul_mxfp4: this CPU has no {} path", isa_name(isa));
  run_tiles(isa, codes, scales, rows, x, n, y, y_stride);
}

}  // namespace detail

}  // namespace ferry::runtime::cpu
