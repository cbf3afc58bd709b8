// The tokenizer.json that `ferry make-tiny` ships with its random checkpoint: small, but in the same Hugging Face
// `tokenizers` format as DeepSeek's (byte-level BPE, the same special tokens and pre-tokenizer), so that code
// which loads the tiny model's tokenizer also loads the real one.
#pragma once

#include <string>

namespace ferry::runtime {

// A Hugging Face tokenizer.json (pretty-printed text, byte-identical on every run and platform) with exactly
// `vocab_size` tokens: ids 0, 1, 2 are DeepSeek's special tokens "<｜begin▁of▁sentence｜>",
// "<｜end▁of▁sentence｜>" and "<｜▁pad▁｜>"; ids 3..258 are the 256 byte-level tokens (GPT-2's bytes_to_unicode)
// in byte order; the rest are merges learned by a small deterministic BPE trainer on a built-in multilingual
// text. Throws ferry::Error if vocab_size < 260 or if the built-in text cannot supply enough merges (about
// 1,200 tokens at most).
std::string make_tiny_tokenizer_json(int vocab_size);

}  // namespace ferry::runtime
