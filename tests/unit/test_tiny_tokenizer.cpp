// The tiny checkpoint's tokenizer.json: DeepSeek's layout, an exact vocabulary size, valid merges, and the same
// bytes on every call.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "planner/core/error.h"
#include "runtime/checkpoint/tiny_tokenizer.h"

using ferry::runtime::make_tiny_tokenizer_json;
using Json = nlohmann::json;

namespace {

// GPT-2's bytes_to_unicode, written out independently of the implementation, as UTF-8.
std::string byte_symbol(int b) {
  int code = b;
  if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)) {
    code = 256;
    for (int k = 0; k < b; ++k)
      if (!((k >= 33 && k <= 126) || (k >= 161 && k <= 172) || k >= 174)) ++code;
  }
  std::string out;
  if (code < 0x80) {
    out += static_cast<char>(code);
  } else {
    out += static_cast<char>(0xC0 | (code >> 6));
    out += static_cast<char>(0x80 | (code & 0x3F));
  }
  return out;
}

Json tokenizer(int vocab_size) { return Json::parse(make_tiny_tokenizer_json(vocab_size)); }

}  // namespace

TEST(TinyTokenizer, VocabularyHasExactlyTheRequestedSize) {
  for (int size : {260, 512, 1000}) {
    Json t = tokenizer(size);
    const Json& vocab = t["model"]["vocab"];
    ASSERT_EQ(vocab.size(), static_cast<size_t>(size));
    std::set<int> ids;
    for (const auto& [token, id] : vocab.items()) ids.insert(id.get<int>());
    EXPECT_EQ(ids.size(), static_cast<size_t>(size));
    EXPECT_EQ(*ids.begin(), 0);
    EXPECT_EQ(*ids.rbegin(), size - 1);
    EXPECT_EQ(t["model"]["merges"].size(), static_cast<size_t>(size - 259));
  }
}

TEST(TinyTokenizer, SpecialTokensAreDeepSeeks) {
  Json t = tokenizer(512);
  const char* expected[] = {"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"};
  ASSERT_EQ(t["added_tokens"].size(), 3u);
  for (int id = 0; id < 3; ++id) {
    const Json& added = t["added_tokens"][id];
    EXPECT_EQ(added["id"], id);
    EXPECT_EQ(added["content"], expected[id]);
    EXPECT_EQ(added["special"], true);
    EXPECT_EQ(added["normalized"], false);
    EXPECT_EQ(t["model"]["vocab"][expected[id]], id);
  }
  // The fullwidth bar and the lower block as their UTF-8 bytes, in case the literals above were re-encoded.
  EXPECT_EQ(t["added_tokens"][2]["content"].get<std::string>(),
            "<\xEF\xBD\x9C\xE2\x96\x81pad\xE2\x96\x81\xEF\xBD\x9C>");
}

TEST(TinyTokenizer, ByteTokensFollowInByteOrder) {
  Json t = tokenizer(512);
  const Json& vocab = t["model"]["vocab"];
  for (int b = 0; b < 256; ++b) {
    std::string symbol = byte_symbol(b);
    ASSERT_TRUE(vocab.contains(symbol)) << "byte " << b;
    EXPECT_EQ(vocab[symbol], 3 + b) << "byte " << b;
  }
  EXPECT_EQ(vocab["\xC4\xA0"], 3 + ' ');   // "Ġ"
  EXPECT_EQ(vocab["\xC4\x8A"], 3 + '\n');  // "Ċ"
  EXPECT_EQ(vocab["A"], 3 + 'A');
}

TEST(TinyTokenizer, MergesAreMadeOfEarlierTokens) {
  Json t = tokenizer(1000);
  const Json& vocab = t["model"]["vocab"];
  int expected_id = 259;
  for (const Json& merge : t["model"]["merges"]) {
    std::string text = merge.get<std::string>();
    size_t space = text.find(' ');
    ASSERT_NE(space, std::string::npos) << text;
    ASSERT_EQ(text.find(' ', space + 1), std::string::npos) << text;
    std::string left = text.substr(0, space), right = text.substr(space + 1);
    ASSERT_TRUE(vocab.contains(left)) << text;
    ASSERT_TRUE(vocab.contains(right)) << text;
    ASSERT_TRUE(vocab.contains(left + right)) << text;
    int id = vocab[left + right];
    EXPECT_GT(id, vocab[left].get<int>()) << text;
    EXPECT_GT(id, vocab[right].get<int>()) << text;
    EXPECT_EQ(id, expected_id++) << text;
  }
}

TEST(TinyTokenizer, LearnsWordsWithTheirLeadingSpace) {
  Json t = tokenizer(512);
  EXPECT_TRUE(t["model"]["vocab"].contains("\xC4\xA0the"));  // "Ġthe"
}

TEST(TinyTokenizer, HasDeepSeeksPipeline) {
  Json t = tokenizer(260);
  EXPECT_EQ(t["version"], "1.0");
  EXPECT_TRUE(t["normalizer"].is_null());
  const Json& pre = t["pre_tokenizer"]["pretokenizers"];
  ASSERT_EQ(pre.size(), 4u);
  EXPECT_EQ(pre[0]["pattern"]["Regex"], "\\p{N}{1,3}");
  EXPECT_EQ(pre[1]["pattern"]["Regex"], "[一-龥぀-ゟ゠-ヿ]+");
  for (int k = 0; k < 3; ++k) EXPECT_EQ(pre[k]["behavior"], "Isolated");
  EXPECT_EQ(pre[3]["type"], "ByteLevel");
  EXPECT_EQ(pre[3]["use_regex"], false);
  EXPECT_EQ(t["decoder"]["type"], "ByteLevel");
  EXPECT_EQ(t["post_processor"]["type"], "ByteLevel");
  EXPECT_EQ(t["model"]["type"], "BPE");
  EXPECT_EQ(t["model"]["byte_fallback"], false);
}

TEST(TinyTokenizer, IsDeterministic) {
  std::string first = make_tiny_tokenizer_json(700);
  EXPECT_EQ(first, make_tiny_tokenizer_json(700));
  EXPECT_NE(first.find("\n  \"version\": \"1.0\""), std::string::npos);  // pretty-printed
}

TEST(TinyTokenizer, RejectsSizesOutsideTheRange) {
  EXPECT_THROW(make_tiny_tokenizer_json(259), ferry::Error);
  EXPECT_THROW(make_tiny_tokenizer_json(0), ferry::Error);
  EXPECT_THROW(make_tiny_tokenizer_json(-5), ferry::Error);
  EXPECT_THROW(make_tiny_tokenizer_json(1000000), ferry::Error);
}
