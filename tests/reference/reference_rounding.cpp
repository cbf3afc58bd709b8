#include "reference_rounding.h"

#include <algorithm>
#include <cmath>

namespace ferry::reference {

namespace {

// Non-negative grid values in increasing order; index parity = code parity (the mantissa's last bit).
const std::vector<double>& e4m3_grid() {
  static const std::vector<double> g = [] {
    std::vector<double> v;
    for (int m = 0; m < 8; ++m) v.push_back(std::ldexp(m, -9));  // subnormals (exponent field 0)
    for (int e = 1; e < 16; ++e)
      for (int m = 0; m < 8; ++m)
        if (!(e == 15 && m == 7)) v.push_back(std::ldexp(8 + m, e - 10));  // S.1111.111 is NaN
    return v;
  }();
  return g;
}

const std::vector<double>& e2m1_grid() {
  static const std::vector<double> g{0, 0.5, 1, 1.5, 2, 3, 4, 6};
  return g;
}

double margin_to_midpoint(double a, double lo, double hi) {
  return std::fabs(a - (lo + hi) / 2) / std::max(std::fabs(a), 1e-30);
}

// Nearest grid value to |v|, ties to the even index; saturates at the largest value.
double round_on_grid(double v, const std::vector<double>& g, FragileKind kind, const MarginSink& sink) {
  const double a = std::fabs(v);
  if (a >= g.back()) return std::copysign(g.back(), v);
  const size_t hi = static_cast<size_t>(std::upper_bound(g.begin(), g.end(), a) - g.begin());
  const size_t lo = hi - 1;
  if (sink) sink(kind, margin_to_midpoint(a, g[lo], g[hi]));
  const double dlo = a - g[lo], dhi = g[hi] - a;
  const size_t pick = dlo < dhi ? lo : dhi < dlo ? hi : (lo % 2 == 0 ? lo : hi);
  return std::copysign(g[pick], v);
}

// RNE to `mantissa_bits` explicit bits with a minimum normal exponent (subnormals keep that exponent's step).
double round_float(double v, int mantissa_bits, int min_exp, FragileKind kind, const MarginSink& sink) {
  if (v == 0 || !std::isfinite(v)) return v;
  const double a = std::fabs(v);
  const int e = std::max(static_cast<int>(std::floor(std::log2(a))), min_exp);
  const double ulp = std::ldexp(1.0, e - mantissa_bits);
  const double q = a / ulp, fl = std::floor(q);
  if (sink) sink(kind, margin_to_midpoint(q * ulp, fl * ulp, (fl + 1) * ulp));
  double r = q - fl < 0.5 ? fl : q - fl > 0.5 ? fl + 1 : (std::fmod(fl, 2) == 0 ? fl : fl + 1);
  return std::copysign(r * ulp, v);
}

// s = 2^ceil(log2(a)), and how close a is to a power of two (where the ceiling jumps).
double pow2_scale(double a, FragileKind kind, const MarginSink& sink) {
  if (sink) sink(kind, std::fabs(a / std::exp2(std::round(std::log2(a))) - 1));
  return std::exp2(std::ceil(std::log2(a)));
}

double amax_of(const double* x, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

}  // namespace

double round_e4m3(double v, const MarginSink& sink) { return round_on_grid(v, e4m3_grid(), FragileKind::Fp8Round, sink); }
double round_e2m1(double v, const MarginSink& sink) { return round_on_grid(v, e2m1_grid(), FragileKind::Fp4Round, sink); }
double round_bf16(double v, const MarginSink& sink) { return round_float(v, 7, -126, FragileKind::Bf16Round, sink); }
double round_f16(double v, const MarginSink& sink) { return round_float(v, 10, -14, FragileKind::QScale, sink); }

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
    if (d == 0) {
      x[i] = 0;
      continue;
    }
    const double q = x[i] / d, fl = std::floor(q);
    if (sink && q > qmin && q < qmax) sink(FragileKind::QRound, std::fabs(q - (fl + 0.5)) / std::max(std::fabs(q), 1e-30));
    const double r = q - fl < 0.5 ? fl : q - fl > 0.5 ? fl + 1 : (std::fmod(fl, 2) == 0 ? fl : fl + 1);
    x[i] = std::clamp(r, qmin, qmax) * d;
  }
}

double topk_margin(double last_selected, double best_unselected) {
  return (last_selected - best_unselected) /
         std::max({std::fabs(last_selected), std::fabs(best_unselected), 1e-30});
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
