// The JSON the OpenAI API answers with: chat.completion and text_completion objects, their streaming chunks
// framed as server-sent events, and error bodies. Pure formatting: no HTTP, no engine.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "launch/server/api_error.h"
#include "launch/server/engine.h"

namespace ferry::launch::server {

struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0;
};

// What every object of one answer shares.
struct ResponseHeader {
  RequestKind kind = RequestKind::Chat;
  std::string id;       // "chatcmpl-..." or "cmpl-..."
  int64_t created = 0;  // Unix seconds
  std::string model;
};

// A fresh header: a random id with the kind's prefix, created now.
ResponseHeader new_response_header(RequestKind kind, std::string model);

// A whole answer, for non-streaming requests.
struct Answer {
  std::string reasoning, content;
  std::vector<ToolCall> tool_calls;
  std::string finish_reason;  // "stop", "length" or "tool_calls"
  Usage usage;
};

const char* finish_reason_name(FinishReason reason);  // Cancelled -> "stop"

// chat.completion or text_completion, by header.kind.
nlohmann::json completion_object(const ResponseHeader& header, const Answer& answer);

// {"error":{"message","type","param","code"}}; empty param/code are null.
nlohmann::json error_body(const ApiError& error);

// Serializes for the wire; invalid UTF-8 becomes U+FFFD instead of throwing.
std::string dump_json(const nlohmann::json& j);

// The events of one streamed answer, each a complete "data: ...\n\n" server-sent event.
class StreamChunks {
 public:
  StreamChunks(ResponseHeader header, bool include_usage);

  std::string start();  // chat: the assistant role; completion: nothing
  std::string reasoning(std::string_view text);
  std::string content(std::string_view text);
  std::string tool_call(size_t index, const ToolCall& call);
  std::string finish(std::string_view finish_reason);
  std::string usage(const Usage& usage);  // only with include_usage: the usage, no choices
  std::string error(const ApiError& error);
  static std::string done();  // "data: [DONE]"

 private:
  std::string chunk(nlohmann::json choice);

  ResponseHeader header_;
  bool include_usage_;
};

}  // namespace ferry::launch::server
