#include "transport/rank_exchange.h"

#include <algorithm>
#include <array>

#include "planner/core/error.h"
#include "runtime/model/session_file.h"

namespace ferry::transport {

namespace {

size_t sz(int64_t v) { return static_cast<size_t>(v); }

// Tags keep the seams apart; within one seam, MPI's ordering between two ranks keeps the layers apart. Rank 0 may
// still await a step's logits when the next step has started (RankGroup): it posts the receive before it lets that
// step start, so receives match the head's sends in step order; the logits' tag per slot (kLogits + slot) makes
// sure besides that a slot's receive can match only its own logits.
enum Tag : int {
  kHidden = 11,
  kDispatchInputs = 12,
  kDispatchChoices = 13,
  kCombine = 14,
  kSessionFile = 15,
  kLogits = 1000
};
static_assert(kLogits + MpiRankExchange::kMaxSlots <= 32767, "MPI guarantees tags up to 32767 (MPI_TAG_UB)");

bool has(const std::vector<int>& ranks, int r) { return std::find(ranks.begin(), ranks.end(), r) != ranks.end(); }

}  // namespace

RankGroup::RankGroup(const World& world, std::vector<LayerRoles> roles, bool pipeline)
    : world_(world), roles_(std::move(roles)) {
  FERRY_CHECK(!roles_.empty(), "transport: a model without layers");
  const std::vector<int>& last = roles_.back().runners;
  head_rank_ = has(last, 0) ? 0 : last.front();
  pipelined_ = pipeline && head_rank_ != 0 && world.concurrent_threads();
}

std::unique_lock<std::mutex> RankGroup::start_step(Command c, int slot, std::span<const int32_t> tokens,
                                                   runtime::LogitsWanted want) {
  std::unique_lock lock(step_);
  if (c == Command::Feed) {
    steps_.fetch_add(1);
    if (awaiting_logits_.load() > 0) overlapped_steps_.fetch_add(1);
  }
  broadcast_command(c, slot, static_cast<int64_t>(tokens.size()), static_cast<int64_t>(want), tokens);
  return lock;
}

void RankGroup::announce_rewind(int slot, int64_t p, int64_t s) {
  std::lock_guard lock(step_);
  broadcast_command(Command::Rewind, slot, p, s);
}

std::unique_lock<std::mutex> RankGroup::announce_session_file(int slot, bool load) {
  std::unique_lock lock(step_);
  broadcast_command(load ? Command::LoadSession : Command::SaveSession, slot, 0, 0);
  return lock;
}

void RankGroup::broadcast_command(Command c, int slot, int64_t a, int64_t b, std::span<const int32_t> tokens) {
  std::array<int64_t, 4> header{static_cast<int64_t>(c), slot, a, b};
  world_.broadcast(header.data(), sizeof header, 0, "a command to the ranks");
  if (!tokens.empty())
    world_.broadcast(const_cast<int32_t*>(tokens.data()), static_cast<int64_t>(tokens.size_bytes()), 0,
                     "a command's tokens");
}

void RankGroup::announce_stop() { start_step(Command::Stop, 0, {}, runtime::LogitsWanted::None); }

void RankGroup::follow(const std::function<runtime::Session&(int slot)>& session_of, bool survive_session_files) {
  FERRY_CHECK(!world_.leader(), "transport: rank 0 leads, it does not follow");
  std::vector<int32_t> tokens;
  for (;;) {
    std::array<int64_t, 4> header{};
    std::vector<MPI_Request> r(1);
    MPI_Ibcast(header.data(), sizeof header, MPI_BYTE, 0, world_.comm(), &r[0]);
    world_.wait_all(r, {0}, "the next command", /*bounded=*/false);
    const auto command = static_cast<Command>(header[0]);
    if (command == Command::Stop) return;
    FERRY_CHECK(header[1] >= 0 && header[1] < 1 << 20, "transport: rank 0 sent a command for slot {}", header[1]);
    runtime::Session& session = session_of(static_cast<int>(header[1]));
    if (command == Command::Reset) {
      session.reset();
      continue;
    }
    if (command == Command::Rewind) {
      session.follow_rewind(header[2], header[3]);
      continue;
    }
    if (command == Command::SaveSession || command == Command::LoadSession) {
      try {
        runtime::follow_session_file(session, command == Command::LoadSession);
      } catch (const AgreedError&) {
        // Rank 0 reports it; no rank's session changed (or every rank's was reset together).
        if (!survive_session_files) throw;
      }
      continue;
    }
    FERRY_CHECK(command == Command::Feed && header[2] > 0, "transport: rank 0 sent an unknown command {}", header[0]);
    tokens.resize(sz(header[2]));
    world_.broadcast(tokens.data(), header[2] * static_cast<int64_t>(sizeof(int32_t)), 0, "a command's tokens");
    session.follow_feed(tokens, static_cast<runtime::LogitsWanted>(header[3]));
  }
}

MpiRankExchange::MpiRankExchange(RankGroup& group, int slot)
    : group_(group), world_(group.world()), slot_(slot), layer_(group.world()) {
  FERRY_CHECK(slot >= 0 && slot < kMaxSlots, "transport: slot {} is beyond the {} a run may have", slot, kMaxSlots);
}

bool MpiRankExchange::runs_layer(int64_t l) const { return has(roles(l).runners, world_.rank()); }

const ExpertRange* MpiRankExchange::my_range(int64_t l) const {
  for (const ExpertRange& r : roles(l).holders)
    if (r.rank == world_.rank()) return &r;
  return nullptr;
}

bool MpiRankExchange::computes_expert(int64_t l, int64_t e) const {
  const ExpertRange* r = my_range(l);
  return r && r->contains(e);
}

bool MpiRankExchange::computes_experts(int64_t l) const { return my_range(l) != nullptr; }

std::unique_lock<std::mutex> MpiRankExchange::announce_feed(std::span<const int32_t> tokens,
                                                            runtime::LogitsWanted want) {
  return group_.start_step(Command::Feed, slot_, tokens, want);
}

void MpiRankExchange::announce_reset() { group_.start_step(Command::Reset, slot_, {}, runtime::LogitsWanted::None); }

// The runners of l that did not run l−1 receive H from the first rank that did.
void MpiRankExchange::hand_over(int64_t l, float* H, int64_t floats) {
  const std::vector<int>& before = roles(l - 1).runners;
  const std::vector<int>& now = roles(l).runners;
  if (before == now) return;
  const int from = before.front(), me = world_.rank();
  World::Pending p(world_);
  for (const int r : now) {
    if (has(before, r)) continue;
    if (me == from) p.send(H, floats * 4, r, kHidden);
    if (me == r) p.recv(H, floats * 4, from, kHidden);
  }
  p.wait("the hidden state before layer", l);
}

// The first runner sends the layer's inputs and choices to the holders that do not run it (completing in
// combine(), behind its own experts' compute); they wait for them.
void MpiRankExchange::dispatch(int64_t l, float* xn, int64_t n, int64_t d, int32_t* ids, int64_t k) {
  const LayerRoles& roles = this->roles(l);
  const int from = roles.runners.front(), me = world_.rank();
  for (const ExpertRange& h : roles.holders) {
    if (has(roles.runners, h.rank)) continue;
    if (me == from) {
      layer_.send(xn, n * d * 4, h.rank, kDispatchInputs);
      layer_.send(ids, n * k * 4, h.rank, kDispatchChoices);
    }
    if (me == h.rank) {
      World::Pending p(world_);
      p.recv(xn, n * d * 4, from, kDispatchInputs);
      p.recv(ids, n * k * 4, from, kDispatchChoices);
      p.wait("the inputs of the experts of layer", l);
    }
  }
}

// Rows of holder h: its experts' sorted positions, one contiguous block of eo.
namespace {
std::pair<int64_t, int64_t> rows_of(const ExpertRange& h, std::span<const int64_t> offsets) {
  return {offsets[sz(h.first)], offsets[sz(h.last + 1)]};
}
}  // namespace

void MpiRankExchange::expect_rows(int64_t l, float* eo, std::span<const int64_t> offsets, int64_t d) {
  const LayerRoles& roles = this->roles(l);
  const int me = world_.rank();
  if (!has(roles.runners, me)) return;
  for (const ExpertRange& h : roles.holders) {
    const auto [begin, end] = rows_of(h, offsets);
    if (h.rank != me && end > begin) layer_.recv(eo + begin * d, (end - begin) * d * 4, h.rank, kCombine);
  }
}

// This rank's rows go to every runner but itself; then the layer's transfers complete.
void MpiRankExchange::combine(int64_t l, float* eo, std::span<const int64_t> offsets, int64_t d) {
  const LayerRoles& roles = this->roles(l);
  const int me = world_.rank();
  for (const ExpertRange& h : roles.holders) {
    if (h.rank != me) continue;
    const auto [begin, end] = rows_of(h, offsets);
    if (end == begin) continue;
    for (const int r : roles.runners)
      if (r != me) layer_.send(eo + begin * d, (end - begin) * d * 4, r, kCombine);
  }
  layer_.wait("the outputs of the experts of layer", l);
}

void MpiRankExchange::layer_to_leader(int64_t l, void* data, int64_t bytes) {
  const int keeper = roles(l).runners.front();
  if (keeper == 0 || bytes == 0) return;
  if (world_.rank() == keeper) world_.send(data, bytes, 0, kSessionFile, "a layer's state for a session file");
  if (world_.leader()) world_.recv(data, bytes, keeper, kSessionFile, "a layer's state for a session file");
}

void MpiRankExchange::layer_from_leader(int64_t l, void* data, int64_t bytes) {
  if (bytes == 0) return;
  const std::vector<int>& runners = roles(l).runners;
  const int me = world_.rank();
  World::Pending p(world_);
  for (const int r : runners) {
    if (r == 0) continue;
    if (me == 0) p.send(data, bytes, r, kSessionFile);
    if (me == r) p.recv(data, bytes, 0, kSessionFile);
  }
  p.wait("the session file's state of layer", l);
}

void MpiRankExchange::logits(float* rows, int64_t floats, std::unique_lock<std::mutex>* step) {
  const int head = group_.head_rank();
  if (head == 0) return;
  const int tag = kLogits + slot_;
  if (world_.rank() == head) world_.send(rows, floats * 4, 0, tag, "the logits");
  if (!world_.leader()) return;
  World::Pending p(world_);
  p.recv(rows, floats * 4, head, tag);
  group_.await_logits(step, [&] { p.wait("the logits"); });
}

}  // namespace ferry::transport
