// Reading DeepSeek V4's generated text back into an assistant message: reasoning (thinking mode: the text before
// "</think>"), content, and the tool calls of a <｜DSML｜tool_calls> block, whole or while it streams.
//
// The text is what the model generated after the generation prompt of encode_v4_chat (which ends with "<think>"
// in thinking mode and "</think>" in chat mode). It ends with the end-of-sentence token (kEosToken) when the
// model finished its turn; a caller that stops on the token id without decoding it can append kEosToken.
// Parameters of a tool call with string="true" are raw text, with string="false" JSON; arguments_json is the
// object {"key": value, ...} they make. Malformed DSML never throws: it is reported in ParsedCompletion::error.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "runtime/text/chat_types.h"

namespace ferry::runtime {

ParsedCompletion parse_v4_completion(std::string_view generated, ThinkingMode mode);

// What one piece of streamed text made certain.
struct CompletionDelta {
  std::string reasoning, content;
  std::vector<ToolCall> tool_calls;  // given all at once, when the turn ends after a well-formed block
  bool empty() const { return reasoning.empty() && content.empty() && tool_calls.empty(); }
};

// Incremental parse for streaming. Text that might still turn out to be "</think>", the tool-calls block (with
// the blank line before it) or the end-of-sentence token is held back until it is certain, and so is the
// incomplete UTF-8 sequence at the end of a piece. The deltas add up to the final result, and the result does
// not depend on how the text was cut into pieces.
class V4CompletionStreamParser {
 public:
  explicit V4CompletionStreamParser(ThinkingMode mode);

  CompletionDelta push(std::string_view piece);
  // The end of generation: releases what was held back. Later pushes are ignored.
  CompletionDelta flush();
  // flush() (if not done yet) and the whole result.
  ParsedCompletion finish();

  bool finished() const { return result_.finished; }  // the end-of-sentence token has been seen

 private:
  enum class State { Reasoning, Content, ToolCalls, AfterToolCalls, Failed, Done };

  void step(CompletionDelta& delta);
  bool step_text(std::string& total, std::string& out);  // Reasoning and Content
  bool step_tool_calls();
  bool step_after_tool_calls(CompletionDelta& delta);
  void fail(std::string error);

  State state_;
  std::string pending_;          // received, not yet consumed
  size_t scanned_ = 0;           // in ToolCalls: how much of pending_ is known not to hold the end of the block
  std::vector<ToolCall> calls_;  // parsed, given out when the turn ends
  ParsedCompletion result_;
};

}  // namespace ferry::runtime
