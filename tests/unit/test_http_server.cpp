// `ferry serve`'s HTTP server for real, in-process on an ephemeral loopback port, over the scripted engine:
// answers, streaming, concurrency and the queue, disconnects, bad requests, API keys, metrics, shutdown.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "launch/server/http_server.h"
#include "scripted_engine.h"

namespace {

using namespace ferry::launch::server;
using namespace std::chrono_literals;
using nlohmann::json;

template <class F>
bool wait_until(F cond, std::chrono::milliseconds limit = 5s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

// A server on 127.0.0.1:<free port>; configure engine and options, then start().
struct TestServer {
  ferry_test::ScriptedEngine engine;
  ServerOptions options;
  std::unique_ptr<HttpServer> server;
  std::thread thread;
  int port = 0;

  void start() {
    options.port = 0;
    server = std::make_unique<HttpServer>(engine, options);
    port = server->bind();
    thread = std::thread([this] { server->serve(); });
  }
  // An engine whose answers never end by themselves, `delay` a token.
  void start_endless(std::chrono::milliseconds delay, int parallel) {
    engine.endless = true;
    engine.token_delay = delay;
    options.parallel = parallel;
    start();
  }
  void stop() {
    if (!thread.joinable()) return;
    server->stop();
    thread.join();
  }
  ~TestServer() { stop(); }

  std::unique_ptr<httplib::Client> client() const {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", port);
    c->set_connection_timeout(5, 0);
    c->set_read_timeout(20, 0);
    return c;
  }
  httplib::Result post(const std::string& path, const std::string& body, const httplib::Headers& headers = {}) const {
    return client()->Post(path.c_str(), headers, body, "application/json");
  }
  httplib::Result get(const std::string& path, const httplib::Headers& headers = {}) const {
    return client()->Get(path.c_str(), headers);
  }
};

json chat_body(json extra = json::object()) {
  json b = {{"model", "any"}, {"messages", {{{"role", "user"}, {"content", "say hello"}}}}};
  b.update(extra);
  return b;
}

// Server-sent events: the JSON payloads, "[DONE]" as a string.
std::vector<json> sse_events(const std::string& body) {
  std::vector<json> out;
  std::istringstream in(body);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    EXPECT_EQ(line.rfind("data: ", 0), 0u) << line;
    const std::string data = line.substr(6);
    out.push_back(data == "[DONE]" ? json("[DONE]") : json::parse(data));
  }
  return out;
}

std::string content_of(const std::vector<json>& events) {
  std::string s;
  for (const auto& e : events) {
    if (!e.is_object() || e["choices"].empty()) continue;
    const json& c = e["choices"][0];
    if (c.contains("delta") && c["delta"].contains("content")) s += c["delta"]["content"].get<std::string>();
    if (c.contains("text")) s += c["text"].get<std::string>();
  }
  return s;
}

// A complete stream: the whole content and a [DONE] at the end.
bool complete_stream(const std::string& body, const std::string& content) {
  const std::vector<json> ev = sse_events(body);
  return !ev.empty() && ev.back() == "[DONE]" && content_of(ev) == content;
}

// A streaming POST whose client hangs up once `enough` holds for what it received; returns that.
std::string post_and_hang_up(const TestServer& s, const json& body,
                             const std::function<bool(const std::string&)>& enough) {
  std::string received;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/chat/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    received.append(data, n);
    return !enough(received);
  };
  const httplib::Result r = s.client()->send(req);
  EXPECT_EQ(r.error(), httplib::Error::Canceled);  // it was this client that hung up
  return received;
}

// A client streaming a long answer (2000 tokens, 6 s at 3 ms a token) that hangs up after its first content,
// once `ready()` holds.
std::thread start_hanging_up(
    const TestServer& s, std::function<bool()> ready = [] { return true; }) {
  return std::thread([&s, ready] {
    post_and_hang_up(s, chat_body({{"stream", true}, {"max_tokens", 2000}}),
                     [&](const std::string& got) { return got.find("Hello") != std::string::npos && ready(); });
  });
}

void expect_error(const httplib::Result& r, int status, const std::string& type, const std::string& code = "") {
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, status) << r->body;
  const json body = json::parse(r->body, nullptr, false);
  ASSERT_TRUE(body.is_object() && body.contains("error")) << r->body;
  EXPECT_EQ(body["error"]["type"], type);
  EXPECT_TRUE(body["error"]["message"].is_string());
  EXPECT_TRUE(body["error"].contains("param"));
  if (!code.empty()) {
    EXPECT_EQ(body["error"]["code"], code);
  }
}

TEST(HttpServer, NonStreamingChatAndCompletion) {
  TestServer s;
  s.start();
  const auto r = s.post("/v1/chat/completions", chat_body().dump());
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Type"), "application/json");
  const json o = json::parse(r->body);
  EXPECT_EQ(o["object"], "chat.completion");
  EXPECT_EQ(o["model"], "scripted-v4");
  EXPECT_EQ(o["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(o["choices"][0]["message"]["content"], "Hello, world!");
  EXPECT_EQ(o["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(o["usage"], json({{"prompt_tokens", 3}, {"completion_tokens", 5}, {"total_tokens", 8}}));

  const auto c = s.post("/v1/completions", R"({"model":"m","prompt":"Once upon a time","max_tokens":3})");
  ASSERT_TRUE(c);
  ASSERT_EQ(c->status, 200) << c->body;
  const json t = json::parse(c->body);
  EXPECT_EQ(t["object"], "text_completion");
  EXPECT_EQ(t["choices"][0]["text"], "Hello, wor");
  EXPECT_EQ(t["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(t["usage"]["prompt_tokens"], 4);
}

TEST(HttpServer, StreamingChatIsServerSentEvents) {
  TestServer s;
  s.engine.token_delay = 2ms;
  s.start();
  const auto r = s.post("/v1/chat/completions",
                        chat_body({{"stream", true}, {"stream_options", {{"include_usage", true}}}}).dump());
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/event-stream");
  const std::vector<json> ev = sse_events(r->body);
  ASSERT_GE(ev.size(), 4u);
  EXPECT_EQ(ev.back(), "[DONE]");
  EXPECT_EQ(content_of(ev), "Hello, world!");
  const std::string id = ev.front()["id"];
  for (size_t i = 0; i + 1 < ev.size(); ++i) {
    EXPECT_EQ(ev[i]["object"], "chat.completion.chunk");
    EXPECT_EQ(ev[i]["id"], id);
  }
  EXPECT_EQ(ev[ev.size() - 3]["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(ev[ev.size() - 2]["usage"]["completion_tokens"], 5);

  const auto c = s.post("/v1/completions", R"({"prompt":"x","stream":true,"stop":["ld"]})");
  ASSERT_TRUE(c);
  EXPECT_TRUE(complete_stream(c->body, "Hello, wor")) << c->body;
}

TEST(HttpServer, SixteenConcurrentClientsSerializeOnOneSlot) {
  TestServer s;
  s.engine.token_delay = 1ms;
  s.options.parallel = 1;
  s.options.queue = 32;
  s.start();
  std::vector<std::thread> clients;
  std::atomic<int> complete{0};
  for (int i = 0; i < 16; ++i) {
    clients.emplace_back([&, i] {
      const bool stream = i % 2 == 0;
      const auto r = s.post("/v1/chat/completions", chat_body({{"stream", stream}}).dump());
      if (!r) ADD_FAILURE() << "client " << i << ": " << httplib::to_string(r.error());
      if (r && r->status != 200) ADD_FAILURE() << "client " << i << ": " << r->status << " " << r->body;
      if (!r || r->status != 200) return;
      if (stream ? complete_stream(r->body, "Hello, world!")
                 : json::parse(r->body)["choices"][0]["message"]["content"] == "Hello, world!")
        ++complete;
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(complete, 16);
  EXPECT_EQ(s.engine.generations, 16);
  EXPECT_EQ(s.engine.max_running, 1);  // --parallel 1: one at a time
}

TEST(HttpServer, FullQueueIsA503AndHealthStillAnswers) {
  TestServer s;
  s.options.queue = 1;
  s.start_endless(2ms, 1);
  std::atomic<bool> release{false};
  // A runs until told to hang up; B waits behind it; C finds the queue full.
  std::thread a([&] {
    post_and_hang_up(s, chat_body({{"stream", true}}), [&](const std::string&) { return release.load(); });
  });
  ASSERT_TRUE(wait_until([&] { return s.server->load().running == 1; }));
  std::optional<httplib::Result> b_result;
  std::thread b([&] { b_result.emplace(s.post("/v1/chat/completions", chat_body({{"max_tokens", 3}}).dump())); });
  ASSERT_TRUE(wait_until([&] { return s.server->load().waiting == 1; }));

  expect_error(s.post("/v1/chat/completions", chat_body().dump()), 503, "server_error", "queue_full");
  const auto health = s.get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);

  release = true;
  a.join();
  b.join();
  ASSERT_TRUE(b_result && *b_result);
  EXPECT_EQ((*b_result)->status, 200);
  EXPECT_EQ(json::parse((*b_result)->body)["choices"][0]["message"]["content"], "Hello, wor");
}

TEST(HttpServer, ClientThatHangsUpCancelsItsGenerationOthersAreUndisturbed) {
  TestServer s;
  s.start_endless(3ms, 2);
  // A hangs up after its first content; B runs beside it to its end.
  std::thread a = start_hanging_up(s);
  const auto b = s.post("/v1/chat/completions", chat_body({{"stream", true}, {"max_tokens", 40}}).dump());
  a.join();
  ASSERT_TRUE(b);
  const std::vector<json> ev = sse_events(b->body);
  EXPECT_EQ(ev.back(), "[DONE]");
  EXPECT_EQ(ev[ev.size() - 2]["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(content_of(ev).size(), 8u * 13);  // 40 pieces: 8 times "Hello, world!"

  ASSERT_TRUE(wait_until([&] { return s.engine.cancellations.load() == 1; }));
  EXPECT_LT(s.engine.tokens_of_last_cancelled, 2000);
  EXPECT_TRUE(wait_until([&] { return s.server->load().running == 0; }));

  // Bad requests afterwards still get their 400, and the server still serves.
  expect_error(s.post("/v1/chat/completions", "{not json"), 400, "invalid_request_error");
  expect_error(s.post("/v1/chat/completions", chat_body({{"temperature", 5}}).dump()), 400, "invalid_request_error",
               "out_of_range");
  const auto ok = s.post("/v1/chat/completions", chat_body({{"max_tokens", 1}}).dump());
  ASSERT_TRUE(ok);
  EXPECT_EQ(json::parse(ok->body)["choices"][0]["message"]["content"], "Hello");
}

TEST(HttpServer, HangUpFreesTheSlotForTheNextInLine) {
  TestServer s;
  s.start_endless(3ms, 1);
  // A hangs up once B waits for its slot; B gets it then, long before A's 2000 tokens (6 s) would end.
  std::thread a = start_hanging_up(s, [&] { return s.server->load().waiting == 1; });
  ASSERT_TRUE(wait_until([&] { return s.server->load().running == 1; }));
  const auto start = std::chrono::steady_clock::now();
  const auto b = s.post("/v1/chat/completions", chat_body({{"stream", true}, {"max_tokens", 5}}).dump());
  a.join();
  ASSERT_TRUE(b);
  EXPECT_TRUE(complete_stream(b->body, "Hello, world!"));
  EXPECT_EQ(s.engine.cancellations, 1);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 4s);
}

TEST(HttpServer, BadRequestsAreOpenAiErrors) {
  TestServer s;
  s.engine.ctx = 10;
  s.start();
  expect_error(s.post("/v1/chat/completions", ""), 400, "invalid_request_error");
  expect_error(s.post("/v1/chat/completions", "[1]"), 400, "invalid_request_error");
  expect_error(s.post("/v1/chat/completions", chat_body({{"n", 3}}).dump()), 400, "invalid_request_error",
               "unsupported_value");
  expect_error(s.post("/v1/chat/completions", chat_body({{"bogus", 1}}).dump()), 400, "invalid_request_error",
               "unknown_parameter");
  expect_error(s.post("/v1/completions", R"({"prompt": 5})"), 400, "invalid_request_error", "invalid_type");
  // Context 10: a 12-token prompt, and 3 + 8 tokens, do not fit.
  expect_error(s.post("/v1/completions", R"({"prompt": "a b c d e f g h i j k l"})"), 400, "invalid_request_error",
               "context_length_exceeded");
  expect_error(s.post("/v1/chat/completions", chat_body({{"max_tokens", 8}}).dump()), 400, "invalid_request_error",
               "context_length_exceeded");
  expect_error(s.post("/v1/chat/completions", chat_body({{"max_tokens", INT64_MAX}}).dump()), 400,
               "invalid_request_error", "context_length_exceeded");
  const auto fits = s.post("/v1/chat/completions", chat_body({{"max_tokens", 7}}).dump());
  ASSERT_TRUE(fits);
  EXPECT_EQ(fits->status, 200);
  // Without max_tokens a chat may fill the context: 7 tokens after the 3 of the prompt.
  const auto fill = s.post("/v1/chat/completions", chat_body().dump());
  ASSERT_TRUE(fill);
  EXPECT_EQ(json::parse(fill->body)["choices"][0]["finish_reason"], "stop");

  expect_error(s.get("/v1/nothing"), 404, "invalid_request_error");
  expect_error(s.get("/v1/chat/completions"), 404, "invalid_request_error");
  EXPECT_EQ(s.engine.generations, 2);  // none of the bad ones reached the engine
}

TEST(HttpServer, ApiKey) {
  TestServer s;
  s.options.api_key = "sk-test-123";
  s.start();
  expect_error(s.get("/v1/models"), 401, "invalid_request_error", "invalid_api_key");
  expect_error(s.get("/v1/models", {{"Authorization", "Bearer sk-test-124"}}), 401, "invalid_request_error",
               "invalid_api_key");
  expect_error(s.get("/v1/models", {{"Authorization", "sk-test-123"}}), 401, "invalid_request_error");
  expect_error(s.post("/v1/chat/completions", chat_body().dump()), 401, "invalid_request_error");
  expect_error(s.get("/metrics"), 401, "invalid_request_error");

  const httplib::Headers key = {{"Authorization", "Bearer sk-test-123"}};
  const auto models = s.get("/v1/models", key);
  ASSERT_TRUE(models);
  ASSERT_EQ(models->status, 200);
  const json list = json::parse(models->body);
  EXPECT_EQ(list["object"], "list");
  EXPECT_EQ(list["data"][0]["id"], "scripted-v4");
  EXPECT_EQ(list["data"][0]["object"], "model");
  const auto chat = s.post("/v1/chat/completions", chat_body().dump(), key);
  ASSERT_TRUE(chat);
  EXPECT_EQ(chat->status, 200);
  const auto health = s.get("/health");  // no key needed
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(json::parse(health->body)["status"], "ok");
  EXPECT_EQ(s.engine.generations, 1);
}

// A Prometheus text sample line, `name{label="value",...} value`: its series (name and labels) and value.
bool parse_prometheus_sample(const std::string& line, std::string& series, double& value) {
  size_t i = 0;
  auto name = [&](bool colons) {
    const size_t start = i;
    while (i < line.size() &&
           (std::isalpha(static_cast<unsigned char>(line[i])) || line[i] == '_' || (colons && line[i] == ':') ||
            (i > start && std::isdigit(static_cast<unsigned char>(line[i])))))
      ++i;
    return i > start;
  };
  if (!name(true)) return false;
  if (i < line.size() && line[i] == '{') {
    do {
      ++i;
      if (!name(false) || line.compare(i, 2, "=\"") != 0) return false;
      for (i += 2; i < line.size() && line[i] != '"'; ++i)
        if (line[i] == '\\') ++i;
      if (i++ >= line.size()) return false;
    } while (i < line.size() && line[i] == ',');
    if (i >= line.size() || line[i++] != '}') return false;
  }
  if (i >= line.size() || line[i++] != ' ') return false;
  series = line.substr(0, i - 1);
  const std::string text = line.substr(i);
  if (text == "NaN" || text == "+Inf" || text == "-Inf") return true;
  char* end = nullptr;
  value = std::strtod(text.c_str(), &end);
  return !text.empty() && *end == '\0';
}

TEST(HttpServer, MetricsArePrometheusText) {
  TestServer s;
  s.options.extra_metrics = [] {
    return std::vector<MetricSample>{{"ferry_device_memory_bytes",
                                      "gauge",
                                      "Bytes held per device.",
                                      {{"device", "cuda:0"}, {"kind", "weights \"hot\""}},
                                      1.5e9}};
  };
  s.start();
  ASSERT_TRUE(s.post("/v1/chat/completions", chat_body().dump()));
  ASSERT_TRUE(s.post("/v1/chat/completions", "{"));
  const auto m = s.get("/metrics");
  ASSERT_TRUE(m);
  ASSERT_EQ(m->status, 200);
  EXPECT_EQ(m->get_header_value("Content-Type").rfind("text/plain", 0), 0u);

  // Every line: a comment (# HELP / # TYPE) or a sample `name{labels} value`.
  std::map<std::string, double> values;
  std::istringstream in(m->body);
  int samples = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) continue;
    std::string series;
    double value = 0;
    ASSERT_TRUE(parse_prometheus_sample(line, series, value)) << "not Prometheus text: " << line;
    values[series] = value;
    ++samples;
  }
  EXPECT_GE(samples, 8);
  EXPECT_EQ(values["ferry_requests_total{status=\"200\"}"], 1);
  EXPECT_EQ(values["ferry_requests_total{status=\"400\"}"], 1);
  EXPECT_EQ(values["ferry_tokens_generated_total"], 5);
  EXPECT_EQ(values["ferry_prompt_tokens_total"], 3);
  EXPECT_EQ(values["ferry_queue_length"], 0);
  EXPECT_EQ(values["ferry_requests_running"], 0);
  EXPECT_TRUE(values.count("ferry_tokens_per_second"));
  EXPECT_EQ(values["ferry_device_memory_bytes{device=\"cuda:0\",kind=\"weights \\\"hot\\\"\"}"], 1.5e9);
}

TEST(HttpServer, ShutdownLetsRunningRequestsFinish) {
  TestServer s;
  s.engine.token_delay = 20ms;  // 5 tokens: 100 ms
  s.options.drain_timeout = 5s;
  s.start();
  std::optional<httplib::Result> r;
  std::thread a([&] { r.emplace(s.post("/v1/chat/completions", chat_body({{"stream", true}}).dump())); });
  ASSERT_TRUE(wait_until([&] { return s.server->load().running == 1; }));
  s.stop();  // returns once serve() has
  a.join();
  ASSERT_TRUE(r && *r);
  EXPECT_TRUE(complete_stream((*r)->body, "Hello, world!")) << (*r)->body;
  EXPECT_EQ(s.engine.cancellations, 0);
}

TEST(HttpServer, ShutdownCancelsWhatOutlivesTheDrainAndRefusesNewWork) {
  TestServer s;
  s.options.drain_timeout = 1s;
  s.start_endless(2ms, 1);
  std::optional<httplib::Result> running, queued;
  std::thread a([&] {
    running.emplace(s.post("/v1/chat/completions", chat_body({{"stream", true}, {"max_tokens", 3000}}).dump()));
  });
  ASSERT_TRUE(wait_until([&] { return s.server->load().running == 1; }));
  std::thread b([&] { queued.emplace(s.post("/v1/chat/completions", chat_body().dump())); });
  ASSERT_TRUE(wait_until([&] { return s.server->load().waiting == 1; }));
  s.server->stop();
  // While draining: the waiter and new requests get 503, /health says so.
  b.join();
  ASSERT_TRUE(queued);
  expect_error(*queued, 503, "server_error", "shutting_down");
  expect_error(s.post("/v1/chat/completions", chat_body().dump()), 503, "server_error", "shutting_down");
  const auto health = s.get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 503);
  s.stop();
  a.join();
  ASSERT_TRUE(running && *running);
  const std::vector<json> ev = sse_events((*running)->body);
  ASSERT_FALSE(ev.empty());
  EXPECT_EQ(ev.back()["error"]["code"], "shutting_down");
  EXPECT_EQ(s.engine.cancellations, 1);
}

}  // namespace
