// runtime::RankExchange over MPI (host buffers): the lockstep of commands from rank 0 and the exchanges at the
// seams of the forward pass, each a set of point-to-point transfers posted together and waited for with the
// world's deadline. The roles come from the Plan (layer_roles.h).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "runtime/model/forward.h"
#include "runtime/model/rank_exchange.h"
#include "transport/layer_roles.h"
#include "transport/world.h"

namespace ferry::transport {

enum class Command : int32_t { Feed = 1, Reset = 2, Stop = 3 };

class MpiRankExchange final : public runtime::RankExchange {
 public:
  MpiRankExchange(const World& world, std::vector<LayerRoles> roles);

  bool leads() const override { return world_.leader(); }
  bool runs_layer(int64_t l) const override;
  bool computes_expert(int64_t l, int64_t e) const override;
  bool computes_experts(int64_t l) const override;
  bool runs_head() const override { return world_.rank() == head_rank_; }

  void announce_feed(std::span<const int32_t> tokens, runtime::LogitsWanted want) override;
  void announce_reset() override;
  // Rank 0, when its command is done: the followers return from follow().
  void announce_stop();

  void hand_over(int64_t l, float* H, int64_t floats) override;
  void dispatch(int64_t l, float* xn, int64_t n, int64_t d, int32_t* ids, int64_t k) override;
  void combine(int64_t l, float* eo, std::span<const int64_t> offsets, int64_t d) override;
  void logits(float* rows, int64_t floats) override;

  // Ranks other than 0: runs what rank 0 announces on `session` until it announces the end. Waits for a command
  // without a deadline (a server may idle for hours); every step's exchanges keep theirs.
  void follow(runtime::Session& session);

  const std::vector<LayerRoles>& roles() const { return roles_; }
  int head_rank() const { return head_rank_; }

 private:
  const ExpertRange* my_range(int64_t l) const;
  void broadcast_command(Command c, std::span<const int32_t> tokens, runtime::LogitsWanted want);

  const World& world_;
  std::vector<LayerRoles> roles_;
  int head_rank_ = 0;
};

}  // namespace ferry::transport
