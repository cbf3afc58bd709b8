// The `ferry` executable: parses the command line, runs one subcommand, and turns every error into one line
// on stderr and a non-zero exit. Under mpirun every rank runs it: rank 0 owns stdout (tables, tokens), an error
// every rank knows of is printed once by rank 0, and an error of one rank alone ends all of them (World::fail).
#include <pthread.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <vector>

#include <CLI/CLI.hpp>

#include "launch/commands.h"
#include "launch/server/engine.h"
#include "launch/engine_setup.h"
#include "planner/core/error.h"
#include "planner/core/log.h"
#include "transport/world.h"

namespace {

// The command's error as one line: printed once by rank 0 when every rank has it (agreed, or met by all: the same
// flags fail the same check everywhere), or ending every rank when only this one does (the others would wait for it).
int report(const ferry::transport::World& world, const CLI::App& cmd, const std::exception& e) {
  const bool agreed = dynamic_cast<const ferry::transport::AgreedError*>(&e) != nullptr;
  if (world.distributed() && !agreed) {
    for (const std::string& line : world.fail(cmd.get_name() + ": " + e.what()))
      if (world.leader()) std::fprintf(stderr, "ferry: error: %s\n", line.c_str());
    return ferry::launch::kExitError;
  }
  if (world.leader()) std::fprintf(stderr, "ferry %s: error: %s\n", cmd.get_name().c_str(), e.what());
  return ferry::launch::kExitError;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace ferry::launch;
  // SIGUSR1 is how a server under mpirun is stopped (mpirun forwards it to every rank; cmd_serve.cpp answers it):
  // blocked before MPI starts its threads, which inherit the mask, so that only `ferry serve` ever takes it.
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &usr1, nullptr);
  std::unique_ptr<ferry::transport::World> world;
  try {
    world = std::make_unique<ferry::transport::World>(&argc, &argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ferry: error: %s\n", e.what());
    return kExitError;
  }
  // Only rank 0 prints results; the others' stdout would repeat or interleave them.
  if (!world->leader() && !std::freopen("/dev/null", "w", stdout)) return kExitError;
  CLI::App app("ferry: DeepSeek V4 on hardware far smaller than the model", "ferry");
  app.require_subcommand(1);
  app.set_version_flag("--version", "ferry 0.1.0");
  app.footer("Run `ferry COMMAND --help` for a command's flags. Log level: FERRY_LOG_LEVEL=debug|info|warn|error.");
  std::vector<std::unique_ptr<Command>> commands;
  commands.push_back(make_plan_command(app));
  commands.push_back(make_bench_command(app));
  commands.push_back(make_make_tiny_command(app));
  commands.push_back(make_inspect_command(app));
  commands.push_back(make_run_command(app));
  commands.push_back(make_tokenize_command(app));
  commands.push_back(make_perplexity_command(app));
  commands.push_back(make_serve_command(app, [](EngineSetup& setup) { return open_v4_engine(setup); }));
  commands.push_back(make_chat_command(app));

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    for (const std::string& line : world->fail(std::string(e.what()) + " (see --help)"))
      if (world->leader()) std::fprintf(stderr, "ferry: error: %s\n", line.c_str());
    return kExitUsage;
  }

  ferry::core::logger();  // FERRY_LOG_LEVEL is read once, before any command runs
  for (auto& cmd : commands) {
    if (!cmd->app()->parsed()) continue;
    try {
      return cmd->run();
    } catch (const ferry::Error& e) {
      if (!e.where().empty()) ferry::core::logger().debug("thrown at {}", e.where());
      return report(*world, *cmd->app(), e);
    } catch (const std::exception& e) {
      return report(*world, *cmd->app(), e);
    }
  }
  return kExitUsage;
}
