// The tokenizer on small hand-made tokenizer.json files (built from the tiny model's: 3 special tokens, then the
// 256 byte tokens, id = 3 + byte): BPE merge order, added-token matching, UTF-8 handling, streaming decode, the
// BOS token, and one-line errors for every malformed part. The real DeepSeek tokenizer is compared with its
// JavaScript implementation in tests/e2e/test_tokenizer_reference.cpp.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "planner/core/error.h"
#include "runtime/checkpoint/tiny_tokenizer.h"
#include "runtime/text/tokenizer.h"
#include "runtime/text/utf8.h"
#include "test_errors.h"

using ferry::runtime::StreamDecoder;
using ferry::runtime::Tokenizer;
using ferry_test::error_of;
using Ids = std::vector<int32_t>;
using Json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

int32_t byte_id(unsigned char b) { return 3 + b; }

// The tiny tokenizer with exactly the 256 byte tokens and the merges given ("left right").
Json base(const std::vector<std::string>& merges = {}, const std::vector<std::string>& merged_tokens = {}) {
  Json t = Json::parse(ferry::runtime::make_tiny_tokenizer_json(260));
  Json& vocab = t["model"]["vocab"];
  for (auto it = vocab.begin(); it != vocab.end();) it = it.value().get<int>() >= 259 ? vocab.erase(it) : std::next(it);
  for (size_t k = 0; k < merged_tokens.size(); ++k) vocab[merged_tokens[k]] = 259 + static_cast<int>(k);
  t["model"]["merges"] = merges;
  return t;
}

Tokenizer load(const Json& t) { return Tokenizer::from_json_text(t.dump()); }

Json added(int id, const std::string& content, bool special, bool normalized) {
  return {{"id", id},        {"content", content},       {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", normalized}, {"special", special}};
}

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("ferry-tok-" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  void write(const std::string& name, const std::string& text) const { std::ofstream(path / name) << text; }
};

// The error `json` gives: one line, containing `expected`.
void expect_error(const Json& json, const std::string& expected) {
  const std::string e = error_of([&] { load(json); });
  EXPECT_NE(e.find(expected), std::string::npos) << "error: '" << e << "', expected '" << expected << "'";
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
}

}  // namespace

TEST(Utf8, FindsTheFirstInvalidByte) {
  EXPECT_EQ(ferry::runtime::first_invalid_utf8("plain é 中 😀"), std::string::npos);
  EXPECT_EQ(ferry::runtime::first_invalid_utf8(""), std::string::npos);
  EXPECT_EQ(ferry::runtime::first_invalid_utf8("ab\x80"), 2u);
  EXPECT_EQ(ferry::runtime::first_invalid_utf8("a\xC0\xAF"), 1u);          // overlong '/'
  EXPECT_EQ(ferry::runtime::first_invalid_utf8("\xED\xA0\x80"), 0u);       // a UTF-16 surrogate
  EXPECT_EQ(ferry::runtime::first_invalid_utf8("x\xF4\x90\x80\x80"), 1u);  // above U+10FFFF
  EXPECT_EQ(ferry::runtime::first_invalid_utf8("ok\xF0\x9F\x98"), 2u);     // cut short
}

// The example of "U+FFFD substitution of maximal subparts" in the Unicode Standard, chapter 3.9 (table 3-8).
TEST(Utf8, ReplacesMaximalSubpartsAsUnicodeRecommends) {
  std::string out;
  EXPECT_EQ(ferry::runtime::append_utf8_lossy("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64", true, out), 13u);
  EXPECT_EQ(out, "a\uFFFD\uFFFD\uFFFDb\uFFFDc\uFFFD\uFFFDd");
}

TEST(Utf8, LeavesAnIncompleteTailUnlessFinal) {
  std::string out;
  EXPECT_EQ(ferry::runtime::append_utf8_lossy("ab\xF0\x9F\x98", false, out), 2u);
  EXPECT_EQ(out, "ab");
  out.clear();
  EXPECT_EQ(ferry::runtime::append_utf8_lossy("ab\xF0\x9F\x98", true, out), 5u);
  EXPECT_EQ(out, "ab\uFFFD");
  out.clear();
  // Not a prefix of any character, so not held back.
  EXPECT_EQ(ferry::runtime::append_utf8_lossy("ab\xF0\x20", false, out), 4u);
  EXPECT_EQ(out, "ab\uFFFD ");
}

TEST(Bpe, MergesByRankNotByPosition) {
  const std::vector<std::string> tokens = {"ab", "bc", "abc"};
  EXPECT_EQ(load(base({"a b", "b c", "ab c"}, tokens)).encode("abc"), Ids{261});
  EXPECT_EQ(load(base({"b c", "a b"}, tokens)).encode("abc"), (Ids{byte_id('a'), 260}));
  EXPECT_EQ(load(base({"a b", "b c"}, tokens)).encode("abc"), (Ids{259, byte_id('c')}));
  EXPECT_EQ(load(base({}, {})).encode("abc"), (Ids{byte_id('a'), byte_id('b'), byte_id('c')}));
}

TEST(Bpe, EqualRanksMergeLeftmostFirst) {
  const Tokenizer t = load(base({"a a"}, {"aa"}));
  EXPECT_EQ(t.encode("aaa"), (Ids{259, byte_id('a')}));
  EXPECT_EQ(t.encode("aaaa"), (Ids{259, 259}));
  const Tokenizer t2 = load(base({"a a", "aa aa"}, {"aa", "aaaa"}));
  EXPECT_EQ(t2.encode("aaaaa"), (Ids{260, byte_id('a')}));
}

TEST(Bpe, MergesNeverCrossPreTokenizerPieces) {
  // DeepSeek's first Split isolates digits, the third a space before letters: "1a" and "x a" stay apart.
  const Tokenizer t = load(base({"1 a", "x \xC4\xA0", "\xC4\xA0 a"}, {"1a", "x\xC4\xA0",
                                                                      "\xC4\xA0"
                                                                      "a"}));
  EXPECT_EQ(t.encode("1a"), (Ids{byte_id('1'), byte_id('a')}));
  EXPECT_EQ(t.encode("x a"), (Ids{byte_id('x'), 261}));  // " a" is one piece; "x " would cross
}

TEST(Bpe, IgnoreMergesTakesWholeWordsFromTheVocabulary) {
  Json j = base({"a b"}, {"ab", "abc"});
  EXPECT_EQ(load(j).encode("abc"), (Ids{259, byte_id('c')}));
  j["model"]["ignore_merges"] = true;
  EXPECT_EQ(load(j).encode("abc"), Ids{260});
}

// Merges listed out of training order: "ab a" (rank 0) needs "ab", made by "a b" (rank 1). Once "ab" exists
// the rank-0 pair beats the remaining rank-1 ones, so "abab" is "aba" + "b", not "ab" + "ab"; the same for
// words past 4 KiB, which take the grouped-by-rank path.
TEST(Bpe, ALowerRankMadeByAMergeGoesFirst) {
  const Tokenizer t = load(base({"ab a", "a b"}, {"ab", "aba"}));
  EXPECT_EQ(t.encode("abab"), (Ids{260, byte_id('b')}));
  std::string text;
  Ids expected;
  for (int k = 0; k < 3000; ++k) {
    text += "abab";
    expected.insert(expected.end(), {260, byte_id('b')});
  }
  EXPECT_EQ(t.encode(text), expected);
}

TEST(Bpe, LongWordsAreLinearEnough) {
  const Tokenizer t = load(base({"a a", "aa aa"}, {"aa", "aaaa"}));
  const Ids ids = t.encode(std::string(200000, 'a'));
  ASSERT_EQ(ids.size(), 50000u);
  EXPECT_EQ(ids.front(), 260);
}

TEST(AddedTokens, LongestMatchWinsAtAPosition) {
  Json j = base();
  j["added_tokens"].push_back(added(300, "<think>", false, false));
  j["added_tokens"].push_back(added(301, "<think>x", false, false));
  const Tokenizer t = load(j);
  EXPECT_EQ(t.encode("<think>xy"), (Ids{301, byte_id('y')}));
  EXPECT_EQ(t.encode("a<think>"), (Ids{byte_id('a'), 300}));
  EXPECT_EQ(t.vocab_size(), 302);
  EXPECT_EQ(t.decode({300, 301}), "<think><think>x");
}

// Hugging Face matches normalized=false tokens first, over the whole text, and normalized=true ones in what is
// left: here "ab" wins although "xab" starts further left.
TEST(AddedTokens, UnnormalizedTokensAreMatchedFirst) {
  Json j = base();
  j["added_tokens"].push_back(added(300, "xab", false, true));
  j["added_tokens"].push_back(added(301, "ab", false, false));
  EXPECT_EQ(load(j).encode("xabxab"), (Ids{byte_id('x'), 301, byte_id('x'), 301}));
  j["added_tokens"][4]["normalized"] = true;  // "ab": both in one pass now, leftmost first
  EXPECT_EQ(load(j).encode("xabxab"), (Ids{300, 300}));
}

TEST(AddedTokens, UnparsedSpecialTokensArePlainTextAndHideWhatTheyOverlap) {
  Json j = base();
  j["added_tokens"].push_back(added(300, "<s>x", true, false));
  j["added_tokens"].push_back(added(301, "<s>", false, false));
  j["added_tokens"].push_back(added(302, "x", false, true));
  const Tokenizer t = load(j);
  EXPECT_EQ(t.encode("<s>x"), Ids{300});
  const Ids plain = t.encode("<s>x", false);
  // "<s>x" is matched and left as text, which hides the "<s>" it overlaps (same pass); the second pass, for
  // normalized tokens, still finds "x" in it.
  EXPECT_EQ(plain, (Ids{byte_id('<'), byte_id('s'), byte_id('>'), 302}));
  EXPECT_EQ(t.decode(plain), "<s>x");
  EXPECT_TRUE(t.is_special(300));
  EXPECT_FALSE(t.is_special(301));
  EXPECT_EQ(t.decode({0, byte_id('h'), 300, 301, 1}, true), "h<s>");
}

TEST(Tokenizer, NamesTokensByTheirText) {
  Json j = base();
  j["added_tokens"].push_back(added(1000, "<｜User｜>", false, true));
  const Tokenizer t = load(j);
  EXPECT_EQ(t.vocab_size(), 1001);
  EXPECT_EQ(t.token_id("\xC4\xA0"), byte_id(' '));  // "Ġ"
  EXPECT_EQ(t.token_text(byte_id(' ')), "\xC4\xA0");
  EXPECT_EQ(t.token_bytes(byte_id(' ')), " ");
  EXPECT_EQ(t.token_bytes(byte_id(0xE4)), "\xE4");
  EXPECT_EQ(t.token_id("<｜User｜>"), 1000);
  EXPECT_EQ(t.token_bytes(1000), "<｜User｜>");  // not byte-level characters: its own UTF-8
  EXPECT_EQ(t.token_id("<｜end▁of▁sentence｜>"), 1);
  EXPECT_FALSE(t.token_id("nope").has_value());
  EXPECT_EQ(t.bos_id(), 0);
  // Ids 259..999 have no token.
  EXPECT_NE(error_of([&] { t.token_text(500); }).find("token id 500 is not in the tokenizer's vocabulary"),
            std::string::npos);
  EXPECT_NE(error_of([&] { t.decode({1, 500}); }).find("token id 500"), std::string::npos);
  EXPECT_NE(error_of([&] { t.decode({-1}); }).find("token id -1"), std::string::npos);
  EXPECT_NE(error_of([&] { t.decode({1001}); }).find("token id 1001"), std::string::npos);
  EXPECT_FALSE(t.is_special(500));
  EXPECT_FALSE(t.is_special(-3));
}

TEST(Tokenizer, RefusesInvalidUtf8Text) {
  const Tokenizer t = load(base());
  EXPECT_NE(error_of([&] { t.encode("ok \xFF no"); }).find("not valid UTF-8 (at byte 3)"), std::string::npos);
  EXPECT_EQ(t.encode(""), Ids{});
  EXPECT_EQ(t.decode({}), "");
}

TEST(Tokenizer, DecodeReplacesBrokenUtf8) {
  const Tokenizer t = load(base());
  EXPECT_EQ(t.decode({byte_id('a'), byte_id(0xE4), byte_id(0xB8), byte_id('b')}), "a\uFFFDb");
  EXPECT_EQ(t.decode({byte_id(0xE4), byte_id(0xB8), byte_id(0xAD)}), "中");
}

// Every piece a stream gives is valid UTF-8, characters split over byte tokens come out whole once complete,
// and the pieces joined are decode(ids), broken bytes included.
TEST(StreamDecoder, NeverEmitsBrokenUtf8) {
  const Tokenizer t = load(base());
  const std::string text =
      "aé中😀z\xFF\xE4\xB8"
      "b\xF0\x9F";
  Ids ids;
  for (char c : text) ids.push_back(byte_id(static_cast<unsigned char>(c)));
  StreamDecoder stream(t);
  std::vector<std::string> pieces;
  std::string joined;
  for (int32_t id : ids) {
    pieces.push_back(stream.push(id));
    EXPECT_EQ(ferry::runtime::first_invalid_utf8(pieces.back()), std::string::npos) << pieces.size();
    joined += pieces.back();
  }
  const std::string tail = stream.flush();
  joined += tail;
  EXPECT_EQ(joined, t.decode(ids));
  EXPECT_EQ(joined, "aé中😀z\uFFFD\uFFFDb\uFFFD");
  EXPECT_EQ(tail, "\uFFFD");
  // "😀" is bytes 6..9 of the text: nothing until its last byte.
  EXPECT_EQ(pieces[5], "中");
  EXPECT_EQ(pieces[6], "");
  EXPECT_EQ(pieces[7], "");
  EXPECT_EQ(pieces[8], "");
  EXPECT_EQ(pieces[9], "😀");
  EXPECT_EQ(stream.flush(), "");
}

TEST(StreamDecoder, SkipsSpecialTokensWhenAsked) {
  const Tokenizer t = load(base());
  StreamDecoder stream(t, true);
  EXPECT_EQ(stream.push(0), "");
  EXPECT_EQ(stream.push(byte_id('h')), "h");
  EXPECT_EQ(stream.push(1), "");
  StreamDecoder keep(t);
  EXPECT_EQ(keep.push(1), "<｜end▁of▁sentence｜>");
  EXPECT_THROW(keep.push(9999), ferry::Error);
}

TEST(TinyTokenizer, LoadsFromAModelDirAndRoundTrips) {
  TempDir dir;
  dir.write("tokenizer.json", ferry::runtime::make_tiny_tokenizer_json(512));
  const Tokenizer t = Tokenizer::from_model_dir(dir.path.string());
  EXPECT_EQ(t.vocab_size(), 512);
  EXPECT_EQ(t.bos_id(), 0);
  EXPECT_EQ(t.encode("<｜begin▁of▁sentence｜><｜end▁of▁sentence｜><｜▁pad▁｜>"), (Ids{0, 1, 2}));
  // The learned merges apply: " the" is one token.
  ASSERT_TRUE(t.token_id("\xC4\xA0the").has_value());
  EXPECT_EQ(t.encode(" the"), Ids{*t.token_id("\xC4\xA0the")});
  for (const std::string text :
       {"The quick brown fox jumps over the lazy dog.\n", "今天天气很好，我们一起去公园散步。",
        "emoji 👍🏽 and 👨‍👩‍👧", "def f(x):\n\treturn x * 2  \r\n", "12345678 3.14159",
        "<｜begin▁of▁sentence｜>Hi<｜end▁of▁sentence｜>", "", "   ", "مرحبا नमस्ते สวัสดี"}) {
    const Ids ids = t.encode(text);
    EXPECT_EQ(t.decode(ids), text);
    for (int32_t id : ids) EXPECT_TRUE(id >= 0 && id < 512) << id;
  }
  EXPECT_LT(t.encode("The quick brown fox jumps over the lazy dog.").size(), 30u);  // 44 bytes
}

TEST(TinyTokenizer, TokenizerConfigNamesTheBos) {
  TempDir dir;
  dir.write("tokenizer.json", ferry::runtime::make_tiny_tokenizer_json(300));
  dir.write("tokenizer_config.json", R"({"bos_token": {"__type": "AddedToken", "content": "<｜▁pad▁｜>"}})");
  EXPECT_EQ(Tokenizer::from_model_dir(dir.path.string()).bos_id(), 2);
  dir.write("tokenizer_config.json", R"({"bos_token": "<｜end▁of▁sentence｜>"})");
  EXPECT_EQ(Tokenizer::from_model_dir(dir.path.string()).bos_id(), 1);
  dir.write("tokenizer_config.json", R"({"bos_token": "<s>"})");
  EXPECT_NE(error_of([&] {
              Tokenizer::from_model_dir(dir.path.string());
            }).find("bos_token '<s>' is not a token of tokenizer.json"),
            std::string::npos);
  dir.write("tokenizer_config.json", R"({"bos_token": )");
  EXPECT_NE(
      error_of([&] { Tokenizer::from_model_dir(dir.path.string()); }).find("tokenizer_config.json: not valid JSON"),
      std::string::npos);
}

TEST(TokenizerErrors, MissingFilesAndDirectories) {
  TempDir dir;
  EXPECT_NE(error_of([&] { Tokenizer::from_model_dir(dir.path.string()); }).find("has no tokenizer.json"),
            std::string::npos);
  EXPECT_NE(error_of([&] { Tokenizer::from_model_dir((dir.path / "nope").string()); }).find("does not exist"),
            std::string::npos);
  EXPECT_NE(error_of([&] { Tokenizer::from_file((dir.path / "t.json").string()); }).find("does not exist"),
            std::string::npos);
  dir.write("t.json", "{\"model\": ");
  const std::string e = error_of([&] { Tokenizer::from_file((dir.path / "t.json").string()); });
  EXPECT_NE(e.find("t.json: not valid JSON"), std::string::npos) << e;
}

TEST(TokenizerErrors, MalformedFiles) {
  expect_error(Json::array(), "expected a JSON object");
  Json j = base();
  j.erase("model");
  expect_error(j, "must have an object 'model'");
  j = base();
  j["model"]["type"] = "Unigram";
  expect_error(j, "unsupported model type 'Unigram'");
  j = base();
  j["model"]["byte_fallback"] = true;
  expect_error(j, "'byte_fallback' = true is not supported");
  j = base();
  j["model"]["vocab"]["Ġ"] = -4;
  expect_error(j, "vocab entry 'Ġ': the id must be an integer");
  j = base();
  j["model"]["vocab"]["extra"] = 7;
  expect_error(j, "vocab id 7 is given to both");
  j = base();
  j["model"]["vocab"].erase("A");
  expect_error(j, "lacks the byte-level token 'A' of byte 65");
  j = base({"a zz"}, {"azz"});
  expect_error(j, "merge 0 'a zz': 'zz' is not in the vocabulary");
  j = base({"a b"}, {});
  expect_error(j, "merge 0 'a b': 'ab' is not in the vocabulary");
  j = base({"ab"}, {});
  expect_error(j, "merge 0 'ab' is not two tokens");
  j = base();
  j["model"]["merges"] = {42};
  expect_error(j, "merge 0 must be a string");
  j = base();
  j["normalizer"] = {{"type", "NFC"}};
  expect_error(j, "unsupported normalizer 'NFC'");
  j = base();
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  expect_error(j, "unsupported pre-tokenizer 'Whitespace'");
  j = base();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(\\p{N}";
  expect_error(j, "the pre-tokenizer regex '(\\p{N}' is rejected by PCRE2: missing closing parenthesis at offset 6");
  j = base();
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
  expect_error(j, "unsupported Split behavior 'Removed'");
  j = base();
  j["pre_tokenizer"]["pretokenizers"][3]["use_regex"] = true;
  expect_error(j, "'use_regex' = true is not supported");
  j = base();
  j["pre_tokenizer"]["pretokenizers"].erase(3);
  expect_error(j, "does not end in ByteLevel");
  j = base();
  j["decoder"] = {{"type", "WordPiece"}};
  expect_error(j, "unsupported decoder 'WordPiece'");
  j = base();
  j["added_tokens"][0]["lstrip"] = true;
  expect_error(j, "'lstrip' = true is not supported");
  j = base();
  j["added_tokens"][1]["content"] = "";
  expect_error(j, "added token 1 has an empty content");
  j = base();
  j["added_tokens"][2]["id"] = 1 << 30;
  expect_error(j, "added token 2: the id must be an integer in [0, 16777216)");
  j = base();
  j["added_tokens"][0]["special"] = "yes";
  expect_error(j, "'special' must be true or false");
}
