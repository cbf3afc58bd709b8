// Picking the chat format of a model directory, and encode_chat's dispatch.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "runtime/text/chat.h"
#include "test_errors.h"
#include "test_paths.h"

using ferry::runtime::chat_format_for_model_dir;
using ferry::runtime::ChatFormat;
using ferry_test::error_of;
namespace fs = std::filesystem;

namespace {

class ModelDir {
 public:
  ModelDir()
      : dir_(fs::temp_directory_path() / ("ferry_chat_" + std::to_string(::getpid()) + "_" +
                                          ::testing::UnitTest::GetInstance()->current_test_info()->name())) {
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  ~ModelDir() { fs::remove_all(dir_); }
  void write(const std::string& name, const std::string& text) const { std::ofstream(dir_ / name) << text; }
  const fs::path& path() const { return dir_; }

 private:
  fs::path dir_;
};

// The shape of DeepSeek V3's template: its tool-output markup and no thinking.
const char* kV3TokenizerConfig =
    R"({"chat_template": "{{bos_token}}{% for m in messages %}{{'<｜tool▁outputs▁end｜>'}}{% endfor %}"})";

}  // namespace

TEST(ChatFormat, V4FromTheRealConfig) {
  ModelDir d;
  std::ifstream in(ferry_test::data_path("deepseek-v4-flash/config.json"));
  d.write("config.json", std::string(std::istreambuf_iterator<char>(in), {}));
  EXPECT_EQ(chat_format_for_model_dir(d.path()), ChatFormat::DeepSeekV4);
}

TEST(ChatFormat, V4ByItsKeysAndV3ByItsTemplate) {
  ModelDir d;
  d.write("config.json", R"({"model_type": "custom", "compress_ratios": [0, 4]})");
  EXPECT_EQ(chat_format_for_model_dir(d.path()), ChatFormat::DeepSeekV4);
  d.write("config.json", R"({"model_type": "deepseek_v3"})");
  d.write("tokenizer_config.json", kV3TokenizerConfig);
  EXPECT_EQ(chat_format_for_model_dir(d.path()), ChatFormat::DeepSeekV3);
}

TEST(ChatFormat, UnknownFormatsAreErrors) {
  ModelDir d;
  EXPECT_NE(error_of([&] { chat_format_for_model_dir(d.path()); }).find("has no config.json"), std::string::npos);
  d.write("config.json", R"({"model_type": "deepseek_v32"})");
  EXPECT_NE(error_of([&] { chat_format_for_model_dir(d.path()); }).find("no chat format found"), std::string::npos);
  d.write("tokenizer_config.json",
          R"({"chat_template": "{{'<｜tool▁outputs▁end｜>'}}{{'<｜Assistant｜><think>\n'}}"})");
  EXPECT_NE(error_of([&] { chat_format_for_model_dir(d.path()); }).find("is not DeepSeek V3's"), std::string::npos);
  d.write("config.json", "{oops");
  EXPECT_NE(error_of([&] { chat_format_for_model_dir(d.path()); }).find("is not valid JSON"), std::string::npos);
}

TEST(ChatFormat, EncodeChatDispatches) {
  nlohmann::ordered_json messages = nlohmann::ordered_json::parse(R"([{"role": "user", "content": "hi"}])");
  ferry::runtime::ChatEncodeOptions o;
  EXPECT_EQ(ferry::runtime::encode_chat(ChatFormat::DeepSeekV3, messages, nullptr, o),
            "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜>");
  EXPECT_EQ(ferry::runtime::encode_chat(ChatFormat::DeepSeekV4, messages, nullptr, o),
            "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜></think>");
  nlohmann::ordered_json tools = nlohmann::ordered_json::parse(R"([{"type": "function", "function": {"name": "f"}}])");
  EXPECT_EQ(error_of([&] { ferry::runtime::encode_chat(ChatFormat::DeepSeekV3, messages, tools, o); }),
            "the DeepSeek V3 chat format has no place for tool definitions");
}
