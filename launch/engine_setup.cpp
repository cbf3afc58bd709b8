#include "launch/engine_setup.h"

#include <fmt/format.h>

#include "launch/server/v4_engine.h"
#include "offload/plan_binding.h"
#include "planner/core/error.h"
#include "planner/core/units.h"
#include "planner/kv_cache.h"
#include "runtime/backend/worker_threads.h"
#include "transport/world.h"

namespace ferry::launch {
namespace {

std::string gib(int64_t bytes) { return core::format_bytes(bytes); }

// A CPU-only run's memory, each item next to what the planner predicts for it: from the formulas (one process),
// or from this rank's host device in the plan (under mpirun: the KV of the layers it runs).
std::string host_memory_line(const runtime::ModelWeights& model, const runtime::Session& session,
                             const planner::DevicePlan* planned) {
  const runtime::SessionOptions& so = session.options();
  int64_t kv_planned = planner::kv_total(planner::kv_cache_bytes(model.config(), so.kv_type, so.ctx, 1, false));
  int64_t ws_planned = session.planned_workspace().bytes();
  if (planned) {
    const auto b = offload::planned_by_class(*planned);
    kv_planned =
        b[static_cast<size_t>(runtime::MemoryClass::Kv)] + b[static_cast<size_t>(runtime::MemoryClass::Indexer)];
    ws_planned = b[static_cast<size_t>(runtime::MemoryClass::Workspace)];
  }
  const int64_t kv_used = planner::kv_total(session.cache().bytes());
  return fmt::format("memory host: weights {} mapped, kv cache {} (planned {}), workspace {} (planned {})\n",
                     gib(model.weight_bytes()), gib(kv_used), gib(kv_planned), gib(session.workspace_bytes()),
                     gib(ws_planned));
}

}  // namespace

void EngineFlags::add_to(CLI::App& app, const std::string& ctx_help, const std::string& model_default) {
  auto* m = app.add_option("--model,-m", model,
                           "Checkpoint directory (config.json + safetensors + tokenizer.json)" +
                               (model_default.empty() ? std::string() : " (default: " + model_default + ")"));
  if (model_default.empty()) m->required();
  app.add_option("-c,--ctx,--ctx-size", ctx, ctx_help);
  app.add_option("--kv-type,--cache-type", kv_type,
                 "KV-cache storage: fp8 (default, the model's own), bf16, q8_0, q4_0")
      ->check(CLI::IsMember({"fp8", "bf16", "q8_0", "q4_0"}));
  app.add_option("--expert-activations", expert_activations,
                 "Precision of routed-expert inputs in the CPU MXFP4 kernels: int24 (default, as exact as float), "
                 "int16 (faster; error <= 2^-15 of each 32-block's largest value) or int8 (fastest, the whole-block "
                 "kernels; error <= 2^-8 of each 32-block's largest value)")
      ->check(CLI::IsMember({"int24", "int16", "int8"}));
  app.add_option("--ubatch", ubatch,
                 "Prefill chunk in tokens; workspaces grow with it (default: with --gpu or under mpirun the planner's "
                 "choice, 512 to 16K, as `ferry plan` prints it; otherwise 512)")
      ->check(CLI::Range(1, 65536));
  app.add_option("-t,--threads", threads,
                 "CPU worker threads, each pinned to a core while it computes (default: one per physical core)")
      ->check(CLI::Range(1, 4096));
  offload.add_to(app);
  ranks.add_to(app);
}

void EngineFlags::add_reuse_to(CLI::App& app) {
  keeps_conversations = true;
  app.add_option("--prefix-reuse", prefix_reuse,
                 "on (default): a request reuses the longest prefix of its prompt a session holds (the next turn of "
                 "a conversation computes only its new tokens; the results are bitwise a fresh prefill's); off: "
                 "every request prefills its whole prompt")
      ->check(CLI::IsMember({"on", "off"}));
  app.add_option("--snapshot-every", snapshot_every,
                 "Tokens between snapshots of each session's window and compressor state, so that reusing a prefix "
                 "recomputes fewer than this many tokens (default 256; 0: none, a rewind recomputes from the start; "
                 "the last 4 are kept)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
}

runtime::SessionOptions EngineFlags::session_options(const CLI::App& app, int64_t default_ctx) const {
  for (const char* flag : {"--ctx", "--kv-type", "--ubatch"})
    FERRY_CHECK(!from_plan() || app.count(flag) == 0, "{}: the plan sets it (--plan replaces the planning flags)",
                flag);
  runtime::SessionOptions so;
  so.ctx = ctx.empty() ? default_ctx : core::parse_count(ctx, "--ctx");
  so.kv_type = *planner::kv_type_from_name(kv_type);
  so.ubatch = ubatch.value_or(kDefaultUbatch);
  so.expert_bits = expert_activations == "int16"  ? core::ActivationBits::Int16
                   : expert_activations == "int8" ? core::ActivationBits::Int8
                                                  : core::ActivationBits::Int24;
  if (keeps_conversations && prefix_reuse == "on") so.snapshot_every = snapshot_every;
  return so;
}

EngineSetup::EngineSetup(const EngineFlags& flags, const CLI::App& app, int64_t default_ctx, int64_t parallel)
    : flags_(flags), parallel_(parallel) {
  const transport::World* world = transport::World::current();
  const bool distributed = world && world->distributed();
  flags.offload.check(distributed);
  // Before planning: the workspace is sized for them. Ranks on one host share its cores.
  runtime::set_worker_threads(flags.threads, distributed ? world->node_rank() : 0,
                              distributed ? world->node_size() : 1);
  planned_ = flags.session_options(app, default_ctx);
  if (distributed) {
    ranks_ =
        std::make_unique<RankRun>(*world, flags.ranks, flags.offload, flags.model, planned_, parallel, !flags.ubatch);
    planned_ = ranks_->planned_session(planned_);
    if (flags.offload.enabled()) offload_ = std::make_unique<OffloadRun>(flags.offload, ranks_->node_view());
  } else if (flags.offload.enabled()) {
    offload_ = std::make_unique<OffloadRun>(flags.offload, flags.model, planned_, parallel, !flags.ubatch);
    planned_ = offload_->planned_session(planned_);
  }
}

EngineSetup::~EngineSetup() = default;

void EngineSetup::load() {
  if (checkpoint_) return;
  checkpoint_.emplace(runtime::ModelWeights::load(flags_.model));
  if (offload_) offload_->bind(*checkpoint_);
}

const runtime::ModelWeights& EngineSetup::weights() const {
  FERRY_CHECK(checkpoint_, "EngineSetup: weights() before load()");
  return offload_ ? offload_->weights() : *checkpoint_;
}

runtime::SessionOptions EngineSetup::session_options(int slot) {
  runtime::SessionOptions so = planned_;
  if (offload_) so = offload_->session_options(so);
  if (ranks_) so = ranks_->session_options(so, slot);
  if (!ranks_) so.device_turns = &device_turns_;
  so.shared_feed_buffers = &feed_buffers_;
  return so;
}

void EngineSetup::follow_slots() {
  FERRY_CHECK(ranks_ && !ranks_->leads(), "EngineSetup: only a rank other than 0 follows");
  // session_options() carries the flags' --snapshot-every, as rank 0's engine sessions do: the followers' sessions
  // snapshot at the same positions, so their feeds are cut into the same chunks and a rewind finds the same
  // snapshot on every rank.
  ranks_->follow_slots(weights(), [&](int slot) { return session_options(slot); });
}

std::string EngineSetup::report(const runtime::Session& session) const {
  std::string mine;
  if (offload_) {
    mine = offload_->memory_report() + offload_->expert_report();
  } else if (ranks_) {
    const planner::Plan view = ranks_->node_view();
    mine = host_memory_line(weights(), session, &view.devices.front());
  } else {
    mine = host_memory_line(weights(), session, nullptr);
  }
  return ranks_ ? ranks_->gather_reports(mine) : mine;
}

std::unique_ptr<server::Engine> open_v4_engine(EngineSetup& setup, bool ignore_eos) {
  setup.load();
  server::V4EngineOptions eo;
  eo.ctx = setup.planned().ctx;
  eo.ignore_eos = ignore_eos;
  eo.prefix_reuse = setup.flags().prefix_reuse == "on";
  eo.snapshot_every = setup.flags().snapshot_every;
  eo.max_sessions = setup.parallel();
  eo.weights = &setup.weights();
  eo.configure_session = [&setup](int slot, runtime::SessionOptions& o) { o = setup.session_options(slot); };
  return server::open_v4_engine(setup.flags().model, eo);
}

}  // namespace ferry::launch
