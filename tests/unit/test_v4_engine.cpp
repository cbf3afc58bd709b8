// The V4 engine on a tiny model: prompts are the V4 chat encoding tokenized (tools, thinking mode, raw
// completions), sessions are reset between requests, cancellation stops between tokens, and the answer stream
// turns generated text into reasoning, content and tool calls with ids call_0, call_1, ...
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "launch/server/answer_stream.h"
#include "launch/server/v4_engine.h"
#include "runtime/checkpoint/tiny_model.h"
#include "runtime/text/chat_v4.h"
#include "runtime/text/tokenizer.h"
#include "test_errors.h"

namespace {

using ferry::launch::server::AnswerStream;
using ferry::launch::server::EngineCallbacks;
using ferry::launch::server::EngineResult;
using ferry::launch::server::FinishReason;
using ferry::launch::server::GenerationRequest;
using ferry::launch::server::RequestKind;
using ferry::launch::server::ToolCall;
using Json = nlohmann::ordered_json;
namespace fs = std::filesystem;

const fs::path& tiny_dir() {
  static const fs::path dir = [] {
    const fs::path d = fs::temp_directory_path() / ("ferry-v4-engine-test-" + std::to_string(::getpid()));
    ferry::runtime::make_tiny_model(d, {});
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(fs::temp_directory_path() / ("ferry-v4-engine-test-" + std::to_string(::getpid())), ec);
    });
    return d;
  }();
  return dir;
}

ferry::launch::server::Engine& engine() {
  static const auto e = ferry::launch::server::open_v4_engine(tiny_dir().string(), 512);
  return *e;
}

const ferry::runtime::Tokenizer& tokenizer() {
  static const auto t = ferry::runtime::Tokenizer::from_model_dir(tiny_dir().string());
  return t;
}

const Json kWeatherTool = Json::parse(R"([{"type": "function", "function": {"name": "get_weather",
  "description": "Get the weather", "parameters": {"type": "object",
  "properties": {"location": {"type": "string"}}, "required": ["location"]}}}])");

GenerationRequest chat(const std::string& user, Json tools = Json::array(), bool thinking = false) {
  GenerationRequest r;
  r.messages = Json::array({{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", user}}});
  r.tools = std::move(tools);
  r.thinking = thinking;
  return r;
}

struct Answer {
  std::string reasoning, content;
  std::vector<ToolCall> calls;
  EngineResult result;
};

Answer generate(ferry::launch::server::Engine& e, const GenerationRequest& r, int64_t max_tokens,
                const ferry::launch::server::StopRequested& stop = {}) {
  Answer a;
  EngineCallbacks cb;
  cb.on_reasoning = [&](std::string_view t) { a.reasoning += t; };
  cb.on_content = [&](std::string_view t) { a.content += t; };
  cb.on_tool_call = [&](const ToolCall& c) { a.calls.push_back(c); };
  a.result = e.generate(
      r, e.encode_prompt(r), max_tokens, cb, stop ? stop : [] { return false; });
  return a;
}

TEST(V4Engine, ChatPromptIsTheV4EncodingTokenized) {
  const GenerationRequest r = chat("Hello there");
  const std::string text = ferry::runtime::encode_v4_chat(r.messages, Json(), {});
  EXPECT_EQ(text, "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hello there<｜Assistant｜></think>");
  EXPECT_EQ(engine().encode_prompt(r), tokenizer().encode(text));
  EXPECT_EQ(engine().encode_prompt(r)[0], *tokenizer().bos_id());
  EXPECT_EQ(engine().model_id(), tiny_dir().filename().string());
  EXPECT_EQ(engine().context_length(), 512);
}

TEST(V4Engine, ToolsAreDescribedInTheSystemPromptInTheClientsKeyOrder) {
  const GenerationRequest r = chat("Weather in Paris?", kWeatherTool);
  const std::vector<int32_t> ids = engine().encode_prompt(r);
  EXPECT_EQ(ids, tokenizer().encode(ferry::runtime::encode_v4_chat(r.messages, r.tools, {})));
  const std::string text = tokenizer().decode(ids);
  EXPECT_NE(text.find("## Tools"), std::string::npos) << text;
  EXPECT_NE(text.find("<｜DSML｜tool_calls>"), std::string::npos) << text;
  // "type" before "properties": as sent, not sorted.
  EXPECT_NE(text.find(R"({"name": "get_weather", "description": "Get the weather", "parameters": {"type": "object", )"
                      R"("properties": {"location": {"type": "string"}}, "required": ["location"]}})"),
            std::string::npos)
      << text;
  EXPECT_GT(ids.size(), engine().encode_prompt(chat("Weather in Paris?")).size() + 100);
}

TEST(V4Engine, ThinkingModeEndsThePromptWithThink) {
  const std::string text = tokenizer().decode(engine().encode_prompt(chat("Why?", Json::array(), true)));
  EXPECT_TRUE(text.ends_with("<｜Assistant｜><think>")) << text;
}

TEST(V4Engine, CompletionIsBosAndTheText) {
  GenerationRequest r;
  r.kind = RequestKind::Completion;
  r.prompt = "Once upon a time";
  std::vector<int32_t> expected = tokenizer().encode(r.prompt);
  expected.insert(expected.begin(), *tokenizer().bos_id());
  EXPECT_EQ(engine().encode_prompt(r), expected);
  r.prompt = "<｜begin▁of▁sentence｜>Once upon a time";
  EXPECT_EQ(engine().encode_prompt(r), expected);
}

TEST(V4Engine, BadRequestsThrowFerryErrors) {
  GenerationRequest r = chat("hi");
  r.messages[1]["role"] = "wizard";
  EXPECT_NE(ferry_test::error_of([&] { engine().encode_prompt(r); }), "");
  EXPECT_NE(ferry_test::error_of([] { ferry::launch::server::open_v4_engine("/nonexistent/model", 512); }), "");
  EXPECT_NE(ferry_test::error_of([] { ferry::launch::server::open_v4_engine(tiny_dir().string(), 1 << 30); }), "");
}

// A session serves request after request: the same request answers the same after others ran, and the same as
// on a fresh engine.
TEST(V4Engine, ResetSessionsAnswerLikeFreshOnes) {
  GenerationRequest r = chat("Tell me a story");
  const Answer first = generate(engine(), r, 24);
  generate(engine(), chat("Something else entirely, and longer, to fill the cache differently"), 40);
  const Answer again = generate(engine(), r, 24);
  const auto fresh_engine = ferry::launch::server::open_v4_engine(tiny_dir().string(), 512);
  const Answer fresh = generate(*fresh_engine, r, 24);
  EXPECT_EQ(again.content, first.content);
  EXPECT_EQ(fresh.content, first.content);
  EXPECT_EQ(again.result.completion_tokens, first.result.completion_tokens);
  EXPECT_GT(first.result.completion_tokens, 0);
  EXPECT_FALSE(first.content.empty());
}

TEST(V4Engine, MaxTokensEndsWithLength) {
  const auto e = ferry::launch::server::open_v4_engine(tiny_dir().string(),
                                                       {.ctx = 256, .ignore_eos = true, .configure_session = {}});
  const Answer a = generate(*e, chat("Count"), 7);
  EXPECT_EQ(a.result.finish, FinishReason::Length);
  EXPECT_EQ(a.result.completion_tokens, 7);
  EXPECT_GT(a.result.decode_seconds, 0);
}

TEST(V4Engine, CancelStopsBetweenTokens) {
  int asked = 0;
  const Answer a = generate(engine(), chat("Go on"), 100, [&] { return ++asked > 4; });
  EXPECT_EQ(a.result.finish, FinishReason::Cancelled);
  EXPECT_LE(a.result.completion_tokens, 3);
  const Answer none = generate(engine(), chat("Go on"), 100, [] { return true; });
  EXPECT_EQ(none.result.finish, FinishReason::Cancelled);
  EXPECT_EQ(none.result.completion_tokens, 0);
  EXPECT_TRUE(none.content.empty());
}

TEST(V4Engine, ConcurrentRequestsGetSessionsOfTheirOwn) {
  const GenerationRequest r = chat("Together");
  const Answer alone = generate(engine(), r, 16);
  Answer a, b;
  std::thread t1([&] { a = generate(engine(), r, 16); });
  std::thread t2([&] { b = generate(engine(), r, 16); });
  t1.join();
  t2.join();
  EXPECT_EQ(a.content, alone.content);
  EXPECT_EQ(b.content, alone.content);
  bool kv = false;
  for (const auto& s : engine().metrics())
    if (s.name == "ferry_host_memory_bytes" && s.labels.at(0).second == "kv_cache") kv = s.value > 0;
  EXPECT_TRUE(kv);
}

// Feeds `text` to an AnswerStream token by token, as the model would write it.
Answer stream(const GenerationRequest& r, const std::string& text, bool ended_turn) {
  Answer a;
  EngineCallbacks cb;
  cb.on_reasoning = [&](std::string_view t) { a.reasoning += t; };
  cb.on_content = [&](std::string_view t) { a.content += t; };
  cb.on_tool_call = [&](const ToolCall& c) { a.calls.push_back(c); };
  AnswerStream s(tokenizer(), r, cb);
  for (int32_t id : tokenizer().encode(text)) s.push(id);
  a.result.finish = s.finish(ended_turn);
  return a;
}

TEST(AnswerStream, SplitsReasoningContentAndToolCalls) {
  const std::string block =
      "\n\n<｜DSML｜tool_calls>\n"
      "<｜DSML｜invoke name=\"get_weather\">\n"
      "<｜DSML｜parameter name=\"location\" string=\"true\">Paris</｜DSML｜parameter>\n"
      "</｜DSML｜invoke>\n"
      "<｜DSML｜invoke name=\"get_weather\">\n"
      "<｜DSML｜parameter name=\"location\" string=\"true\">Köln</｜DSML｜parameter>\n"
      "</｜DSML｜invoke>\n"
      "</｜DSML｜tool_calls>";
  const Answer a = stream(chat("Weather?", kWeatherTool, true), "Two cities.</think>Checking." + block, true);
  EXPECT_EQ(a.reasoning, "Two cities.");
  EXPECT_EQ(a.content, "Checking.");
  ASSERT_EQ(a.calls.size(), 2u);
  EXPECT_EQ(a.calls[0].id, "call_0");
  EXPECT_EQ(a.calls[1].id, "call_1");
  EXPECT_EQ(a.calls[0].name, "get_weather");
  EXPECT_EQ(Json::parse(a.calls[1].arguments), Json::parse(R"({"location": "Köln"})"));
  EXPECT_EQ(a.result.finish, FinishReason::ToolCalls);
}

TEST(AnswerStream, FinishReasonsAndRawCompletions) {
  EXPECT_EQ(stream(chat("Hi"), "Hello! 👋", true).result.finish, FinishReason::Stop);
  const Answer cut = stream(chat("Hi"), "Hello! 👋", false);
  EXPECT_EQ(cut.result.finish, FinishReason::Length);
  EXPECT_EQ(cut.content, "Hello! 👋");
  GenerationRequest completion;
  completion.kind = RequestKind::Completion;
  // Raw text: no parsing of "</think>", special tokens left out.
  const Answer raw = stream(completion, "a</think>b<｜begin▁of▁sentence｜>c", true);
  EXPECT_EQ(raw.content, "a</think>bc");
  EXPECT_TRUE(raw.reasoning.empty());
}

}  // namespace
