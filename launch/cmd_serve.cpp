// `ferry serve`: the OpenAI-compatible HTTP API over a model. The model side is an Engine that the factory
// given to make_serve_command opens; SIGINT/SIGTERM shut the server down gracefully.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "launch/commands.h"
#include "launch/engine_setup.h"
#include "launch/server/engine.h"
#include "launch/server/http_server.h"
#include "launch/server/v4_engine.h"
#include "planner/core/error.h"
#include "planner/core/units.h"
#include "runtime/backend/worker_threads.h"

namespace ferry::launch {
namespace {

// Blocks SIGINT and SIGTERM in the calling thread and every thread it starts later (they inherit the mask),
// and answers them on a thread of its own, where stopping the server is an ordinary call (no
// async-signal-safety limits). A signal before the server runs (while the model loads) exits at once.
class ShutdownSignals {
 public:
  ShutdownSignals() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    // mpirun ends the job itself on SIGTERM and SIGINT but forwards SIGUSR1 to every rank: the way to stop a server
    // running under mpirun gracefully.
    sigaddset(&set_, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set_, &previous_);
    thread_ = std::thread([this] { watch(); });
  }
  ~ShutdownSignals() {
    done_ = true;
    thread_.join();
    pthread_sigmask(SIG_SETMASK, &previous_, nullptr);
  }
  ShutdownSignals(const ShutdownSignals&) = delete;
  ShutdownSignals& operator=(const ShutdownSignals&) = delete;

  void attach(server::HttpServer* s) { server_ = s; }
  // A rank other than 0 under mpirun: mpirun delivers the signal to every rank, and rank 0 ends the run for all of
  // them (its last command stops the followers), so here a signal changes nothing.
  void leave_to_rank_0() { follower_ = true; }

 private:
  void watch() {
    const timespec poll{0, 200 * 1000 * 1000};
    bool stopping = false;
    while (!done_) {
      const int sig = sigtimedwait(&set_, nullptr, &poll);
      if (sig <= 0 || follower_) continue;
      server::HttpServer* s = server_.load();
      // Nothing to drain while the model loads; a second signal means "now".
      if (!s || stopping) {
        std::fprintf(stderr, "ferry serve: %s, exiting\n", strsignal(sig));
        std::_Exit(128 + sig);
      }
      std::fprintf(stderr, "ferry serve: %s, shutting down (running requests may finish; again to quit now)\n",
                   strsignal(sig));
      stopping = true;
      s->stop();
    }
  }

  sigset_t set_{}, previous_{};
  std::atomic<server::HttpServer*> server_{nullptr};
  std::atomic<bool> done_{false}, follower_{false};
  std::thread thread_;
};

class ServeCommand : public Command {
 public:
  ServeCommand(CLI::App& parent, EngineFactory open_engine) : open_engine_(std::move(open_engine)) {
    app_ = parent.add_subcommand("serve", "OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions)");
    app_->add_option("--host", options_.host, "Address to listen on (default 127.0.0.1; 0.0.0.0: every interface)");
    app_->add_option("--port", options_.port, "Port (default 8080; 0: a free one, named on stderr)")
        ->check(CLI::Range(0, 65535));
    app_->add_option("--api-key", options_.api_key,
                     "Require 'Authorization: Bearer KEY' on every route but /health (or set FERRY_API_KEY)")
        ->envname("FERRY_API_KEY");
    app_->add_option("--parallel", options_.parallel, "Requests generating at once (default 1)")
        ->check(CLI::Range(1, 256));
    app_->add_option("--queue", options_.queue, "Requests that may wait beyond those; more get 503 (default 64)")
        ->check(CLI::Range(0, 4096));
    app_->add_option("--queue-timeout", queue_timeout_s_, "Longest wait for a slot, in seconds (default 600)")
        ->check(CLI::Range(1, 86400));
    app_->add_option("--timeout", io_timeout_s_, "Socket read/write timeout in seconds (default 30)")
        ->check(CLI::Range(1, 3600));
    engine_.add_to(*app_, "Context length per sequence, e.g. 4096 or 128K (default 4096)");
    engine_.add_reuse_to(*app_);
    app_->add_option("--slot-save-path", options_.slot_save_path,
                     "Directory of KV session files for POST /slots/{id}?action=save|restore (llama-server's API)")
        ->check(CLI::ExistingDirectory);
    app_->footer(
        "SIGINT/SIGTERM/SIGUSR1: stop accepting, let running requests finish (30 s at most), exit. Under mpirun "
        "rank 0 serves and the other ranks compute their part of every request's forward pass; stop it with SIGUSR1 "
        "to mpirun (it forwards that one; on SIGTERM mpirun kills the job).");
  }
  CLI::App* app() const override { return app_; }

  int run() override {
    options_.queue_timeout = std::chrono::seconds(queue_timeout_s_);
    options_.io_timeout = std::chrono::seconds(io_timeout_s_);
    ShutdownSignals signals;  // before any thread starts, so that all of them inherit the mask
    // Planned for --parallel sequences (each slot its KV cache): under mpirun every rank together.
    EngineSetup setup(engine_, *app_, 4096, options_.parallel);
    if (!setup.leads()) {
      // Under mpirun: rank 0 serves; the other ranks compute their part of every request's forward pass.
      signals.leave_to_rank_0();
      setup.load();
      setup.follow_slots();
      return kExitOk;
    }
    const int status = serve(open_engine_(setup), signals);
    setup.finish();
    return status;
  }

 private:
  int serve(std::unique_ptr<server::Engine> engine, ShutdownSignals& signals) {
    FERRY_CHECK(engine, "no engine for {}", engine_.model);
    options_.extra_metrics = [e = engine.get()] { return e->metrics(); };
    server::HttpServer http(*engine, options_);
    const int port = http.bind();
    signals.attach(&http);
    std::fprintf(stderr, "ferry serve: %s (context %lld) on http://%s:%d, %d at a time, %d may wait; %s\n",
                 engine->model_id().c_str(), static_cast<long long>(engine->context_length()), options_.host.c_str(),
                 port, options_.parallel, options_.queue, runtime::worker_threads_text().c_str());
    http.serve();
    signals.attach(nullptr);
    return kExitOk;
  }

  EngineFactory open_engine_;
  CLI::App* app_ = nullptr;
  EngineFlags engine_;
  server::ServerOptions options_;
  int64_t queue_timeout_s_ = 600, io_timeout_s_ = 30;
};

}  // namespace

std::unique_ptr<Command> make_serve_command(CLI::App& parent, EngineFactory open_engine) {
  return std::make_unique<ServeCommand>(parent, std::move(open_engine));
}

}  // namespace ferry::launch
