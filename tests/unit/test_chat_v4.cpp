// DeepSeek V4's chat encoding: DeepSeek's four test vectors byte for byte, the rules the vectors do not reach
// (expected prompts written out by hand from DeepSeek's encoding_dsv4.py), and errors on malformed messages.
#include <gtest/gtest.h>

#include <string>

#include <nlohmann/json.hpp>

#include "runtime/text/chat_message.h"
#include "runtime/text/chat_v4.h"
#include "test_errors.h"
#include "test_files.h"
#include "test_paths.h"

using ferry::runtime::ChatEncodeOptions;
using ferry::runtime::encode_v4_chat;
using ferry::runtime::ThinkingMode;
using ferry_test::error_of;
using Ordered = nlohmann::ordered_json;
using ferry_test::read_file;

namespace {

const std::string kBos = "<｜begin▁of▁sentence｜>";
const std::string kEos = "<｜end▁of▁sentence｜>";

struct Vector {
  Ordered messages, tools;
  ThinkingMode mode;
  std::string expected;
};

// DeepSeek's cases 1-3 run in thinking mode, case 4 in chat mode; case 1 holds {"messages", "tools"}.
Vector vector_case(int n) {
  const std::string dir = ferry_test::data_path("deepseek-v4-flash/encoding-tests/");
  Ordered input = Ordered::parse(read_file(dir + "test_input_" + std::to_string(n) + ".json"));
  Vector v;
  if (input.is_object()) {
    v.messages = input["messages"];
    v.tools = input["tools"];
  } else {
    v.messages = input;
  }
  v.mode = n <= 3 ? ThinkingMode::Thinking : ThinkingMode::Chat;
  v.expected = read_file(dir + "test_output_" + std::to_string(n) + ".txt");
  return v;
}

ChatEncodeOptions opts(ThinkingMode mode, bool generation_prompt = true) {
  ChatEncodeOptions o;
  o.mode = mode;
  o.add_generation_prompt = generation_prompt;
  return o;
}

std::string encode(const char* messages_json, ThinkingMode mode = ThinkingMode::Chat, bool generation_prompt = true) {
  return encode_v4_chat(Ordered::parse(messages_json), Ordered(), opts(mode, generation_prompt));
}

}  // namespace

TEST(ChatV4, ReproducesDeepSeeksTestVectorsByteForByte) {
  for (int n = 1; n <= 4; ++n) {
    Vector v = vector_case(n);
    EXPECT_EQ(encode_v4_chat(v.messages, v.tools, opts(v.mode)), v.expected) << "test_input_" << n;
  }
}

TEST(ChatV4, SortedKeyJsonGivesTheSamePromptWhereKeyOrderDoesNotShow) {
  // Cases 2 and 4 have no tool schemas or arguments, whose key order nlohmann::json would change.
  for (int n : {2, 4}) {
    Vector v = vector_case(n);
    EXPECT_EQ(encode_v4_chat(nlohmann::json(v.messages), nlohmann::json(), opts(v.mode)), v.expected);
  }
}

TEST(ChatV4, GenerationPromptPerMode) {
  const char* m = R"([{"role": "user", "content": "hi"}])";
  EXPECT_EQ(encode(m, ThinkingMode::Chat), kBos + "<｜User｜>hi<｜Assistant｜></think>");
  EXPECT_EQ(encode(m, ThinkingMode::Thinking), kBos + "<｜User｜>hi<｜Assistant｜><think>");
  EXPECT_EQ(encode(m, ThinkingMode::Thinking, false), kBos + "<｜User｜>hi");
  ChatEncodeOptions no_bos = opts(ThinkingMode::Chat);
  no_bos.add_bos = false;
  EXPECT_EQ(encode_v4_chat(Ordered::parse(m), nullptr, no_bos), "<｜User｜>hi<｜Assistant｜></think>");
}

TEST(ChatV4, ToolResultsJoinOneUserTurnInTheOrderOfTheCalls) {
  const char* m = R"([
    {"role": "user", "content": "both"},
    {"role": "assistant", "content": "", "tool_calls": [
      {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}},
      {"id": "b", "type": "function", "function": {"name": "g", "arguments": {"y": "two"}}}]},
    {"role": "tool", "tool_call_id": "b", "content": "B"},
    {"role": "tool", "tool_call_id": "a", "content": "A"},
    {"role": "user", "content": "and?"}
  ])";
  EXPECT_EQ(encode(m), kBos +
                           "<｜User｜>both<｜Assistant｜></think>\n\n<｜DSML｜tool_calls>\n"
                           "<｜DSML｜invoke name=\"f\">\n"
                           "<｜DSML｜parameter name=\"x\" string=\"false\">1</｜DSML｜parameter>\n"
                           "</｜DSML｜invoke>\n"
                           "<｜DSML｜invoke name=\"g\">\n"
                           "<｜DSML｜parameter name=\"y\" string=\"true\">two</｜DSML｜parameter>\n"
                           "</｜DSML｜invoke>\n"
                           "</｜DSML｜tool_calls>" +
                           kEos + "<｜User｜><tool_result>A</tool_result>\n\n<tool_result>B</tool_result>\n\nand?" +
                           "<｜Assistant｜></think>");
}

TEST(ChatV4, ArgumentValuesOfEveryJsonTypeAreWrittenAsPythonWould) {
  const char* m = R"([{"role": "user", "content": "q"},
    {"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "f",
      "arguments": "{\"s\": \"a\\nb\", \"n\": 2.50, \"l\": [1, \"é\", null], \"o\": {\"k\": true}}"}}]}])";
  const std::string p = encode(m);
  EXPECT_NE(p.find("<｜DSML｜parameter name=\"s\" string=\"true\">a\nb</｜DSML｜parameter>\n"
                   "<｜DSML｜parameter name=\"n\" string=\"false\">2.5</｜DSML｜parameter>\n"
                   "<｜DSML｜parameter name=\"l\" string=\"false\">[1, \"é\", null]</｜DSML｜parameter>\n"
                   "<｜DSML｜parameter name=\"o\" string=\"false\">{\"k\": true}</｜DSML｜parameter>"),
            std::string::npos)
      << p;
}

TEST(ChatV4, RequestToolsWithoutASystemMessageGetOne) {
  Ordered tools = Ordered::parse(R"([{"type": "function", "function": {"name": "t", "parameters": {}}}])");
  const std::string p =
      encode_v4_chat(Ordered::parse(R"([{"role": "user", "content": "u"}])"), tools, opts(ThinkingMode::Chat));
  EXPECT_EQ(p.rfind(kBos + "\n\n## Tools\n\nYou have access to a set of tools", 0), 0u) << p;
  EXPECT_NE(p.find("### Available Tool Schemas\n\n{\"name\": \"t\", \"parameters\": {}}\n\nYou MUST strictly follow "
                   "the above defined tool name and parameter schemas to invoke tool calls.\n<｜User｜>u"),
            std::string::npos)
      << p;
}

TEST(ChatV4, ThinkingModeDropsEarlierReasoningUnlessToolsArePresent) {
  const char* m = R"([{"role": "user", "content": "1"},
                      {"role": "assistant", "reasoning_content": "r1", "content": "a1"},
                      {"role": "user", "content": "2"}])";
  EXPECT_EQ(encode(m, ThinkingMode::Thinking),
            kBos + "<｜User｜>1<｜Assistant｜></think>a1" + kEos + "<｜User｜>2<｜Assistant｜><think>");
  ChatEncodeOptions keep = opts(ThinkingMode::Thinking);
  keep.drop_thinking = false;
  EXPECT_EQ(encode_v4_chat(Ordered::parse(m), nullptr, keep),
            kBos + "<｜User｜>1<｜Assistant｜><think>r1</think>a1" + kEos + "<｜User｜>2<｜Assistant｜><think>");
  Ordered tools = Ordered::parse(R"([{"type": "function", "function": {"name": "t"}}])");
  const std::string with_tools = encode_v4_chat(Ordered::parse(m), tools, opts(ThinkingMode::Thinking));
  EXPECT_NE(with_tools.find("<｜User｜>1<｜Assistant｜><think>r1</think>a1" + kEos), std::string::npos) << with_tools;
  // Chat mode never shows reasoning.
  EXPECT_EQ(encode(m, ThinkingMode::Chat),
            kBos + "<｜User｜>1<｜Assistant｜></think>a1" + kEos + "<｜User｜>2<｜Assistant｜></think>");
}

TEST(ChatV4, DeveloperMessagesBeforeTheLastUserTurnAreDroppedInThinkingMode) {
  const char* m = R"([{"role": "developer", "content": "d"}, {"role": "assistant", "content": "a"},
                      {"role": "user", "content": "u"}])";
  EXPECT_EQ(encode(m, ThinkingMode::Thinking), kBos + "a" + kEos + "<｜User｜>u<｜Assistant｜><think>");
  EXPECT_EQ(encode(m, ThinkingMode::Chat),
            kBos + "<｜User｜>d<｜Assistant｜></think>a" + kEos + "<｜User｜>u<｜Assistant｜></think>");
}

TEST(ChatV4, TasksResponseFormatReminderAndOpenTurns) {
  EXPECT_EQ(encode(R"([{"role": "user", "content": "t", "task": "title"}])"), kBos + "<｜User｜>t<｜title｜>");
  EXPECT_EQ(encode(R"([{"role": "user", "content": "t", "task": "action"}])", ThinkingMode::Thinking),
            kBos + "<｜User｜>t<｜Assistant｜><think><｜action｜>");
  EXPECT_EQ(encode(R"([{"role": "system", "content": "s", "response_format": {"type": "json_object"}},
                       {"role": "user", "content": "u"}])"),
            kBos +
                "s\n\n## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n"
                "{\"type\": \"json_object\"}<｜User｜>u<｜Assistant｜></think>");
  EXPECT_EQ(encode(R"([{"role": "user", "content": "u"}, {"role": "latest_reminder", "content": "r"}])"),
            kBos + "<｜User｜>u<｜Assistant｜></think><｜latest_reminder｜>r");
  EXPECT_EQ(encode(R"([{"role": "user", "content": "u"}, {"role": "assistant", "content": "Sure", "wo_eos": true}])"),
            kBos + "<｜User｜>u<｜Assistant｜></think>Sure");
  ChatEncodeOptions max = opts(ThinkingMode::Thinking);
  max.max_reasoning_effort = true;
  EXPECT_EQ(encode_v4_chat(Ordered::parse(R"([{"role": "user", "content": "u"}])"), nullptr, max)
                .rfind(kBos + "Reasoning Effort: Absolute maximum with no shortcuts permitted.\nYou MUST be very "
                              "thorough",
                       0),
            0u);
}

TEST(ChatV4, ContentPartsAreJoined) {
  EXPECT_EQ(encode(R"([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])"),
            kBos + "<｜User｜>a\nb<｜Assistant｜></think>");
}

TEST(ChatV4, MalformedMessagesAreErrorsNamingTheMessage) {
  auto err = [](const char* messages, const char* tools = "null") {
    return error_of([&] { encode_v4_chat(Ordered::parse(messages), Ordered::parse(tools), {}); });
  };
  EXPECT_EQ(err(R"({"role": "user"})"), "messages must be an array, got object");
  EXPECT_EQ(err(R"([{"role": "user", "content": "x"}, {"role": "wizard", "content": "x"}])"),
            "message 1 (wizard): unknown role (V4 knows system, developer, user, assistant, tool, latest_reminder)");
  EXPECT_EQ(err(R"(["hello"])"), "message 0: must be a JSON object, got string");
  EXPECT_EQ(err(R"([{"content": "x"}])"), "message 0: has no role");
  EXPECT_EQ(err(R"([{"role": "user", "content": 42}])"),
            "message 0 (user): content must be a string, null or an array of text parts, got number");
  EXPECT_EQ(err(R"([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}])"),
            "message 0 (user): content[0] is not a text part (only {\"type\": \"text\"} parts can be rendered)");
  EXPECT_EQ(err(R"([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"function": {}}]}])"),
            "message 1 (assistant): tool_calls[0]: tool call without a name");
  EXPECT_EQ(err(R"([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}])"),
            "message 0 (assistant): arguments of tool call 'f' are not valid JSON: {oops");
  EXPECT_EQ(err(R"([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}])"),
            "message 0 (assistant): arguments of tool call 'f' must be a JSON object");
  EXPECT_EQ(err(R"([{"role": "assistant", "tool_calls": {"name": "f"}}])"),
            "message 0 (assistant): tool_calls must be an array, got object");
  EXPECT_EQ(err(R"([{"role": "assistant", "content": "a", "reasoning_content": 1}])"),
            "message 0 (assistant): reasoning_content must be a string, got number");
  EXPECT_EQ(err(R"([{"role": "user", "content": "x", "task": "dance"}])"),
            "message 0 (user): unknown task 'dance' (known: action, query, authority, domain, title, read_url)");
  EXPECT_EQ(err(R"([{"role": "developer", "content": ""}])"), "message 0 (developer): needs non-empty content");
  EXPECT_EQ(err(R"([{"role": "latest_reminder"}])"), "message 0 (latest_reminder): needs content");
  EXPECT_EQ(err(R"([{"role": "system", "content": "s", "tools": [{"type": "function"}]}])"),
            "message 0 (system): tools[0] has no function object");
  EXPECT_EQ(err(R"([{"role": "user", "content": "x"}])", R"([{"function": {"description": "no name"}}])"),
            "tools[0]: function without a name");
  EXPECT_EQ(err(R"([{"role": "user", "content": "x"}])", R"({"function": {}})"), "tools must be an array, got object");
}

TEST(ChatV4, PythonJsonMatchesJsonDumps) {
  // Expected text from Python 3: json.dumps(value, ensure_ascii=False).
  Ordered v = Ordered::parse(R"({"a": 1.0, "b": 1e-05, "c": 1e16, "d": 1e15, "e": "x\n\"é\u0001\u007f/",
                                  "f": [1, -2.5e-7, 123456789012345678], "g": null, "h": true, "i": 0.1,
                                  "j": 1234567890123456.7})");
  EXPECT_EQ(ferry::runtime::chat::python_json(v),
            "{\"a\": 1.0, \"b\": 1e-05, \"c\": 1e+16, \"d\": 1000000000000000.0, \"e\": \"x\\n\\\"é\\u0001\x7f/\", "
            "\"f\": [1, -2.5e-07, 123456789012345678], \"g\": null, \"h\": true, \"i\": 0.1, "
            "\"j\": 1234567890123456.8}");
}
