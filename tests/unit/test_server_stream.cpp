// The answer side of `ferry serve` without HTTP: stop-sequence hold-back across piece boundaries, the
// server-sent-event framing of chunks, and a whole generation job over the scripted engine.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "launch/server/generation_job.h"
#include "launch/server/openai_request.h"
#include "launch/server/openai_response.h"
#include "launch/server/stop_matcher.h"
#include "scripted_engine.h"

namespace {

using namespace ferry::launch::server;
using nlohmann::json;

// Everything a matcher releases for these pieces, with a marker where a piece's output ends.
std::string released(StopMatcher& m, const std::vector<std::string>& pieces) {
  std::string out;
  for (const auto& p : pieces) out += m.feed(p) + "|";
  return out + m.finish();
}

TEST(StopMatcher, HoldsBackAPossibleStartUntilItIsDecided) {
  StopMatcher m({"STOP"});
  // "ST" could start STOP: held; "x" decides it was not.
  EXPECT_EQ(released(m, {"ab", "cST", "x"}), "ab|c|STx|");
  EXPECT_FALSE(m.matched());
}

TEST(StopMatcher, CatchesASequenceSplitAcrossPieces) {
  StopMatcher m({"STOP"});
  EXPECT_EQ(released(m, {"Hello S", "T", "O", "P and more", "ignored"}), "Hello |||||");
  EXPECT_TRUE(m.matched());
}

TEST(StopMatcher, EarliestOfSeveralWinsAndTailIsReleasedAtTheEnd) {
  StopMatcher a({"world", "lo"});
  EXPECT_EQ(released(a, {"Hello world"}), "Hel|");
  StopMatcher b({"\n\n", "END"});
  EXPECT_EQ(released(b, {"one\n", "two E", "N"}), "one|\ntwo ||EN");
  EXPECT_FALSE(b.matched());
}

TEST(StopMatcher, MultibyteTextIsNeverSplit) {
  // "é" is two bytes; the stop sequence starts with it.
  StopMatcher m({"\xC3\xA9t\xC3\xA9"});
  EXPECT_EQ(released(m, {"caf\xC3\xA9", "s \xC3\xA9", "t\xC3\xA9!"}), "caf|\xC3\xA9s ||");
  EXPECT_TRUE(m.matched());
}

TEST(StopMatcher, NoStopsPassesEverythingThrough) {
  StopMatcher m({});
  EXPECT_EQ(released(m, {"a", "b"}), "a|b|");
}

// The JSON payloads of a stream of server-sent events; "[DONE]" as a string.
std::vector<json> events(const std::string& sse) {
  std::vector<json> out;
  size_t pos = 0;
  while (pos < sse.size()) {
    const size_t end = sse.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos) << "unterminated event: " << sse.substr(pos);
    if (end == std::string::npos) break;
    const std::string event = sse.substr(pos, end - pos);
    EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
    const std::string data = event.substr(6);
    out.push_back(data == "[DONE]" ? json("[DONE]") : json::parse(data));
    pos = end + 2;
  }
  return out;
}

TEST(StreamChunks, ChatChunksAreServerSentEvents) {
  StreamChunks c({RequestKind::Chat, "chatcmpl-1", 1700000000, "m"}, false);
  EXPECT_EQ(c.content("Hi"),
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null,\"index\":0}],"
            "\"created\":1700000000,\"id\":\"chatcmpl-1\",\"model\":\"m\","
            "\"object\":\"chat.completion.chunk\"}\n\n");
  EXPECT_EQ(StreamChunks::done(), "data: [DONE]\n\n");
  EXPECT_EQ(c.usage({3, 4}), "");  // not asked for
  const json first = events(c.start())[0];
  EXPECT_EQ(first["choices"][0]["delta"], json({{"role", "assistant"}, {"content", ""}}));
  const json finish = events(c.finish("length"))[0];
  EXPECT_EQ(finish["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(finish["choices"][0]["delta"], json::object());
  const json call = events(c.tool_call(1, {"call_9", "f", "{\"x\":1}"}))[0]["choices"][0]["delta"]["tool_calls"][0];
  EXPECT_EQ(
      call,
      json::parse(R"({"index":1,"id":"call_9","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}})"));
}

TEST(StreamChunks, UsageChunkAndNullUsageOnTheOthers) {
  StreamChunks c({RequestKind::Completion, "cmpl-1", 1, "m"}, true);
  const json text = events(c.content("abc"))[0];
  EXPECT_EQ(text["object"], "text_completion");
  EXPECT_EQ(text["choices"][0]["text"], "abc");
  EXPECT_TRUE(text.contains("usage") && text["usage"].is_null());
  const json usage = events(c.usage({3, 4}))[0];
  EXPECT_EQ(usage["choices"], json::array());
  EXPECT_EQ(usage["usage"], json({{"prompt_tokens", 3}, {"completion_tokens", 4}, {"total_tokens", 7}}));
}

TEST(StreamChunks, InvalidUtf8IsReplacedNotThrown) {
  StreamChunks c({RequestKind::Chat, "x", 1, "m"}, false);
  const json delta = events(c.content("a\xFF"))[0]["choices"][0]["delta"];
  EXPECT_EQ(delta["content"], "a\xEF\xBF\xBD");
}

TEST(CompletionObject, ChatMessageWithReasoningAndTools) {
  Answer a;
  a.reasoning = "because";
  a.tool_calls = {{"call_0", "f", "{}"}};
  a.finish_reason = "tool_calls";
  a.usage = {5, 2};
  const json o = completion_object({RequestKind::Chat, "chatcmpl-7", 9, "m"}, a);
  EXPECT_EQ(o["object"], "chat.completion");
  EXPECT_EQ(o["id"], "chatcmpl-7");
  EXPECT_EQ(o["created"], 9);
  const json& msg = o["choices"][0]["message"];
  EXPECT_EQ(msg["role"], "assistant");
  EXPECT_TRUE(msg["content"].is_null());  // tool calls only
  EXPECT_EQ(msg["reasoning_content"], "because");
  EXPECT_EQ(msg["tool_calls"][0]["function"]["name"], "f");
  EXPECT_EQ(o["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_EQ(o["usage"]["total_tokens"], 7);
}

TEST(ResponseHeader, IdsAreFreshAndPrefixed) {
  const ResponseHeader a = new_response_header(RequestKind::Chat, "m"), b = new_response_header(RequestKind::Chat, "m");
  EXPECT_EQ(a.id.rfind("chatcmpl-", 0), 0u);
  EXPECT_NE(a.id, b.id);
  EXPECT_EQ(new_response_header(RequestKind::Completion, "m").id.rfind("cmpl-", 0), 0u);
  EXPECT_GT(a.created, 1600000000);
}

// A job run into a string.
struct JobRun {
  std::string out;
  JobOutcome outcome;
};

JobRun run(
    ferry_test::ScriptedEngine& engine, const json& body, int64_t max_tokens = 100,
    StopRequested cancelled = [] { return false; }) {
  const ApiRequest request = parse_chat_request(body);
  const std::vector<int32_t> prompt = engine.encode_prompt(request.generation);
  JobRun r;
  const Writer write = [&](std::string_view bytes) {
    r.out += bytes;
    return true;
  };
  r.outcome =
      run_job(engine, {request, prompt, max_tokens, {RequestKind::Chat, "chatcmpl-t", 1, "m"}}, write, cancelled);
  return r;
}

const json kHi = {{"messages", {{{"role", "user"}, {"content", "say hello"}}}}};

json with(json extra) {
  json b = kHi;
  b.update(extra);
  return b;
}

std::string streamed_content(const std::vector<json>& ev) {
  std::string s;
  for (const auto& e : ev)
    if (e.is_object() && !e["choices"].empty() && e["choices"][0]["delta"].contains("content"))
      s += e["choices"][0]["delta"]["content"].get<std::string>();
  return s;
}

TEST(GenerationJob, NonStreamingAnswer) {
  ferry_test::ScriptedEngine engine;
  const JobRun r = run(engine, kHi);
  const json o = json::parse(r.out);
  EXPECT_EQ(o["choices"][0]["message"]["content"], "Hello, world!");
  EXPECT_EQ(o["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(o["usage"]["prompt_tokens"], 3);  // "say hello" + the role
  EXPECT_EQ(o["usage"]["completion_tokens"], 5);
  EXPECT_FALSE(r.outcome.client_gone);
}

TEST(GenerationJob, StreamWithUsageEndsWithDone) {
  ferry_test::ScriptedEngine engine;
  const JobRun r = run(engine, with({{"stream", true}, {"stream_options", {{"include_usage", true}}}}));
  const std::vector<json> ev = events(r.out);
  ASSERT_GE(ev.size(), 4u);
  EXPECT_EQ(ev.front()["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(streamed_content(ev), "Hello, world!");
  EXPECT_EQ(ev[ev.size() - 3]["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(ev[ev.size() - 2]["usage"]["completion_tokens"], 5);
  EXPECT_EQ(ev.back(), "[DONE]");
}

TEST(GenerationJob, StopSequenceAcrossPiecesEndsGeneration) {
  ferry_test::ScriptedEngine engine;
  // "wor" + "ld": the stop "rld" spans two pieces; nothing of it reaches the client.
  const JobRun s = run(engine, with({{"stream", true}, {"stop", "rld"}}));
  const std::vector<json> ev = events(s.out);
  EXPECT_EQ(streamed_content(ev), "Hello, wo");
  EXPECT_EQ(ev[ev.size() - 2]["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(engine.cancellations, 1);  // asked to stop right after the match
  EXPECT_EQ(s.outcome.engine.completion_tokens, 4);

  const json o = json::parse(run(engine, with({{"stop", {"zzz", ", w"}}})).out);
  EXPECT_EQ(o["choices"][0]["message"]["content"], "Hello");
  EXPECT_EQ(o["choices"][0]["finish_reason"], "stop");
}

TEST(GenerationJob, ReasoningAndToolCalls) {
  ferry_test::ScriptedEngine engine;
  engine.tool_call = ferry::launch::server::ToolCall{"call_0", "get_weather", "{\"city\":\"Paris\"}"};
  const json tools = json::parse(R"([{"type":"function","function":{"name":"get_weather"}}])");
  const json o = json::parse(run(engine, with({{"thinking", {{"type", "enabled"}}}, {"tools", tools}})).out);
  const json& msg = o["choices"][0]["message"];
  EXPECT_EQ(msg["reasoning_content"], "Let me think.");
  EXPECT_EQ(msg["content"], "Hello, world!");
  EXPECT_EQ(msg["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Paris\"}");
  EXPECT_EQ(o["choices"][0]["finish_reason"], "tool_calls");

  const std::vector<json> ev =
      events(run(engine, with({{"thinking", {{"type", "enabled"}}}, {"tools", tools}, {"stream", true}})).out);
  std::string reasoning;
  int calls = 0;
  for (const auto& e : ev) {
    if (!e.is_object()) continue;
    const json& d = e["choices"][0]["delta"];
    if (d.contains("reasoning_content")) reasoning += d["reasoning_content"].get<std::string>();
    if (d.contains("tool_calls")) {
      EXPECT_EQ(d["tool_calls"][0]["index"], calls);
      ++calls;
    }
  }
  EXPECT_EQ(reasoning, "Let me think.");
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(ev[ev.size() - 2]["choices"][0]["finish_reason"], "tool_calls");
}

TEST(GenerationJob, LengthLimit) {
  ferry_test::ScriptedEngine engine;
  const json o = json::parse(run(engine, kHi, 2).out);
  EXPECT_EQ(o["choices"][0]["message"]["content"], "Hello,");
  EXPECT_EQ(o["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(o["usage"]["completion_tokens"], 2);
}

TEST(GenerationJob, ClientGoneStopsGenerationAndWritesNothingMore) {
  ferry_test::ScriptedEngine engine;
  engine.endless = true;
  const ApiRequest request = parse_chat_request(with({{"stream", true}}));
  const std::vector<int32_t> prompt = engine.encode_prompt(request.generation);
  int writes = 0;
  const Writer write = [&](std::string_view) { return ++writes < 3; };  // the third write fails
  const JobOutcome outcome =
      run_job(engine, {request, prompt, 1000, {RequestKind::Chat, "c", 1, "m"}}, write, [] { return false; });
  EXPECT_TRUE(outcome.client_gone);
  EXPECT_EQ(writes, 3);
  EXPECT_EQ(engine.cancellations, 1);
  EXPECT_EQ(outcome.engine.completion_tokens, 2);
}

TEST(GenerationJob, ServerCancelAndEngineFailureEndWithAnErrorObject) {
  ferry_test::ScriptedEngine engine;
  engine.endless = true;
  int asked = 0;
  const std::vector<json> ev = events(run(engine, with({{"stream", true}}), 1000, [&] { return ++asked > 3; }).out);
  EXPECT_EQ(ev.back()["error"]["code"], "shutting_down");
  EXPECT_EQ(engine.cancellations, 1);

  ferry_test::ScriptedEngine failing;
  failing.fail = true;
  const JobRun r = run(failing, kHi);
  EXPECT_TRUE(r.outcome.failed);
  EXPECT_EQ(json::parse(r.out)["error"]["type"], "server_error");
  EXPECT_NE(json::parse(r.out)["error"]["message"].get<std::string>().find("scripted failure"), std::string::npos);
}

}  // namespace
