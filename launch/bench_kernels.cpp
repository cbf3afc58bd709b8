#include "launch/bench_kernels.h"

#include <tbb/parallel_for.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "planner/core/error.h"
#include "runtime/backend/worker_threads.h"
#include "runtime/kernels/cpu/matvec.h"

namespace ferry::launch {
namespace {

// The MXFP4 activation precisions: int24 and int16 run today's kernels (matvec_mxfp4.cpp), int8 the
// whole-block ones (matvec_mxfp4_int8.cpp).
constexpr core::ActivationBits kPrecisions[] = {core::ActivationBits::Int24, core::ActivationBits::Int16,
                                                core::ActivationBits::Int8};

double seconds_of(const std::function<void()>& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct Weights {
  std::vector<uint8_t> codes, scales;
};

// Filler codes that decode to ordinary values (no E4M3 NaN), scales near 2^-6.
std::vector<Weights> make_weights(size_t count, size_t code_bytes, size_t scale_bytes) {
  std::vector<Weights> w(count);
  uint32_t state = 12345;
  for (auto& m : w) {
    m.codes.resize(code_bytes);
    m.scales.assign(scale_bytes, 121);
    for (auto& b : m.codes) {
      state = state * 1664525u + 1013904223u;
      b = static_cast<uint8_t>((state >> 24) & 0x77);
    }
  }
  return w;
}

// Median GB/s of one matvec over the weights in turn.
template <class Kernel>
double kernel_gbps(std::vector<Weights>& weights, int64_t rows, int64_t cols, int reps, Kernel kernel) {
  std::vector<float> x(static_cast<size_t>(cols), 0.5f), y(static_cast<size_t>(rows));
  const double bytes = double(weights[0].codes.size() + weights[0].scales.size());
  std::vector<double> rates;
  size_t next = 0;
  for (int r = 0; r < (reps + 1) * static_cast<int>(weights.size()); ++r) {
    Weights& w = weights[next];
    next = (next + 1) % weights.size();
    const double t = seconds_of([&] { kernel(w.codes.data(), w.scales.data(), rows, cols, x.data(), y.data()); });
    if (r >= static_cast<int>(weights.size())) rates.push_back(bytes / t / 1e9);  // first pass warms up
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

// A chunk of n tokens as linear() runs it: the weight in row blocks of about 256 KiB, in parallel, each block
// either through the multi-token kernel once (`tiled`) or through the matvec once per token (the per-token
// schedule the multi-token kernels replaced). Returns the median seconds of one chunk, each over a new weight.
template <class Block>
double chunk_seconds(std::vector<Weights>& weights, int64_t rows, int64_t per_block, int reps, Block block) {
  const int64_t blocks = (rows + per_block - 1) / per_block;
  std::vector<double> times;
  size_t next = 0;
  // At least `reps` chunks and a quarter of a second, each on the next weight of the cycle (from RAM).
  for (double spent = 0; static_cast<int>(times.size()) < reps || spent < 0.25;) {
    const Weights& w = weights[next];
    next = (next + 1) % weights.size();
    times.push_back(seconds_of([&] {
      tbb::parallel_for(int64_t{0}, blocks, [&](int64_t b) {
        const int64_t r0 = b * per_block;
        block(w, r0, std::min(rows, r0 + per_block) - r0);
      });
    }));
    spent += times.back();
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

void print_chunk(const char* label, int64_t n, double flops, double bytes, double per_token_s, double tiled_s) {
  std::printf(
      "%-40s %4lld tok  per-token %6.1f GFLOP/s %6.1f GB/s eff  multi-token %6.1f GFLOP/s %6.1f GB/s eff  x%.2f\n",
      label, (long long)n, flops / per_token_s / 1e9, bytes / per_token_s / 1e9, flops / tiled_s / 1e9,
      bytes / tiled_s / 1e9, per_token_s / tiled_s);
}

// The prefill kernels at one shape: every MXFP4 path and precision, and FP8, for each token count.
void bench_chunks(int64_t rows, int64_t cols, const char* what, const std::vector<int>& token_counts, int reps,
                  std::vector<Weights>& fp4_weights, std::vector<Weights>& fp8_weights) {
  namespace cpu = runtime::cpu;
  char label[96];
  for (const int n : token_counts) {
    std::vector<float> x(size_t(n * cols)), y(size_t(n * rows));
    for (size_t i = 0; i < x.size(); ++i) x[i] = 0.25f + 0.5f * float(i % 7) / 7.0f;
    const double flops = 2.0 * double(rows) * double(cols) * n;
    for (const cpu::CpuIsa isa : cpu::mxfp4_isas()) {
      for (const auto bits : kPrecisions) {
        if (isa == cpu::CpuIsa::Portable && bits != core::ActivationBits::Int24) continue;
        std::vector<cpu::Mxfp4Activation> a(static_cast<size_t>(n));
        for (int t = 0; t < n; ++t) cpu::quantize_mxfp4_activation(x.data() + t * cols, cols, a[size_t(t)], bits);
        const int64_t row_bytes = cols / 2 + cols / 32;
        auto rows_of = [cols](const Weights& w, int64_t r0) {
          return std::make_pair(w.codes.data() + r0 * cols / 2, w.scales.data() + r0 * cols / 32);
        };
        const int64_t per_block = std::max<int64_t>(1, (256 << 10) / row_bytes);
        const double per_token =
            chunk_seconds(fp4_weights, rows, per_block, reps, [&](const Weights& w, int64_t r0, int64_t nr) {
              const auto [codes, scales] = rows_of(w, r0);
              for (int t = 0; t < n; ++t)
                cpu::detail::matvec_mxfp4_on(isa, codes, scales, nr, a[size_t(t)], y.data() + t * rows + r0);
            });
        const double tiled =
            chunk_seconds(fp4_weights, rows, per_block, reps, [&](const Weights& w, int64_t r0, int64_t nr) {
              const auto [codes, scales] = rows_of(w, r0);
              cpu::detail::matmul_mxfp4_on(isa, codes, scales, nr, a.data(), n, y.data() + r0, rows);
            });
        std::snprintf(label, sizeof label, "MXFP4 %lldx%lld (%s) %s %s", (long long)rows, (long long)cols, what,
                      cpu::isa_name(isa), core::activation_bits_name(bits));
        print_chunk(label, n, flops, double(rows * row_bytes) * n, per_token, tiled);
      }
    }
    const int64_t scale_cols = (cols + 127) / 128;
    auto rows_of = [cols, scale_cols](const Weights& w, int64_t r0) {
      return std::make_pair(w.codes.data() + r0 * cols, w.scales.data() + (r0 / 128) * scale_cols);
    };
    // FP8 row blocks on 128-row boundaries, as linear() makes them.
    const int64_t per_block = std::max<int64_t>(128, (256 << 10) / cols / 128 * 128);
    for (const cpu::CpuIsa isa : cpu::fp8_isas()) {
      if (isa == cpu::CpuIsa::Portable) continue;
      const double per_token =
          chunk_seconds(fp8_weights, rows, per_block, reps, [&](const Weights& w, int64_t r0, int64_t nr) {
            const auto [codes, scales] = rows_of(w, r0);
            for (int t = 0; t < n; ++t)
              cpu::detail::matvec_fp8_on(isa, codes, scales, nr, cols, x.data() + t * cols, y.data() + t * rows + r0);
          });
      const double tiled =
          chunk_seconds(fp8_weights, rows, per_block, reps, [&](const Weights& w, int64_t r0, int64_t nr) {
            const auto [codes, scales] = rows_of(w, r0);
            cpu::detail::matmul_fp8_on(isa, codes, scales, nr, cols, x.data(), n, cols, y.data() + r0, rows);
          });
      std::snprintf(label, sizeof label, "FP8 %lldx%lld %s", (long long)rows, (long long)cols, cpu::isa_name(isa));
      print_chunk(label, n, flops, double(rows * cols) * n, per_token, tiled);
    }
  }
}

// The last-level cache in bytes (0 when the C library does not say).
size_t last_level_cache_bytes() {
#ifdef _SC_LEVEL3_CACHE_SIZE
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (l3 > 0) return size_t(l3);
#endif
#ifdef _SC_LEVEL2_CACHE_SIZE
  const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (l2 > 0) return size_t(l2);
#endif
  return 0;
}

}  // namespace

// a = b + s * c over arrays far larger than the caches; 12 bytes move per element (two reads, one write),
// counted as STREAM counts them. Best of `reps`.
double triad_gbps(int reps) {
  const size_t n = size_t(64) << 20;  // 64 Mi floats per array: 768 MiB in all
  std::vector<float> a(n), b(n, 1.0f), c(n, 2.0f);
  const float s = 3.0f;
  double best = 1e30;
  for (int r = 0; r < reps + 1; ++r) {
    const double t = seconds_of([&] {
      tbb::parallel_for(tbb::blocked_range<size_t>(0, n, size_t(1) << 16),
                        [&](const tbb::blocked_range<size_t>& range) {
                          for (size_t i = range.begin(); i < range.end(); ++i) a[i] = b[i] + s * c[i];
                        });
    });
    if (r > 0) best = std::min(best, t);  // the first run faults the pages in
  }
  return 12.0 * double(n) / best / 1e9;
}

namespace {

// A read-only stream over 768 MiB, summed in eight integer lanes: the most a kernel that reads its weights once
// can take from this machine's RAM on these threads. Without stores (the triad's third array and the line it
// reads before writing) a matvec's ceiling is this, not the triad. Best of `reps`.
double read_gbps(int reps) {
  const size_t n = size_t(96) << 20;  // 96 Mi 8-byte words
  std::vector<uint64_t> a(n, 1);
  std::atomic<uint64_t> total{0};
  double best = 1e30;
  for (int r = 0; r < reps + 1; ++r) {
    const double t = seconds_of([&] {
      tbb::parallel_for(tbb::blocked_range<size_t>(0, n, size_t(1) << 16),
                        [&](const tbb::blocked_range<size_t>& range) {
                          uint64_t lane[8] = {};
                          size_t i = range.begin();
                          for (; i + 8 <= range.end(); i += 8)
                            for (int k = 0; k < 8; ++k) lane[k] += a[i + size_t(k)];
                          uint64_t sum = 0;
                          for (; i < range.end(); ++i) sum += a[i];
                          for (uint64_t v : lane) sum += v;
                          total.fetch_add(sum, std::memory_order_relaxed);
                        });
    });
    if (r > 0) best = std::min(best, t);
  }
  FERRY_CHECK(total.load() == uint64_t(reps + 1) * n, "read stream summed {} of {} words", total.load(),
              uint64_t(reps + 1) * n);
  return 8.0 * double(n) / best / 1e9;
}

// The benchmark, run in the workers' arena: every parallel loop uses their threads, each single-thread kernel the
// calling thread on its core.
void run_in_arena(int repetitions, int working_set_mib, const std::vector<int>& token_counts) {
  const size_t llc = last_level_cache_bytes();
  if (working_set_mib <= 0) working_set_mib = static_cast<int>(std::max<size_t>(256, 2 * (llc >> 20)));
  const double triad = triad_gbps(repetitions), read = read_gbps(repetitions);
  std::printf("ferry bench kernels: %s, last-level cache %zu MiB, %d MiB of weights cycled\n",
              runtime::worker_threads_text().c_str(), llc >> 20, working_set_mib);
  std::printf(
      "MXFP4 rows: code path, then the activation precision (int24: the forward pass's default, as exact as\n"
      "float; int16 / int8: ferry run --expert-activations int16 / int8; int8 runs the whole-block kernels)\n");
  std::printf("%-40s %8.1f GB/s\n", "triad (a = b + s*c)", triad);
  std::printf("%-40s %8.1f GB/s  %5.0f%% of triad: a matvec's ceiling\n", "read (sum of a)", read, 100 * read / triad);
  struct Shape {
    int64_t rows, cols;
    const char* what;
  };
  for (const Shape s : {Shape{2048, 4096, "w1/w3"}, Shape{4096, 2048, "w2"}}) {
    const size_t fp4 = size_t(s.rows * s.cols / 2), fp4_scales = size_t(s.rows * s.cols / 32);
    const size_t fp8 = size_t(s.rows * s.cols), fp8_scales = size_t(((s.rows + 127) / 128) * ((s.cols + 127) / 128));
    auto count = [&](size_t bytes) { return std::max<size_t>(2, (size_t(working_set_mib) << 20) / bytes); };
    char label[96];
    auto fp4_weights = make_weights(count(fp4 + fp4_scales), fp4, fp4_scales);
    for (const runtime::cpu::CpuIsa isa : runtime::cpu::mxfp4_isas()) {
      for (const auto bits : kPrecisions) {
        if (isa == runtime::cpu::CpuIsa::Portable && bits != core::ActivationBits::Int24) continue;
        // Timed with the activation's rounding, as a decode step pays it once per matvec.
        auto kernel = [isa, bits](const uint8_t* codes, const uint8_t* scales, int64_t rows, int64_t cols,
                                  const float* x, float* y) {
          runtime::cpu::Mxfp4Activation a;
          runtime::cpu::quantize_mxfp4_activation(x, cols, a, bits);
          runtime::cpu::detail::matvec_mxfp4_on(isa, codes, scales, rows, a, y);
        };
        const double g4 = kernel_gbps(fp4_weights, s.rows, s.cols, repetitions, kernel);
        std::snprintf(label, sizeof label, "MXFP4 %lldx%lld (%s) %s %s", (long long)s.rows, (long long)s.cols, s.what,
                      runtime::cpu::isa_name(isa), core::activation_bits_name(bits));
        std::printf("%-40s %8.1f GB/s  %5.0f%% of triad  %5.0f%% of read\n", label, g4, 100 * g4 / triad,
                    100 * g4 / read);
      }
    }
    auto fp8_weights = make_weights(count(fp8 + fp8_scales), fp8, fp8_scales);
    for (const runtime::cpu::CpuIsa isa : runtime::cpu::fp8_isas()) {
      auto kernel = [isa](const uint8_t* codes, const uint8_t* scales, int64_t rows, int64_t cols, const float* x,
                          float* y) { runtime::cpu::detail::matvec_fp8_on(isa, codes, scales, rows, cols, x, y); };
      const double g8 = kernel_gbps(fp8_weights, s.rows, s.cols, repetitions, kernel);
      std::snprintf(label, sizeof label, "FP8 %lldx%lld %s", (long long)s.rows, (long long)s.cols,
                    runtime::cpu::isa_name(isa));
      std::printf("%-40s %8.1f GB/s  %5.0f%% of triad  %5.0f%% of read\n", label, g8, 100 * g8 / triad,
                  100 * g8 / read);
    }
    if (!token_counts.empty()) {
      std::printf(
          "prefill chunks of n tokens through linear()'s row blocks, per-token matvecs vs the multi-token kernel\n"
          "(activations already rounded; eff GB/s = weight bytes x tokens / time):\n");
      bench_chunks(s.rows, s.cols, s.what, token_counts, repetitions, fp4_weights, fp8_weights);
    }
  }
}

}  // namespace

void run_kernel_bench(int repetitions, int working_set_mib, const std::vector<int>& token_counts) {
  // The forward pass's threads: one per physical core (or --threads), each pinned to its core.
  runtime::WorkerArena workers;
  workers.execute([&] { run_in_arena(repetitions, working_set_mib, token_counts); });
}

}  // namespace ferry::launch
