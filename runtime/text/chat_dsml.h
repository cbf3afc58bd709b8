// DeepSeek V4's tool-call markup (DSML), shared by the encoder (chat_v4.cpp) and the parser (chat_v4_parse.cpp):
//   <｜DSML｜tool_calls>
//   <｜DSML｜invoke name="NAME">
//   <｜DSML｜parameter name="KEY" string="true|false">VALUE</｜DSML｜parameter>
//   </｜DSML｜invoke>
//   </｜DSML｜tool_calls>
#pragma once

#include <string_view>

namespace ferry::runtime::chat {

inline constexpr std::string_view kToolCallsStart = "<｜DSML｜tool_calls>";
inline constexpr std::string_view kToolCallsEnd = "</｜DSML｜tool_calls>";
// The encoder puts a blank line between the text of a turn and its tool-calls block.
inline constexpr std::string_view kToolCallsSeparator = "\n\n";
inline constexpr std::string_view kInvokeOpen = "<｜DSML｜invoke name=\"";
inline constexpr std::string_view kInvokeEnd = "</｜DSML｜invoke>";
inline constexpr std::string_view kParameterOpen = "<｜DSML｜parameter name=\"";
inline constexpr std::string_view kParameterString = "\" string=\"";
inline constexpr std::string_view kParameterEnd = "</｜DSML｜parameter>";

}  // namespace ferry::runtime::chat
