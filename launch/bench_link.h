// `ferry bench link`: host-to-device copy bandwidth of one GPU through its Backend, pageable against pinned
// source memory, at 4, 64 and 256 MiB, next to what the link should carry: the PCIe generation from the probe
// and the speed and width the kernel reports for the slot. Without a usable GPU it fails with one line.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace ferry::launch {

// Registers the subcommand on `bench`; the returned function runs it (when it was parsed) and returns the
// exit code.
std::function<int()> add_link_bench(CLI::App& bench, CLI::App*& subcommand);

}  // namespace ferry::launch
