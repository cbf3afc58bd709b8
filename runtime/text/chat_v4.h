// DeepSeek V4's chat encoding: OpenAI-format messages -> the prompt text the model was trained on.
//
// V4 ships no Jinja chat_template; DeepSeek defines the format in encoding/encoding_dsv4.py of the model
// repository, and this is a re-implementation of its rules, checked byte for byte against DeepSeek's test vectors
// (tests/data/deepseek-v4-flash/encoding-tests). In short:
//   <bos>[system][<｜latest_reminder｜>...]<｜User｜>user<｜Assistant｜><think>reasoning</think>answer<eos>...
// - roles system, developer (a user turn that may carry tools), user, assistant, tool, latest_reminder;
// - tool messages become <tool_result>...</tool_result> blocks of a user turn (sorted into the order of the
//   calls), consecutive user turns are joined with a blank line;
// - tools (OpenAI `tools`) are described in the system prompt; assistant tool calls are written as a
//   <｜DSML｜tool_calls> block (parameters with string="true" are raw text, string="false" JSON);
// - thinking mode: the generation prompt ends with "<think>"; the reasoning of assistant turns before the last
//   user turn is dropped unless some message carries tools. Chat mode: the prompt ends with "</think>";
// - DeepSeek's extras: `task` on a user message (the quick-instruction tokens <｜action｜>, <｜query｜>, ...),
//   `response_format` on a system/developer message, `wo_eos` on an assistant message (a turn left open).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "runtime/text/chat_types.h"

namespace ferry::runtime {

// messages: OpenAI chat messages; tools: an OpenAI tools array, or null. Tools go to the leading system message
// (one is added when the conversation does not start with one). Reasoning is read from `reasoning_content`
// (or `reasoning`). Throws ferry::Error naming the message index on a malformed message (unknown role, content
// of the wrong type, tool call without a name, arguments that are not a JSON object, unknown task, ...).
//
// Pass nlohmann::ordered_json to keep the client's key order in tool schemas and arguments, as DeepSeek's
// encoder does; nlohmann::json sorts keys, which changes the prompt text (not its meaning).
std::string encode_v4_chat(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                           const ChatEncodeOptions& options = {});
std::string encode_v4_chat(const nlohmann::json& messages, const nlohmann::json& tools,
                           const ChatEncodeOptions& options = {});

}  // namespace ferry::runtime
