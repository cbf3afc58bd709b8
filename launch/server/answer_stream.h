// What the V4 engine makes of the tokens it generates: their text, decoded as it comes (whole UTF-8 characters
// only) and, for chat requests, split by DeepSeek's completion parser into reasoning, content and tool calls —
// the Engine callbacks the server turns into an OpenAI answer. Separate from the engine so that tests can feed
// it any token sequence (a tool call, say), which a tiny random model will not write.
#pragma once

#include <cstdint>
#include <optional>

#include "launch/server/engine.h"
#include "runtime/text/chat_v4_parse.h"
#include "runtime/text/tokenizer.h"

namespace ferry::launch::server {

class AnswerStream {
 public:
  // Chat requests go through the parser in the request's thinking mode; completions are raw text.
  AnswerStream(const runtime::Tokenizer& tokenizer, const GenerationRequest& request, const EngineCallbacks& callbacks);

  // One generated token, not the end-of-sentence token that ends the turn. Ids the tokenizer does not know
  // (the model's vocabulary can be padded beyond it) have no text.
  void push(int32_t token);
  // The end of generation: releases the text held back. `ended_turn`: the model wrote its end-of-sentence
  // token. Returns Stop or ToolCalls for an ended turn, Length otherwise.
  FinishReason finish(bool ended_turn);

 private:
  void text(const std::string& piece);
  void emit(const runtime::CompletionDelta& delta);

  const runtime::Tokenizer& tokenizer_;
  const EngineCallbacks& callbacks_;
  runtime::StreamDecoder decoder_;
  std::optional<runtime::V4CompletionStreamParser> parser_;  // chat requests
  int64_t tool_calls_ = 0;                                   // given out so far: the next id is call_<n>
};

}  // namespace ferry::launch::server
