// Parsing V4's generated text: the assistant turns of DeepSeek's test vectors parse back into the messages they
// were rendered from; tool-call parameters of every kind; unfinished turns; streaming in any cut gives the same
// result as the whole text; malformed DSML is reported, never thrown.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/text/chat_v4.h"
#include "runtime/text/chat_v4_parse.h"
#include "test_files.h"
#include "test_paths.h"

using ferry::runtime::CompletionDelta;
using ferry::runtime::parse_v4_completion;
using ferry::runtime::ParsedCompletion;
using ferry::runtime::ThinkingMode;
using ferry::runtime::V4CompletionStreamParser;
using Ordered = nlohmann::ordered_json;
using ferry_test::read_file;

namespace {

const std::string kEos = "<｜end▁of▁sentence｜>";
const std::string kAssistant = "<｜Assistant｜>";

// One assistant turn as it appears in a prompt, split at the end of its generation prompt.
struct Turn {
  ThinkingMode mode;
  std::string generated;  // what the model wrote, up to and including the end-of-sentence token
};

// The assistant turns of a rendered conversation, cut out of DeepSeek's expected text (not of ferry's output):
// each runs from "<｜Assistant｜>" to the end-of-sentence token. "<think>" after the prefix means the model
// generated in thinking mode; "</think>" that it answered directly; a task token is part of the prompt too.
std::vector<Turn> assistant_turns(const std::string& prompt) {
  std::vector<Turn> turns;
  for (size_t at = prompt.find(kAssistant); at != std::string::npos; at = prompt.find(kAssistant, at + 1)) {
    size_t begin = at + kAssistant.size();
    size_t end = prompt.find(kEos, begin);
    if (end == std::string::npos) break;
    Turn t;
    std::string text = prompt.substr(begin, end + kEos.size() - begin);
    if (text.rfind("<think>", 0) == 0) {
      t.mode = ThinkingMode::Thinking;
      text.erase(0, 7);
    } else {
      EXPECT_EQ(text.rfind("</think>", 0), 0u) << text;
      t.mode = ThinkingMode::Chat;
      text.erase(0, 8);
    }
    if (text.rfind("<｜action｜>", 0) == 0) text.erase(0, std::string("<｜action｜>").size());
    t.generated = text;
    turns.push_back(t);
  }
  return turns;
}

// Feeds `text` in pieces of the given sizes (cycled) and checks that the deltas add up to the result.
ParsedCompletion parse_in_pieces(const std::string& text, ThinkingMode mode, const std::vector<size_t>& sizes) {
  V4CompletionStreamParser parser(mode);
  std::string reasoning, content;
  std::vector<ferry::runtime::ToolCall> calls;
  auto take = [&](const CompletionDelta& d) {
    reasoning += d.reasoning;
    content += d.content;
    calls.insert(calls.end(), d.tool_calls.begin(), d.tool_calls.end());
  };
  size_t pos = 0;
  for (size_t i = 0; pos < text.size(); ++i) {
    size_t n = std::min(sizes[i % sizes.size()], text.size() - pos);
    take(parser.push(std::string_view(text).substr(pos, n)));
    pos += n;
  }
  take(parser.flush());
  ParsedCompletion r = parser.finish();
  EXPECT_EQ(reasoning, r.reasoning);
  EXPECT_EQ(content, r.content);
  EXPECT_EQ(calls.size(), r.tool_calls.size());
  return r;
}

void expect_same(const ParsedCompletion& a, const ParsedCompletion& b, const std::string& what) {
  EXPECT_EQ(a.reasoning, b.reasoning) << what;
  EXPECT_EQ(a.content, b.content) << what;
  EXPECT_EQ(a.finished, b.finished) << what;
  EXPECT_EQ(a.error, b.error) << what;
  ASSERT_EQ(a.tool_calls.size(), b.tool_calls.size()) << what;
  for (size_t i = 0; i < a.tool_calls.size(); ++i) {
    EXPECT_EQ(a.tool_calls[i].name, b.tool_calls[i].name) << what;
    EXPECT_EQ(a.tool_calls[i].arguments_json, b.tool_calls[i].arguments_json) << what;
  }
}

std::string block(const std::string& invokes) {
  return "\n\n<｜DSML｜tool_calls>\n" + invokes + "</｜DSML｜tool_calls>";
}

const std::string kTwoCalls =
    "<｜DSML｜invoke name=\"write\">\n"
    "<｜DSML｜parameter name=\"path\" string=\"true\">notes/日记.txt</｜DSML｜parameter>\n"
    "<｜DSML｜parameter name=\"text\" string=\"true\">line 1\n\"quoted\" \\ and <tags></｜DSML｜parameter>\n"
    "<｜DSML｜parameter name=\"count\" string=\"false\">3</｜DSML｜parameter>\n"
    "<｜DSML｜parameter name=\"options\" string=\"false\">{\"mode\": [\"a\", 2.5, true, null]}</｜DSML｜parameter>\n"
    "</｜DSML｜invoke>\n"
    "<｜DSML｜invoke name=\"ping\">\n\n</｜DSML｜invoke>\n";

// The texts the streaming tests cut up: every turn of the vectors and the hand-made cases below.
std::vector<Turn> sample_turns() {
  std::vector<Turn> turns;
  for (int n = 1; n <= 4; ++n) {
    auto t = assistant_turns(
        read_file(ferry_test::data_path("deepseek-v4-flash/encoding-tests/test_output_" + std::to_string(n) + ".txt")));
    turns.insert(turns.end(), t.begin(), t.end());
  }
  turns.push_back({ThinkingMode::Thinking, "plan\n\n</th</think>Text\n\n\n" + block(kTwoCalls) + kEos});
  turns.push_back({ThinkingMode::Thinking, "still thinking about </thi"});
  turns.push_back({ThinkingMode::Chat, "a\n\n<｜DSML｜tool_c not a block\n\n" + kEos});
  turns.push_back(
      {ThinkingMode::Chat, "broken" + block("<｜DSML｜invoke name=\"f\">\nstray\n</｜DSML｜invoke>\n") + kEos});
  return turns;
}

}  // namespace

TEST(ChatV4Parse, AssistantTurnsOfTheVectorsParseBackIntoTheirMessages) {
  for (int n = 1; n <= 4; ++n) {
    const std::string dir = ferry_test::data_path("deepseek-v4-flash/encoding-tests/");
    Ordered input = Ordered::parse(read_file(dir + "test_input_" + std::to_string(n) + ".json"));
    const Ordered& messages = input.is_object() ? input["messages"] : input;
    std::vector<Ordered> assistants;
    for (const Ordered& m : messages)
      if (m["role"] == "assistant") assistants.push_back(m);
    std::vector<Turn> turns = assistant_turns(read_file(dir + "test_output_" + std::to_string(n) + ".txt"));
    ASSERT_EQ(turns.size(), assistants.size()) << "case " << n;
    for (size_t i = 0; i < turns.size(); ++i) {
      const Ordered& m = assistants[i];
      const std::string what = "case " + std::to_string(n) + " turn " + std::to_string(i);
      ParsedCompletion r = parse_v4_completion(turns[i].generated, turns[i].mode);
      EXPECT_TRUE(r.finished) << what;
      EXPECT_EQ(r.error, "") << what;
      EXPECT_EQ(r.content, m.value("content", "")) << what;
      // Reasoning is in the prompt only where it was kept (thinking mode, not dropped).
      EXPECT_EQ(r.reasoning, turns[i].mode == ThinkingMode::Thinking ? m.value("reasoning_content", "") : "") << what;
      const Ordered calls = m.contains("tool_calls") ? m["tool_calls"] : Ordered::array();
      ASSERT_EQ(r.tool_calls.size(), calls.size()) << what;
      for (size_t c = 0; c < calls.size(); ++c) {
        EXPECT_EQ(r.tool_calls[c].name, calls[c]["function"]["name"]) << what;
        EXPECT_EQ(r.tool_calls[c].arguments_json, calls[c]["function"]["arguments"]) << what;
        EXPECT_EQ(r.tool_calls[c].id, "") << what;
      }
    }
  }
}

TEST(ChatV4Parse, StringAndJsonParameters) {
  ParsedCompletion r = parse_v4_completion("I will write it down.\n\n" + block(kTwoCalls) + kEos, ThinkingMode::Chat);
  EXPECT_EQ(r.error, "");
  EXPECT_TRUE(r.finished);
  EXPECT_EQ(r.content, "I will write it down.\n\n");  // only the encoder's blank line belongs to the block
  ASSERT_EQ(r.tool_calls.size(), 2u);
  EXPECT_EQ(r.tool_calls[0].name, "write");
  EXPECT_EQ(nlohmann::json::parse(r.tool_calls[0].arguments_json),
            nlohmann::json({{"path", "notes/日记.txt"},
                            {"text", "line 1\n\"quoted\" \\ and <tags>"},
                            {"count", 3},
                            {"options", {{"mode", {"a", 2.5, true, nullptr}}}}}));
  EXPECT_EQ(r.tool_calls[1].name, "ping");
  EXPECT_EQ(r.tool_calls[1].arguments_json, "{}");
}

TEST(ChatV4Parse, EncoderAndParserAgreeOnArguments) {
  Ordered args = Ordered::parse(R"({"s": "x\ny \"z\"", "n": -7, "f": 0.25, "b": false, "z": null,
                                     "l": [1, [2], {"k": "v"}], "o": {"deep": {"er": "é"}}})");
  Ordered messages = Ordered::array();
  messages.push_back({{"role", "user"}, {"content", "go"}});
  messages.push_back({{"role", "assistant"},
                      {"content", "ok"},
                      {"tool_calls", {{{"type", "function"}, {"function", {{"name", "f"}, {"arguments", args}}}}}}});
  const std::string prompt = ferry::runtime::encode_v4_chat(messages, nullptr, {});
  std::vector<Turn> turns = assistant_turns(prompt);
  ASSERT_EQ(turns.size(), 1u);
  ParsedCompletion r = parse_v4_completion(turns[0].generated, turns[0].mode);
  EXPECT_EQ(r.error, "");
  EXPECT_EQ(r.content, "ok");
  ASSERT_EQ(r.tool_calls.size(), 1u);
  EXPECT_EQ(Ordered::parse(r.tool_calls[0].arguments_json), args);
}

TEST(ChatV4Parse, UnfinishedTurns) {
  ParsedCompletion r = parse_v4_completion("Let me think about </thi", ThinkingMode::Thinking);
  EXPECT_EQ(r.reasoning, "Let me think about </thi");
  EXPECT_EQ(r.content, "");
  EXPECT_FALSE(r.finished);
  EXPECT_EQ(r.error, "");

  r = parse_v4_completion("done</think>The answer is", ThinkingMode::Thinking);
  EXPECT_EQ(r.reasoning, "done");
  EXPECT_EQ(r.content, "The answer is");
  EXPECT_FALSE(r.finished);

  r = parse_v4_completion("Hi" + kEos + "ignored", ThinkingMode::Chat);
  EXPECT_EQ(r.content, "Hi");
  EXPECT_TRUE(r.finished);

  r = parse_v4_completion("x\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n", ThinkingMode::Chat);
  EXPECT_EQ(r.content, "x");
  EXPECT_FALSE(r.finished);
  EXPECT_TRUE(r.tool_calls.empty());
  EXPECT_EQ(r.error, "malformed tool call: the tool-calls block is not closed by </｜DSML｜tool_calls>");
}

TEST(ChatV4Parse, StreamingHoldsBackOnlyWhatMightBeMarkup) {
  V4CompletionStreamParser p(ThinkingMode::Thinking);
  EXPECT_EQ(p.push("abc").reasoning, "abc");
  EXPECT_TRUE(p.push("</thi").empty());
  CompletionDelta d = p.push("nk>Hello\n");
  EXPECT_EQ(d.reasoning, "");
  EXPECT_EQ(d.content, "Hello");
  EXPECT_TRUE(p.push("\n<｜DSML").empty());
  EXPECT_EQ(p.push("x").content, "\n\n<｜DSMLx");  // not a block after all
  EXPECT_EQ(p.push("\xE6\x97").content, "");       // half of 日
  EXPECT_EQ(p.push("\xA5!").content, "日!");
  EXPECT_TRUE(p.push("<｜end▁of").empty());
  EXPECT_FALSE(p.finished());
  EXPECT_TRUE(p.push("▁sentence｜>").empty());
  EXPECT_TRUE(p.finished());
  EXPECT_TRUE(p.push("more").empty());
  ParsedCompletion r = p.finish();
  EXPECT_EQ(r.reasoning, "abc");
  EXPECT_EQ(r.content, "Hello\n\n<｜DSMLx日!");
}

TEST(ChatV4Parse, ToolCallsArriveWhenTheTurnEnds) {
  V4CompletionStreamParser p(ThinkingMode::Chat);
  EXPECT_EQ(p.push("Sure." + block(kTwoCalls)).content, "Sure.");
  CompletionDelta d = p.push(kEos);
  ASSERT_EQ(d.tool_calls.size(), 2u);
  EXPECT_EQ(d.tool_calls[1].name, "ping");
}

TEST(ChatV4Parse, AnyCutGivesTheWholeTextResult) {
  std::mt19937 rng(7);
  for (const Turn& t : sample_turns()) {
    const ParsedCompletion whole = parse_v4_completion(t.generated, t.mode);
    expect_same(parse_in_pieces(t.generated, t.mode, {1}), whole, "1-byte pieces of: " + t.generated);
    std::vector<size_t> sizes(16);
    for (size_t& s : sizes) s = 1 + rng() % 9;
    expect_same(parse_in_pieces(t.generated, t.mode, sizes), whole, "random pieces of: " + t.generated);
  }
}

TEST(ChatV4Parse, StreamedDeltasAreWholeUtf8Characters) {
  const std::string text = "想一想</think>热海大滚锅 🌋 是温泉。" + kEos;
  V4CompletionStreamParser p(ThinkingMode::Thinking);
  for (char c : text) {
    CompletionDelta d = p.push(std::string(1, c));
    for (const std::string* s : {&d.reasoning, &d.content}) {
      if (!s->empty()) {
        EXPECT_NO_THROW((void)nlohmann::json(*s).dump()) << "split character in a delta";
      }
    }
  }
  EXPECT_EQ(p.finish().content, "热海大滚锅 🌋 是温泉。");
}

TEST(ChatV4Parse, MalformedToolCallsAreReported) {
  const std::string invoke = "<｜DSML｜invoke name=\"f\">\n";
  const std::string end = "</｜DSML｜invoke>\n";
  struct Case {
    std::string text, error;  // the error message, or a part of it where it quotes the text
  };
  const std::vector<Case> cases = {
      {block(""), "malformed tool call: the tool-calls block holds no tool call"},
      {block("hello\n"), "malformed tool call: expected <｜DSML｜invoke name=\"...\"> at 'hello\\n'"},
      {block("<｜DSML｜invoke name=\"\">\n" + end), "malformed tool call: tool call without a name"},
      {block(invoke + "stray\n" + end),
       "expected <｜DSML｜parameter ...> or </｜DSML｜invoke> in tool call 'f' at 'stray\\n</｜DSML｜invoke>\\n'"},
      {block(invoke + "<｜DSML｜parameter name=\"a\">1</｜DSML｜parameter>\n" + end),
       "malformed <｜DSML｜parameter name=\"...\" string=\"...\"> in tool call 'f' at '\">1</｜DSML｜parameter>"},
      {block(invoke + "<｜DSML｜parameter name=\"a\" string=\"maybe\">1</｜DSML｜parameter>\n" + end),
       "parameter 'a' in tool call 'f': string= must be \"true\" or \"false\", at 'maybe\">1"},
      {block(invoke + "<｜DSML｜parameter name=\"a\" string=\"false\">not json</｜DSML｜parameter>\n" + end),
       "malformed tool call: parameter 'a' in tool call 'f' has string=\"false\" but its value is not JSON: "
       "'not json'"},
      {block(invoke +
             "<｜DSML｜parameter name=\"a\" string=\"true\">x</｜DSML｜parameter>\n"
             "<｜DSML｜parameter name=\"a\" string=\"true\">y</｜DSML｜parameter>\n" +
             end),
       "malformed tool call: duplicate parameter 'a' in tool call 'f'"},
      {block(invoke + "<｜DSML｜parameter name=\"a\" string=\"true\">never closed\n" + end),
       "malformed tool call: parameter 'a' in tool call 'f' is not closed by </｜DSML｜parameter>"},
      {block(invoke + end) + "and then some",
       "malformed tool call: unexpected text after the tool-calls block: 'and then some'"},
      {"\n\n<｜DSML｜tool_calls>\n" + invoke,
       "malformed tool call: the tool-calls block is not closed by </｜DSML｜tool_calls> before the end of the turn"},
  };
  for (const Case& c : cases) {
    ParsedCompletion r = parse_v4_completion("thought</think>Before" + c.text + kEos, ThinkingMode::Thinking);
    EXPECT_NE(r.error.find(c.error), std::string::npos) << "error: " << r.error << "\nwanted: " << c.error;
    EXPECT_TRUE(r.tool_calls.empty()) << c.text;
    EXPECT_EQ(r.reasoning, "thought");
    EXPECT_EQ(r.content, "Before");
    EXPECT_TRUE(r.finished) << c.text;
  }
}

TEST(ChatV4Parse, EveryTruncationOfAToolCallTurnIsHandled) {
  const std::string text = "r</think>c" + block(kTwoCalls) + kEos;
  for (size_t n = 0; n <= text.size(); ++n) {
    ParsedCompletion r = parse_v4_completion(text.substr(0, n), ThinkingMode::Thinking);
    const bool complete = n == text.size();
    EXPECT_EQ(r.finished, complete) << n;
    EXPECT_EQ(r.tool_calls.size(), n >= text.size() - kEos.size() ? 2u : 0u) << n;
    // Whatever was cut off, what came out is the text as far as it went.
    EXPECT_EQ(text.find(r.reasoning), 0u) << n;
    if (!r.content.empty()) {
      EXPECT_EQ(text.find(r.content), 9u) << n;
    }
  }
}
