#include "launch/bench_offload.h"

#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "launch/hardware_flags.h"
#include "offload/device_plan.h"
#include "offload/plan_binding.h"
#include "planner/core/error.h"
#include "planner/core/units.h"
#include "planner/model_spec.h"
#include "runtime/backend/cpu_backend.h"
#include "runtime/backend/cuda/cuda_backend.h"
#include "runtime/backend/hardware_probe.h"
#include "runtime/backend/sim_backend.h"
#include "runtime/checkpoint/tiny_model.h"
#include "runtime/model/forward.h"
#include "runtime/model/weight_placement.h"

namespace ferry::launch {
namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  int64_t layers = 3, experts = 32, prompt = 256, decode = 16, ubatch = 128;
  int64_t stream_ubatch = 2048;  // the big-chunk streaming row's chunk (and at least its prompt)
  std::string link = "25GB/s";
  std::string device;  // cuda:N, or empty for the simulated device
  double gpu_gbs = planner::reference_gpu().memory_bandwidth / 1e9;
  double gpu_tflops = planner::reference_gpu().bf16_tflops;
};

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Per layer and step: the expert bytes and FLOPs the GPU computes and the CPU's measured expert seconds.
class TimingProvider final : public runtime::ForwardingExpertProvider {
 public:
  TimingProvider(runtime::ExpertProvider& inner, int64_t layers, int64_t expert_bytes, double expert_flops)
      : ForwardingExpertProvider(inner),
        gpu_bytes(layers, 0),
        gpu_flops(layers, 0),
        cpu_seconds(layers, 0),
        expert_bytes_(expert_bytes),
        expert_flops_(expert_flops) {}
  runtime::MoeSchedule schedule(const runtime::LayerWeights& l, std::span<const int64_t> tokens) override {
    runtime::MoeSchedule s = inner_.schedule(l, tokens);
    for (const runtime::ExpertTask& t : s.tasks)
      if (t.on_device) {
        gpu_bytes[static_cast<size_t>(l.index)] += expert_bytes_;
        gpu_flops[static_cast<size_t>(l.index)] += double(t.tokens) * expert_flops_;
      }
    return s;
  }
  runtime::CopyEvent start(runtime::MoeSchedule& s, size_t i) override {
    t0_ = Clock::now();  // a host task is computed between its start and its issue
    return inner_.start(s, i);
  }
  void issued(runtime::MoeSchedule& s, size_t i, runtime::ComputeEvent done) override {
    if (!s.tasks[i].on_device) cpu_seconds[static_cast<size_t>(s.layer)] += since(t0_);
    inner_.issued(s, i, done);
  }
  void reset() {
    std::fill(gpu_bytes.begin(), gpu_bytes.end(), 0);
    std::fill(gpu_flops.begin(), gpu_flops.end(), 0.0);
    std::fill(cpu_seconds.begin(), cpu_seconds.end(), 0.0);
  }

  std::vector<int64_t> gpu_bytes;   // this step, per layer
  std::vector<double> gpu_flops;    // this step, per layer
  std::vector<double> cpu_seconds;  // this step, per layer

 private:
  int64_t expert_bytes_;
  double expert_flops_;
  Clock::time_point t0_;
};

struct Config {
  std::string name;
  int64_t cache_slots = 0;  // per layer
  bool resident = false;    // every expert on the GPU
  bool stream = false;      // prefill streams experts with enough tokens
  int64_t ubatch = 0;       // prefill chunk; 0: --ubatch
};

struct PhaseResult {
  int64_t tokens = 0;
  double measured_s = 0, projected_s = 0, copy_s = 0, exposed_copy_s = 0;
  void add(const PhaseResult& o) {
    tokens += o.tokens;
    measured_s += o.measured_s;
    projected_s += o.projected_s;
    copy_s += o.copy_s;
    exposed_copy_s += o.exposed_copy_s;
  }
};

struct ConfigResult {
  PhaseResult prefill, decode;
  double link_busy_s = 0, copy_wait_s = 0;  // prefill on the simulated device: copying, and ops waiting for copies
  offload::DispatchStats stats;
  int64_t device_bytes = 0;
};

class Bench {
 public:
  Bench(const Options& o, const std::filesystem::path& dir) : o_(o), dir_(dir) {
    spec_ = planner::load_model_spec(dir.string());
    std::vector<std::string> notes;
    host_ = runtime::probe_host(notes);
    link_ = core::parse_bandwidth(o.link, "--link");
    weights_ = std::make_unique<runtime::ModelWeights>(runtime::ModelWeights::load(dir));
    expert_bytes_ = spec_.expert_bytes();
  }

  ConfigResult run(const Config& cfg) {
    const int64_t ubatch = cfg.ubatch > 0 ? cfg.ubatch : o_.ubatch;
    const int64_t prompt_len = std::max(o_.prompt, ubatch);  // a big-chunk row prefills at least one chunk
    runtime::SessionOptions so;
    so.ctx = prompt_len + o_.decode;
    so.kv_type = planner::KvType::FP8;
    so.ubatch = ubatch;
    offload::DeviceRequest req;
    req.name = (on_cuda() ? o_.device : std::string("sim")) + " (" + cfg.name + ")";
    req.link_bytes_per_s = link_;
    req.cache_slots = cfg.cache_slots;
    req.capacity = cfg.resident ? int64_t{1} << 40 : capacity_for(so, cfg.cache_slots);
    const planner::Plan plan = offload::plan_for_device(spec_, host_, req, so);
    const std::unique_ptr<runtime::Backend> device = make_device(req.capacity);
    runtime::Backend& gpu = *device;
    runtime::SimBackend* sim = dynamic_cast<runtime::SimBackend*>(device.get());
    runtime::cpu::CpuBackend host;
    offload::DispatchOptions d;
    d.stream_min_tokens = cfg.stream ? offload::stream_min_tokens_for(0.6 * host_.memory_bandwidth, link_) : 0;
    offload::BoundPlan bound(plan, *weights_, gpu, host, d);
    runtime::SessionOptions bso = bound.session_options(so);
    const auto& c = spec_.config;
    TimingProvider timing(*bso.experts, c.n_layers_total(), expert_bytes_,
                          6.0 * double(c.hidden_size) * double(c.moe_intermediate_size));
    bso.experts = &timing;
    runtime::Session session(bound.weights(), bso);

    ConfigResult r;
    std::vector<int32_t> prompt(static_cast<size_t>(prompt_len));
    for (int64_t i = 0; i < prompt_len; ++i)
      prompt[static_cast<size_t>(i)] = static_cast<int32_t>(3 + (i * 7919) % 500);
    std::vector<float> last;
    const runtime::LinkStats link0 = sim ? sim->link_stats() : runtime::LinkStats{};
    const runtime::ComputeStats compute0 = sim ? sim->compute_stats() : runtime::ComputeStats{};
    for (int64_t p = 0; p < prompt_len; p += ubatch) {
      const int64_t n = std::min(ubatch, prompt_len - p);
      r.prefill.add(step(session, timing, bound,
                         std::span(prompt).subspan(static_cast<size_t>(p), static_cast<size_t>(n)), last));
    }
    if (sim) {  // a CUDA device's copy engine keeps no such account
      r.link_busy_s = sim->link_stats().busy_seconds - link0.busy_seconds;
      r.copy_wait_s = sim->compute_stats().copy_wait_seconds - compute0.copy_wait_seconds;
    }
    for (int64_t i = 0; i < o_.decode; ++i) {
      const int32_t next = static_cast<int32_t>(std::max_element(last.begin(), last.end()) - last.begin());
      r.decode.add(step(session, timing, bound, std::span(&next, 1), last));
    }
    r.stats = bound.dispatch().total();
    r.device_bytes = gpu.ledger().total_high_water();
    return r;
  }

  const planner::ModelSpec& spec() const { return spec_; }
  bool on_cuda() const { return !o_.device.empty(); }
  double link() const { return link_; }

 private:
  // The simulated device of `capacity` on the --link, or --device cuda:N, where the plan's budget is `capacity`.
  std::unique_ptr<runtime::Backend> make_device(int64_t capacity) const {
    if (!on_cuda()) return std::make_unique<runtime::SimBackend>(runtime::SimDeviceSpec{capacity, link_});
    return runtime::cuda::make_cuda_backend(*cuda_device_index(o_.device));
  }

  // Room for the non-routed part, the stream slots and `slots` cache slots per MoE layer, and no more: the
  // planner then leaves every expert in host RAM but for the cache.
  int64_t capacity_for(const runtime::SessionOptions& so, int64_t slots) {
    offload::DeviceRequest probe;
    probe.name = "sim (sizing)";
    probe.capacity = int64_t{1} << 40;
    probe.cache_slots = 0;
    const planner::Plan all = offload::plan_for_device(spec_, host_, probe, so);
    const auto& g = all.devices.front();
    int64_t moe_layers = 0;
    for (const auto& lp : all.layers) moe_layers += !lp.experts.empty();
    const int64_t base =
        g.used() - g.bytes_of("weights.routed_experts") + 2 * spec_.config.num_experts_per_tok * expert_bytes_;
    return base + slots * moe_layers * expert_bytes_ + (1 << 20);
  }

  PhaseResult step(runtime::Session& s, TimingProvider& timing, const offload::BoundPlan& bound,
                   std::span<const int32_t> tokens, std::vector<float>& last) {
    const int64_t L = spec_.config.n_layers_total();
    std::vector<int64_t> copies_before(static_cast<size_t>(L));
    for (int64_t l = 0; l < L; ++l) copies_before[static_cast<size_t>(l)] = bound.dispatch().stats(l).copy_bytes;
    timing.reset();
    const auto t0 = Clock::now();
    s.feed(tokens, nullptr, &last);
    PhaseResult r;
    r.measured_s = since(t0);
    r.tokens = static_cast<int64_t>(tokens.size());
    const double gpu_bw = o_.gpu_gbs * 1e9;
    // The GPU's grouped GEMMs at half its BF16 peak (planner/cost_model.cpp); the shared expert's FP8 weights are
    // one parameter a byte.
    const double gpu_flops = o_.gpu_tflops * 1e12 * 0.5;
    const double n_tok = double(tokens.size());
    for (int64_t l = 0; l < spec_.config.num_hidden_layers; ++l) {
      const auto li = static_cast<size_t>(l);
      const auto& lw = spec_.layers[li];
      const int64_t shared = lw.bytes[static_cast<size_t>(core::WeightClass::SharedExpert)];
      // Attention and the router come first; then the GPU's MoE work (shared expert, the experts it holds)
      // runs beside the CPU's experts (the runtime launches the one and computes the other at once), and the
      // copy stream beside both.
      const double t_attn = (lw.non_routed() - shared) / gpu_bw;
      // Each expert's weights are read once per chunk; with many tokens its FLOPs take longer.
      const double t_moe_gpu = std::max((shared + timing.gpu_bytes[li]) / gpu_bw,
                                        (2 * n_tok * double(shared) + timing.gpu_flops[li]) / gpu_flops);
      const double t_cpu = timing.cpu_seconds[li];
      const double t_compute = t_attn + std::max(t_moe_gpu, t_cpu);
      const double t_copy = (bound.dispatch().stats(l).copy_bytes - copies_before[li]) / link_;
      r.projected_s += std::max(t_compute, t_copy);
      r.copy_s += t_copy;
      r.exposed_copy_s += std::max(0.0, t_copy - t_compute);
    }
    r.projected_s += spec_.global[static_cast<size_t>(core::WeightClass::Head)] / gpu_bw;
    return r;
  }

  Options o_;
  std::filesystem::path dir_;
  planner::ModelSpec spec_;
  planner::HostSpec host_;
  double link_ = 0;
  std::unique_ptr<runtime::ModelWeights> weights_;
  int64_t expert_bytes_ = 0;
};

// A model of V4-Flash's expert shapes: `o.layers` layers alternating plain and CSA attention, the first hash-routed.
void write_synthetic_model(const Options& o, const std::filesystem::path& dir) {
  runtime::TinyOptions t;
  nlohmann::json ov;
  ov["hidden_size"] = 4096;
  ov["moe_intermediate_size"] = 2048;
  ov["num_experts_per_tok"] = 6;
  ov["n_routed_experts"] = o.experts;
  ov["num_hidden_layers"] = o.layers;
  ov["num_hash_layers"] = 1;
  std::vector<int64_t> ratios;
  for (int64_t l = 0; l < o.layers; ++l) ratios.push_back(l % 2 ? 4 : 0);
  ratios.push_back(0);  // the MTP layer
  ov["compress_ratios"] = ratios;
  t.overrides = ov;
  std::fprintf(stderr,
               "bench offload: writing a synthetic model (%lld layers x %lld experts, V4-Flash expert shapes) ...\n",
               (long long)o.layers, (long long)o.experts);
  runtime::make_tiny_model(dir, t);
}

int run(const Options& o) {
  FERRY_CHECK(o.layers >= 2 && o.layers <= 16, "--layers must be in [2, 16]");
  FERRY_CHECK(o.experts >= 8 && o.experts <= 256, "--experts must be in [8, 256]");
  FERRY_CHECK(o.prompt >= 1 && o.decode >= 1 && o.ubatch >= 1, "--prompt, --decode and --ubatch must be >= 1");
  // A device that cannot be used fails here, in one line, before the synthetic model is written.
  if (!o.device.empty()) runtime::cuda::make_cuda_backend(*cuda_device_index(o.device));
  const auto dir = std::filesystem::temp_directory_path() / ("ferry-bench-offload-" + std::to_string(::getpid()));
  std::shared_ptr<void> cleanup(static_cast<void*>(nullptr), [dir](void*) {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  });
  write_synthetic_model(o, dir);
  Bench bench(o, dir);
  const auto& spec = bench.spec();
  const int64_t eb = spec.expert_bytes();
  std::printf(
      "model: %lld MoE layers x %lld experts of %s (hidden 4096, 2048 wide, MXFP4), 6 per token; %s of experts\n",
      (long long)o.layers, (long long)o.experts, core::format_bytes(eb).c_str(),
      core::format_bytes(eb * o.experts * o.layers).c_str());
  std::printf(
      "run: prompt %lld tokens in chunks of %lld, then %lld decoded; link %s; projection for a GPU of %.0f GB/s\n",
      (long long)o.prompt, (long long)o.ubatch, (long long)o.decode, o.link.c_str(), o.gpu_gbs);
  if (bench.on_cuda())
    std::printf(
        "measured = on %s with this machine's CPU, each row's plan given its budget of device memory; hidden\n"
        "copies: the share of the copy time behind compute, projected (GPU at %.0f bf16 TFLOP/s x 0.5); measured:\n"
        "- (a CUDA copy engine keeps no account of its idle time)\n\n",
        o.device.c_str(), o.gpu_tflops);
  else
    std::printf(
        "measured = on this machine, where the simulated GPU's work runs on the CPU too; hidden copies: the\n"
        "share of the copy time behind compute, projected (GPU at %.0f bf16 TFLOP/s x 0.5) and measured (prefill:\n"
        "link time the simulated device's ops did not wait for)\n\n",
        o.gpu_tflops);

  std::vector<Config> configs = {{"all experts on GPU", 0, true, false}, {"all in RAM, CPU", 0, false, false}};
  for (int pct : {10, 25, 50})
    configs.push_back({"cache " + std::to_string(pct) + "%", std::max<int64_t>(1, o.experts * pct / 100), false, true});
  configs.push_back({"stream prefill", 0, false, true});
  configs.push_back({"stream, chunk " + std::to_string(o.stream_ubatch), 0, false, true, o.stream_ubatch});

  std::printf("%-20s %9s | %10s %10s | %10s %10s | %7s %7s %7s | %6s %6s\n", "configuration", "GPU mem", "decode",
              "prefill", "decode", "prefill", "on GPU", "hits", "CPU", "hidden", "hidden");
  std::printf("%-20s %9s | %21s | %21s | %23s | %13s\n", "", "", "projected tok/s", "measured tok/s", "expert uses",
              "copies pr/ms");
  for (const Config& cfg : configs) {
    const ConfigResult r = bench.run(cfg);
    const auto tps = [](const PhaseResult& p, bool projected) {
      const double s = projected ? p.projected_s : p.measured_s;
      return s > 0 ? p.tokens / s : 0.0;
    };
    const double copy = r.prefill.copy_s + r.decode.copy_s,
                 exposed = r.prefill.exposed_copy_s + r.decode.exposed_copy_s;
    const double uses = std::max<int64_t>(1, r.stats.uses());
    // Measured: of the prefill's link time, the share the device's ops did not spend waiting for a copy.
    const double measured = r.link_busy_s > 0 ? 100 * std::max(0.0, 1 - r.copy_wait_s / r.link_busy_s) : 100.0;
    const std::string measured_cell = bench.on_cuda() ? "     -" : fmt::format("{:5.0f}%", measured);
    std::printf("%-20s %9s | %10.1f %10.1f | %10.2f %10.2f | %6.1f%% %6.1f%% %6.1f%% | %5.0f%% %s\n", cfg.name.c_str(),
                core::format_bytes(r.device_bytes).c_str(), tps(r.decode, true), tps(r.prefill, true),
                tps(r.decode, false), tps(r.prefill, false), 100 * r.stats.gpu_share(), 100 * r.stats.cache_hits / uses,
                100 * r.stats.cpu / uses, copy > 0 ? 100 * (1 - exposed / copy) : 100.0, measured_cell.c_str());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

std::function<int()> add_offload_bench(CLI::App& bench, CLI::App*& sub) {
  auto o = std::make_shared<Options>();
  sub = bench.add_subcommand("offload",
                             "Decode/prefill tok/s of expert placements (all on GPU, all in RAM, a GPU expert cache of "
                             "10/25/50%, streaming prefill) on a synthetic model with V4-Flash expert shapes through "
                             "the simulated device; measured here and projected for a GPU");
  sub->add_option("--layers", o->layers, "MoE layers of the synthetic model (default 3)")->check(CLI::Range(2, 16));
  sub->add_option("--experts", o->experts, "Routed experts per layer (default 32)")->check(CLI::Range(8, 256));
  sub->add_option("--prompt", o->prompt, "Prompt tokens (default 256)")->check(CLI::Range(1, 1 << 16));
  sub->add_option("--decode", o->decode, "Decoded tokens (default 16)")->check(CLI::Range(1, 1 << 16));
  sub->add_option("--ubatch", o->ubatch, "Prefill chunk (default 128)")->check(CLI::Range(1, 1 << 16));
  sub->add_option("--stream-ubatch", o->stream_ubatch,
                  "Prefill chunk of the big-chunk streaming row, also its least prompt (default 2048)")
      ->check(CLI::Range(1, 1 << 16));
  sub->add_option("--gpu-tflops", o->gpu_tflops,
                  "GPU BF16 tensor TFLOP/s for the projection (default: the reference card's, an RTX 3090's)")
      ->check(CLI::Range(1.0, 1e5));
  sub->add_option("--link", o->link, "Host-to-GPU link bandwidth of the simulated device (default 25GB/s)");
  sub->add_option("--device", o->device,
                  "cuda:N: run every row on CUDA device N (measured on the device, each row's plan given its budget "
                  "of device memory); default: the simulated device")
      ->check([](const std::string& d) {
        return cuda_device_index(d) ? std::string() : "give a CUDA device as cuda:N (cuda:0)";
      });
  sub->add_option("--gpu-bandwidth", o->gpu_gbs,
                  "GPU memory bandwidth in GB/s for the projection (default: the reference card's, an RTX 3090's)")
      ->check(CLI::Range(1.0, 1e5));
  return [o] { return run(*o); };
}

}  // namespace ferry::launch
