#include "launch/perplexity_scoring.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace ferry::launch {

RowSummary summarize_row(std::span<const float> row) {
  RowSummary s;
  s.max = row[0];
  for (size_t i = 1; i < row.size(); ++i) {
    if (row[i] > s.max) {
      s.max = row[i];
      s.argmax = static_cast<int32_t>(i);
    }
  }
  double sum = 0;
  for (const float v : row) sum += std::exp(static_cast<double>(v) - s.max);
  s.log_sum_exp = s.max + std::log(sum);
  return s;
}

std::vector<int32_t> top_ids(std::span<const float> row, int k) {
  std::vector<int32_t> ids(row.size());
  std::iota(ids.begin(), ids.end(), 0);
  const auto mid = ids.begin() + std::min<ptrdiff_t>(k, static_cast<ptrdiff_t>(ids.size()));
  std::partial_sort(ids.begin(), mid, ids.end(),
                    [&](int32_t a, int32_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
  ids.erase(mid, ids.end());
  return ids;
}

void bucket_log_probs(std::span<const float> row, const RowSummary& s, std::span<const int32_t> ids,
                      std::span<float> logp, float* log_tail, std::vector<char>& mask) {
  for (size_t i = 0; i < ids.size(); ++i) {
    logp[i] = static_cast<float>(row[ids[i]] - s.log_sum_exp);
    mask[ids[i]] = 1;
  }
  // The tail summed directly rather than as 1 - sum(top): that difference would cancel to noise when the top
  // holds nearly all the mass.
  double rest = 0;
  for (size_t i = 0; i < row.size(); ++i)
    if (!mask[i]) rest += std::exp(static_cast<double>(row[i]) - s.max);
  for (const int32_t id : ids) mask[id] = 0;
  *log_tail =
      rest > 0 ? static_cast<float>(s.max + std::log(rest) - s.log_sum_exp) : -std::numeric_limits<float>::infinity();
}

double bucket_kl(std::span<const float> base_logp, float base_log_tail, std::span<const float> this_logp,
                 float this_log_tail) {
  double kl = 0;
  for (size_t i = 0; i < base_logp.size(); ++i)
    kl += std::exp(static_cast<double>(base_logp[i])) * (static_cast<double>(base_logp[i]) - this_logp[i]);
  // A bucket the base gives no mass adds nothing (0 * log 0 = 0), even where this run gives it none either.
  if (std::isfinite(base_log_tail))
    kl += std::exp(static_cast<double>(base_log_tail)) * (static_cast<double>(base_log_tail) - this_log_tail);
  return kl;
}

double NllSum::ppl() const { return std::exp(mean()); }

double NllSum::ppl_error() const {
  if (count_ < 2) return 0.0;
  const double n = static_cast<double>(count_);
  const double var = sum2_ / n - mean() * mean();
  return var > 0 ? std::sqrt(var / (n - 1)) * ppl() : 0.0;
}

double standard_error(const std::vector<double>& values) {
  if (values.size() < 2) return 0.0;
  const double n = static_cast<double>(values.size());
  double sum = 0, sum2 = 0;
  for (const double v : values) {
    sum += v;
    sum2 += v * v;
  }
  const double var = sum2 / n - (sum / n) * (sum / n);
  return var > 0 ? std::sqrt(var / (n - 1)) : 0.0;
}

double quantile(const std::vector<double>& sorted, double fraction) {
  if (sorted.empty()) return 0.0;
  const double at = fraction * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(at);
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (at - static_cast<double>(lo)) * (sorted[hi] - sorted[lo]);
}

}  // namespace ferry::launch
