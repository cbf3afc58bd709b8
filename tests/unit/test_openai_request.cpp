// Request validation of /v1/chat/completions and /v1/completions: what the official clients send parses to
// the right values; every invalid body is a 400 invalid_request_error naming its parameter.
#include <gtest/gtest.h>

#include <string>

#include "launch/server/api_error.h"
#include "launch/server/openai_request.h"
#include "launch/server/openai_response.h"

namespace {

using namespace ferry::launch::server;
using nlohmann::json;

json chat(json extra = json::object()) {
  json body = {{"model", "deepseek-v4-flash"}, {"messages", {{{"role", "user"}, {"content", "Hi"}}}}};
  body.update(extra);
  return body;
}

// The ApiError a parse throws; fails the test when it throws none.
ApiError error_of(ApiRequest (*parse)(const nlohmann::ordered_json&), const json& body) {
  try {
    parse(body);
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "accepted: " << body.dump();
  return ApiError(0, "", "");
}
ApiError chat_error(const json& body) { return error_of(parse_chat_request, body); }
ApiError completion_error(const json& body) { return error_of(parse_completion_request, body); }

TEST(OpenAiRequest, WhatTheOpenAiClientSendsParses) {
  // The official npm client passes through what the caller gives, often with defaults spelled out.
  const json body = chat({{"stream", false},
                          {"user", "u-1"},
                          {"frequency_penalty", 0},
                          {"presence_penalty", 0.0},
                          {"logprobs", false},
                          {"n", 1},
                          {"temperature", 0.7},
                          {"top_p", 0.9},
                          {"top_k", 40},
                          {"seed", 42},
                          {"max_tokens", 100},
                          {"stop", nullptr},
                          {"tool_choice", "auto"},
                          {"parallel_tool_calls", true},
                          {"response_format", {{"type", "text"}}},
                          {"metadata", {{"k", "v"}}},
                          {"store", false}});
  const ApiRequest r = parse_chat_request(body);
  EXPECT_EQ(r.model, "deepseek-v4-flash");
  EXPECT_FALSE(r.stream);
  EXPECT_DOUBLE_EQ(r.generation.sampler.temperature, 0.7);
  EXPECT_DOUBLE_EQ(r.generation.sampler.top_p, 0.9);
  EXPECT_EQ(r.generation.sampler.top_k, 40);
  EXPECT_EQ(r.generation.sampler.seed, 42u);
  ASSERT_TRUE(r.max_tokens);
  EXPECT_EQ(*r.max_tokens, 100);
  EXPECT_TRUE(r.stop.empty());
  EXPECT_EQ(r.generation.kind, RequestKind::Chat);
  EXPECT_EQ(json(r.generation.messages), json::parse(R"([{"role":"user","content":"Hi"}])"));
}

TEST(OpenAiRequest, DefaultsAreOpenAis) {
  const ApiRequest r = parse_chat_request(chat());
  EXPECT_DOUBLE_EQ(r.generation.sampler.temperature, 1.0);
  EXPECT_DOUBLE_EQ(r.generation.sampler.top_p, 1.0);
  EXPECT_EQ(r.generation.sampler.top_k, 0);
  EXPECT_FALSE(r.max_tokens);
  EXPECT_FALSE(r.generation.thinking);
  EXPECT_FALSE(r.include_usage);
  EXPECT_TRUE(r.generation.tools.empty());
}

TEST(OpenAiRequest, StreamOptionsStopMaxCompletionTokens) {
  const ApiRequest r = parse_chat_request(chat({{"stream", true},
                                                {"stream_options", {{"include_usage", true}}},
                                                {"stop", {"\n\n", "END"}},
                                                {"max_completion_tokens", 7}}));
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"\n\n", "END"}));
  EXPECT_EQ(*r.max_tokens, 7);
  EXPECT_EQ(parse_chat_request(chat({{"stop", "###"}})).stop, std::vector<std::string>{"###"});
  EXPECT_EQ(*parse_chat_request(chat({{"max_tokens", 5}, {"max_completion_tokens", 5}})).max_tokens, 5);
}

TEST(OpenAiRequest, ThinkingSwitchInEitherSpelling) {
  EXPECT_TRUE(parse_chat_request(chat({{"chat_template_kwargs", {{"thinking", true}}}})).generation.thinking);
  EXPECT_TRUE(parse_chat_request(chat({{"thinking", {{"type", "enabled"}}}})).generation.thinking);
  EXPECT_FALSE(parse_chat_request(chat({{"thinking", {{"type", "disabled"}}}})).generation.thinking);
  EXPECT_EQ(
      chat_error(chat({{"thinking", {{"type", "enabled"}}}, {"chat_template_kwargs", {{"thinking", false}}}})).param(),
      "thinking");
}

TEST(OpenAiRequest, MessagesAreNormalized) {
  const json messages = json::parse(R"([
    {"role": "developer", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "name": "ann"},
    {"role": "assistant", "content": null, "refusal": null, "reasoning_content": "hmm",
     "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "42"}
  ])");
  const ApiRequest r = parse_chat_request(chat({{"messages", messages}}));
  EXPECT_EQ(json(r.generation.messages), json::parse(R"([
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "a\nb", "name": "ann"},
    {"role": "assistant", "content": null, "reasoning_content": "hmm",
     "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "42"}
  ])"));
}

// DeepSeek V4's prompt holds the schemas as the client wrote them: a sorted copy would be another prompt.
TEST(OpenAiRequest, ToolSchemasKeepTheClientsKeyOrder) {
  const ApiRequest r = parse_chat_request(parse_json_body(
      R"({"messages": [{"role": "user", "content": "Hi"}], "tools": [{"type": "function", "function": {"name": "f",)"
      R"( "parameters": {"type": "object", "properties": {"zeta": {}, "alpha": {}}}}}]})"));
  EXPECT_EQ(r.generation.tools[0]["function"]["parameters"].dump(),
            R"({"type":"object","properties":{"zeta":{},"alpha":{}}})");
}

TEST(OpenAiRequest, ToolsAndToolChoice) {
  const json tools = json::parse(R"([{"type": "function", "function": {"name": "get_weather",
      "description": "Weather", "parameters": {"type": "object", "properties": {}}}}])");
  EXPECT_EQ(json(parse_chat_request(chat({{"tools", tools}})).generation.tools), tools);
  EXPECT_TRUE(parse_chat_request(chat({{"tools", tools}, {"tool_choice", "none"}})).generation.tools.empty());
  EXPECT_EQ(chat_error(chat({{"tools", tools}, {"tool_choice", "required"}})).param(), "tool_choice");
  EXPECT_EQ(chat_error(chat({{"tools", json::parse(R"([{"type":"function","function":{}}])")}})).param(),
            "tools[0].function.name");
  EXPECT_EQ(chat_error(chat({{"tools", json::parse(R"([{"type":"retrieval"}])")}})).param(), "tools[0].type");
}

struct BadChat {
  const char* name;
  json body;
  const char* param;    // the parameter the error names ("" for none)
  const char* message;  // a substring of the message
};

TEST(OpenAiRequest, EveryInvalidChatBodyIsA400NamingItsParameter) {
  const BadChat cases[] = {
      {"no messages", {{"model", "m"}}, "messages", "required"},
      {"messages not array", chat({{"messages", "hi"}}), "messages", "must be an array"},
      {"empty messages", chat({{"messages", json::array()}}), "messages", "must not be empty"},
      {"message not object", chat({{"messages", {1}}}), "messages[0]", "must be an object"},
      {"bad role", chat({{"messages", {{{"role", "robot"}, {"content", "x"}}}}}), "messages[0].role", "robot"},
      {"no role", chat({{"messages", {{{"content", "x"}}}}}), "messages[0].role", "must be a string"},
      {"no content", chat({{"messages", {{{"role", "user"}}}}}), "messages[0].content", "required"},
      {"content number", chat({{"messages", {{{"role", "user"}, {"content", 3}}}}}), "messages[0].content", "string"},
      {"image part", chat({{"messages", json::parse(R"([{"role":"user","content":[{"type":"image_url"}]}])")}}),
       "messages[0].content[0].type", "not supported"},
      {"tool without id", chat({{"messages", {{{"role", "tool"}, {"content", "x"}}}}}), "messages[0].tool_call_id",
       "must be a string"},
      {"model number", chat({{"model", 5}}), "model", "must be a string"},
      {"stream string", chat({{"stream", "yes"}}), "stream", "must be a boolean"},
      {"stream_options without stream", chat({{"stream_options", {{"include_usage", true}}}}), "stream_options",
       "only allowed"},
      {"stream_options unknown", chat({{"stream", true}, {"stream_options", {{"foo", 1}}}}), "stream_options.foo",
       "Unrecognized"},
      {"negative max_tokens", chat({{"max_tokens", -1}}), "max_tokens", ">= 0"},
      {"fractional max_tokens", chat({{"max_tokens", 1.5}}), "max_tokens", "integer"},
      {"string max_tokens", chat({{"max_tokens", "10"}}), "max_tokens", "integer"},
      {"negative max_completion_tokens", chat({{"max_completion_tokens", -5}}), "max_completion_tokens", ">= 0"},
      {"disagreeing max", chat({{"max_tokens", 5}, {"max_completion_tokens", 6}}), "max_completion_tokens", "disagree"},
      {"temperature high", chat({{"temperature", 2.5}}), "temperature", "[0.0, 2.0]"},
      {"temperature negative", chat({{"temperature", -0.1}}), "temperature", "[0.0, 2.0]"},
      {"temperature string", chat({{"temperature", "hot"}}), "temperature", "must be a number"},
      {"top_p zero", chat({{"top_p", 0}}), "top_p", "(0.0, 1.0]"},
      {"top_p high", chat({{"top_p", 1.01}}), "top_p", "(0.0, 1.0]"},
      {"top_k negative", chat({{"top_k", -2}}), "top_k", ">= 0"},
      {"stop number", chat({{"stop", 5}}), "stop", "a string or an array"},
      {"stop array of numbers", chat({{"stop", {1, 2}}}), "stop", "a string or an array"},
      {"stop empty string", chat({{"stop", {""}}}), "stop", "must not be empty"},
      {"too many stops", chat({{"stop", json(std::vector<std::string>(17, "x"))}}), "stop", "at most 16"},
      {"seed string", chat({{"seed", "1"}}), "seed", "integer"},
      {"n 2", chat({{"n", 2}}), "n", "not supported"},
      {"frequency_penalty", chat({{"frequency_penalty", 0.5}}), "frequency_penalty", "not supported"},
      {"presence_penalty out of range", chat({{"presence_penalty", 3}}), "presence_penalty", "[-2.0, 2.0]"},
      {"logprobs", chat({{"logprobs", true}}), "logprobs", "not supported"},
      {"logit_bias", chat({{"logit_bias", {{"42", 10}}}}), "logit_bias", "not supported"},
      {"json mode", chat({{"response_format", {{"type", "json_object"}}}}), "response_format", "not supported"},
      {"tools not array", chat({{"tools", {{"type", "function"}}}}), "tools", "must be an array"},
      {"thinking bad type", chat({{"thinking", {{"type", "maybe"}}}}), "thinking.type", "enabled"},
      {"kwargs unknown", chat({{"chat_template_kwargs", {{"enable_thinking", true}}}}),
       "chat_template_kwargs.enable_thinking", "Unrecognized"},
      {"kwargs thinking string", chat({{"chat_template_kwargs", {{"thinking", "yes"}}}}),
       "chat_template_kwargs.thinking", "boolean"},
      {"parallel_tool_calls false", chat({{"parallel_tool_calls", false}}), "parallel_tool_calls", "not supported"},
      {"audio", chat({{"audio", {{"voice", "x"}}}}), "audio", "not supported"},
      {"unknown field", chat({{"temprature", 1}}), "temprature", "Unrecognized request argument"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const ApiError e = chat_error(c.body);
    EXPECT_EQ(e.status(), 400);
    EXPECT_EQ(e.type(), "invalid_request_error");
    EXPECT_EQ(e.param(), c.param);
    EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << e.what();
    // The body the server sends for it.
    const json body = error_body(e);
    EXPECT_EQ(body["error"]["type"], "invalid_request_error");
    EXPECT_EQ(body["error"]["param"], c.param);
    EXPECT_EQ(body["error"]["message"], e.what());
    EXPECT_TRUE(body["error"].contains("code"));
  }
}

TEST(OpenAiRequest, Completions) {
  const ApiRequest r = parse_completion_request(
      {{"model", "m"}, {"prompt", "Once upon"}, {"max_tokens", 8}, {"stop", "\n"}, {"echo", false}, {"best_of", 1}});
  EXPECT_EQ(r.generation.kind, RequestKind::Completion);
  EXPECT_EQ(r.generation.prompt, "Once upon");
  EXPECT_EQ(*r.max_tokens, 8);
  EXPECT_EQ(r.stop, std::vector<std::string>{"\n"});
  EXPECT_EQ(parse_completion_request({{"prompt", {"one"}}}).generation.prompt, "one");

  EXPECT_EQ(completion_error({{"model", "m"}}).param(), "prompt");
  EXPECT_EQ(completion_error({{"prompt", {1, 2, 3}}}).param(), "prompt");
  EXPECT_EQ(completion_error({{"prompt", {"a", "b"}}}).param(), "prompt");
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"max_tokens", -3}}).param(), "max_tokens");
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"echo", true}}).param(), "echo");
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"messages", json::array()}}).param(), "messages");
  EXPECT_EQ(completion_error({{"prompt", "x"}, {"temperature", 9}}).param(), "temperature");
}

TEST(OpenAiRequest, MalformedJsonIsA400) {
  for (const char* body : {"{", "", "not json", "[1,2]", "\"text\"", "{\"a\":}"}) {
    SCOPED_TRACE(body);
    try {
      parse_json_body(body);
      ADD_FAILURE() << "accepted";
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status(), 400);
      EXPECT_EQ(e.type(), "invalid_request_error");
    }
  }
  EXPECT_EQ(parse_json_body(R"({"a": 1})")["a"], 1);
}

}  // namespace
