#include "runtime/generate/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "planner/core/error.h"

namespace ferry::runtime {

int32_t argmax(std::span<const float> logits) {
  FERRY_CHECK(!logits.empty(), "argmax of no logits");
  size_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<int32_t>(best);
}

Sampler::Sampler(SamplerOptions o) : o_(o), rng_(o.seed) {
  FERRY_CHECK(o.temperature >= 0 && std::isfinite(o.temperature), "--temp must be a non-negative number");
  FERRY_CHECK(o.top_p > 0 && o.top_p <= 1, "--top-p must be in (0, 1]");
  FERRY_CHECK(o.top_k >= 0, "--top-k must be non-negative");
}

int32_t Sampler::sample(std::span<const float> logits) {
  if (o_.temperature == 0) return argmax(logits);
  std::vector<int32_t> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  auto more_likely = [&](int32_t a, int32_t b) { return logits[a] != logits[b] ? logits[a] > logits[b] : a < b; };
  size_t keep = ids.size();
  if (o_.top_k > 0) keep = std::min(keep, static_cast<size_t>(o_.top_k));
  std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(keep), ids.end(), more_likely);
  ids.resize(keep);
  std::vector<double> p(keep);
  const double mx = logits[ids[0]];
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) sum += (p[i] = std::exp((logits[ids[i]] - mx) / o_.temperature));
  double cum = 0;
  size_t cut = keep;
  for (size_t i = 0; i < keep; ++i) {
    cum += p[i] / sum;
    if (cum >= o_.top_p) {
      cut = i + 1;
      break;
    }
  }
  std::discrete_distribution<size_t> pick(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(cut));
  return ids[pick(rng_)];
}

}  // namespace ferry::runtime
