#include "runtime/text/chat_v3.h"

#include "planner/core/error.h"
#include "runtime/text/chat_message.h"

namespace ferry::runtime {
namespace {

using chat::OrderedJson;

constexpr std::string_view kCallsBegin = "<｜tool▁calls▁begin｜>";
constexpr std::string_view kCallsEnd = "<｜tool▁calls▁end｜>";
constexpr std::string_view kCallBegin = "<｜tool▁call▁begin｜>";
constexpr std::string_view kCallEnd = "<｜tool▁call▁end｜>";
constexpr std::string_view kSep = "<｜tool▁sep｜>";
constexpr std::string_view kOutputsBegin = "<｜tool▁outputs▁begin｜>";
constexpr std::string_view kOutputsEnd = "<｜tool▁outputs▁end｜>";
constexpr std::string_view kOutputBegin = "<｜tool▁output▁begin｜>";
constexpr std::string_view kOutputEnd = "<｜tool▁output▁end｜>";

std::string required_content(const OrderedJson& m, size_t index) {
  std::optional<std::string> content = chat::content_text(m, index, "\n");
  FERRY_CHECK(content, "{}: needs content", chat::message_label(m, index));
  return *content;
}

std::string render_call(const chat::ToolCallIn& call) {
  std::string out(kCallBegin);
  out += call.type;
  out += kSep;
  out += call.name + "\n```json\n" + call.arguments_text + "\n```";
  out += kCallEnd;
  return out;
}

}  // namespace

std::string encode_v3_chat(const nlohmann::ordered_json& messages, const ChatEncodeOptions& options) {
  FERRY_CHECK(messages.is_array(), "messages must be an array, got {}", messages.type_name());
  std::string out;
  if (options.add_bos) out += kBosToken;

  // Every system message, wherever it is, goes to the top.
  bool first_system = true;
  for (size_t i = 0; i < messages.size(); ++i) {
    const OrderedJson& m = chat::checked_message(messages, i);
    if (m["role"] != "system") continue;
    if (!first_system) out += "\n\n";
    out += required_content(m, i);
    first_system = false;
  }

  // The template's namespace flags, and like them never reset: they make the quirks described in chat_v3.h.
  bool in_tool_outputs = false, first_call_written = false, first_output_written = false;
  for (size_t i = 0; i < messages.size(); ++i) {
    const OrderedJson& m = messages[i];
    const std::string role = m["role"].get<std::string>();
    const std::string label = chat::message_label(m, i);
    if (role == "system") continue;
    if (role == "user") {
      in_tool_outputs = false;
      out += kUserToken;
      out += required_content(m, i);
    } else if (role == "assistant") {
      std::optional<std::string> content = chat::content_text(m, i, "\n");
      if (content) {
        out += in_tool_outputs ? kOutputsEnd : kAssistantToken;
        out += *content;
        out += kEosToken;
        in_tool_outputs = false;
        continue;
      }
      std::vector<chat::ToolCallIn> calls = chat::tool_calls_of(m, i);
      FERRY_CHECK(!calls.empty(), "{}: has neither content nor tool_calls", label);
      in_tool_outputs = false;
      for (const chat::ToolCallIn& call : calls) {
        if (!first_call_written) {
          out += kAssistantToken;
          out += kCallsBegin;
          out += render_call(call);
          first_call_written = true;
        } else {
          out += "\n" + render_call(call);
          out += kCallsEnd;
          out += kEosToken;
        }
      }
    } else if (role == "tool") {
      in_tool_outputs = true;
      out += first_output_written ? "\n" : kOutputsBegin;
      out += kOutputBegin;
      out += required_content(m, i);
      out += kOutputEnd;
      first_output_written = true;
    } else {
      FERRY_THROW("{}: unknown role (V3 knows system, user, assistant, tool)", label);
    }
  }
  if (in_tool_outputs) out += kOutputsEnd;
  if (options.add_generation_prompt && !in_tool_outputs) out += kAssistantToken;
  return out;
}

std::string encode_v3_chat(const nlohmann::json& messages, const ChatEncodeOptions& options) {
  return encode_v3_chat(nlohmann::ordered_json(messages), options);
}

}  // namespace ferry::runtime
