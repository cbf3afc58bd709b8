#include "runtime/kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

#include "planner/core/error.h"

namespace ferry::runtime::cpu {

void rms_norm(const float* x, const float* w, int64_t n, double eps, float* out) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float r = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
  for (int64_t i = 0; i < n; ++i) out[i] = (w ? w[i] : 1.0f) * (x[i] * r);
}

Rope::Rope(const core::ModelConfig& c, bool compressed) {
  const int64_t rd = c.qk_rope_head_dim;
  FERRY_CHECK(rd > 0 && rd % 2 == 0, "config: qk_rope_head_dim must be even and positive");
  const double base = compressed ? c.compress_rope_theta : c.rope_theta;
  freqs_.resize(static_cast<size_t>(rd / 2));
  for (int64_t i = 0; i < rd / 2; ++i) freqs_[static_cast<size_t>(i)] = std::pow(base, -2.0 * i / rd);
  const double L = static_cast<double>(c.rope_original_max_position);
  if (!compressed || L <= 0) return;
  // YaRN: frequencies below the correction range are divided by the factor, those above kept, a linear ramp between.
  auto corr = [&](double rotations) {
    return rd * std::log(L / (rotations * 2 * std::numbers::pi)) / (2 * std::log(base));
  };
  const double low = std::max(std::floor(corr(c.rope_beta_fast)), 0.0);
  double high = std::min(std::ceil(corr(c.rope_beta_slow)), static_cast<double>(rd - 1));
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < rd / 2; ++i) {
    const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
    freqs_[static_cast<size_t>(i)] *= ramp / c.rope_factor + (1 - ramp);
  }
}

void rope_rotate(float* v, const double* freqs, int64_t count, int64_t pos, bool inverse) {
  const double sign = inverse ? -1.0 : 1.0;
  for (int64_t i = 0; i < count; ++i) {
    const double angle = sign * static_cast<double>(pos) * freqs[i];
    const float c = static_cast<float>(std::cos(angle)), s = static_cast<float>(std::sin(angle));
    const float a = v[2 * i], b = v[2 * i + 1];
    v[2 * i] = a * c - b * s;
    v[2 * i + 1] = a * s + b * c;
  }
}

void hadamard(float* v, int64_t n) {
  FERRY_CHECK(n > 0 && (n & (n - 1)) == 0, "hadamard: size must be a power of two");
  for (int64_t h = 1; h < n; h *= 2)
    for (int64_t i = 0; i < n; i += 2 * h)
      for (int64_t j = i; j < i + h; ++j) {
        const float a = v[j], b = v[j + h];
        v[j] = a + b;
        v[j + h] = a - b;
      }
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(n)));
  for (int64_t i = 0; i < n; ++i) v[i] *= scale;
}

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

namespace {

// mix = (fn · flatten(H)) / sqrt(mean(H²) + eps), rows of fn in double for a 4·d-long dot product. Each sum is
// one sequential chain; kMixRows rows (and the sum of squares) step through H together, so that their chains
// overlap instead of each waiting on its own adds, with every sum's order unchanged.
void hc_mixes(const float* H, int64_t n, const float* fn, int64_t rows, double eps, float* mix) {
  constexpr int64_t kMixRows = 8;
  std::vector<double> sums(static_cast<size_t>(rows));
  double ss = 0;
  for (int64_t m0 = 0; m0 < rows; m0 += kMixRows) {
    const int64_t mr = std::min(kMixRows, rows - m0);
    double acc[kMixRows] = {};
    for (int64_t i = 0; i < n; ++i) {
      const double h = H[i];
      if (m0 == 0) ss += h * h;
      for (int64_t m = 0; m < mr; ++m) acc[m] += static_cast<double>(fn[(m0 + m) * n + i]) * h;
    }
    std::copy_n(acc, mr, sums.begin() + m0);
  }
  const double r = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
  for (int64_t m = 0; m < rows; ++m) mix[m] = static_cast<float>(sums[size_t(m)] * r);
}

}  // namespace

void hc_pre(const float* H, int64_t hc, int64_t d, const float* fn, const float* scale, const float* base,
            int64_t sinkhorn_iters, double hc_eps, double norm_eps, HcMix& m, float* x) {
  const int64_t rows = (2 + hc) * hc;
  std::vector<float> mix(static_cast<size_t>(rows));
  hc_mixes(H, hc * d, fn, rows, norm_eps, mix.data());
  const float eps = static_cast<float>(hc_eps);
  for (int64_t s = 0; s < hc; ++s) {
    m.pre[s] = sigmoid(mix[s] * scale[0] + base[s]) + eps;
    m.post[s] = 2 * sigmoid(mix[hc + s] * scale[1] + base[hc + s]);
  }
  float* C = m.comb;
  for (int64_t i = 0; i < hc * hc; ++i) C[i] = mix[2 * hc + i] * scale[2] + base[2 * hc + i];
  auto col_normalise = [&] {
    for (int64_t j = 0; j < hc; ++j) {
      float s = 0;
      for (int64_t i = 0; i < hc; ++i) s += C[i * hc + j];
      for (int64_t i = 0; i < hc; ++i) C[i * hc + j] /= s + eps;
    }
  };
  for (int64_t i = 0; i < hc; ++i) {  // row softmax + eps
    float mx = C[i * hc];
    for (int64_t j = 1; j < hc; ++j) mx = std::max(mx, C[i * hc + j]);
    float s = 0;
    for (int64_t j = 0; j < hc; ++j) s += (C[i * hc + j] = std::exp(C[i * hc + j] - mx));
    for (int64_t j = 0; j < hc; ++j) C[i * hc + j] = C[i * hc + j] / s + eps;
  }
  col_normalise();
  for (int64_t it = 1; it < sinkhorn_iters; ++it) {
    for (int64_t i = 0; i < hc; ++i) {
      float s = 0;
      for (int64_t j = 0; j < hc; ++j) s += C[i * hc + j];
      for (int64_t j = 0; j < hc; ++j) C[i * hc + j] /= s + eps;
    }
    col_normalise();
  }
  for (int64_t k = 0; k < d; ++k) {
    float acc = 0;
    for (int64_t s = 0; s < hc; ++s) acc += m.pre[s] * H[s * d + k];
    x[k] = acc;
  }
}

void hc_post(const float* y, const HcMix& m, int64_t hc, int64_t d, float* H) {
  std::vector<float> old(H, H + hc * d);
  for (int64_t j = 0; j < hc; ++j)
    for (int64_t k = 0; k < d; ++k) {
      float acc = m.post[j] * y[k];
      for (int64_t i = 0; i < hc; ++i) acc += m.comb[i * hc + j] * old[i * d + k];
      H[j * d + k] = acc;
    }
}

void hc_head(const float* H, int64_t hc, int64_t d, const float* fn, const float* scale, const float* base,
             double hc_eps, double norm_eps, float* y) {
  std::vector<float> mix(static_cast<size_t>(hc));
  hc_mixes(H, hc * d, fn, hc, norm_eps, mix.data());
  std::vector<float> w(static_cast<size_t>(hc));
  for (int64_t s = 0; s < hc; ++s) w[s] = sigmoid(mix[s] * scale[0] + base[s]) + static_cast<float>(hc_eps);
  for (int64_t k = 0; k < d; ++k) {
    float acc = 0;
    for (int64_t s = 0; s < hc; ++s) acc += w[s] * H[s * d + k];
    y[k] = acc;
  }
}

}  // namespace ferry::runtime::cpu
