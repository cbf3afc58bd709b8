#include "runtime/text/chat.h"

#include <fstream>
#include <optional>

#include "planner/core/error.h"
#include "runtime/text/chat_v3.h"
#include "runtime/text/chat_v4.h"

namespace ferry::runtime {
namespace {

// nullopt when the file does not exist; ferry::Error when it is not JSON.
std::optional<nlohmann::json> read_json(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) return std::nullopt;
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  FERRY_CHECK(!j.is_discarded(), "{} is not valid JSON", file.string());
  return j;
}

// DeepSeek V3's template is recognised by its tool-output markup; V3.1 and R1 templates add thinking to it.
bool is_v3_template(const std::string& t) {
  return t.find("<｜tool▁outputs▁end｜>") != std::string::npos && t.find("<think>") == std::string::npos &&
         t.find("thinking") == std::string::npos;
}

}  // namespace

std::string_view chat_format_name(ChatFormat format) {
  return format == ChatFormat::DeepSeekV4 ? "deepseek-v4" : "deepseek-v3";
}

ChatFormat chat_format_for_model_dir(const std::filesystem::path& dir) {
  std::optional<nlohmann::json> config = read_json(dir / "config.json");
  FERRY_CHECK(config, "{} has no config.json", dir.string());
  FERRY_CHECK(config->is_object(), "{} is not a JSON object", (dir / "config.json").string());
  if (config->value("model_type", "") == "deepseek_v4" || config->contains("compress_ratios"))
    return ChatFormat::DeepSeekV4;
  std::optional<nlohmann::json> tokenizer_config = read_json(dir / "tokenizer_config.json");
  if (tokenizer_config && tokenizer_config->is_object()) {
    auto t = tokenizer_config->find("chat_template");
    if (t != tokenizer_config->end() && t->is_string()) {
      FERRY_CHECK(is_v3_template(t->get<std::string>()),
                  "{}: its chat_template is not DeepSeek V3's (ferry renders the V3 and V4 chat formats only)",
                  (dir / "tokenizer_config.json").string());
      return ChatFormat::DeepSeekV3;
    }
  }
  FERRY_THROW(
      "{}: no chat format found (config.json is not DeepSeek V4's and tokenizer_config.json has no chat_template)",
      dir.string());
}

std::string encode_chat(ChatFormat format, const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                        const ChatEncodeOptions& options) {
  if (format == ChatFormat::DeepSeekV4) return encode_v4_chat(messages, tools, options);
  FERRY_CHECK(tools.is_null() || (tools.is_array() && tools.empty()),
              "the DeepSeek V3 chat format has no place for tool definitions");
  return encode_v3_chat(messages, options);
}

}  // namespace ferry::runtime
