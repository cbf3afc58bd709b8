// `ferry bench context`: prefill and decode speed of the CPU forward pass as the context grows (1K, 16K,
// 128K ...), on a tiny model with V4's real window and compression ratios unless --model is given. Decode
// time must grow far slower than the context: attention reads the window plus top-k selected CSA rows and
// 1/128 of the tokens in HCA layers; only the indexer's key scan is linear, over 1/4 of the tokens.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace ferry::launch {

// Registers the subcommand on `bench`; the returned function runs it (when it was parsed) and returns the
// exit code.
std::function<int()> add_context_bench(CLI::App& bench, CLI::App*& subcommand);

}  // namespace ferry::launch
