#include "launch/bench_context.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "planner/core/error.h"
#include "planner/core/units.h"
#include "planner/kv_cache.h"
#include "runtime/checkpoint/tiny_model.h"
#include "runtime/generate/sampler.h"
#include "runtime/kernels/cpu/matvec.h"
#include "runtime/model/forward.h"

namespace ferry::launch {
namespace {

struct Options {
  std::string model, levels = "1K,16K,128K", kv_type = "fp8";
  int64_t decode = 16, ubatch = 512;
};

double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int run(const Options& o) {
  std::vector<int64_t> levels;
  std::stringstream in(o.levels);
  for (std::string item; std::getline(in, item, ',');) levels.push_back(core::parse_count(item, "--levels"));
  FERRY_CHECK(!levels.empty() && std::is_sorted(levels.begin(), levels.end()) && levels.front() >= 1,
              "--levels must be increasing context lengths, e.g. 1K,16K,128K");
  std::filesystem::path dir = o.model;
  std::shared_ptr<void> cleanup;
  if (dir.empty()) {  // built-in default: a tiny model with V4's real window (128) and ratios (4 / 128)
    dir = std::filesystem::temp_directory_path() / ("ferry-bench-context-" + std::to_string(::getpid()));
    runtime::TinyOptions t;
    t.real_ratios = true;
    runtime::make_tiny_model(dir, t);
    cleanup.reset(static_cast<void*>(nullptr), [dir](void*) {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    });
  }
  const runtime::ModelWeights model = runtime::ModelWeights::load(dir);
  const auto& c = model.config();
  const planner::KvType kv = *planner::kv_type_from_name(o.kv_type);
  const int64_t ctx = levels.back() + o.decode + 1;
  runtime::Session s(model, {.ctx = ctx, .kv_type = kv, .ubatch = o.ubatch});
  std::printf("ferry bench context: %s (%s), kv %s, ubatch %lld, kernels %s, %d threads\n",
              o.model.empty() ? "tiny model, real ratios" : o.model.c_str(), c.name.c_str(), o.kv_type.c_str(),
              static_cast<long long>(o.ubatch), runtime::cpu::matvec_isa(),
              static_cast<int>(std::thread::hardware_concurrency()));
  std::printf("%10s %14s %14s %16s %14s\n", "context", "prefill tok/s", "prefill s", "decode ms/token", "kv cache");
  uint64_t x = 42;
  auto next_token = [&] {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<int32_t>(3 + (x >> 33) % static_cast<uint64_t>(c.vocab_size - 3));
  };
  std::vector<float> last;
  for (int64_t level : levels) {
    const int64_t n = level - s.position();
    std::vector<int32_t> prompt(static_cast<size_t>(std::max<int64_t>(n, 0)));
    for (auto& t : prompt) t = next_token();
    auto t0 = std::chrono::steady_clock::now();
    if (!prompt.empty())
      s.feed(prompt, nullptr, &last, [&](int64_t done, int64_t total) {
        if (isatty(STDERR_FILENO))
          std::fprintf(stderr, "\rprefill to %lld: %lld/%lld", static_cast<long long>(level),
                       static_cast<long long>(done), static_cast<long long>(total));
      });
    const double prefill_s = since(t0);
    if (isatty(STDERR_FILENO)) std::fprintf(stderr, "\r%60s\r", "");
    t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < o.decode; ++i) {
      const int32_t tok = runtime::argmax(last);
      s.feed({&tok, 1}, nullptr, &last);
    }
    const double decode_ms = since(t0) * 1000 / static_cast<double>(std::max<int64_t>(o.decode, 1));
    std::printf("%10lld %14.1f %14.2f %16.3f %14s\n", static_cast<long long>(level),
                static_cast<double>(prompt.size()) / std::max(prefill_s, 1e-9), prefill_s, decode_ms,
                core::format_bytes(planner::kv_total(s.cache().bytes())).c_str());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

std::function<int()> add_context_bench(CLI::App& bench, CLI::App*& sub) {
  auto o = std::make_shared<Options>();
  sub =
      bench.add_subcommand("context", "Prefill tok/s and decode ms/token of the CPU forward pass as the context grows");
  sub->add_option("--model,-m", o->model,
                  "Checkpoint directory (default: a tiny model with V4's real window and ratios)");
  sub->add_option("--levels", o->levels, "Increasing context lengths to measure at (default 1K,16K,128K)");
  sub->add_option("--decode", o->decode, "Tokens decoded at each level (default 16)")->check(CLI::Range(1, 100000));
  sub->add_option("--kv-type", o->kv_type, "KV-cache storage (default fp8)")
      ->check(CLI::IsMember({"fp8", "bf16", "q8_0", "q4_0"}));
  sub->add_option("--ubatch", o->ubatch, "Prefill chunk (default 512)")->check(CLI::Range(1, 65536));
  return [o] { return run(*o); };
}

}  // namespace ferry::launch
