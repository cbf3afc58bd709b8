// Shared pieces of the forward-pass tests: a tiny model made once per test binary, the prompt, runtime runs
// and the comparison statistics against the float64 reference.
#pragma once

#include <unistd.h>
#include <algorithm>
#include <cmath>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "runtime/backend/cpu_backend.h"
#include "runtime/checkpoint/tiny_model.h"
#include "runtime/generate/generate.h"
#include "runtime/model/model_weights.h"

namespace ferry::testing {

// A tiny checkpoint made with `options` in the temporary directory as NAME-PID, removed when the process exits.
inline std::filesystem::path temp_tiny_model(const std::string& name, const runtime::TinyOptions& options) {
  static std::vector<std::filesystem::path> made;  // constructed before the handler is registered: outlives it
  const auto dir = std::filesystem::temp_directory_path() / (name + "-" + std::to_string(::getpid()));
  runtime::make_tiny_model(dir, options);
  if (made.empty())
    std::atexit([] {
      std::error_code ec;
      for (const auto& d : made) std::filesystem::remove_all(d, ec);
    });
  made.push_back(dir);
  return dir;
}

inline std::filesystem::path tiny_model_dir() {
  static const std::filesystem::path dir = temp_tiny_model("ferry-forward-test", {});
  return dir;
}

// A host backend standing in for a device that has no kernel for some ops.
class BackendWithout final : public runtime::cpu::CpuBackend {
 public:
  BackendWithout(std::string name, std::vector<runtime::ops::Kind> missing,
                 int64_t capacity = runtime::MemoryLedger::kUnplanned)
      : CpuBackend(std::move(name), capacity), missing_(std::move(missing)) {}
  bool supports(runtime::ops::Kind k) const override {
    return std::find(missing_.begin(), missing_.end(), k) == missing_.end();
  }

 private:
  std::vector<runtime::ops::Kind> missing_;
};

inline const runtime::ModelWeights& tiny_model() {
  static const runtime::ModelWeights m = runtime::ModelWeights::load(tiny_model_dir());
  return m;
}

// A fixed pseudo-random prompt over the tiny vocabulary (ids 3 … vocab−1, after the special tokens).
inline std::vector<int32_t> prompt_tokens(int64_t n, uint64_t seed = 1) {
  std::vector<int32_t> t;
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 12345;
  for (int64_t i = 0; i < n; ++i) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    t.push_back(static_cast<int32_t>(3 + (x >> 33) % 509));
  }
  return t;
}

// ||a − b|| / ||b|| over one row of logits.
inline double rel_err(const float* a, const double* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}
inline double rel_err(const float* a, const float* b, int64_t n) {
  std::vector<double> bd(b, b + n);
  return rel_err(a, bd.data(), n);
}

template <class T>
int64_t argmax_of(const T* v, int64_t n) {
  return std::max_element(v, v + n) - v;
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

inline double fraction_at_most(const std::vector<double>& v, double bound) {
  return static_cast<double>(std::count_if(v.begin(), v.end(), [&](double e) { return e <= bound; })) /
         static_cast<double>(v.size());
}

}  // namespace ferry::testing
