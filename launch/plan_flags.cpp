#include "launch/plan_flags.h"

#include "planner/core/error.h"
#include "planner/core/units.h"

namespace ferry::launch {

const char* const kSplitHelp =
    "With several nodes: experts (every node runs every layer, each layer's routed experts sharded over the "
    "nodes), layers (each node owns a range of whole layers with their experts: a pipeline), layers+experts "
    "(the non-routed layers a pipeline, the experts sharded), or auto (the fastest that fits, by the cost "
    "model; default)";

planner::Split parse_split(const std::string& text) {
  const auto s = planner::split_from_name(text);
  FERRY_CHECK(s.has_value(), "unknown --split '{}' (expected experts, layers, layers+experts or auto)", text);
  return *s;
}

void PlanFlags::add_to(CLI::App& app, bool model_required) {
  std::string presets;
  for (const auto& n : core::preset_names()) presets += (presets.empty() ? "" : ", ") + n;
  auto* m = app.add_option("-m,--model", model, "A preset (" + presets + "), a config.json, or a model directory");
  if (model_required) m->required();
  app.add_option("-c,--ctx,--ctx-size", ctx,
                 "Context per sequence in tokens, e.g. 1048576, 128K, 1M (default: the model's maximum)");
  app.add_option("--kv-type,--cache-type", kv_type,
                 "KV cache storage: bf16, fp8, q8_0, q4_0, or auto (the highest-fidelity that fits). "
                 "Default: the model's own (fp8 for V4, bf16 for V3/V3.2)");
  app.add_option("-u,--ubatch,--ubatch-size", ubatch,
                 "Prefill chunk in tokens; workspaces grow with it (default: the planner's choice, 512 to 16K)");
  app.add_option("--parallel", parallel, "Sequences decoded together, each with its own KV cache (default 1)");
  app.add_option("--snapshots", snapshots,
                 "Prefix-reuse snapshots kept per sequence in host RAM (serve and chat keep 4 with --prefix-reuse on; "
                 "default 0)");
  app.add_option("--threads", threads,
                 "CPU worker threads the workspaces are sized for (default: the host's cores; under mpirun, each "
                 "rank's share of its host's cores, as `ferry run` takes)");
  app.add_flag("--mtp", mtp, "Load the MTP layer (for speculative decoding)");
  app.add_option("--expert-cache", expert_cache,
                 "GPU expert cache: auto (the VRAM left over), off, or N slots per layer (default auto)");
  app.add_option("--expert-hit-rate", hit_rate,
                 "Expected expert-cache hit rate 0..1 for the speed estimate (default: estimated from the cache size)");
  app.add_option("--split", split, kSplitHelp);
}

planner::PlanOptions PlanFlags::resolve() const {
  using namespace planner;
  PlanOptions o;
  if (!ctx.empty()) o.ctx = core::parse_count(ctx, "--ctx");
  if (!kv_type.empty()) {
    if (kv_type == "auto")
      o.kv_auto = true;
    else if (auto t = kv_type_from_name(kv_type))
      o.kv_type = *t;
    else
      FERRY_THROW("unknown --kv-type '{}' (expected bf16, fp8, q8_0, q4_0 or auto)", kv_type);
  }
  if (ubatch) {
    if (*ubatch < 1 || *ubatch > 65536) FERRY_THROW("--ubatch must be in [1, 65536], got {}", *ubatch);
    o.ubatch = *ubatch;
  } else {
    o.choose_ubatch = true;
  }
  if (parallel) {
    if (*parallel < 1 || *parallel > 4096) FERRY_THROW("--parallel must be in [1, 4096], got {}", *parallel);
    o.parallel = *parallel;
  }
  if (threads) {
    if (*threads < 1 || *threads > 4096) FERRY_THROW("--threads must be in [1, 4096], got {}", *threads);
    o.threads = *threads;
  }
  if (snapshots) {
    if (*snapshots < 0 || *snapshots > 1024) FERRY_THROW("--snapshots must be in [0, 1024], got {}", *snapshots);
    o.snapshot_keep = *snapshots;
  }
  o.mtp = mtp;
  if (!expert_cache.empty()) {
    if (expert_cache == "auto")
      o.expert_cache = ExpertCacheMode::Auto;
    else if (expert_cache == "off" || expert_cache == "0")
      o.expert_cache = ExpertCacheMode::Off;
    else {
      o.expert_cache = ExpertCacheMode::Slots;
      try {
        o.expert_cache_slots = core::parse_count(expert_cache, "--expert-cache");
      } catch (const Error&) {
        FERRY_THROW("invalid --expert-cache '{}' (expected auto, off or a number of slots per layer)", expert_cache);
      }
    }
  }
  if (hit_rate) {
    if (!(*hit_rate >= 0 && *hit_rate <= 1)) FERRY_THROW("--expert-hit-rate must be in [0, 1]");
    o.expert_hit_rate = *hit_rate;
  }
  if (!split.empty()) o.split = parse_split(split);
  return o;
}

}  // namespace ferry::launch
