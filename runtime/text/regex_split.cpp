#include "runtime/text/regex_split.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <fmt/format.h>
#include <pcre2.h>

#include "planner/core/error.h"

namespace ferry::runtime {

namespace {

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  const int n = pcre2_get_error_message(code, buffer, sizeof(buffer));
  return n < 0 ? fmt::format("PCRE2 error {}", code) : std::string(reinterpret_cast<const char*>(buffer), n);
}

// Length of the UTF-8 character starting with `lead` (the text is valid UTF-8).
size_t char_length(unsigned char lead) { return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4; }

}  // namespace

void RegexSplit::CodeDeleter::operator()(pcre2_real_code_8* code) const { pcre2_code_free(code); }
void RegexSplit::MatchDataDeleter::operator()(pcre2_real_match_data_8* data) const { pcre2_match_data_free(data); }

RegexSplit::RegexSplit(const std::string& pattern) : pattern_(pattern) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  code_.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &error,
                            &offset, nullptr));
  FERRY_CHECK(code_ != nullptr, "the pre-tokenizer regex '{}' is rejected by PCRE2: {} at offset {}", pattern,
              pcre2_message(error), offset);
  // Without JIT (a library built without it) pcre2_match interprets the pattern: slower, same result.
  pcre2_jit_compile(code_.get(), PCRE2_JIT_COMPLETE);
}

pcre2_real_match_data_8* RegexSplit::match_data() {
  // One pair of offsets is all a split needs: the whole match.
  thread_local std::unique_ptr<pcre2_real_match_data_8, MatchDataDeleter> data(pcre2_match_data_create(1, nullptr));
  FERRY_CHECK(data != nullptr, "out of memory for PCRE2 match data");
  return data.get();
}

void RegexSplit::split(std::string_view text, std::vector<std::string_view>& out) const {
  pcre2_match_data* data = match_data();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t at = 0, piece_start = 0;
  while (at < text.size()) {
    const int rc = pcre2_match(code_.get(), subject, text.size(), at, PCRE2_NO_UTF_CHECK, data, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    FERRY_CHECK(rc >= 0, "the pre-tokenizer regex '{}' failed on the text: {}", pattern_, pcre2_message(rc));
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
    const size_t begin = ovector[0], end = ovector[1];
    if (begin == end) {
      // An empty match splits nothing; look again one character on.
      if (end >= text.size()) break;
      at = end + char_length(static_cast<unsigned char>(text[end]));
      continue;
    }
    if (begin > piece_start) out.push_back(text.substr(piece_start, begin - piece_start));
    out.push_back(text.substr(begin, end - begin));
    piece_start = at = end;
  }
  if (piece_start < text.size()) out.push_back(text.substr(piece_start));
}

SplitSequence::SplitSequence(const std::vector<std::string>& patterns) {
  splits_.reserve(patterns.size());
  for (const std::string& p : patterns) splits_.emplace_back(p);
}

std::vector<std::string_view> SplitSequence::split(std::string_view text) const {
  std::vector<std::string_view> pieces{text}, next;
  for (const RegexSplit& s : splits_) {
    next.clear();
    for (std::string_view piece : pieces) s.split(piece, next);
    pieces.swap(next);
  }
  return pieces;
}

}  // namespace ferry::runtime
