// The one logger of every ferry library and command: spdlog on stderr (stdout stays a command's output: tables,
// JSON, generated text), its level from FERRY_LOG_LEVEL (trace, debug, info, warn, error; default warn), each line
// "[level] PREFIX message". The prefix names the process when several run together (under mpirun: rank and
// host); a single process has none.
#pragma once

#include <spdlog/logger.h>

#include <string_view>

namespace ferry::core {

// Created on first use, thread-safe.
spdlog::logger& logger();
void set_log_prefix(std::string_view prefix);

}  // namespace ferry::core
