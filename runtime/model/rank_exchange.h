// A forward pass spread over ranks (DESIGN.md §4): which parts of the model this rank computes, the exchanges
// at the seams of the forward pass, and the lockstep that keeps the ranks on the same step. transport/ implements
// it from the Plan over MPI; the forward pass only calls it (no MPI here). Every exchange keeps the arithmetic of
// one process: each value is computed by exactly one rank with the same kernels on the same inputs and copied to
// the ranks that read it, and the MoE combine adds the experts' outputs in expert order as one process does, so
// the logits are bitwise those of a single-process run.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <string_view>

namespace ferry::runtime {

enum class LogitsWanted : uint8_t { None, Last, All };

class RankExchange {
 public:
  virtual ~RankExchange() = default;

  // ---- roles, from the Plan ----
  // Rank 0: owns the tokens and sampling; announces every step.
  virtual bool leads() const = 0;
  // Runs layer l's non-routed part (attention, router, shared expert) and its combine; holds its KV.
  virtual bool runs_layer(int64_t l) const = 0;
  // Computes routed expert e of layer l (its weights are homed on this rank's node).
  virtual bool computes_expert(int64_t l, int64_t e) const = 0;
  // Computes some routed expert of layer l.
  virtual bool computes_experts(int64_t l) const = 0;
  // Computes the output head (the last layer's runner; rank 0 when it is one).
  virtual bool runs_head() const = 0;

  // ---- lockstep (rank 0 only; the others follow) ----
  // At the start of Session::feed, once the tokens are checked: the other ranks feed the same tokens to their
  // session of the same slot. Returns the step's lock: the sessions of one run (a server's slots) start their steps
  // one at a time, so that the ranks see every step's exchanges in the order rank 0 announced them. Rank 0 holds it
  // until its own part of the step is done (logits()), not until the last stage's part is.
  virtual std::unique_lock<std::mutex> announce_feed(std::span<const int32_t> tokens, LogitsWanted want) = 0;
  // At Session::reset.
  virtual void announce_reset() = 0;
  // At Session::rewind(p), before rank 0 changes anything: every rank puts its part of the session back to position
  // s from its own snapshot at s (the latest at or before p; the ranks' sessions see the same tokens in the same
  // chunks, so they take their snapshots at the same positions); the feed of tokens [s, p) follows as any feed.
  virtual void announce_rewind(int64_t p, int64_t s) = 0;

  // ---- session files (session_file.h): rank 0 reads or writes the file, each rank moves its layers' part ----
  // Rank 0, before it saves (`load` false) or loads a session's file: the other ranks run the same save or load of
  // their part of the session of this slot (follow_session_file). Returns the step lock, held until the file is
  // done, so that its transfers and agreements come between the steps of the other slots, never among them.
  virtual std::unique_lock<std::mutex> announce_session_file(bool load) = 0;
  // Whether this rank sends layer l's KV to rank 0 for a save: the first of its runners (they all hold the same).
  virtual bool keeps_layer(int64_t l) const = 0;
  // `bytes` at `data` from layer l's keeper to rank 0's `data`; nothing when rank 0 keeps it, and on other ranks.
  virtual void layer_to_leader(int64_t l, void* data, int64_t bytes) = 0;
  // `bytes` at rank 0's `data` to the `data` of every other runner of layer l; nothing on the other ranks.
  virtual void layer_from_leader(int64_t l, void* data, int64_t bytes) = 0;
  // Rank 0's `bytes` at `data` on every rank.
  virtual void broadcast(void* data, int64_t bytes) = 0;
  // Runs `step` on every rank and shares the outcome: when any rank throws, every rank throws the same error (the
  // lowest failing rank's line), so that all of them change something or none does.
  virtual void agree(std::string_view what, const std::function<void()>& step) = 0;

  // ---- seams, called by every rank in the same order ----
  // Whether the runners of layer l (1 <= l < layers) differ from those of l−1, so that hand_over(l) moves the
  // hidden streams (the host must then see them: the device's queued ops are done first).
  virtual bool hands_over(int64_t l) const = 0;
  // Before layer l (1 <= l < layers): the ranks that run l without having run l−1 receive the hidden streams H
  // (`floats` floats) from a rank that ran l−1.
  virtual void hand_over(int64_t l, float* H, int64_t floats) = 0;
  // After layer l's router: the ranks computing experts of l without running it receive its normalized inputs
  // xn [n, d] and the choices ids [n, k] from a runner (whose sends may still be in flight: xn and ids stay as they
  // are until combine()).
  virtual void dispatch(int64_t l, float* xn, int64_t n, int64_t d, int32_t* ids, int64_t k) = 0;
  // Before this rank computes its experts of l: a runner of l posts the receives of the other ranks' rows of eo
  // [n·k, d] (expert e's tokens at sorted positions offsets[e] … offsets[e+1]−1; one rank's experts are one
  // contiguous range), so that they land while it computes its own.
  virtual void expect_rows(int64_t l, float* eo, std::span<const int64_t> offsets, int64_t d) = 0;
  // Between two expert tasks: moves what has arrived or can leave, never waits.
  virtual void progress() = 0;
  // This rank's experts of l are computed: their rows go to every runner but itself, and every transfer of the
  // layer completes; a runner then has every rank's rows in place.
  virtual void combine(int64_t l, float* eo, std::span<const int64_t> offsets, int64_t d) = 0;
  // After the head: its runner's `floats` logits reach rank 0's `rows`. `step`: on rank 0, the lock of the feed
  // whose last chunk this is (nullptr otherwise). Rank 0 has no other exchange left in the step, so it lets the next
  // step start before it waits: another sequence's step runs on the first pipeline stages while the last stages
  // finish this one (pipelining across sequences).
  virtual void logits(float* rows, int64_t floats, std::unique_lock<std::mutex>* step) = 0;
};

}  // namespace ferry::runtime
