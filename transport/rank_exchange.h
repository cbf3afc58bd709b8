// runtime::RankExchange over MPI (host buffers): the lockstep of commands from rank 0 and the exchanges at the
// seams of the forward pass, each a set of point-to-point transfers posted together and waited for with the
// world's deadline. The roles come from the Plan (layer_roles.h). Several sessions (a server's slots) share one
// RankGroup and take turns.
#pragma once

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

enum class Command : int32_t { Feed = 1, Reset = 2, Stop = 3 };

// What the sessions of one run share across the ranks: the roles, and the lock that makes their steps take turns.
// Rank 0 announces each session's steps with its slot; the other ranks follow (follow()).
class RankGroup {
 public:
  RankGroup(const World& world, std::vector<LayerRoles> roles);

  const World& world() const { return world_; }
  const std::vector<LayerRoles>& roles() const { return roles_; }
  int head_rank() const { return head_rank_; }
  std::mutex& step_lock() { return step_; }

  // Rank 0 (with the step lock held): a command for the session of `slot`.
  void broadcast_command(Command c, int slot, std::span<const int32_t> tokens, runtime::LogitsWanted want);
  // Rank 0, when its command is done: the followers return from follow().
  void announce_stop();
  // Ranks other than 0: runs what rank 0 announces, each command on `session_of(slot)` (made on first use), until
  // rank 0 announces the end. Waits for a command without a deadline (a server may idle for hours); every step's
  // exchanges keep theirs.
  void follow(const std::function<runtime::Session&(int slot)>& session_of);

 private:
  const World& world_;
  std::vector<LayerRoles> roles_;
  int head_rank_ = 0;
  std::mutex step_;
};

// One session's runtime::RankExchange: its slot's commands, and the exchanges of its forward passes.
class MpiRankExchange final : public runtime::RankExchange {
 public:
  MpiRankExchange(RankGroup& group, int slot)
      : group_(group), world_(group.world()), slot_(slot), layer_(group.world()) {}

  bool leads() const override { return world_.leader(); }
  bool runs_layer(int64_t l) const override;
  bool computes_expert(int64_t l, int64_t e) const override;
  bool computes_experts(int64_t l) const override;
  bool runs_head() const override { return world_.rank() == group_.head_rank(); }

  std::unique_lock<std::mutex> announce_feed(std::span<const int32_t> tokens, runtime::LogitsWanted want) override;
  void announce_reset() override;

  void hand_over(int64_t l, float* H, int64_t floats) override;
  void dispatch(int64_t l, float* xn, int64_t n, int64_t d, int32_t* ids, int64_t k) override;
  void expect_rows(int64_t l, float* eo, std::span<const int64_t> offsets, int64_t d) override;
  void progress() override { layer_.progress(); }
  void combine(int64_t l, float* eo, std::span<const int64_t> offsets, int64_t d) override;
  // Completes the layer's transfers in flight (what combine() ends with): for a dispatch alone (benchmarks).
  void complete(int64_t l) { layer_.wait("the transfers of layer", l); }
  void logits(float* rows, int64_t floats) override;

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
