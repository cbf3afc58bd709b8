// `ferry serve` as a command over an engine factory: its flags reach the factory and the server, and SIGTERM
// shuts it down gracefully (run() returns 0).
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <thread>

#include "launch/commands.h"
#include "launch/engine_setup.h"
#include "scripted_engine.h"
#include "test_errors.h"

namespace {

using namespace std::chrono_literals;

// A port nobody listens on right now.
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

struct Serve {
  CLI::App app{"ferry"};
  std::unique_ptr<ferry::launch::Command> cmd;
  std::string model_dir;
  int64_t ctx = 0;

  explicit Serve(bool open) {
    cmd = ferry::launch::make_serve_command(app, [this, open](ferry::launch::EngineSetup& setup) {
      model_dir = setup.flags().model;
      ctx = setup.planned().ctx;
      if (!open) FERRY_THROW("no model here");
      auto engine = std::make_unique<ferry_test::ScriptedEngine>();
      engine->ctx = ctx;
      return std::unique_ptr<ferry::launch::server::Engine>(std::move(engine));
    });
  }
  void parse(std::vector<std::string> args) {
    std::reverse(args.begin(), args.end());  // CLI11 takes them last first
    app.parse(args);
  }
};

TEST(ServeCommand, FlagsReachTheEngineFactory) {
  Serve s(false);
  s.parse({"serve", "--model", "/models/v4", "--ctx", "128K", "--parallel", "2", "--queue", "3"});
  EXPECT_EQ(ferry_test::error_of([&] { s.cmd->run(); }), "no model here");
  EXPECT_EQ(s.model_dir, "/models/v4");
  EXPECT_EQ(s.ctx, 131072);

  Serve bad(true);
  EXPECT_THROW(bad.parse({"serve", "--model", "m", "--parallel", "0"}), CLI::ValidationError);
  bad.parse({"serve", "--model", "m", "--ctx", "lots"});
  EXPECT_NE(ferry_test::error_of([&] { bad.cmd->run(); }).find("--ctx"), std::string::npos);
}

TEST(ServeCommand, ServesUntilSigterm) {
  // SIGTERM must reach the command's signal thread only: block it here, before any thread starts.
  sigset_t term, previous;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  ASSERT_EQ(pthread_sigmask(SIG_BLOCK, &term, &previous), 0);

  const int port = free_port();
  Serve s(true);
  s.parse({"serve", "--model", "m", "--port", std::to_string(port), "--api-key", "k", "--ctx", "64"});
  int exit_code = -1;
  std::thread serving([&] { exit_code = s.cmd->run(); });

  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(1, 0);
  bool up = false;
  for (int i = 0; i < 500 && !up; ++i) {
    const auto r = client.Get("/health");
    up = r && r->status == 200;
    if (!up) std::this_thread::sleep_for(10ms);
  }
  ASSERT_TRUE(up);
  const auto denied = client.Get("/v1/models");
  ASSERT_TRUE(denied);
  EXPECT_EQ(denied->status, 401);
  const auto chat =
      client.Post("/v1/chat/completions", {{"Authorization", "Bearer k"}},
                  R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":100})", "application/json");
  ASSERT_TRUE(chat);
  EXPECT_EQ(chat->status, 400) << chat->body;  // 2 + 100 tokens exceed --ctx 64
  EXPECT_NE(chat->body.find("context_length_exceeded"), std::string::npos);

  kill(getpid(), SIGTERM);
  serving.join();
  EXPECT_EQ(exit_code, 0);
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
}

}  // namespace
