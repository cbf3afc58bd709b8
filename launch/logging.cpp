#include "launch/logging.h"

#include <cstdlib>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace ferry::launch {

void init_logging() {
  auto logger = spdlog::stderr_color_mt("ferry");
  logger->set_pattern("[%^%l%$] %v");
  spdlog::set_default_logger(logger);
  spdlog::level::level_enum level = spdlog::level::warn;
  if (const char* env = std::getenv("FERRY_LOG_LEVEL")) level = spdlog::level::from_str(env);
  spdlog::set_level(level);
}

void log_debug_location(const std::string& where) {
  if (!where.empty()) spdlog::debug("thrown at {}", where);
}

}  // namespace ferry::launch
