// The model as the flags place it, for every command that computes with it (run, serve, chat): one definition of
// the model, context, KV, chunk, expert-precision and placement flags (EngineFlags), and the setup they imply
// (EngineSetup) — planned first, so that a plan that does not fit fails with the planner's line before any weight
// is read (under mpirun every rank plans together; with --gpu for the simulated device; with --plan from the file),
// then loaded and bound, then sessions made with the plan's options: on the device, with the ranks' exchange of
// their slot, taking turns on a shared device.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "launch/rank_setup.h"
#include "launch/run_offload.h"
#include "runtime/model/forward.h"
#include "runtime/model/model_weights.h"

namespace ferry::launch {

namespace server {
class Engine;
}

struct EngineFlags {
  std::string model;
  std::string ctx;  // "4096", "128K"; empty: the command's default
  std::string kv_type = "fp8";
  std::string expert_activations = "int24";
  // The prefill chunk; none given: the planner's choice with --gpu or under mpirun (as `ferry plan` prints it),
  // kDefaultUbatch in a CPU-only run in one process.
  std::optional<int64_t> ubatch;
  static constexpr int64_t kDefaultUbatch = 512;
  int threads = 0;  // 0: one per physical core (runtime/backend/worker_threads.h)
  OffloadFlags offload;
  RankFlags ranks;
  // Commands that keep conversations (serve, chat): server::V4EngineOptions' prefix reuse and snapshots.
  std::string prefix_reuse = "on";
  int64_t snapshot_every = 256;
  bool keeps_conversations = false;  // add_reuse_to was called: sessions snapshot (and the plan counts them)

  // Adds the flags to `app`; `ctx_help` says what --ctx means for the command; --model is required unless the
  // command has a default (`model_default` says which).
  void add_to(CLI::App& app, const std::string& ctx_help, const std::string& model_default = "");
  // Adds --prefix-reuse and --snapshot-every (serve, chat).
  void add_reuse_to(CLI::App& app);
  // The session the flags ask for (--ctx defaulting to `default_ctx`); throws ferry::Error on a planning flag
  // given with --plan (the plan sets them).
  runtime::SessionOptions session_options(const CLI::App& app, int64_t default_ctx) const;
  bool from_plan() const { return !offload.plan_in.empty(); }
};

class EngineSetup {
 public:
  // Plans for `parallel` sequences at once (a server's slots): under mpirun with every rank (collective), with
  // --gpu for the simulated device. Throws ferry::Error (AgreedError under mpirun) with one line when the plan does
  // not fit or a flag is wrong, before any weight is read.
  EngineSetup(const EngineFlags& flags, const CLI::App& app, int64_t default_ctx, int64_t parallel = 1);
  ~EngineSetup();

  // The session options every slot starts from: the flags' as the plan sets them (context, KV type, chunk).
  const runtime::SessionOptions& planned() const { return planned_; }
  int64_t parallel() const { return parallel_; }
  // Loads the checkpoint and places its weights as planned.
  void load();
  const runtime::ModelWeights& checkpoint() const { return *checkpoint_; }
  // The weights sessions compute with (after load()): the checkpoint's, or placed on the device.
  const runtime::ModelWeights& weights() const;
  // Options of the session of `slot` (0, 1, … in order; after load()): planned(), on the device, the ranks'
  // exchange for the slot; the slots share one set of feed buffers (the plan's one workspace) and take turns: in
  // one process one feed at a time, under mpirun at rank 0's step lock, and a follower runs one command at a time.
  runtime::SessionOptions session_options(int slot = 0);

  // Under mpirun (otherwise nullptr / true).
  RankRun* ranks() { return ranks_.get(); }
  bool leads() const { return !ranks_ || ranks_->leads(); }
  // A rank other than 0 of a command with sessions per slot (serve, chat): follows rank 0 until its end.
  void follow_slots();
  // Rank 0 at the end: the other ranks stop.
  void finish() {
    if (ranks_) ranks_->finish();
  }

  const EngineFlags& flags() const { return flags_; }
  const OffloadRun* offload() const { return offload_.get(); }
  // The memory of the run next to its plan (with --gpu: per device and class, and where experts ran), for the
  // log at the end; under mpirun, every rank's, gathered on rank 0 (collective). `session`: one session, whose KV
  // and workspace a CPU-only run reports.
  std::string report(const runtime::Session& session) const;

 private:
  EngineFlags flags_;
  runtime::SessionOptions planned_;
  int64_t parallel_ = 1;
  std::unique_ptr<RankRun> ranks_;
  std::unique_ptr<OffloadRun> offload_;
  std::optional<runtime::ModelWeights> checkpoint_;
  std::mutex device_turns_;  // the slots of one process take turns (one device, one set of feed buffers)
  runtime::SharedFeedBuffers feed_buffers_;
};

// `ferry serve`'s and `ferry chat`'s engine on `setup` (loaded here if not yet): the V4 engine with the placed
// weights, each of its sessions made with setup.session_options(slot).
std::unique_ptr<server::Engine> open_v4_engine(EngineSetup& setup, bool ignore_eos = false);

}  // namespace ferry::launch
