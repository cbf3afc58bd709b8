// Hugging Face's `Split` pre-tokenizer with behavior "Isolated", on PCRE2 (8-bit, UTF + Unicode properties, JIT
// when the library has it): a piece of text becomes its matches and the stretches between them, in order.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

struct pcre2_real_code_8;
struct pcre2_real_match_data_8;

namespace ferry::runtime {

class RegexSplit {
 public:
  // Throws ferry::Error with PCRE2's message and the offset in the pattern when PCRE2 rejects it.
  explicit RegexSplit(const std::string& pattern);

  // Appends the pieces of `text` (valid UTF-8; not checked again) to `out`. Each call matches against `text`
  // alone, so lookarounds such as `\s+(?!\S)` see its ends as the subject's ends, as Hugging Face's do.
  void split(std::string_view text, std::vector<std::string_view>& out) const;

 private:
  struct CodeDeleter {
    void operator()(pcre2_real_code_8* code) const;
  };
  struct MatchDataDeleter {
    void operator()(pcre2_real_match_data_8* data) const;
  };
  std::string pattern_;
  std::unique_ptr<pcre2_real_code_8, CodeDeleter> code_;
  // Per thread: PCRE2 match data may not be shared by concurrent matches.
  static pcre2_real_match_data_8* match_data();
};

// A Hugging Face `Sequence` of Split pre-tokenizers: each splits every piece the previous one made.
class SplitSequence {
 public:
  explicit SplitSequence(const std::vector<std::string>& patterns);
  std::vector<std::string_view> split(std::string_view text) const;

 private:
  std::vector<RegexSplit> splits_;
};

}  // namespace ferry::runtime
