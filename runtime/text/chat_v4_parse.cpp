#include "runtime/text/chat_v4_parse.h"

#include <algorithm>
#include <initializer_list>
#include <optional>
#include <utility>

#include <nlohmann/json.hpp>

#include "runtime/text/chat_dsml.h"
#include "runtime/text/chat_message.h"

namespace ferry::runtime {
namespace {

constexpr std::string_view kSpace = " \t\r\n";

bool is_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

// How many bytes at the end of `text` are the start of a UTF-8 sequence that the next piece completes.
size_t incomplete_utf8_tail(std::string_view text) {
  for (size_t back = 1; back <= std::min<size_t>(4, text.size()); ++back) {
    const auto c = static_cast<unsigned char>(text[text.size() - back]);
    if (is_continuation(c)) continue;
    const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return need > back ? back : 0;
  }
  return 0;
}

// The longest end of `text` that is the beginning of one of `markers` (but not a whole marker).
size_t marker_prefix_tail(std::string_view text, std::initializer_list<std::string_view> markers) {
  size_t best = 0;
  for (std::string_view marker : markers)
    for (size_t n = std::min(text.size(), marker.size() - 1); n > best; --n)
      if (text.substr(text.size() - n) == marker.substr(0, n)) {
        best = n;
        break;
      }
  return best;
}

// A short piece of `text` at `at` on one line, for error messages (never cut inside a UTF-8 sequence).
std::string excerpt(std::string_view text, size_t at) {
  std::string_view rest = text.substr(std::min(at, text.size()));
  if (rest.empty()) return "the end of the block";
  size_t n = std::min<size_t>(rest.size(), 40);
  while (n < rest.size() && is_continuation(static_cast<unsigned char>(rest[n]))) ++n;
  std::string out = "'";
  for (char c : rest.substr(0, n)) {
    if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else if (c == '\t')
      out += "\\t";
    else
      out += c;
  }
  return out + (n < rest.size() ? "...'" : "'");
}

std::string json_string(std::string_view s) { return chat::python_json(chat::OrderedJson(s)); }

// Reads the inside of a <｜DSML｜tool_calls> block.
class BlockReader {
 public:
  explicit BlockReader(std::string_view text) : text_(text) {}

  // False with error() set when the block is malformed.
  bool read(std::vector<ToolCall>& calls) {
    skip_space();
    if (at_end()) return fail("the tool-calls block holds no tool call");
    while (!at_end()) {
      if (!eat(chat::kInvokeOpen)) return fail("expected <｜DSML｜invoke name=\"...\"> at " + here());
      std::optional<std::string_view> name = until("\"");
      if (!name || !eat("\">")) return fail("unterminated <｜DSML｜invoke name=\"...\"> at " + here());
      if (name->empty()) return fail("tool call without a name");
      ToolCall call;
      call.name = std::string(*name);
      if (!read_parameters(call)) return false;
      calls.push_back(std::move(call));
      skip_space();
    }
    return true;
  }
  const std::string& error() const { return error_; }

 private:
  bool read_parameters(ToolCall& call) {
    std::vector<std::string> keys;
    std::string arguments = "{";
    const std::string in_call = " in tool call '" + call.name + "'";
    for (;;) {
      skip_space();
      if (eat(chat::kInvokeEnd)) break;
      if (!eat(chat::kParameterOpen))
        return fail("expected <｜DSML｜parameter ...> or </｜DSML｜invoke>" + in_call + " at " + here());
      std::optional<std::string_view> key = until("\"");
      if (!key || !eat(chat::kParameterString))
        return fail("malformed <｜DSML｜parameter name=\"...\" string=\"...\">" + in_call + " at " + here());
      const std::string param = "parameter '" + std::string(*key) + "'" + in_call;
      const bool is_string = eat("true\">");
      if (!is_string && !eat("false\">")) return fail(param + ": string= must be \"true\" or \"false\", at " + here());
      std::optional<std::string_view> value = until(chat::kParameterEnd);
      if (!value) return fail(param + " is not closed by </｜DSML｜parameter>");
      eat(chat::kParameterEnd);
      if (std::find(keys.begin(), keys.end(), *key) != keys.end()) return fail("duplicate " + param);
      if (!is_string && !nlohmann::json::accept(*value))
        return fail(param + " has string=\"false\" but its value is not JSON: " + excerpt(*value, 0));
      if (!keys.empty()) arguments += ", ";
      keys.emplace_back(*key);
      // Raw text becomes a JSON string; a JSON value is kept as the model wrote it.
      arguments += json_string(*key) + ": " + (is_string ? json_string(*value) : std::string(*value));
    }
    call.arguments_json = arguments + "}";
    return true;
  }

  bool fail(std::string message) {
    error_ = std::move(message);
    return false;
  }

  bool at_end() const { return pos_ >= text_.size(); }
  void skip_space() {
    size_t p = text_.find_first_not_of(kSpace, pos_);
    pos_ = p == std::string_view::npos ? text_.size() : p;
  }
  bool eat(std::string_view literal) {
    if (text_.substr(pos_, literal.size()) != literal) return false;
    pos_ += literal.size();
    return true;
  }
  std::optional<std::string_view> until(std::string_view stop) {
    size_t p = text_.find(stop, pos_);
    if (p == std::string_view::npos) return std::nullopt;
    std::string_view out = text_.substr(pos_, p - pos_);
    pos_ = p;
    return out;
  }
  std::string here() const { return excerpt(text_, pos_); }

  std::string_view text_;
  size_t pos_ = 0;
  std::string error_;
};

bool only_space(std::string_view s) { return s.find_first_not_of(kSpace) == std::string_view::npos; }

}  // namespace

V4CompletionStreamParser::V4CompletionStreamParser(ThinkingMode mode)
    : state_(mode == ThinkingMode::Thinking ? State::Reasoning : State::Content) {}

CompletionDelta V4CompletionStreamParser::push(std::string_view piece) {
  CompletionDelta delta;
  if (state_ == State::Done) return delta;
  pending_ += piece;
  step(delta);
  return delta;
}

void V4CompletionStreamParser::step(CompletionDelta& delta) {
  for (;;) {
    bool progressed = false;
    switch (state_) {
      case State::Reasoning: progressed = step_text(result_.reasoning, delta.reasoning); break;
      case State::Content: progressed = step_text(result_.content, delta.content); break;
      case State::ToolCalls: progressed = step_tool_calls(); break;
      case State::AfterToolCalls: progressed = step_after_tool_calls(delta); break;
      case State::Failed: {
        // The turn is lost for tool calls; only its end is still of interest.
        if (pending_.find(kEosToken) != std::string::npos) {
          result_.finished = true;
          state_ = State::Done;
          pending_.clear();
        } else {
          pending_.erase(0, pending_.size() - marker_prefix_tail(pending_, {kEosToken}));
        }
        break;
      }
      case State::Done: break;
    }
    if (!progressed) return;
  }
}

// Reasoning runs to "</think>", content to the tool-calls block; both stop at the end-of-sentence token.
bool V4CompletionStreamParser::step_text(std::string& total, std::string& out) {
  const bool reasoning = state_ == State::Reasoning;
  const std::string_view boundary = reasoning ? kThinkEnd : chat::kToolCallsStart;
  const size_t at = pending_.find(boundary);
  const size_t eos = pending_.find(kEosToken);
  auto emit = [&](size_t n) {
    out.append(pending_, 0, n);
    total.append(pending_, 0, n);
  };
  if (at != std::string::npos && at < eos) {
    size_t text_end = at;
    // The blank line the encoder puts before the block is part of the markup, not of the content.
    const size_t sep = chat::kToolCallsSeparator.size();
    if (!reasoning && at >= sep && std::string_view(pending_).substr(at - sep, sep) == chat::kToolCallsSeparator)
      text_end -= sep;
    emit(text_end);
    pending_.erase(0, at + boundary.size());
    state_ = reasoning ? State::Content : State::ToolCalls;
    scanned_ = 0;
    return true;
  }
  if (eos != std::string::npos) {
    emit(eos);
    pending_.clear();
    result_.finished = true;
    state_ = State::Done;
    return false;
  }
  const std::string separated_block = std::string(chat::kToolCallsSeparator) + std::string(chat::kToolCallsStart);
  const size_t markup = reasoning ? marker_prefix_tail(pending_, {kThinkEnd, kEosToken})
                                  : marker_prefix_tail(pending_, {separated_block, chat::kToolCallsStart, kEosToken});
  const size_t hold = std::max(markup, incomplete_utf8_tail(pending_));
  emit(pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return false;
}

bool V4CompletionStreamParser::step_tool_calls() {
  const size_t longest = std::max(chat::kToolCallsEnd.size(), kEosToken.size());
  const size_t from = scanned_ >= longest ? scanned_ - longest + 1 : 0;
  const size_t end = pending_.find(chat::kToolCallsEnd, from);
  const size_t eos = pending_.find(kEosToken, from);
  if (end != std::string::npos && end < eos) {
    BlockReader reader(std::string_view(pending_).substr(0, end));
    std::vector<ToolCall> calls;
    const bool ok = reader.read(calls);
    pending_.erase(0, end + chat::kToolCallsEnd.size());
    if (!ok) {
      fail(reader.error());
      return true;
    }
    calls_ = std::move(calls);
    state_ = State::AfterToolCalls;
    return true;
  }
  if (eos != std::string::npos) {
    fail("the tool-calls block is not closed by </｜DSML｜tool_calls> before the end of the turn");
    return true;
  }
  scanned_ = pending_.size();
  return false;
}

// After the block only the end of the turn may follow.
bool V4CompletionStreamParser::step_after_tool_calls(CompletionDelta& delta) {
  const size_t eos = pending_.find(kEosToken);
  const std::string_view before = std::string_view(pending_).substr(0, eos);
  if (eos != std::string::npos && only_space(before)) {
    delta.tool_calls = calls_;
    result_.tool_calls = std::move(calls_);
    result_.finished = true;
    state_ = State::Done;
    pending_.clear();
    return false;
  }
  const size_t first = before.find_first_not_of(kSpace);
  if (first != std::string_view::npos && (eos != std::string::npos || !kEosToken.starts_with(before.substr(first)))) {
    fail("unexpected text after the tool-calls block: " + excerpt(before, first));
    return true;
  }
  return false;
}

void V4CompletionStreamParser::fail(std::string error) {
  result_.error = "malformed tool call: " + std::move(error);
  calls_.clear();
  state_ = State::Failed;
}

CompletionDelta V4CompletionStreamParser::flush() {
  CompletionDelta delta;
  switch (state_) {
    case State::Reasoning:
      delta.reasoning = pending_;
      result_.reasoning += pending_;
      break;
    case State::Content:
      delta.content = pending_;
      result_.content += pending_;
      break;
    case State::ToolCalls: fail("the tool-calls block is not closed by </｜DSML｜tool_calls>"); break;
    case State::AfterToolCalls:
      // Only space (or the start of the end-of-sentence token) can be left here: anything else failed in push.
      delta.tool_calls = calls_;
      result_.tool_calls = std::move(calls_);
      break;
    case State::Failed:
    case State::Done: break;
  }
  pending_.clear();
  state_ = State::Done;
  return delta;
}

ParsedCompletion V4CompletionStreamParser::finish() {
  flush();
  return result_;
}

ParsedCompletion parse_v4_completion(std::string_view generated, ThinkingMode mode) {
  V4CompletionStreamParser parser(mode);
  parser.push(generated);
  return parser.finish();
}

}  // namespace ferry::runtime
