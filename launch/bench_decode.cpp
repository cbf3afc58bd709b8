#include "launch/bench_decode.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "launch/bench_kernels.h"
#include "launch/engine_setup.h"
#include "launch/run_offload.h"
#include "planner/calibration.h"
#include "planner/core/error.h"
#include "planner/core/file_io.h"
#include "planner/core/model_config.h"
#include "planner/core/units.h"
#include "planner/model_spec.h"
#include "planner/plan.h"
#include "runtime/backend/sim_backend.h"
#include "runtime/backend/worker_threads.h"
#include "runtime/checkpoint/tiny_model.h"
#include "runtime/model/forward.h"

namespace ferry::launch {
namespace {

using Clock = std::chrono::steady_clock;
using runtime::OpPhase;
using runtime::OpProfile;

struct Options {
  EngineFlags engine;
  CLI::App* app = nullptr;
  std::string shape = "flash";
  int64_t layers = 2, experts = 32, steps = 4;
  std::string calibration_out;
  std::string calibration_in;  // rates measured by an earlier run, to predict this one with
  std::string machine;         // set by the caller
  bool synthetic = false;      // the bench's own model (no --model)
};

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The synthetic model's config.json: V4-Flash's shapes (or the tiny model's, `--shape tiny`) with `layers`
// layers alternating CSA (ratio 4) and HCA (ratio 128), `experts` routed experts, score routing in every layer
// (the router's real work) and the tiny vocabulary (the head is not what is measured).
nlohmann::json bench_config(const Options& o) {
  runtime::TinyOptions t;
  t.real_ratios = true;
  nlohmann::json j = o.shape == "tiny" ? runtime::tiny_config_json(t) : core::preset_config_json("deepseek-v4-flash");
  nlohmann::json ratios = nlohmann::json::array();
  for (int64_t l = 0; l < o.layers; ++l) ratios.push_back(l % 2 == 0 ? 4 : 128);
  ratios.push_back(0);  // the MTP layer (not run)
  j["num_hidden_layers"] = o.layers;
  j["compress_ratios"] = ratios;
  j["num_hash_layers"] = 0;
  j["n_routed_experts"] = o.experts;
  j["num_experts_per_tok"] = std::min<int64_t>(j["num_experts_per_tok"].get<int64_t>(), o.experts);
  j["vocab_size"] = 512;
  return j;
}

std::shared_ptr<void> make_model(const Options& o, std::string& model) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("ferry-bench-decode-" + std::to_string(::getpid()));
  runtime::TinyOptions t;
  t.real_ratios = true;
  t.overrides = bench_config(o);
  runtime::make_tiny_model(dir, t);
  model = dir.string();
  return {static_cast<void*>(nullptr), [dir](void*) {
            std::error_code ec;
            std::filesystem::remove_all(dir, ec);
          }};
}

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint64_t& x) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& v : t) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    v = static_cast<int32_t>(3 + (x >> 33) % static_cast<uint64_t>(vocab - 3));
  }
  return t;
}

// Copies `src` (rows of `row` bytes, `have` of them) cyclically into the first `want` rows of `dst`.
void repeat_rows(const uint8_t* src, int64_t have, uint8_t* dst, int64_t want, int64_t row) {
  for (int64_t r = 0; r < want; r += have) {
    const int64_t m = std::min(have, want - r);
    std::memcpy(dst + r * row, src, static_cast<size_t>(m * row));
  }
}

// Fills `s`'s cache to `fill` positions without computing them: a short prefill in a scratch session gives real
// rows, which are repeated over the whole context (attention and the indexer then scan `fill` positions' rows). The
// scratch session runs on the CPU from the checkpoint, outside the device's plan.
void fill_cache(runtime::Session& s, const runtime::ModelWeights& checkpoint, int64_t fill, int64_t vocab,
                uint64_t& seed) {
  const int64_t seed_len = std::min<int64_t>(fill, 1024);
  runtime::SessionOptions so;
  so.ctx = seed_len;
  so.kv_type = s.options().kv_type;
  so.ubatch = s.options().ubatch;
  runtime::Session scratch(checkpoint, so);
  scratch.feed(random_tokens(seed_len, vocab, seed), nullptr, nullptr);
  std::vector<int32_t> tokens = scratch.tokens();
  const std::vector<int32_t> more = random_tokens(fill - seed_len, vocab, seed);
  tokens.insert(tokens.end(), more.begin(), more.end());
  const runtime::KvCache& from = scratch.cache();
  s.restore([&](runtime::KvCache& to, runtime::KvSnapshots&) {
    for (int64_t l = 0; l < to.n_layers(); ++l) {
      const runtime::LayerKv& a = from.layer(l);
      runtime::LayerKv& b = to.layer(l);
      std::memcpy(b.window.data(), a.window.data(), std::min(a.window.size(), b.window.size()));
      if (b.ratio > 0 && a.n_compressed > 0) {
        const int64_t want = fill / b.ratio;
        repeat_rows(a.compressed.data(), a.n_compressed, b.compressed.data(), want,
                    static_cast<int64_t>(b.compressed.size()) / b.compressed_rows);
        if (!b.index_keys.empty())
          repeat_rows(a.index_keys.data(), a.n_compressed, b.index_keys.data(), want,
                      static_cast<int64_t>(b.index_keys.size()) / b.compressed_rows);
        b.n_compressed = want;
      }
      for (auto [x, y] : {std::pair{&a.main_state, &b.main_state}, std::pair{&a.index_state, &b.index_state}}) {
        std::copy(x->kv.begin(), x->kv.end(), y->kv.begin());
        std::copy(x->score.begin(), x->score.end(), y->score.begin());
      }
    }
    return tokens;
  });
}

// The simulated device's compute stream timing each op into the profile, under the phase it was issued in.
class DeviceTimer final : public runtime::SimOpObserver {
 public:
  explicit DeviceTimer(OpProfile& p) : profile_(p) {}
  void before(const runtime::ops::Op&) override { t0_ = Clock::now(); }
  void after(const runtime::ops::Op&) override { profile_.device_ran(since(t0_)); }

 private:
  OpProfile& profile_;
  Clock::time_point t0_;
};

struct Measured {
  double wall_s = 0;
  OpProfile::Times host, device;
  void add(double wall, const OpProfile& p, double weight) {
    wall_s += wall * weight;
    const OpProfile::Times d = p.device();
    for (size_t i = 0; i < runtime::kOpPhases; ++i) {
      host.seconds[i] += p.host().seconds[i] * weight;
      device.seconds[i] += d.seconds[i] * weight;
    }
  }
  double phase(OpPhase p) const { return host.seconds[static_cast<size_t>(p)]; }
};

struct Run {
  Measured decode, prefill;  // decode: one step, averaged
  int64_t decode_ctx = 0, prefill_p0 = 0, ubatch = 0;
};

Run measure(runtime::Session& s, OpProfile& profile, int64_t steps, int64_t vocab, uint64_t& seed) {
  Run r;
  std::vector<float> last;
  s.feed(random_tokens(1, vocab, seed), nullptr, &last);  // warm-up: first touches, buffers
  r.decode_ctx = s.position();
  s.set_profile(&profile);
  for (int64_t i = 0; i < steps; ++i) {
    const int32_t tok = static_cast<int32_t>(std::max_element(last.begin(), last.end()) - last.begin());
    profile.clear();
    const auto t0 = Clock::now();
    s.feed({&tok, 1}, nullptr, &last);
    r.decode.add(since(t0), profile, 1.0 / static_cast<double>(steps));
  }
  r.ubatch = s.options().ubatch;
  r.prefill_p0 = s.position();
  const std::vector<int32_t> chunk = random_tokens(r.ubatch, vocab, seed);
  profile.clear();
  const auto t0 = Clock::now();
  s.feed(chunk, nullptr, &last);
  r.prefill.add(since(t0), profile, 1.0);
  s.set_profile(nullptr);
  return r;
}

void print_breakdown(const Run& r, bool device) {
  std::printf("\n%-24s %12s %6s %14s %6s%s\n", "phase (host thread)", "decode ms", "%", "prefill ms", "%",
              device ? "   on device: decode ms  prefill ms" : "");
  for (size_t i = 0; i < runtime::kOpPhases; ++i) {
    const double d = r.decode.host.seconds[i], p = r.prefill.host.seconds[i];
    std::printf("%-24s %12.3f %5.1f%% %14.2f %5.1f%%", std::string(runtime::op_phase_name(OpPhase(i))).c_str(), d * 1e3,
                100 * d / r.decode.wall_s, p * 1e3, 100 * p / r.prefill.wall_s);
    if (device) std::printf("   %20.3f %11.2f", r.decode.device.seconds[i] * 1e3, r.prefill.device.seconds[i] * 1e3);
    std::printf("\n");
  }
  const double ud = r.decode.wall_s - r.decode.host.total(), up = r.prefill.wall_s - r.prefill.host.total();
  std::printf("%-24s %12.3f %5.1f%% %14.2f %5.1f%%\n", "between ops (host)", ud * 1e3, 100 * ud / r.decode.wall_s,
              up * 1e3, 100 * up / r.prefill.wall_s);
  std::printf("%-24s %12.3f %6s %14.2f\n", "step (wall)", r.decode.wall_s * 1e3, "", r.prefill.wall_s * 1e3);
}

planner::Hardware calibration_hardware(const planner::Calibration& rates) {
  planner::Hardware hw;
  hw.host.ram_bytes = int64_t{1} << 40;  // the bench's model always fits: only the rates matter
  hw.host.memory_bandwidth = rates.triad;
  hw.host.cores = 1;
  hw.host.gflops_per_core = 1;
  hw.source = "flags";
  hw.calibration = rates;
  return hw;
}

// The planner's estimate for the bench's model, CPU only, at `ctx` tokens of context: its decode figures are
// those of a token at ctx.
planner::CostEstimate predict_at(const planner::ModelSpec& spec, const planner::Calibration& rates, int64_t ctx,
                                 int64_t ubatch) {
  planner::PlanOptions o;
  o.kv_type = planner::KvType::FP8;
  o.ubatch = ubatch;
  o.ctx = ctx;
  return planner::make_plan(spec, calibration_hardware(rates), o).cost;
}

// predict_at's decode at `ctx`, and the prefill of a chunk of `ubatch` at mean position `pos` (the whole-context
// rate of a context of 2·pos).
planner::CostEstimate predict(const planner::ModelSpec& spec, const planner::Calibration& rates, int64_t ctx,
                              int64_t ubatch, double pos) {
  planner::CostEstimate e = predict_at(spec, rates, ctx, ubatch);
  e.prefill_full_tok_s = predict_at(spec, rates, static_cast<int64_t>(2 * pos), ubatch).prefill_full_tok_s;
  return e;
}

// The non-routed bandwidth at which the planner's decode step outside the routed experts takes `seconds`, the
// FLOP rates in `rates` given: its time falls as the bandwidth rises (the weights' and KV's reads shrink, the
// attention arithmetic stays), so a bisection finds it. Bounded by 1 B/s and 1 PB/s: a step the arithmetic alone
// outlasts keeps the upper bound, and the prediction printed beside the measurement shows the miss.
double dense_bw_for(const planner::ModelSpec& spec, planner::Calibration rates, const Run& r, double seconds) {
  double lo = 0, hi = 15;         // log10 of bytes/s
  for (int i = 0; i < 64; ++i) {  // 15 decades / 2^64: far below a double's precision
    rates.host_dense_bw = std::pow(10.0, (lo + hi) / 2);
    const double t = predict_at(spec, rates, r.decode_ctx, r.ubatch).decode_gpu_ms * 1e-3;
    (t > seconds ? lo : hi) = (lo + hi) / 2;
  }
  return std::pow(10.0, (lo + hi) / 2);
}

// The rates the measured times imply: the prefill chunk's FLOPs over its non-expert and its expert time, the
// routed experts' decode bytes (from a plan at 1 B/s, whose times are bytes) over their time, and the non-routed
// bandwidth that, beside the attention arithmetic at the prefill's rate, fills the rest of the decode step.
planner::Calibration derive_rates(const planner::ModelSpec& spec, const Run& r, double triad) {
  planner::Calibration unit;
  unit.triad = triad;
  unit.host_dense_bw = unit.host_expert_bw = unit.host_dense_flops = unit.host_expert_flops = 1;
  const planner::CostEstimate bytes = predict_at(spec, unit, r.decode_ctx, r.ubatch);
  const double experts_d = r.decode.phase(OpPhase::Experts), experts_p = r.prefill.phase(OpPhase::Experts);
  const core::ModelConfig& c = spec.config;
  const double u = static_cast<double>(r.ubatch), pos = static_cast<double>(r.prefill_p0) + u / 2;
  double dense = 2.0 * static_cast<double>(c.vocab_size * c.hidden_size), expert = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const planner::LayerFlops f = planner::layer_flops(c, l);
    const planner::AttnFlops a = planner::attention_flops(c, l, pos);
    dense += u * (f.dense + a.attn + a.index);
    expert += u * static_cast<double>(c.num_experts_per_tok) * f.expert;
  }
  planner::Calibration rates;
  rates.triad = triad;
  rates.host_expert_bw = bytes.decode_cpu_ms * 1e-3 / experts_d;
  rates.host_dense_flops = dense / (r.prefill.wall_s - experts_p);
  rates.host_expert_flops = expert / experts_p;
  rates.host_dense_bw = dense_bw_for(spec, rates, r, r.decode.wall_s - experts_d);
  return rates;
}

// The planner's estimate of this run from `rates` next to what the run measured.
void print_prediction(const planner::ModelSpec& spec, const planner::Calibration& rates, const Run& r) {
  const double decode_tok_s = 1 / r.decode.wall_s, prefill_tok_s = static_cast<double>(r.ubatch) / r.prefill.wall_s;
  const planner::CostEstimate e = predict(spec, rates, r.decode_ctx, r.ubatch,
                                          static_cast<double>(r.prefill_p0) + static_cast<double>(r.ubatch) / 2);
  std::printf("%-10s %14s %14s %8s\n", "", "measured", "planner", "error");
  std::printf("%-10s %10.3f tok/s %8.3f tok/s %+7.1f%%\n", "decode", decode_tok_s, e.decode_tok_s,
              100 * (e.decode_tok_s / decode_tok_s - 1));
  std::printf("%-10s %10.2f tok/s %8.2f tok/s %+7.1f%%\n", "prefill", prefill_tok_s, e.prefill_full_tok_s,
              100 * (e.prefill_full_tok_s / prefill_tok_s - 1));
}

// This run predicted from the rates of an earlier one (--calibration): the cost model's structure checked across
// contexts and chunks, which predicting a run from its own rates cannot do.
void predict_from_file(const Options& o, const planner::CalibrationFile& f, const std::string& model, const Run& r) {
  std::printf("\npredicted from %s (rates measured at ctx %lld, ubatch %lld, %d threads, on %s):\n",
              o.calibration_in.c_str(), static_cast<long long>(f.measured.ctx),
              static_cast<long long>(f.measured.ubatch), f.threads, f.measured.model.c_str());
  if (f.threads != runtime::worker_threads())
    std::printf("note: this run has %d threads; the rates were measured with %d\n", runtime::worker_threads(),
                f.threads);
  print_prediction(planner::load_model_spec(model), f.rates, r);
}

nlohmann::json phases_json(const Run& r) {
  nlohmann::json j = nlohmann::json::object();
  for (size_t i = 0; i < runtime::kOpPhases; ++i)
    j[std::string(runtime::op_phase_name(OpPhase(i)))] = {r.decode.host.seconds[i] * 1e3,
                                                          r.prefill.host.seconds[i] * 1e3};
  j["step"] = {r.decode.wall_s * 1e3, r.prefill.wall_s * 1e3};
  return j;
}

void calibrate(const Options& o, const std::string& model, const Run& r) {
  const planner::ModelSpec spec = planner::load_model_spec(model);
  std::printf("\nmeasuring the triad...\n");
  std::fflush(stdout);
  planner::CalibrationFile f;
  f.rates = derive_rates(spec, r, triad_gbps(3) * 1e9);
  f.machine = o.machine;
  f.threads = runtime::worker_threads();
  const double decode_tok_s = 1 / r.decode.wall_s, prefill_tok_s = static_cast<double>(r.ubatch) / r.prefill.wall_s;
  f.measured = {
      o.synthetic ? (o.shape == "tiny" ? "bench decode (tiny shapes)" : "bench decode (V4-Flash shapes)") : model,
      r.decode_ctx, r.ubatch, decode_tok_s, prefill_tok_s};
  f.phases_ms = phases_json(r);
  const planner::Calibration& c = f.rates;
  std::printf(
      "rates: triad %.1f GB/s; decode non-routed %.1f GB/s, experts %.1f GB/s (%.0f%% of the triad); "
      "prefill non-routed %.1f GFLOP/s, experts %.1f GFLOP/s\n",
      c.triad / 1e9, c.host_dense_bw / 1e9, c.host_expert_bw / 1e9, 100 * c.host_expert_bw / c.triad,
      c.host_dense_flops / 1e9, c.host_expert_flops / 1e9);
  print_prediction(spec, c, r);
  const std::string json = planner::calibration_to_json(f).dump(2) + "\n";
  core::write_file_atomically(o.calibration_out, [&](std::ostream& out) { out << json; });
  std::printf("calibration written to %s (ferry plan --calibration %s)\n", o.calibration_out.c_str(),
              o.calibration_out.c_str());
}

int run(Options& o) {
  FERRY_CHECK(o.shape == "flash" || o.shape == "tiny", "--shape must be flash or tiny, got '{}'", o.shape);
  const int64_t fill = o.engine.ctx.empty() ? 65536 : core::parse_count(o.engine.ctx, "--ctx");
  FERRY_CHECK(fill >= 1, "--ctx must be at least 1");
  std::shared_ptr<void> cleanup;
  const bool synthetic = o.synthetic = o.engine.model.empty();
  if (synthetic) {
    std::printf("writing the synthetic model...\n");
    std::fflush(stdout);
    cleanup = make_model(o, o.engine.model);
  }
  // The measured chunk is the flag's or 512, never the planner's: the context is sized for it here.
  if (!o.engine.ubatch) o.engine.ubatch = EngineFlags::kDefaultUbatch;
  o.engine.ctx = std::to_string(fill + 1 + o.steps + *o.engine.ubatch);
  EngineSetup setup(o.engine, *o.app, 0);
  FERRY_CHECK(!setup.ranks(), "ferry bench decode runs in one process");
  FERRY_CHECK(o.calibration_out.empty() || !setup.offload(),
              "--calibration-out measures the CPU's rates: run it without --gpu");
  FERRY_CHECK(o.calibration_in.empty() || !setup.offload(),
              "--calibration predicts a CPU-only run: run it without --gpu");
  // Read before the minutes of measuring: a bad file fails now.
  std::optional<planner::CalibrationFile> earlier;
  if (!o.calibration_in.empty()) earlier = planner::read_calibration(o.calibration_in);
  setup.load();
  runtime::Session s(setup.weights(), setup.session_options());
  const runtime::SessionOptions& so = s.options();
  const core::ModelConfig& c = setup.checkpoint().config();
  std::printf(
      "ferry bench decode: %s, %lld layers, %lld experts (top %lld), kv %s filled to %lld, ubatch %lld, "
      "%s%s\n",
      synthetic ? (o.shape == "tiny" ? "tiny shapes" : "V4-Flash shapes") : o.engine.model.c_str(),
      static_cast<long long>(c.num_hidden_layers), static_cast<long long>(c.n_routed_experts),
      static_cast<long long>(c.num_experts_per_tok), std::string(planner::kv_type_name(so.kv_type)).c_str(),
      static_cast<long long>(fill), static_cast<long long>(so.ubatch), runtime::worker_threads_text().c_str(),
      setup.offload() ? (", on " + o.engine.offload.gpu).c_str() : "");
  uint64_t seed = 42;
  fill_cache(s, setup.checkpoint(), fill, c.vocab_size, seed);
  OpProfile profile;
  DeviceTimer timer(profile);
  runtime::SimBackend* sim = setup.offload() ? setup.offload()->sim() : nullptr;
  if (sim) {
    profile.set_async_device(true);
    sim->set_observer(&timer);
  }
  const runtime::LinkStats link0 = sim ? sim->link_stats() : runtime::LinkStats{};
  const Run r = measure(s, profile, o.steps, c.vocab_size, seed);
  if (sim) sim->set_observer(nullptr);
  print_breakdown(r, sim != nullptr);
  if (sim) {
    const runtime::LinkStats l = sim->link_stats();
    const double busy = l.busy_seconds - link0.busy_seconds;
    std::printf("link: %lld copies, %s, busy %.2f ms (%.1f GB/s)\n", static_cast<long long>(l.copies - link0.copies),
                core::format_bytes(l.bytes - link0.bytes).c_str(), busy * 1e3,
                busy > 0 ? static_cast<double>(l.bytes - link0.bytes) / busy / 1e9 : 0.0);
  }
  std::printf("decode %.3f tok/s at ctx %lld; prefill %.2f tok/s (chunk of %lld at %lld)\n", 1 / r.decode.wall_s,
              static_cast<long long>(r.decode_ctx), static_cast<double>(r.ubatch) / r.prefill.wall_s,
              static_cast<long long>(r.ubatch), static_cast<long long>(r.prefill_p0));
  if (earlier) predict_from_file(o, *earlier, o.engine.model, r);
  if (!o.calibration_out.empty()) calibrate(o, o.engine.model, r);
  return 0;
}

}  // namespace

std::function<int()> add_decode_bench(CLI::App& bench, CLI::App*& sub, std::function<std::string()> machine) {
  auto o = std::make_shared<Options>();
  sub = bench.add_subcommand("decode",
                             "Time of each part of a decode step and a prefill chunk of V4-Flash's shapes over a KV "
                             "cache filled to --ctx; --calibration-out for `ferry plan --calibration`");
  o->app = sub;
  o->engine.add_to(*sub, "Positions of KV cache filled before the measured steps (default 64K)",
                   "a synthetic model of V4-Flash's shapes (--shape, --layers, --experts)");
  sub->add_option("--shape", o->shape, "Synthetic model: flash (V4-Flash's sizes, default) or tiny");
  sub->add_option("--layers", o->layers, "Synthetic layers, alternating CSA and HCA (default 2)")
      ->check(CLI::Range(1, 64));
  sub->add_option("--experts", o->experts, "Routed experts per synthetic layer (default 32)")
      ->check(CLI::Range(1, 256));
  sub->add_option("--steps", o->steps, "Decode steps measured, averaged (default 4)")->check(CLI::Range(1, 10000));
  sub->add_option("--calibration-out", o->calibration_out,
                  "Write the rates measured (and the triad) to this file for `ferry plan --calibration`");
  sub->add_option("--calibration", o->calibration_in,
                  "Also print the planner's prediction of this run from the rates in FILE (an earlier "
                  "--calibration-out, e.g. at another --ctx or --ubatch) next to the measurement")
      ->check(CLI::ExistingFile);
  return [o, machine] {
    o->machine = machine();
    return run(*o);
  };
}

}  // namespace ferry::launch
