#include "launch/server/http_server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "launch/server/api_error.h"
#include "launch/server/generation_job.h"
#include "launch/server/openai_request.h"
#include "launch/server/openai_response.h"
#include "launch/server/slot_actions.h"
#include "planner/core/error.h"
#include "planner/core/log.h"

namespace ferry::launch::server {

namespace {

using nlohmann::json;

// Threads beyond one per running or waiting request, so that /health, /metrics, 503 answers and idle
// keep-alive connections are never starved by requests waiting for the model.
constexpr size_t kSpareThreads = 16;
constexpr std::chrono::milliseconds kStopPoll{20};
// httplib 0.11 listens with a backlog of 5: a burst of clients connecting at once overflows it and the
// kernel drops their handshakes, to be retried a second later (or failed). The listening socket is given
// this backlog instead (the kernel caps it at net.core.somaxconn).
constexpr int kListenBacklog = 1024;
constexpr size_t kKeepAliveRequests = 1000;  // as nginx's keepalive_requests

// Compares without stopping at the first difference, so the time taken says nothing about the key's bytes.
bool same_secret(const std::string& given, const std::string& key) {
  if (given.size() != key.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < key.size(); ++i) diff |= static_cast<unsigned char>(given[i] ^ key[i]);
  return diff == 0;
}

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status();
  res.set_content(dump_json(error_body(e)), "application/json");
}

ApiError busy(const std::string& message, const std::string& code) {
  return ApiError(503, message, "server_error", "", code);
}

}  // namespace

struct HttpServer::Impl {
  Impl(Engine& e, ServerOptions o) : engine(e), options(std::move(o)), queue(options.parallel, options.queue) {}

  Engine& engine;
  const ServerOptions options;
  RequestQueue queue;
  Metrics metrics;
  httplib::Server http;
  std::atomic<bool> stopping{false};    // refuse new work
  std::atomic<bool> cancel_all{false};  // running generations stop at their next token
  std::mutex stop_mutex;
  std::condition_variable stop_requested;
  bool stop_flag = false;
  std::atomic<bool> listen_done{false};
  int listen_socket = -1;  // as httplib created it, to raise its backlog

  void install_routes();
  bool authorized(const httplib::Request& req, httplib::Response& res) const;
  void handle_generation(const httplib::Request& req, httplib::Response& res, RequestKind kind);
  void shut_down();

  // Every route: API key first, then errors turned into OpenAI error bodies.
  template <class F>
  httplib::Server::Handler route(bool needs_key, F f) {
    return [this, needs_key, f](const httplib::Request& req, httplib::Response& res) {
      if (needs_key && !authorized(req, res)) return;
      try {
        f(req, res);
      } catch (const ApiError& e) {
        send_error(res, e);
      } catch (const ferry::Error& e) {
        send_error(res, invalid_request(e.what()));
      } catch (const std::exception& e) {
        core::logger().error("{} {}: {}", req.method, req.path, e.what());
        send_error(res, ApiError(500, std::string("internal error: ") + e.what(), "server_error"));
      }
    };
  }
};

bool HttpServer::Impl::authorized(const httplib::Request& req, httplib::Response& res) const {
  if (options.api_key.empty()) return true;
  const std::string header = req.get_header_value("Authorization");
  const std::string prefix = "Bearer ";
  if (header.compare(0, prefix.size(), prefix) == 0 && same_secret(header.substr(prefix.size()), options.api_key))
    return true;
  send_error(res, ApiError(401,
                           header.empty() ? "You didn't provide an API key: send it as 'Authorization: Bearer KEY'"
                                          : "Incorrect API key provided",
                           "invalid_request_error", "", "invalid_api_key"));
  return false;
}

void HttpServer::Impl::handle_generation(const httplib::Request& req, httplib::Response& res, RequestKind kind) {
  if (stopping) throw busy("the server is shutting down", "shutting_down");
  const auto body = parse_json_body(req.body);
  auto request = std::make_shared<const ApiRequest>(kind == RequestKind::Chat ? parse_chat_request(body)
                                                                              : parse_completion_request(body));
  auto prompt = std::make_shared<const std::vector<int32_t>>(engine.encode_prompt(request->generation));

  const int64_t ctx = engine.context_length();
  const int64_t prompt_tokens = static_cast<int64_t>(prompt->size());
  const char* prompt_param = kind == RequestKind::Chat ? "messages" : "prompt";
  if (prompt_tokens >= ctx)
    throw invalid_request(fmt::format("This model's maximum context length is {} tokens, but the prompt has {} tokens",
                                      ctx, prompt_tokens),
                          prompt_param, "context_length_exceeded");
  const int64_t room = ctx - prompt_tokens;
  if (request->max_tokens && *request->max_tokens > room)
    throw invalid_request(fmt::format("This model's maximum context length is {} tokens. However, you requested {} "
                                      "tokens for the completion after {} in the prompt: at most {} fit",
                                      ctx, *request->max_tokens, prompt_tokens, room),
                          "max_tokens", "context_length_exceeded");
  const int64_t max_tokens =
      request->max_tokens.value_or(kind == RequestKind::Chat ? room : std::min(room, kDefaultCompletionMaxTokens));

  RequestQueue::Admission admission = queue.acquire(options.queue_timeout);
  switch (admission.status) {
    case RequestQueue::Status::Running: break;
    case RequestQueue::Status::Full:
      throw busy(fmt::format("the server is busy: {} requests are already waiting; retry later", options.queue),
                 "queue_full");
    case RequestQueue::Status::TimedOut:
      throw busy("the server is busy: no slot became free in time; retry later", "queue_timeout");
    case RequestQueue::Status::Closed: throw busy("the server is shutting down", "shutting_down");
  }

  // The generation runs in the content provider, where the socket can be watched: a client that leaves
  // stops it at the next token. The lease lives until httplib drops the provider, whatever happened.
  auto lease = std::make_shared<RequestQueue::Lease>(std::move(admission.lease));
  auto header = new_response_header(kind, engine.model_id());
  auto provider = [this, request, prompt, max_tokens, header](size_t, httplib::DataSink& sink) {
    const Writer write = [&sink](std::string_view bytes) { return sink.write(bytes.data(), bytes.size()); };
    const StopRequested cancelled = [this, &sink] { return cancel_all.load() || !sink.is_writable(); };
    const JobOutcome outcome = run_job(engine, {*request, *prompt, max_tokens, header}, write, cancelled);
    metrics.record_generation(static_cast<int64_t>(prompt->size()), outcome.engine.completion_tokens, outcome.seconds);
    if (outcome.client_gone) {
      core::logger().info("{}: client left after {} tokens; generation cancelled", header.id,
                          outcome.engine.completion_tokens);
      return false;
    }
    sink.done();
    return true;
  };
  res.set_chunked_content_provider(request->stream ? "text/event-stream" : "application/json", provider,
                                   [lease](bool) { lease->release(); });
  if (request->stream) res.set_header("Cache-Control", "no-cache");
}

void HttpServer::Impl::install_routes() {
  http.Post("/v1/chat/completions", route(true, [this](const httplib::Request& req, httplib::Response& res) {
              handle_generation(req, res, RequestKind::Chat);
            }));
  http.Post("/v1/completions", route(true, [this](const httplib::Request& req, httplib::Response& res) {
              handle_generation(req, res, RequestKind::Completion);
            }));
  http.Get("/v1/models", route(true, [this](const httplib::Request&, httplib::Response& res) {
             const json model = {{"id", engine.model_id()}, {"object", "model"}, {"created", 0}, {"owned_by", "ferry"}};
             res.set_content(dump_json({{"object", "list"}, {"data", json::array({model})}}), "application/json");
           }));
  http.Post(R"(/slots/(\d+))", route(true, [this](const httplib::Request& req, httplib::Response& res) {
              answer_slot_action(engine, options.slot_save_path, req, res);
            }));
  http.Get("/health", route(false, [this](const httplib::Request&, httplib::Response& res) {
             res.status = stopping ? 503 : 200;
             res.set_content(stopping ? R"({"status":"shutting down"})" : R"({"status":"ok"})", "application/json");
           }));
  http.Get("/metrics", route(true, [this](const httplib::Request&, httplib::Response& res) {
             const RequestQueue::Stats load = queue.stats();
             std::vector<MetricSample> extra;
             if (options.extra_metrics) extra = options.extra_metrics();
             res.set_content(metrics.render(load.running, load.waiting, extra), "text/plain; version=0.0.4");
           }));

  // Unknown routes and httplib's own refusals (bad request line, body too large) get an error body too.
  http.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    const std::string message = res.status == 404 ? "no route " + req.method + " " + req.path
                                                  : "request refused (HTTP " + std::to_string(res.status) + ")";
    send_error(res, ApiError(res.status, message, "invalid_request_error"));
    return httplib::Server::HandlerResponse::Handled;
  }));
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    send_error(res, ApiError(500, "internal error", "server_error"));
  });
  http.set_post_routing_handler(
      [this](const httplib::Request&, httplib::Response& res) { metrics.count_response(res.status); });
}

void HttpServer::Impl::shut_down() {
  {
    std::unique_lock lock(stop_mutex);
    while (!stop_flag) stop_requested.wait_for(lock, kStopPoll);
  }
  stopping = true;
  queue.close();
  if (!listen_done && !queue.wait_idle(options.drain_timeout)) {
    core::logger().warn("shutdown: requests still running after {} ms; cancelling them", options.drain_timeout.count());
    cancel_all = true;
  }
  // httplib's stop() does nothing until its accept loop runs, so wait for that (or for it to have failed).
  while (!listen_done && !http.is_running()) std::this_thread::sleep_for(kStopPoll);
  if (http.is_running()) http.stop();
}

HttpServer::HttpServer(Engine& engine, ServerOptions options)
    : impl_(std::make_unique<Impl>(engine, std::move(options))) {
  const ServerOptions& o = impl_->options;
  FERRY_CHECK(o.io_timeout.count() > 0, "the socket timeout must be positive");
  const size_t threads = static_cast<size_t>(o.parallel) + static_cast<size_t>(o.queue) + kSpareThreads;
  // httplib takes ownership of the pool it gets from this factory.
  impl_->http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  impl_->http.set_read_timeout(o.io_timeout.count());
  impl_->http.set_write_timeout(o.io_timeout.count());
  impl_->http.set_payload_max_length(o.max_body_bytes);
  // Headers, chunks and events are small separate writes: with Nagle's algorithm each waits for the client's
  // delayed ACK (40 ms on Linux) — every keep-alive request and every streamed token.
  impl_->http.set_tcp_nodelay(true);
  // httplib closes a keep-alive connection after 5 requests by default: a reconnect every 5 for busy clients.
  impl_->http.set_keep_alive_max_count(kKeepAliveRequests);
  impl_->http.set_socket_options([impl = impl_.get()](int sock) {
    httplib::default_socket_options(sock);
    impl->listen_socket = sock;
  });
  impl_->install_routes();
}

HttpServer::~HttpServer() = default;

int HttpServer::bind() {
  const ServerOptions& o = impl_->options;
  int port = o.port;
  if (port == 0) {
    port = impl_->http.bind_to_any_port(o.host);
    FERRY_CHECK(port > 0, "cannot listen on {}: no free port", o.host);
  } else {
    FERRY_CHECK(
        impl_->http.bind_to_port(o.host, o.port),
        fmt::format("cannot listen on {}:{} (address in use, or not an address of this machine?)", o.host, o.port));
  }
  // listen() again on a listening socket only changes its backlog.
  if (::listen(impl_->listen_socket, kListenBacklog) != 0)
    core::logger().warn("could not raise the listen backlog: {}", std::strerror(errno));
  return port;
}

void HttpServer::serve() {
  std::thread stopper([this] { impl_->shut_down(); });
  impl_->http.listen_after_bind();
  impl_->listen_done = true;
  stop();  // the stopper exits if the accept loop ended by itself
  stopper.join();
}

void HttpServer::stop() {
  {
    std::lock_guard lock(impl_->stop_mutex);
    impl_->stop_flag = true;
  }
  impl_->stop_requested.notify_all();
}

RequestQueue::Stats HttpServer::load() const { return impl_->queue.stats(); }

}  // namespace ferry::launch::server
