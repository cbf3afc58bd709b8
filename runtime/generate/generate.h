// The generation loop: prefill a prompt, then decode one token at a time with a sampler, timing both phases.
// `ferry run`, `ferry chat` and `ferry serve` use it.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "runtime/generate/sampler.h"
#include "runtime/model/forward.h"

namespace ferry::runtime {

struct GenerateOptions {
  int64_t n_predict = 16;
  SamplerOptions sampler;
  bool stop_at_eos = true;
  bool keep_logits = false;  // every prompt position's and every generated token's logits
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated
  std::vector<float> logits;    // keep_logits: [prompt + generated, vocab], row i = logits after token i
  double prefill_seconds = 0, decode_seconds = 0;
  int64_t prompt_tokens = 0, decoded_tokens = 0;  // decoded: forward steps after the prompt
  bool stopped = false;                           // stop_requested() ended generation
};

struct GenerateCallbacks {
  std::function<void(int64_t done, int64_t total)> prefill_progress;
  std::function<void(int32_t token)> on_token;
  // Asked before the prompt and before each token is sampled; true ends generation there (a server's client
  // left, Ctrl-C in a chat). Prefill itself is not interrupted.
  std::function<bool()> stop_requested;
};

// Requires prompt.size() + n_predict <= the session's context (checked before any work).
GenerateResult generate(Session& session, const std::vector<int32_t>& prompt, const GenerateOptions& options,
                        const GenerateCallbacks& callbacks = {});

}  // namespace ferry::runtime
