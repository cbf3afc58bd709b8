#include "launch/bench_context.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "launch/engine_setup.h"
#include "planner/core/error.h"
#include "planner/core/units.h"
#include "planner/kv_cache.h"
#include "runtime/backend/worker_threads.h"
#include "runtime/checkpoint/tiny_model.h"
#include "runtime/generate/sampler.h"
#include "runtime/kernels/cpu/matvec.h"
#include "runtime/model/forward.h"

namespace ferry::launch {
namespace {

struct Options {
  EngineFlags engine;
  CLI::App* app = nullptr;
  std::string levels = "1K,16K,128K";
  int64_t decode = 16;
};

double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<int64_t> parse_levels(const std::string& text) {
  std::vector<int64_t> levels;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) levels.push_back(core::parse_count(item, "--levels"));
  FERRY_CHECK(!levels.empty() && std::is_sorted(levels.begin(), levels.end()) && levels.front() >= 1,
              "--levels must be increasing context lengths, e.g. 1K,16K,128K");
  return levels;
}

// The built-in default: a tiny model with V4's real window (128) and ratios (4 / 128), removed at the end.
std::shared_ptr<void> make_default_model(std::string& model) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("ferry-bench-context-" + std::to_string(::getpid()));
  runtime::TinyOptions t;
  t.real_ratios = true;
  runtime::make_tiny_model(dir, t);
  model = dir.string();
  return {static_cast<void*>(nullptr), [dir](void*) {
            std::error_code ec;
            std::filesystem::remove_all(dir, ec);
          }};
}

// Feeds each level's new tokens (pseudo-random ids) and then decodes, printing a row per level.
void measure_levels(runtime::Session& s, int64_t vocab, const std::vector<int64_t>& levels, int64_t decode) {
  uint64_t x = 42;
  auto next_token = [&] {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<int32_t>(3 + (x >> 33) % static_cast<uint64_t>(vocab - 3));
  };
  std::printf("%10s %14s %14s %16s %14s\n", "context", "prefill tok/s", "prefill s", "decode ms/token", "kv cache");
  std::vector<float> last;
  for (int64_t level : levels) {
    std::vector<int32_t> prompt(static_cast<size_t>(std::max<int64_t>(level - s.position(), 0)));
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
    for (int64_t i = 0; i < decode; ++i) {
      const int32_t tok = runtime::argmax(last);
      s.feed({&tok, 1}, nullptr, &last);
    }
    const double decode_ms = since(t0) * 1000 / static_cast<double>(decode);
    std::printf("%10lld %14.1f %14.2f %16.3f %14s\n", static_cast<long long>(level),
                static_cast<double>(prompt.size()) / std::max(prefill_s, 1e-9), prefill_s, decode_ms,
                core::format_bytes(planner::kv_total(s.cache().bytes())).c_str());
    std::fflush(stdout);
  }
}

int run(Options& o) {
  const std::vector<int64_t> levels = parse_levels(o.levels);
  std::shared_ptr<void> cleanup;
  const bool tiny = o.engine.model.empty();
  if (tiny) cleanup = make_default_model(o.engine.model);
  // Planned like `ferry run` (placement flags, --plan, mpirun), for the last level plus the decoded tokens.
  EngineSetup setup(o.engine, *o.app, levels.back() + o.decode + 1);
  FERRY_CHECK(setup.planned().ctx >= levels.back() + o.decode,
              "--ctx {} is smaller than the last level {} plus --decode {}", setup.planned().ctx, levels.back(),
              o.decode);
  setup.load();
  runtime::Session s(setup.weights(), setup.session_options());
  if (!setup.leads()) {
    setup.ranks()->follow(s);
    setup.report(s);  // collective: rank 0 prints every rank's
    return 0;
  }
  const runtime::SessionOptions& so = s.options();
  std::printf("ferry bench context: %s (%s), kv %s, ubatch %lld, kernels %s, %s%s\n",
              tiny ? "tiny model, real ratios" : o.engine.model.c_str(), setup.checkpoint().config().name.c_str(),
              std::string(planner::kv_type_name(so.kv_type)).c_str(), static_cast<long long>(so.ubatch),
              runtime::cpu::matvec_isa(), runtime::worker_threads_text().c_str(),
              setup.offload() ? (", on " + o.engine.offload.gpu).c_str() : "");
  measure_levels(s, setup.checkpoint().config().vocab_size, levels, o.decode);
  setup.finish();
  std::cerr << setup.report(s);
  return 0;
}

}  // namespace

std::function<int()> add_context_bench(CLI::App& bench, CLI::App*& sub) {
  auto o = std::make_shared<Options>();
  sub = bench.add_subcommand("context", "Prefill tok/s and decode ms/token of the forward pass as the context grows");
  o->app = sub;
  o->engine.add_to(*sub, "Context per sequence (default: the last level plus --decode)",
                   "a tiny model with V4's real window and ratios");
  sub->add_option("--levels", o->levels, "Increasing context lengths to measure at (default 1K,16K,128K)");
  sub->add_option("--decode", o->decode, "Tokens decoded at each level (default 16)")->check(CLI::Range(1, 100000));
  return [o] { return run(*o); };
}

}  // namespace ferry::launch
