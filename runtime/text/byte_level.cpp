#include "runtime/text/byte_level.h"

#include <cstdint>

namespace ferry::runtime {

namespace {

constexpr char32_t kAlphabetEnd = 256 + 68;  // 256 bytes; the 68 unprintable ones are moved past U+00FF

bool printable(int b) { return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174; }

struct Alphabet {
  std::array<std::string, 256> symbols;
  std::array<int16_t, kAlphabetEnd> byte_of;  // -1: not a byte-level character
};

const Alphabet& alphabet() {
  static const Alphabet a = [] {
    Alphabet a{};
    a.byte_of.fill(-1);
    char32_t next_unprintable = 256;
    for (int b = 0; b < 256; ++b) {
      const char32_t c = printable(b) ? static_cast<char32_t>(b) : next_unprintable++;
      // Every character is below U+0800: one or two UTF-8 bytes.
      a.symbols[b] = c < 0x80 ? std::string(1, static_cast<char>(c))
                              : std::string{static_cast<char>(0xC0 | (c >> 6)), static_cast<char>(0x80 | (c & 0x3F))};
      a.byte_of[c] = static_cast<int16_t>(b);
    }
    return a;
  }();
  return a;
}

}  // namespace

const std::array<std::string, 256>& byte_level_symbols() { return alphabet().symbols; }

std::optional<std::string> byte_level_decode(std::string_view token) {
  const Alphabet& a = alphabet();
  std::string bytes;
  bytes.reserve(token.size());
  for (size_t i = 0; i < token.size();) {
    const auto lead = static_cast<unsigned char>(token[i]);
    char32_t c;
    if (lead < 0x80) {
      c = lead;
      i += 1;
    } else if ((lead & 0xE0) == 0xC0 && i + 1 < token.size()) {
      c = (static_cast<char32_t>(lead & 0x1F) << 6) | (static_cast<unsigned char>(token[i + 1]) & 0x3F);
      i += 2;
    } else {
      return std::nullopt;  // three bytes or more: beyond the alphabet
    }
    if (c >= kAlphabetEnd || a.byte_of[c] < 0) return std::nullopt;
    bytes.push_back(static_cast<char>(a.byte_of[c]));
  }
  return bytes;
}

}  // namespace ferry::runtime
