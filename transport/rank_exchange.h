// runtime::RankExchange over MPI (host buffers): the lockstep of commands from rank 0 and the exchanges at the
// seams of the forward pass, each a set of point-to-point transfers posted together and waited for with the
// world's deadline. The roles come from the Plan (layer_roles.h). Several sessions (a server's slots) share one
// RankGroup and take turns.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <vector>

#include "runtime/model/forward.h"
#include "runtime/model/rank_exchange.h"
#include "transport/layer_roles.h"
#include "transport/world.h"

namespace ferry::transport {

enum class Command : int32_t { Feed = 1, Reset = 2, Stop = 3, Rewind = 4, SaveSession = 5, LoadSession = 6 };

// What the sessions of one run share across the ranks: the roles, and the lock under which rank 0 starts their
// steps one at a time. Rank 0 announces each session's steps with its slot; the other ranks follow (follow()), one
// command after the other, so every rank sees the steps' exchanges in the same order. Rank 0 lets the next step
// start once its own part of a step is done, while it waits for that step's logits: in a pipeline of layers
// (`--split layers`), the first stages then compute one sequence while the last stages finish another.
class RankGroup {
 public:
  // `pipeline` false: rank 0 holds the lock until each step's logits are in (one step at a time across the
  // ranks; for comparison). An MPI without MPI_THREAD_MULTIPLE always runs so.
  RankGroup(const World& world, std::vector<LayerRoles> roles, bool pipeline = true);

  const World& world() const { return world_; }
  const std::vector<LayerRoles>& roles() const { return roles_; }
  int head_rank() const { return head_rank_; }
  // Rank 0 may start a step while another awaits its logits: the head is another rank's, threads may call MPI at
  // once, and the run asked for it.
  bool pipelined() const { return pipelined_; }

  // Rank 0: starts a step of `slot` (takes the lock, then broadcasts the command); the lock is the step's.
  std::unique_lock<std::mutex> start_step(Command c, int slot, std::span<const int32_t> tokens,
                                          runtime::LogitsWanted want);
  // Rank 0: its part of a step is done and it waits for the step's logits, with `step` released when pipelined.
  // Counts the steps that start meanwhile.
  template <class Wait>
  void await_logits(std::unique_lock<std::mutex>* step, Wait&& wait) {
    if (!pipelined_ || !step || !step->owns_lock()) return wait();
    awaiting_logits_.fetch_add(1);
    step->unlock();
    struct Done {
      std::atomic<int>& n;
      ~Done() { n.fetch_sub(1); }
    } done{awaiting_logits_};
    wait();
  }
  // Rank 0: feeds started, and those of them that started while an earlier step still awaited its logits.
  int64_t steps() const { return steps_.load(); }
  int64_t overlapped_steps() const { return overlapped_steps_.load(); }
  // Rank 0: the sessions of `slot` go back to position p from their snapshots at s (Session::follow_rewind). Only
  // the command's broadcast is under the lock: the feed that recomputes [s, p) is a step of its own.
  void announce_rewind(int slot, int64_t p, int64_t s);
  // Rank 0: the sessions of `slot` save or load their part of a session file (runtime::follow_session_file). Returns
  // the step lock, held until the file is done.
  std::unique_lock<std::mutex> announce_session_file(int slot, bool load);
  // Rank 0, when its command is done: the followers return from follow().
  void announce_stop();
  // Ranks other than 0: runs what rank 0 announces, each command on `session_of(slot)` (made on first use), until
  // rank 0 announces the end. Waits for a command without a deadline (a server may idle for hours); every step's
  // exchanges keep theirs. A session file that fails on every rank together (an AgreedError: a bad file, which
  // changed no rank's session) is rank 0's to report: with `survive_session_files` (a server, a chat: rank 0 goes
  // on) the followers go on following; without (a run, which ends with it) they throw it too.
  void follow(const std::function<runtime::Session&(int slot)>& session_of, bool survive_session_files = false);

 private:
  // A command is a fixed header {command, slot, a, b} — a feed's a: its token count, b: the logits wanted; a
  // rewind's a: p, b: s — then a feed's tokens.
  void broadcast_command(Command c, int slot, int64_t a, int64_t b, std::span<const int32_t> tokens = {});

  const World& world_;
  std::vector<LayerRoles> roles_;
  int head_rank_ = 0;
  bool pipelined_ = false;
  std::mutex step_;
  std::atomic<int> awaiting_logits_{0};
  std::atomic<int64_t> steps_{0}, overlapped_steps_{0};
};

// One session's runtime::RankExchange: its slot's commands, and the exchanges of its forward passes.
class MpiRankExchange final : public runtime::RankExchange {
 public:
  // `slot` < kMaxSlots: its logits travel with a tag of their own.
  MpiRankExchange(RankGroup& group, int slot);
  static constexpr int kMaxSlots = 4096;

  bool leads() const override { return world_.leader(); }
  bool runs_layer(int64_t l) const override;
  bool computes_expert(int64_t l, int64_t e) const override;
  bool computes_experts(int64_t l) const override;
  bool runs_head() const override { return world_.rank() == group_.head_rank(); }

  std::unique_lock<std::mutex> announce_feed(std::span<const int32_t> tokens, runtime::LogitsWanted want) override;
  void announce_reset() override;
  void announce_rewind(int64_t p, int64_t s) override { group_.announce_rewind(slot_, p, s); }

  std::unique_lock<std::mutex> announce_session_file(bool load) override {
    return group_.announce_session_file(slot_, load);
  }
  bool keeps_layer(int64_t l) const override { return roles(l).runners.front() == world_.rank(); }
  void layer_to_leader(int64_t l, void* data, int64_t bytes) override;
  void layer_from_leader(int64_t l, void* data, int64_t bytes) override;
  void broadcast(void* data, int64_t bytes) override { world_.broadcast(data, bytes, 0, "a session file's state"); }
  void agree(std::string_view what, const std::function<void()>& step) override { world_.agree(what, step); }

  bool hands_over(int64_t l) const override { return roles(l - 1).runners != roles(l).runners; }
  void hand_over(int64_t l, float* H, int64_t floats) override;
  void dispatch(int64_t l, float* xn, int64_t n, int64_t d, int32_t* ids, int64_t k) override;
  void expect_rows(int64_t l, float* eo, std::span<const int64_t> offsets, int64_t d) override;
  void progress() override { layer_.progress(); }
  void combine(int64_t l, float* eo, std::span<const int64_t> offsets, int64_t d) override;
  // Completes the layer's transfers in flight (what combine() ends with): for a dispatch alone (benchmarks).
  void complete(int64_t l) { layer_.wait("the transfers of layer", l); }
  void logits(float* rows, int64_t floats, std::unique_lock<std::mutex>* step) override;

 private:
  const ExpertRange* my_range(int64_t l) const;
  const LayerRoles& roles(int64_t l) const { return group_.roles().at(static_cast<size_t>(l)); }

  RankGroup& group_;
  const World& world_;
  int slot_;
  // The MoE layer's transfers in flight from dispatch() (a runner's sends) and expect_rows() (its receives) to
  // combine(), where they complete with this rank's sends.
  World::Pending layer_;
};

}  // namespace ferry::transport
