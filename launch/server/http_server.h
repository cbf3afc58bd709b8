// `ferry serve`'s HTTP server (cpp-httplib): the OpenAI-compatible routes over an Engine, the scheduler,
// API-key checks, metrics and graceful shutdown.
//
//   POST /v1/chat/completions, /v1/completions   generation; stream: true answers with server-sent events
//   GET  /v1/models                              the one model
//   GET  /health                                 200 {"status":"ok"}, 503 while shutting down; no API key needed
//   GET  /metrics                                Prometheus text
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "launch/server/engine.h"
#include "launch/server/metrics.h"
#include "launch/server/request_queue.h"

namespace ferry::launch::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;      // 0: a free port, chosen by the system (tests)
  std::string api_key;  // non-empty: every route but /health needs "Authorization: Bearer <api_key>"
  int parallel = 1;     // requests generating at once
  int queue = 64;       // requests waiting beyond those; more are answered 503
  std::chrono::milliseconds queue_timeout{std::chrono::minutes(10)};  // the longest wait for a slot (then 503)
  std::chrono::milliseconds drain_timeout{std::chrono::seconds(30)};  // shutdown: running requests' time to finish
  std::chrono::seconds io_timeout{30};  // a socket read or write that makes no progress for this long fails
  size_t max_body_bytes = size_t{64} << 20;
  MetricsSource extra_metrics;  // e.g. memory per device, expert-cache hit rate
  std::string slot_save_path;   // POST /slots/{id}?action=save|restore files live here; empty: not offered
};

class HttpServer {
 public:
  HttpServer(Engine& engine, ServerOptions options);
  ~HttpServer();  // serve() must have returned
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds host:port and returns the port. Throws ferry::Error when the address cannot be bound.
  int bind();
  // Answers requests until stop(); returns once every connection is closed.
  void serve();
  // Graceful shutdown, from any thread, returns at once: new and waiting requests get 503, running ones
  // have drain_timeout to finish before they are cancelled, then serve() returns.
  void stop();

  RequestQueue::Stats load() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::launch::server
