#include "planner/core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <string>

namespace ferry::core {

namespace {

std::string pattern(std::string_view prefix) {
  std::string escaped;  // spdlog's pattern flags start with %
  for (const char c : prefix) escaped += c == '%' ? std::string("%%") : std::string(1, c);
  return "[%^%l%$] " + escaped + "%v";
}

std::shared_ptr<spdlog::logger> make_logger() {
  auto l = spdlog::stderr_color_mt("ferry");
  l->set_pattern(pattern(""));
  spdlog::level::level_enum level = spdlog::level::warn;
  if (const char* env = std::getenv("FERRY_LOG_LEVEL")) level = spdlog::level::from_str(env);
  l->set_level(level);
  return l;
}

}  // namespace

spdlog::logger& logger() {
  static const std::shared_ptr<spdlog::logger> l = make_logger();
  return *l;
}

void set_log_prefix(std::string_view prefix) { logger().set_pattern(pattern(prefix)); }

}  // namespace ferry::core
