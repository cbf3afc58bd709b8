// One logger for the executable: levels from FERRY_LOG_LEVEL, messages on stderr so stdout stays the
// command's output (tables, JSON).
#pragma once

#include <string>

namespace ferry::launch {

void init_logging();
// Where an error was thrown, shown at debug level only: users get the one-line message.
void log_debug_location(const std::string& where);

}  // namespace ferry::launch
