// The vocabulary the chat encoders (chat_v4.h, chat_v3.h) and the completion parser (chat_v4_parse.h) share:
// options, DeepSeek's special-token texts, and what a parsed assistant turn holds.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace ferry::runtime {

// DeepSeek V4 answers either directly (Chat) or after a <think>...</think> block (Thinking).
enum class ThinkingMode { Chat, Thinking };

struct ChatEncodeOptions {
  ThinkingMode mode = ThinkingMode::Chat;  // V4 only; the V3 format has no thinking
  // End with the assistant prefix so that the model writes the next assistant turn. V4: "<｜Assistant｜>" and
  // "<think>" (thinking) or "</think>" (chat), after a final user turn or tool results; V3: "<｜Assistant｜>",
  // after anything but tool results (the template's rule).
  bool add_generation_prompt = true;
  bool add_bos = true;
  // V4, thinking mode: the reasoning of assistant turns before the last user turn is left out (DeepSeek's
  // default; DeepSeek's encoder keeps it anyway as soon as any message carries tools).
  bool drop_thinking = true;
  // V4, thinking mode: DeepSeek's "Reasoning Effort: Absolute maximum" preamble before the first message.
  bool max_reasoning_effort = false;
};

// Special tokens as text. They are single tokens of DeepSeek's tokenizer (V3 and V4).
inline constexpr std::string_view kBosToken = "<｜begin▁of▁sentence｜>";
// Ends every assistant turn: generation stops when the model produces it.
inline constexpr std::string_view kEosToken = "<｜end▁of▁sentence｜>";
inline constexpr std::string_view kUserToken = "<｜User｜>";
inline constexpr std::string_view kAssistantToken = "<｜Assistant｜>";
inline constexpr std::string_view kThinkStart = "<think>";
inline constexpr std::string_view kThinkEnd = "</think>";

// One tool call of an assistant turn. The model writes no ids: `id` is left empty by the parser for the caller
// (the server) to assign.
struct ToolCall {
  std::string id, name;
  std::string arguments_json;  // a JSON object, as text
};

struct ParsedCompletion {
  std::string reasoning, content;
  std::vector<ToolCall> tool_calls;
  bool finished = false;  // the model ended its turn (the end-of-sentence token was in the text)
  // Non-empty when the tool-calls block is malformed or not closed; tool_calls is then empty, and reasoning and
  // content still hold what came before the block.
  std::string error;
};

}  // namespace ferry::runtime
