#include "reference_rounding.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "planner/core/error.h"

namespace ferry::reference {

namespace {

// Non-negative E4M3 (e4m3fn) values in increasing order, from the format: 4 exponent bits (bias 7), 3 mantissa
// bits, no infinities, S.1111.111 is NaN. The index of a value is its code, so index parity is mantissa
// parity, which is what "ties to even" compares.
const std::vector<double>& e4m3_grid() {
  static const std::vector<double> grid = [] {
    std::vector<double> g;
    for (int m = 0; m < 8; ++m) g.push_back(std::ldexp(m / 8.0, 1 - 7));  // subnormals: 0.m × 2^−6
    for (int e = 1; e < 16; ++e)
      for (int m = 0; m < 8; ++m)
        if (!(e == 15 && m == 7)) g.push_back(std::ldexp(1 + m / 8.0, e - 7));  // 1.m × 2^(e−7); max 448
    return g;
  }();
  return grid;
}

// E2M1: 2 exponent bits (bias 1), 1 mantissa bit: codes 0…7 are 0, .5 (subnormal), 1, 1.5, 2, 3, 4, 6.
const std::vector<double>& e2m1_grid() {
  static const std::vector<double> grid = [] {
    std::vector<double> g{0.0, 0.5};
    for (int e = 1; e < 4; ++e)
      for (int m = 0; m < 2; ++m) g.push_back(std::ldexp(1 + m / 2.0, e - 1));
    return g;
  }();
  return grid;
}

double relative_distance(double a, double boundary) { return std::fabs(a - boundary) / std::max(std::fabs(a), 1e-30); }

// Nearest grid value to v, ties to the even index; |v| at or beyond the largest value saturates. Every call is
// one decision, saturated or not, so that the number of decisions in a run does not depend on the values.
double round_on_grid(double v, const std::vector<double>& g, FragileKind kind, const MarginSink& sink) {
  FERRY_CHECK(std::isfinite(v), "reference: rounding a non-finite value");
  const double a = std::fabs(v);
  if (a >= g.back()) {  // the decision between the two largest values
    const size_t top = g.size() - 1;
    const bool flip = sink && sink(kind, relative_distance(a, (g[top - 1] + g[top]) / 2));
    return std::copysign(g[flip ? top - 1 : top], v);
  }
  const size_t hi = static_cast<size_t>(std::upper_bound(g.begin(), g.end(), a) - g.begin());  // g[hi] > a
  const size_t lo = hi - 1;                                                                    // g[lo] <= a
  const double mid = (g[lo] + g[hi]) / 2;
  const bool flip = sink && sink(kind, relative_distance(a, mid));
  const size_t pick = a < mid ? lo : a > mid ? hi : (lo % 2 == 0 ? lo : hi);
  return std::copysign(g[flip ? lo + hi - pick : pick], v);
}

// A binary float with `sig_bits` significant bits (implicit bit included) and smallest normal exponent
// `min_exp` (below it the step stays 2^(min_exp − sig_bits + 1): subnormals). No overflow handling: the
// forward pass never comes near the BF16 / F16 maxima.
double round_binary(double v, int sig_bits, int min_exp, FragileKind kind, const MarginSink& sink) {
  FERRY_CHECK(std::isfinite(v), "reference: rounding a non-finite value");
  if (v == 0) {  // no boundary near: a decision that cannot be fragile, counted like the others
    if (sink) sink(kind, 1.0);
    return v;
  }
  const double a = std::fabs(v);
  int e = 0;
  std::frexp(a, &e);  // a in [2^(e−1), 2^e)
  const double step = std::ldexp(1.0, std::max(e - 1, min_exp) - (sig_bits - 1));
  const double q = a / step;  // exact: step is a power of two
  const double fl = std::floor(q);
  const bool flip = sink && sink(kind, relative_distance(q, fl + 0.5));
  const double r = q - fl < 0.5 ? fl : q - fl > 0.5 ? fl + 1 : (std::fmod(fl, 2) == 0 ? fl : fl + 1);
  return std::copysign((flip ? 2 * fl + 1 - r : r) * step, v);
}

// s = 2^ceil(log2 a), reporting how close a is to a power of two (where the ceiling jumps); taken the other
// way, the ceiling of a value on the other side of that power of two.
double pow2_scale(double a, FragileKind kind, const MarginSink& sink) {
  const double nearest = std::exp2(std::round(std::log2(a)));
  const bool flip = sink && sink(kind, std::fabs(a / nearest - 1));
  const int e = ceil_log2(a);
  if (!flip) return std::ldexp(1.0, e);
  return std::ldexp(1.0, a > nearest ? e - 1 : e + 1);  // a just above 2^(e-1), or at / just below 2^e
}

double amax_of(const double* x, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

// Round half to even on the integers.
double rne_integer(double q) {
  const double fl = std::floor(q);
  return q - fl < 0.5 ? fl : q - fl > 0.5 ? fl + 1 : (std::fmod(fl, 2) == 0 ? fl : fl + 1);
}

}  // namespace

double round_e4m3(double v, const MarginSink& sink) {
  return round_on_grid(v, e4m3_grid(), FragileKind::Fp8Round, sink);
}
double round_e2m1(double v, const MarginSink& sink) {
  return round_on_grid(v, e2m1_grid(), FragileKind::Fp4Round, sink);
}
double round_bf16(double v, const MarginSink& sink) { return round_binary(v, 8, -126, FragileKind::Bf16Round, sink); }
double round_f16(double v, const MarginSink& sink) { return round_binary(v, 11, -14, FragileKind::QScale, sink); }

int ceil_log2(double a) {
  FERRY_CHECK(a > 0 && std::isfinite(a), "reference: ceil_log2 of a non-positive value");
  int e = 0;
  const double m = std::frexp(a, &e);  // a = m · 2^e, m in [0.5, 1)
  return m == 0.5 ? e - 1 : e;
}

void qdq_fp8_block(double* x, int64_t n, const MarginSink& sink) {
  const double s = pow2_scale(std::max(amax_of(x, n), 1e-4) / 448, FragileKind::Fp8Scale, sink);
  for (int64_t i = 0; i < n; ++i) x[i] = round_e4m3(x[i] / s, sink) * s;
}

void qdq_fp4_block(double* x, int64_t n, const MarginSink& sink) {
  const double s = pow2_scale(std::max(amax_of(x, n), 6 * std::ldexp(1.0, -126)) / 6, FragileKind::Fp4Scale, sink);
  for (int64_t i = 0; i < n; ++i) x[i] = round_e2m1(x[i] / s, sink) * s;
}

void qdq_q_block(double* x, int64_t n, bool four_bit, const MarginSink& sink) {
  const double qmax = four_bit ? 7 : 127, qmin = four_bit ? -8 : -127;
  const double d = round_f16(amax_of(x, n) / qmax, sink);
  for (int64_t i = 0; i < n; ++i) {
    if (d == 0) {  // an all-zero block: no boundary near, counted as a decision like the others
      if (sink) sink(FragileKind::QRound, 1.0);
      x[i] = 0;
      continue;
    }
    const double q = x[i] / d;
    // Only midpoints between two values that survive the clamp are decisions.
    const double mid = std::clamp(std::floor(q) + 0.5, qmin + 0.5, qmax - 0.5);
    const bool flip = sink && sink(FragileKind::QRound, relative_distance(q, mid));
    const double r = std::clamp(rne_integer(q), qmin, qmax);
    x[i] = (flip ? 2 * mid - r : r) * d;  // the other integer next to the midpoint
  }
}

void round_mxfp4_activation_block(double* x, int64_t n, int bits) {
  FERRY_CHECK(bits == 24 || bits == 16, "reference: MXFP4 activations are 24 or 16 bits");
  // Every part a signed byte: qmax = 127·(1 + 256 [+ 65536]).
  const double qmax = bits == 24 ? 127.0 * (1 + 256 + 65536) : 127.0 * (1 + 256);
  const double amax = amax_of(x, n);
  if (amax == 0) return;
  // The smallest k with amax <= qmax·2^k: start near it and step (every product is exact).
  int k = std::ilogb(amax) - bits;
  while (amax > std::ldexp(qmax, k)) ++k;
  while (amax <= std::ldexp(qmax, k - 1)) --k;
  for (int64_t i = 0; i < n; ++i) x[i] = std::ldexp(rne_integer(std::ldexp(x[i], -k)), k);
}

void round_kv_row(double* x, int64_t n, RowKind kind, planner::KvType kv, int64_t rope_dims, const MarginSink& sink) {
  using planner::KvType;
  switch (kv) {
    case KvType::BF16:
      if (kind != RowKind::IndexerQuery)
        for (int64_t i = 0; i < n; ++i) x[i] = round_bf16(x[i], sink);
      return;
    case KvType::Q8_0:
    case KvType::Q4_0:
      if (kind == RowKind::IndexerQuery) return;
      FERRY_CHECK(n % 32 == 0, "reference: a q8_0/q4_0 row of {} dims is not whole blocks", n);
      for (int64_t b = 0; b < n; b += 32) qdq_q_block(x + b, 32, kv == KvType::Q4_0, sink);
      return;
    case KvType::FP8:
      if (kind == RowKind::Main) {
        const int64_t nope = n - rope_dims;
        FERRY_CHECK(nope >= 0 && nope % 64 == 0, "reference: fp8 rows need whole blocks of 64 nope dims");
        for (int64_t b = 0; b < nope; b += 64) qdq_fp8_block(x + b, 64, sink);
        for (int64_t i = nope; i < n; ++i) x[i] = round_bf16(x[i], sink);
      } else {
        FERRY_CHECK(n % 32 == 0, "reference: fp4 indexer vectors need whole blocks of 32");
        for (int64_t b = 0; b < n; b += 32) qdq_fp4_block(x + b, 32, sink);
      }
      return;
  }
  FERRY_THROW("reference: unknown KV type");
}

double topk_margin(double last_selected, double best_unselected) {
  return (last_selected - best_unselected) / std::max({std::fabs(last_selected), std::fabs(best_unselected), 1e-30});
}

const char* fragile_kind_name(FragileKind k) {
  switch (k) {
    case FragileKind::Fp8Round: return "fp8 rounding";
    case FragileKind::Fp8Scale: return "fp8 scale";
    case FragileKind::Fp4Round: return "fp4 rounding";
    case FragileKind::Fp4Scale: return "fp4 scale";
    case FragileKind::Bf16Round: return "bf16 rounding";
    case FragileKind::QRound: return "q rounding";
    case FragileKind::QScale: return "q scale";
    case FragileKind::IndexerTopk: return "indexer top-k";
    case FragileKind::RouterTopk: return "router top-k";
  }
  return "?";
}

}  // namespace ferry::reference
