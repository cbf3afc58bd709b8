// Which chat format a model directory speaks, and encoding a conversation in it: DeepSeek V4's encoding
// (chat_v4.h) or the V3 family's Jinja template (chat_v3.h).
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "runtime/text/chat_types.h"

namespace ferry::runtime {

enum class ChatFormat { DeepSeekV3, DeepSeekV4 };

std::string_view chat_format_name(ChatFormat format);  // "deepseek-v4", "deepseek-v3"

// V4 when config.json says model_type deepseek_v4 or has V4's keys (compress_ratios); V3 when
// tokenizer_config.json carries DeepSeek V3's chat_template. Throws ferry::Error otherwise (no config.json,
// a model whose template is another one, e.g. V3.1's or R1's with thinking, or V3.2's encoding script).
ChatFormat chat_format_for_model_dir(const std::filesystem::path& dir);

// The prompt in `format`. Tools need V4: the V3 template cannot describe them (ferry::Error if tools are given).
std::string encode_chat(ChatFormat format, const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                        const ChatEncodeOptions& options);

}  // namespace ferry::runtime
