// The subcommands of the `ferry` executable. Each registers its flags on a CLI11 subcommand and runs when
// that subcommand was given; run() returns the process exit code.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>

namespace ferry::launch {

// Exit codes shared by every command (documented in `ferry --help`).
constexpr int kExitOk = 0;
constexpr int kExitError = 1;       // bad input or a failed operation; one line on stderr
constexpr int kExitUsage = 2;       // bad flags
constexpr int kExitDoesNotFit = 3;  // `ferry plan`: the configuration does not fit

class Command {
 public:
  virtual ~Command() = default;
  virtual CLI::App* app() const = 0;
  virtual int run() = 0;
};

std::unique_ptr<Command> make_plan_command(CLI::App& parent);
std::unique_ptr<Command> make_bench_command(CLI::App& parent);
std::unique_ptr<Command> make_make_tiny_command(CLI::App& parent);
std::unique_ptr<Command> make_inspect_command(CLI::App& parent);
std::unique_ptr<Command> make_run_command(CLI::App& parent);
std::unique_ptr<Command> make_tokenize_command(CLI::App& parent);
std::unique_ptr<Command> make_perplexity_command(CLI::App& parent);

namespace server {
class Engine;
}
class EngineSetup;
// Opens the model behind `ferry serve` on the flags' setup (planned, not yet loaded: the factory loads it).
using EngineFactory = std::function<std::unique_ptr<server::Engine>(EngineSetup& setup)>;
// main.cpp gives it the V4 engine (launch/server/v4_engine.h); tests give it a double.
std::unique_ptr<Command> make_serve_command(CLI::App& parent, EngineFactory open_engine);
std::unique_ptr<Command> make_chat_command(CLI::App& parent);

}  // namespace ferry::launch
