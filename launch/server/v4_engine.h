// The engine behind `ferry serve` and `ferry chat`: a V4 checkpoint on the CPU (runtime::Session), its
// tokenizer and its chat format. encode_prompt applies the chat encoding (DeepSeek V4's, with tools and
// thinking mode) and tokenizes; generate runs runtime::generate on a session of its own and streams the
// answer through AnswerStream.
//
// Sessions: one per generate() running at once (the server's --parallel), made on first need and reused by later
// requests; each holds a KV cache of `ctx` tokens. A request takes the idle session that holds the longest prefix
// of its prompt and computes only the rest (prefix reuse; bitwise what a fresh prefill computes).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "launch/server/engine.h"
#include "runtime/model/forward.h"
#include "runtime/model/model_weights.h"

namespace ferry::launch::server {

struct V4EngineOptions {
  int64_t ctx = 4096;       // tokens per sequence: prompt + answer
  bool ignore_eos = false;  // generate through the end-of-sentence token until max_tokens (tests, load runs)
  // Adjusts the options of the session of each slot (0, 1, … in the order they are made) before it is made: under
  // mpirun, the plan's KV type and chunk and the slot's part of the forward pass (launch/rank_setup.h).
  std::function<void(int slot, runtime::SessionOptions&)> configure_session;
  // The weights to compute with, placed as planned (launch/engine_setup.h; they outlive the engine); nullptr: the
  // engine loads the directory's checkpoint itself, for the CPU.
  const runtime::ModelWeights* weights = nullptr;
  // Prefix reuse: a request is given the idle session holding the longest prefix of its prompt, and only the rest
  // is computed (a rewind recomputes at most snapshot_every − 1 tokens back to that prefix). Off: every request
  // prefills its whole prompt.
  bool prefix_reuse = true;
  // Sessions the engine may make (the server's --parallel, what the plan holds KV for); past them a request takes
  // an idle session's cache.
  int64_t max_sessions = 1;
  // Snapshots every K tokens of each session (runtime::SessionOptions::snapshot_every; 0: none, a rewind then
  // recomputes from the start); under mpirun the other ranks' sessions take theirs at the same positions
  // (EngineSetup::follow_slots).
  int64_t snapshot_every = 256;
};

// Loads the checkpoint, its tokenizer.json and its chat format, and allocates the first session (so that a
// context the model or the memory cannot hold fails here). Throws ferry::Error naming the problem.
std::unique_ptr<Engine> open_v4_engine(const std::string& model_dir, int64_t ctx);
std::unique_ptr<Engine> open_v4_engine(const std::string& model_dir, const V4EngineOptions& options);

}  // namespace ferry::launch::server
