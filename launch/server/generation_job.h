// One admitted request run on the engine: its events pass through the stop sequences and become the
// OpenAI answer, either server-sent events written as they come (stream) or one JSON object at the end.
// HTTP-free, so that the server writes it to a socket and tests to a string.
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

#include "launch/server/engine.h"
#include "launch/server/openai_request.h"
#include "launch/server/openai_response.h"

namespace ferry::launch::server {

// Sends bytes to the client; false when the client is gone.
using Writer = std::function<bool(std::string_view bytes)>;

struct JobOutcome {
  EngineResult engine;
  double seconds = 0;        // in generate(), prompt included
  bool client_gone = false;  // a write failed or the client left: the answer is incomplete
  bool failed = false;       // the engine threw; the client got an error object
};

struct Job {
  const ApiRequest& request;
  const std::vector<int32_t>& prompt;
  int64_t max_tokens = 0;
  ResponseHeader header;
};

// `cancelled` is asked between tokens: the client left or the server is shutting down (which ends the
// answer with a 503 error object). Never throws.
JobOutcome run_job(Engine& engine, const Job& job, const Writer& write, const StopRequested& cancelled);

}  // namespace ferry::launch::server
