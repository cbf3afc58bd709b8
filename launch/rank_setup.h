// ferry under `mpirun -np N` (DESIGN.md §4): every rank probes its node and fingerprints the checkpoint it opened;
// the ranks check that they all run the same ferry on the same checkpoint; rank 0 plans for all the nodes and
// broadcasts the Plan as JSON, so every rank executes the very same Plan; each rank then knows from it which
// layers, experts and head it computes (transport/layer_roles.h). One rank per node, or, with --ranks-as-nodes,
// every rank a node of its own on one machine (its RAM counts as that node's), so that every multi-node layout
// runs in tests.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <CLI/CLI.hpp>

#include "launch/run_offload.h"
#include "planner/plan.h"
#include "runtime/model/forward.h"
#include "transport/rank_exchange.h"
#include "transport/world.h"

namespace ferry::launch {

struct RankFlags {
  bool ranks_as_nodes = false;
  std::string split = "auto";   // planner::Split by name
  std::string pipeline = "on";  // on: a sequence's step may start while another's is on the later stages

  // `with_split` false: a command that has --split already (ferry plan).
  void add_to(CLI::App& app, bool with_split = true);
};

// `ferry plan` under mpirun: every rank resolves its node's hardware (probed or from the flags) and `hw` becomes
// the nodes of the run as RankRun plans them — one per rank (one per host without --ranks-as-nodes), each with
// the least RAM, cores and bandwidth of any rank and rank 0's GPUs — unless --nodes was given. Collective.
void plan_for_ranks(const transport::World& world, const RankFlags& flags, bool nodes_given, planner::Hardware& hw,
                    std::vector<std::string>& notes);

class RankRun {
 public:
  // Collective: every rank constructs it together. Throws transport::AgreedError on every rank (rank 0 prints
  // it) when a rank cannot open the checkpoint, ranks opened different ones or run different ferry versions,
  // ranks share a host without --ranks-as-nodes, or the plan does not fit.
  // With --gpu sim:…, every node has such a device (its ledger and its share of the plan); --plan-out saves the
  // whole plan (rank 0).
  // `parallel`: the sequences the run keeps at once (a server's slots), each with its KV cache.
  // `choose_chunk`: the planner chooses the prefill chunk (no --ubatch given), as `ferry plan` does.
  RankRun(const transport::World& world, const RankFlags& flags, const OffloadFlags& offload,
          const std::string& model_dir, const runtime::SessionOptions& session, int64_t parallel = 1,
          bool choose_chunk = false);

  const planner::Plan& plan() const { return plan_; }
  // This rank's node's part of the plan (planner::plan_for_node), what it binds.
  planner::Plan node_view() const;
  // Collective: every rank's report, under its "rank R (host):" line, in rank order (for rank 0 to print).
  std::string gather_reports(const std::string& mine) const;
  // `base` with the plan's context, KV type and chunk.
  runtime::SessionOptions planned_session(runtime::SessionOptions base) const;
  // planned_session(base) with this rank's part of the forward pass for the session of `slot` (a server's sessions
  // are slots 0, 1, …; each rank's session of a slot follows rank 0's).
  runtime::SessionOptions session_options(runtime::SessionOptions base, int slot = 0);
  // Rank 0 leads the command; the others follow it and return at its end.
  bool leads() const { return world_.leader(); }
  void follow(runtime::Session& session) {
    group_->follow([&](int slot) -> runtime::Session& {
      FERRY_CHECK(slot == 0, "transport: rank 0 drives slot {}, this command has one session", slot);
      return session;
    });
  }
  // A rank other than 0 of a command with several sessions (serve, chat): for each slot rank 0 uses, makes a
  // session of `weights` with `options_of(slot)` that follows it, until rank 0's end.
  void follow_slots(const runtime::ModelWeights& weights,
                    const std::function<runtime::SessionOptions(int slot)>& options_of);
  // Rank 0, its command done: the followers stop; logs how many steps overlapped another's (pipelining).
  void finish();
  // "… rank 1 (host): runs layers 2-3; experts 0-15 of layers 2-3; the head": who computes what, for the log.
  std::string describe() const;

 private:
  const transport::World& world_;
  planner::Plan plan_;
  std::unique_ptr<transport::RankGroup> group_;
  std::mutex slots_mutex_;  // a server's sessions are made on its request threads
  std::map<int, std::unique_ptr<transport::MpiRankExchange>> slots_;
};

}  // namespace ferry::launch
