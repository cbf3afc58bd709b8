// GPT-2's byte-level alphabet (Hugging Face's `ByteLevel` pre-tokenizer and decoder): every byte is one visible
// character, printable bytes keeping their own code point and the others moving to U+0100 and up, so that
// token strings hold no spaces or control characters ("Ġ" is the space, "Ċ" the newline).
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>

namespace ferry::runtime {

// The UTF-8 of each byte's character, indexed by byte.
const std::array<std::string, 256>& byte_level_symbols();

// The bytes a byte-level token string stands for, or nullopt when one of its characters is outside the
// alphabet (such a token is not made of bytes: added tokens like "<｜User｜>" are, by Hugging Face's decoder,
// their own UTF-8).
std::optional<std::string> byte_level_decode(std::string_view token);

}  // namespace ferry::runtime
