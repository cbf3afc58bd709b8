#include "reference_ops.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <numbers>
#include <numeric>

#include "planner/core/error.h"
#include "reference_rounding.h"

namespace ferry::reference {

Vec rms_norm(const Vec& v, const Vec& w, double eps) {
  FERRY_CHECK(w.empty() || w.size() == v.size(), "reference: norm weight size mismatch");
  double sum_sq = 0;
  for (double x : v) sum_sq += x * x;
  const double inv = 1 / std::sqrt(sum_sq / static_cast<double>(v.size()) + eps);
  Vec out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = (w.empty() ? 1.0 : w[i]) * v[i] * inv;
  return out;
}

double sigmoid(double x) { return 1 / (1 + std::exp(-x)); }
double silu(double x) { return x * sigmoid(x); }
double softplus(double x) { return std::max(x, 0.0) + std::log1p(std::exp(-std::fabs(x))); }

Vec rope_frequencies(const core::ModelConfig& c, bool compressed_layer) {
  const int64_t rd = c.qk_rope_head_dim;
  FERRY_CHECK(rd > 0 && rd % 2 == 0, "reference: qk_rope_head_dim must be even and positive");
  const double base = compressed_layer ? c.compress_rope_theta : c.rope_theta;
  FERRY_CHECK(base > 1, "reference: rope base must be > 1");
  Vec f(static_cast<size_t>(rd / 2));
  for (int64_t i = 0; i < rd / 2; ++i)
    f[static_cast<size_t>(i)] = std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(rd));
  const double L = static_cast<double>(c.rope_original_max_position);
  if (!compressed_layer || L <= 0) return f;
  // YaRN: interpolate the low frequencies (long wavelengths) by 1/factor, ramping linearly between the
  // dimensions whose wavelength makes beta_fast and beta_slow rotations over the original context.
  const double drd = static_cast<double>(rd);
  auto corr = [&](double rotations) {
    return drd * std::log(L / (rotations * 2 * std::numbers::pi)) / (2 * std::log(base));
  };
  const double low = std::max(std::floor(corr(c.rope_beta_fast)), 0.0);
  double high = std::min(std::ceil(corr(c.rope_beta_slow)), drd - 1);
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < rd / 2; ++i) {
    const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
    f[static_cast<size_t>(i)] *= ramp / c.rope_factor + (1 - ramp);
  }
  return f;
}

void apply_rope(double* v, const Vec& freqs, int64_t pos, bool inverse) {
  for (size_t i = 0; i < freqs.size(); ++i) {
    const double angle = (inverse ? -1.0 : 1.0) * static_cast<double>(pos) * freqs[i];
    const double a = v[2 * i], b = v[2 * i + 1];
    v[2 * i] = a * std::cos(angle) - b * std::sin(angle);
    v[2 * i + 1] = a * std::sin(angle) + b * std::cos(angle);
  }
}

double hadamard_entry(int64_t i, int64_t j) { return std::popcount(static_cast<uint64_t>(i & j)) % 2 ? -1.0 : 1.0; }

// The matrix product written out (O(n²)), not the fast butterfly: it is the definition, and n is 128.
void hadamard(double* v, int64_t n) {
  FERRY_CHECK(n > 0 && std::has_single_bit(static_cast<uint64_t>(n)),
              "reference: Hadamard size must be a power of two");
  Vec out(static_cast<size_t>(n), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) out[static_cast<size_t>(i)] += hadamard_entry(i, j) * v[j];
  const double scale = 1 / std::sqrt(static_cast<double>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = out[static_cast<size_t>(i)] * scale;
}

TopK top_k(const Vec& score, int64_t k) {
  FERRY_CHECK(k >= 0, "reference: negative top-k");
  std::vector<int64_t> order(score.size());
  std::iota(order.begin(), order.end(), 0);
  // A stable sort on "greater" keeps equal scores in index order: the lower index wins a tie.
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return score[static_cast<size_t>(a)] > score[static_cast<size_t>(b)]; });
  TopK t;
  const size_t keep = std::min(static_cast<size_t>(k), order.size());
  if (keep > 0 && keep < order.size()) {
    t.margin = topk_margin(score[static_cast<size_t>(order[keep - 1])], score[static_cast<size_t>(order[keep])]);
    t.runner_up = order[keep];
  }
  t.ids.assign(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(keep));
  return t;
}

}  // namespace ferry::reference
