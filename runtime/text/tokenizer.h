// DeepSeek's tokenizer, read from a Hugging Face tokenizer.json: added tokens matched in the raw text, a Sequence
// of regex Split pre-tokenizers, byte-level BPE with ranked merges, and the byte-level decoder. Files with any
// other pipeline are refused with an error naming the part ferry does not implement.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::runtime {

class Tokenizer {
 public:
  // Each throws ferry::Error naming the problem (missing file, malformed JSON, an unsupported model type,
  // normalizer, pre-tokenizer or decoder, a regex PCRE2 rejects, a merge of unknown tokens, ...).
  static Tokenizer from_file(const std::string& tokenizer_json_path);
  static Tokenizer from_json_text(std::string_view json_text);
  // DIR/tokenizer.json (ferry's tiny models from `ferry make-tiny` ship one). The BOS token is
  // DIR/tokenizer_config.json's `bos_token` when that file names one.
  static Tokenizer from_model_dir(const std::string& dir);

  // `text` must be valid UTF-8 (ferry::Error with the offset otherwise). Adds no BOS/EOS: callers do (see
  // bos_id). With `parse_special` false, special added tokens written in the text are encoded as plain text;
  // non-special added tokens (DeepSeek's "<｜User｜>", "<｜Assistant｜>", ...) are still matched, as Hugging
  // Face does with split_special_tokens.
  std::vector<int32_t> encode(std::string_view text, bool parse_special = true) const;
  // Throws ferry::Error for an id that no token has. Bytes that do not form UTF-8 come out as U+FFFD.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;

  std::optional<int32_t> token_id(std::string_view token_text) const;  // exact token text, e.g. "<｜end▁of▁sentence｜>"
  std::string token_text(int32_t id) const;          // as written in tokenizer.json ("Ġthe"); throws for unknown ids
  const std::string& token_bytes(int32_t id) const;  // what it decodes to, maybe part of a UTF-8 character
  bool is_special(int32_t id) const;                 // false for unknown ids
  int32_t vocab_size() const;                        // 1 + the largest id

  // The token that begins a document ("<｜begin▁of▁sentence｜>" for DeepSeek), if the vocabulary has one.
  std::optional<int32_t> bos_id() const;

 private:
  struct Impl;
  friend struct TokenizerLoader;
  explicit Tokenizer(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;  // immutable once loaded: copies share it, and so does every thread
};

// Streaming decode: push ids one by one, get back only complete UTF-8 (never a broken sequence); flush() at
// the end returns what is left (invalid trailing bytes as U+FFFD). The pieces joined equal decode(ids).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = false);
  std::string push(int32_t id);
  std::string flush();

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::string pending_;  // the bytes of a UTF-8 character that later tokens may complete
};

}  // namespace ferry::runtime
