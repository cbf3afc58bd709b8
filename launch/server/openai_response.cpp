#include "launch/server/openai_response.h"

#include <chrono>
#include <random>

namespace ferry::launch::server {

using nlohmann::json;

namespace {

json usage_object(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

json tool_call_object(const ToolCall& call) {
  return {{"id", call.id}, {"type", "function"}, {"function", {{"name", call.name}, {"arguments", call.arguments}}}};
}

const char* object_name(RequestKind kind, bool chunk) {
  if (kind == RequestKind::Completion) return "text_completion";  // OpenAI names chunks the same
  return chunk ? "chat.completion.chunk" : "chat.completion";
}

std::string sse(const json& data) { return "data: " + dump_json(data) + "\n\n"; }

}  // namespace

ResponseHeader new_response_header(RequestKind kind, std::string model) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = kind == RequestKind::Chat ? "chatcmpl-" : "cmpl-";
  for (int i = 0; i < 24; ++i) id += kHex[rng() % 16];
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  return {kind, std::move(id), std::chrono::duration_cast<std::chrono::seconds>(now).count(), std::move(model)};
}

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::Length: return "length";
    case FinishReason::ToolCalls: return "tool_calls";
    case FinishReason::Stop:
    case FinishReason::Cancelled: break;
  }
  return "stop";
}

json completion_object(const ResponseHeader& h, const Answer& a) {
  json choice = {{"index", 0}, {"finish_reason", a.finish_reason}, {"logprobs", nullptr}};
  if (h.kind == RequestKind::Chat) {
    json message = {{"role", "assistant"}};
    // OpenAI sends null content for an answer that only calls tools.
    message["content"] = a.content.empty() && !a.tool_calls.empty() ? json(nullptr) : json(a.content);
    if (!a.reasoning.empty()) message["reasoning_content"] = a.reasoning;
    if (!a.tool_calls.empty()) {
      message["tool_calls"] = json::array();
      for (const auto& c : a.tool_calls) message["tool_calls"].push_back(tool_call_object(c));
    }
    choice["message"] = std::move(message);
  } else {
    choice["text"] = a.content;
  }
  return {{"id", h.id},       {"object", object_name(h.kind, false)},        {"created", h.created},
          {"model", h.model}, {"choices", json::array({std::move(choice)})}, {"usage", usage_object(a.usage)}};
}

json error_body(const ApiError& e) {
  return {{"error",
           {{"message", e.what()},
            {"type", e.type()},
            {"param", e.param().empty() ? json(nullptr) : json(e.param())},
            {"code", e.code().empty() ? json(nullptr) : json(e.code())}}}};
}

std::string dump_json(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

StreamChunks::StreamChunks(ResponseHeader header, bool include_usage)
    : header_(std::move(header)), include_usage_(include_usage) {}

std::string StreamChunks::chunk(json choice) {
  choice["index"] = 0;
  if (!choice.contains("finish_reason")) choice["finish_reason"] = nullptr;
  json c = {{"id", header_.id},
            {"object", object_name(header_.kind, true)},
            {"created", header_.created},
            {"model", header_.model},
            {"choices", json::array({std::move(choice)})}};
  // With include_usage OpenAI puts "usage": null on every chunk but the last.
  if (include_usage_) c["usage"] = nullptr;
  return sse(c);
}

std::string StreamChunks::start() {
  if (header_.kind != RequestKind::Chat) return {};
  return chunk({{"delta", {{"role", "assistant"}, {"content", ""}}}});
}

std::string StreamChunks::reasoning(std::string_view text) { return chunk({{"delta", {{"reasoning_content", text}}}}); }

std::string StreamChunks::content(std::string_view text) {
  if (header_.kind == RequestKind::Completion) return chunk({{"text", text}, {"logprobs", nullptr}});
  return chunk({{"delta", {{"content", text}}}});
}

std::string StreamChunks::tool_call(size_t index, const ToolCall& call) {
  json c = tool_call_object(call);
  c["index"] = index;
  return chunk({{"delta", {{"tool_calls", json::array({std::move(c)})}}}});
}

std::string StreamChunks::finish(std::string_view finish_reason) {
  if (header_.kind == RequestKind::Completion)
    return chunk({{"text", ""}, {"logprobs", nullptr}, {"finish_reason", finish_reason}});
  return chunk({{"delta", json::object()}, {"finish_reason", finish_reason}});
}

std::string StreamChunks::usage(const Usage& u) {
  if (!include_usage_) return {};
  return sse({{"id", header_.id},
              {"object", object_name(header_.kind, true)},
              {"created", header_.created},
              {"model", header_.model},
              {"choices", json::array()},
              {"usage", usage_object(u)}});
}

std::string StreamChunks::error(const ApiError& e) { return sse(error_body(e)); }

std::string StreamChunks::done() { return "data: [DONE]\n\n"; }

}  // namespace ferry::launch::server
