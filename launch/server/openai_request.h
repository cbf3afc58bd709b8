// Parsing and validating the bodies of POST /v1/chat/completions and /v1/completions. Anything wrong throws
// ApiError (400, invalid_request_error, naming the parameter), so the server answers before touching the model.
//
// Accepted: the standard OpenAI fields. Those that change the output are honoured (model, messages, prompt,
// stream, stream_options.include_usage, max_tokens / max_completion_tokens, temperature, top_p, stop, seed,
// tools, tool_choice "auto" | "none", n = 1); the informational ones are accepted and ignored (user, metadata,
// store, service_tier, prompt_cache_key, safety_identifier); the rest are accepted only at their neutral
// value (frequency_penalty / presence_penalty 0, logprobs false, logit_bias {}, response_format text, ...) and
// rejected otherwise as unsupported. Unknown top-level fields are rejected. Extensions, as in vLLM/SGLang:
//   top_k                         integer >= 0 (-1 also means "off")
//   chat_template_kwargs.thinking bool: DeepSeek's thinking mode
//   thinking: {"type": "enabled" | "disabled"}   the same switch, DeepSeek API style
// Unknown keys inside a message are dropped (clients echo back fields of earlier answers).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "launch/server/engine.h"

namespace ferry::launch::server {

struct ApiRequest {
  GenerationRequest generation;
  std::string model;  // as the client named it; "" when absent
  bool stream = false;
  bool include_usage = false;         // stream_options.include_usage: a last chunk with the usage
  std::optional<int64_t> max_tokens;  // absent: chat -> until the context is full, completion -> 16
  std::vector<std::string> stop;      // stop sequences, applied to the content (not the reasoning)
};

// At most this many stop sequences (OpenAI allows 4; llama.cpp more).
constexpr size_t kMaxStopSequences = 16;
// /v1/completions without max_tokens generates this many tokens, as OpenAI's API does.
constexpr int64_t kDefaultCompletionMaxTokens = 16;

// The body as a JSON object, keys in the order the client wrote them; 400 when it is not valid JSON or not an
// object.
nlohmann::ordered_json parse_json_body(std::string_view body);

// A seed comes from std::random_device when the request has none, so answers differ as OpenAI's do.
ApiRequest parse_chat_request(const nlohmann::ordered_json& body);
ApiRequest parse_completion_request(const nlohmann::ordered_json& body);

}  // namespace ferry::launch::server
