#include "launch/server/answer_stream.h"

#include <string>

#include "runtime/text/chat_types.h"

namespace ferry::launch::server {

namespace {
// A chat answer keeps special tokens as text: the parser needs DeepSeek's markup, some of which may be special
// tokens of a tokenizer. Raw completions leave them out, as OpenAI-compatible servers do.
bool skip_special(const GenerationRequest& r) { return r.kind == RequestKind::Completion; }
}  // namespace

AnswerStream::AnswerStream(const runtime::Tokenizer& tokenizer, const GenerationRequest& request,
                           const EngineCallbacks& callbacks)
    : tokenizer_(tokenizer), callbacks_(callbacks), decoder_(tokenizer, skip_special(request)) {
  if (request.kind == RequestKind::Chat)
    parser_.emplace(request.thinking ? runtime::ThinkingMode::Thinking : runtime::ThinkingMode::Chat);
}

void AnswerStream::push(int32_t token) {
  if (token < 0 || token >= tokenizer_.vocab_size()) return;
  text(decoder_.push(token));
}

FinishReason AnswerStream::finish(bool ended_turn) {
  text(decoder_.flush());
  if (parser_) {
    if (ended_turn) emit(parser_->push(runtime::kEosToken));
    emit(parser_->flush());
  }
  if (!ended_turn) return FinishReason::Length;
  return tool_calls_ > 0 ? FinishReason::ToolCalls : FinishReason::Stop;
}

void AnswerStream::text(const std::string& piece) {
  if (piece.empty()) return;
  if (parser_) {
    emit(parser_->push(piece));
  } else if (callbacks_.on_content) {
    callbacks_.on_content(piece);
  }
}

void AnswerStream::emit(const runtime::CompletionDelta& delta) {
  if (!delta.reasoning.empty() && callbacks_.on_reasoning) callbacks_.on_reasoning(delta.reasoning);
  if (!delta.content.empty() && callbacks_.on_content) callbacks_.on_content(delta.content);
  for (const runtime::ToolCall& call : delta.tool_calls) {
    const ToolCall out{"call_" + std::to_string(tool_calls_++), call.name, call.arguments_json};
    if (callbacks_.on_tool_call) callbacks_.on_tool_call(out);
  }
}

}  // namespace ferry::launch::server
