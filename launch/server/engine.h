// What `ferry serve` needs from a model: the interface between the HTTP layer and generation. The V4 engine
// (launch/server/v4_engine.h: tokenizer + chat encoding + runtime::generate) implements it; tests use a double.
//
// The server calls, per request:
//   1. encode_prompt(request)   on the HTTP thread, before queueing: the prompt's token ids, so that a prompt
//                               longer than context_length() is answered 400 before it waits for the model;
//   2. generate(...)            once the scheduler gave the request a running slot, at most `--parallel`
//                               calls at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "launch/server/metrics.h"
#include "runtime/generate/sampler.h"

namespace ferry::launch::server {

enum class RequestKind { Chat, Completion };

// A request the server has validated (launch/server/openai_request.h): everything the engine needs, nothing
// about HTTP, streaming or stop sequences (the server applies those to what the engine emits).
struct GenerationRequest {
  RequestKind kind = RequestKind::Chat;
  // Chat: OpenAI-style messages, validated: roles system|user|assistant|tool ("developer" arrives as
  // "system"), content a string (text parts already joined) or null; assistant messages may carry
  // reasoning_content and tool_calls, tool messages tool_call_id. Ordered as the client sent them: the key
  // order of tool schemas and arguments is part of V4's prompt text.
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  // Chat: the OpenAI tool definitions to offer the model ([] when none, or when tool_choice is "none").
  nlohmann::ordered_json tools = nlohmann::ordered_json::array();
  bool thinking = false;  // chat: DeepSeek's thinking mode (reasoning before the answer)
  std::string prompt;     // completion: raw text, no chat template
  runtime::SamplerOptions sampler;
};

struct ToolCall {
  std::string id;         // e.g. "call_0"; unique within one answer
  std::string name;       // the function's name
  std::string arguments;  // JSON text, as the model wrote it
};

// Called by generate() as text is produced, on generate()'s thread. Text pieces are whole UTF-8 characters.
struct EngineCallbacks {
  std::function<void(std::string_view text)> on_reasoning;  // thinking mode: the reasoning before the answer
  std::function<void(std::string_view text)> on_content;    // the answer
  std::function<void(const ToolCall& call)> on_tool_call;   // one complete call
};

enum class FinishReason {
  Stop,       // the model ended its turn
  Length,     // max_tokens generated
  ToolCalls,  // the model ended its turn by calling tools
  Cancelled,  // stop_requested() returned true
};

struct EngineResult {
  FinishReason finish = FinishReason::Stop;
  int64_t completion_tokens = 0;                   // tokens generated (prompt excluded)
  double prefill_seconds = 0, decode_seconds = 0;  // where the engine measures them (0 otherwise)
};

// Asked before the prompt is processed and between tokens; true stops generation at once (the client left,
// a stop sequence matched, or the server is shutting down).
using StopRequested = std::function<bool()>;

class Engine {
 public:
  virtual ~Engine() = default;

  virtual std::string model_id() const = 0;
  virtual int64_t context_length() const = 0;  // prompt + generated tokens one sequence can hold

  // The token ids the model will be prompted with (chat template applied for chat requests). Called from
  // many HTTP threads at once, also while generate() runs: must be thread-safe. Throws ApiError (or
  // ferry::Error, answered 400) for a request it cannot encode.
  virtual std::vector<int32_t> encode_prompt(const GenerationRequest& request) const = 0;

  // Generates at most max_tokens tokens after `prompt` (which encode_prompt returned for `request`;
  // prompt.size() + max_tokens <= context_length()). Throws on internal failure only.
  virtual EngineResult generate(const GenerationRequest& request, const std::vector<int32_t>& prompt,
                                int64_t max_tokens, const EngineCallbacks& callbacks,
                                const StopRequested& stop_requested) = 0;

  // Samples of its own for GET /metrics (e.g. the memory the model holds); asked on every scrape, from any
  // thread, also while generate() runs.
  virtual std::vector<MetricSample> metrics() const { return {}; }

  // llama-server's POST /slots/{id}?action=save|restore|erase (slot_actions.h): the sequence slot `id` holds, saved
  // to or restored from `file` (a KV session file), or forgotten. Throw ApiError: 404 for a slot beyond the
  // server's, 409 while a request uses it, 400 for a file that cannot be saved or restored (the slot untouched).
  struct SlotFile {
    int64_t tokens = 0, bytes = 0;
  };
  virtual SlotFile save_slot(int id, const std::string& file);
  virtual SlotFile restore_slot(int id, const std::string& file);
  virtual int64_t erase_slot(int id);  // the tokens the slot held
};

}  // namespace ferry::launch::server
