// The numbers of `ferry perplexity`, from logits rows: the negative log-likelihood of the next token (in double,
// from a log-sum-exp of the row), a base run's top-K log-probabilities plus the log of the rest's mass, the KL
// divergence of another run from them, and the running statistics (perplexity and its standard error as
// llama-perplexity reports them, percentiles).
//
// The KL divergence is computed over K+1 buckets: the base's top-K tokens one by one and one bucket for the rest
// of the vocabulary, the same buckets for both runs. Merging tokens can only lose divergence (the log-sum
// inequality), so the value is a lower bound of the full-vocabulary KL that misses only how the two runs share out
// the tail's mass among themselves; it is exactly 0 when the runs' logits are identical (both sides' numbers come
// from the same function and are rounded to float the same way).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace ferry::launch {

// log(sum(exp(row))) in double, and the row's argmax (the lowest id among equal maxima).
struct RowSummary {
  float max = 0;
  double log_sum_exp = 0;
  int32_t argmax = 0;
};
RowSummary summarize_row(std::span<const float> row);

// The K most likely ids of a row, most likely first, the lowest id first among equal logits.
std::vector<int32_t> top_ids(std::span<const float> row, int k);

// Log-probabilities of `ids` in `row` and the log of the mass of every other id (-inf when there is none), each
// rounded to float. `mask` is scratch of the row's size (all false on entry and on return).
void bucket_log_probs(std::span<const float> row, const RowSummary& s, std::span<const int32_t> ids,
                      std::span<float> logp, float* log_tail, std::vector<char>& mask);

// KL(base || this) over the buckets of bucket_log_probs: `base_*` from the base run, `this_*` from this run's
// row for the same ids.
double bucket_kl(std::span<const float> base_logp, float base_log_tail, std::span<const float> this_logp,
                 float this_log_tail);

// Sums of the per-position negative log-likelihoods: the perplexity exp(mean) and its standard error, as
// llama-perplexity estimates it: the standard error of the mean NLL, sqrt(var / (n - 1)), times the perplexity
// (the derivative of exp).
class NllSum {
 public:
  void add(double nll) {
    sum_ += nll;
    sum2_ += nll * nll;
    ++count_;
  }
  int64_t count() const { return count_; }
  double mean() const { return count_ ? sum_ / static_cast<double>(count_) : 0.0; }
  double ppl() const;
  double ppl_error() const;  // 0 with fewer than 2 positions or no spread

 private:
  double sum_ = 0, sum2_ = 0;
  int64_t count_ = 0;
};

// The standard error of the mean of `values`: sqrt(var / (n - 1)), 0 with fewer than 2.
double standard_error(const std::vector<double>& values);
// The `fraction` quantile of sorted `values`, linear between neighbours (NumPy's default).
double quantile(const std::vector<double>& sorted, double fraction);

}  // namespace ferry::launch
