// What the chat encoders read from OpenAI-format messages, checked, with errors that name the message
// ("message 3 (assistant): ..."), and JSON text written the way DeepSeek's Python encoders write it.
// Internal to runtime/chat_*.cpp.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace ferry::runtime::chat {

// Ordered, so that tool schemas and arguments keep the key order the client sent: the prompt is byte-exact
// only if they do.
using OrderedJson = nlohmann::ordered_json;

// Python's json.dumps(value, ensure_ascii=False): ", " and ": " separators, keys in their order, UTF-8 as is.
std::string python_json(const OrderedJson& value);

// "message 3 (assistant)", or "message 3" when it has no usable role.
std::string message_label(const OrderedJson& message, size_t index);

// Checks that `messages` is an array of objects, each with a string role, and returns the message.
const OrderedJson& checked_message(const OrderedJson& messages, size_t index);

// A string field; nullopt when absent or null; ferry::Error when of another type.
std::optional<std::string> string_field(const OrderedJson& message, size_t index, const char* key);

// `content` as text: a string, null/absent (nullopt), or an array of {"type": "text", "text": ...} parts joined
// with `part_separator`. Anything else is a ferry::Error.
std::optional<std::string> content_text(const OrderedJson& message, size_t index, std::string_view part_separator);

struct ToolCallIn {
  std::string id;                                 // "" when the client sent none
  std::string type;                               // "function" when the client sent none
  std::string name;                               // never empty
  std::string arguments_text;                     // as sent, or an object written with python_json
  const OrderedJson* arguments_object = nullptr;  // set when arguments came as an object rather than text
};

// `tool_calls` of an assistant message (absent or null: empty). Each needs a function with a non-empty name;
// arguments may be a JSON text or an object.
std::vector<ToolCallIn> tool_calls_of(const OrderedJson& message, size_t index);

}  // namespace ferry::runtime::chat
