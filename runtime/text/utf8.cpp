#include "runtime/text/utf8.h"

namespace ferry::runtime {

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

struct Sequence {
  size_t length;  // of the well-formed sequence, or of the ill-formed maximal subpart
  bool valid;
  bool truncated;  // ill-formed only because `text` ends: more bytes could complete it
};

// The second byte's range is narrower after some lead bytes: it excludes overlong forms (E0, F0), UTF-16
// surrogates (ED) and code points beyond U+10FFFF (F4).
Sequence scan(std::string_view text, size_t i) {
  const auto lead = static_cast<unsigned char>(text[i]);
  if (lead < 0x80) return {1, true, false};
  size_t continuation = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    continuation = 1;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    continuation = 2;
    if (lead == 0xE0) lo = 0xA0;
    if (lead == 0xED) hi = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    continuation = 3;
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;
  } else {
    return {1, false, false};
  }
  for (size_t k = 1; k <= continuation; ++k) {
    if (i + k >= text.size()) return {k, false, true};
    const auto c = static_cast<unsigned char>(text[i + k]);
    if (c < lo || c > hi) return {k, false, false};
    lo = 0x80;
    hi = 0xBF;
  }
  return {continuation + 1, true, false};
}

}  // namespace

size_t first_invalid_utf8(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const Sequence s = scan(text, i);
    if (!s.valid) return i;
    i += s.length;
  }
  return std::string_view::npos;
}

size_t append_utf8_lossy(std::string_view bytes, bool final, std::string& out) {
  size_t i = 0, valid_from = 0;
  while (i < bytes.size()) {
    const Sequence s = scan(bytes, i);
    if (s.valid) {
      i += s.length;
      continue;
    }
    out.append(bytes.substr(valid_from, i - valid_from));
    if (s.truncated && !final) return i;
    out.append(kReplacement);
    i += s.length;
    valid_from = i;
  }
  out.append(bytes.substr(valid_from));
  return bytes.size();
}

}  // namespace ferry::runtime
