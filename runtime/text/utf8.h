// UTF-8 checks for the tokenizer: where text stops being valid, and a lossy conversion that both whole-text and
// streaming decode use, so that concatenated stream pieces equal the whole decode byte for byte.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace ferry::runtime {

// Byte offset of the first byte that does not begin a well-formed UTF-8 sequence (an incomplete sequence at the
// end counts), or std::string_view::npos when all of `text` is valid.
size_t first_invalid_utf8(std::string_view text);

// Appends `bytes` to `out` as valid UTF-8, each ill-formed subsequence (Unicode's "maximal subpart", as
// Rust's from_utf8_lossy and Hugging Face tokenizers do) replaced by U+FFFD. With `final` false, a sequence cut
// off at the end of `bytes` that more bytes could complete is left unconsumed. Returns the bytes consumed.
size_t append_utf8_lossy(std::string_view bytes, bool final, std::string& out);

}  // namespace ferry::runtime
