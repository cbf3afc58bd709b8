// The DeepSeek V3 family's chat format: the Jinja chat_template of DeepSeek V3's tokenizer_config.json,
// re-implemented (ferry has no Jinja engine) and checked against Hugging Face's Jinja renderer running that very
// template (tests/js/render_v3_template.mjs).
//
//   <bos>{all system contents, joined by a blank line}<｜User｜>...<｜Assistant｜>...<｜end▁of▁sentence｜>
// Tool calls are written as <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGS\n```
// <｜tool▁call▁end｜>...; tool results as <｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>...<｜tool▁output▁end｜>.
// The template has quirks that the model was trained with and that are kept as they are: an assistant message
// with content ignores its tool_calls; "<｜tool▁calls▁end｜><｜end▁of▁sentence｜>" follows only the second and later
// calls; only the very first tool call of the conversation opens with "<｜Assistant｜><｜tool▁calls▁begin｜>" and
// only the very first tool result with "<｜tool▁outputs▁begin｜>"; no generation prompt after tool results.
// The template has no place for tool definitions and no thinking mode.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "runtime/text/chat_types.h"

namespace ferry::runtime {

// Roles system, user, assistant, tool. options.mode and options.drop_thinking are ignored. Throws ferry::Error
// naming the message index on a malformed message (unknown role, content of the wrong type, an assistant
// message with neither content nor tool calls, a tool call without a name, ...).
std::string encode_v3_chat(const nlohmann::ordered_json& messages, const ChatEncodeOptions& options = {});
std::string encode_v3_chat(const nlohmann::json& messages, const ChatEncodeOptions& options = {});

}  // namespace ferry::runtime
