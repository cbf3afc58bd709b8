#include "planner/core/units.h"

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <string>

#include "planner/core/error.h"

namespace ferry::core {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// Splits "1.5GiB" into 1.5 and "gib". Returns false when no number leads the text.
bool split_number(std::string_view text, double& value, std::string& suffix) {
  text = trim(text);
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  if (i == 0) return false;
  std::string number(text.substr(0, i));
  char* end = nullptr;
  value = std::strtod(number.c_str(), &end);
  if (end != number.c_str() + number.size() || !std::isfinite(value)) return false;
  suffix = lower(trim(text.substr(i)));
  return true;
}

}  // namespace

int64_t parse_size(std::string_view text, std::string_view what) {
  double value = 0;
  std::string suffix;
  const std::string bad = std::string("invalid ") + std::string(what) + " '" + std::string(text) +
                          "': expected a size such as 24GiB, 24GB, 512MiB or a byte count";
  if (!split_number(text, value, suffix)) FERRY_THROW(bad);
  double scale = 0;
  if (suffix.empty() || suffix == "b")
    scale = 1;
  else if (suffix == "k" || suffix == "kib")
    scale = double(kKiB);
  else if (suffix == "m" || suffix == "mib")
    scale = double(kMiB);
  else if (suffix == "g" || suffix == "gib")
    scale = double(kGiB);
  else if (suffix == "t" || suffix == "tib")
    scale = double(kTiB);
  else if (suffix == "kb")
    scale = 1e3;
  else if (suffix == "mb")
    scale = 1e6;
  else if (suffix == "gb")
    scale = 1e9;
  else if (suffix == "tb")
    scale = 1e12;
  else
    FERRY_THROW(bad);
  const double bytes = value * scale;
  if (!(bytes >= 1) || bytes > 9.0e18) {
    FERRY_THROW("{} '{}' is out of range", what, text);
  }
  return static_cast<int64_t>(std::llround(bytes));
}

double parse_bandwidth(std::string_view text, std::string_view what) {
  double value = 0;
  std::string suffix;
  const std::string bad = std::string("invalid ") + std::string(what) + " '" + std::string(text) +
                          "': expected GB/s, e.g. 76.8 or 76.8GB/s";
  if (!split_number(text, value, suffix)) FERRY_THROW(bad);
  if (!suffix.empty() && suffix != "gb/s" && suffix != "gb" && suffix != "gbps") FERRY_THROW(bad);
  if (!(value > 0) || value > 1e6) FERRY_THROW("{} '{}' is out of range", what, text);
  return value * 1e9;
}

int64_t parse_count(std::string_view text, std::string_view what) {
  double value = 0;
  std::string suffix;
  const std::string bad = std::string("invalid ") + std::string(what) + " '" + std::string(text) +
                          "': expected a positive integer such as 1048576, 128K or 1M";
  if (!split_number(text, value, suffix)) {
    std::string_view t = trim(text);
    if (!t.empty() && t.front() == '-') {
      FERRY_THROW("{} must be positive, got '{}'", what, text);
    }
    FERRY_THROW(bad);
  }
  double scale = 1;
  if (suffix == "k")
    scale = 1024;
  else if (suffix == "m")
    scale = 1024.0 * 1024;
  else if (!suffix.empty())
    FERRY_THROW(bad);
  const double n = value * scale;
  if (n != std::floor(n)) FERRY_THROW(bad);
  if (n < 1) FERRY_THROW("{} must be positive, got '{}'", what, text);
  if (n > 9.0e18) FERRY_THROW("{} '{}' is out of range", what, text);
  return static_cast<int64_t>(n);
}

std::string format_bytes(int64_t bytes, int decimals) {
  const double b = static_cast<double>(bytes);
  const char* unit = "B";
  double v = b;
  if (std::fabs(b) >= double(kTiB)) {
    v = b / double(kTiB);
    unit = "TiB";
  } else if (std::fabs(b) >= double(kGiB)) {
    v = b / double(kGiB);
    unit = "GiB";
  } else if (std::fabs(b) >= double(kMiB)) {
    v = b / double(kMiB);
    unit = "MiB";
  } else if (std::fabs(b) >= double(kKiB)) {
    v = b / double(kKiB);
    unit = "KiB";
  } else
    return std::to_string(bytes) + " B";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f %s", decimals, v, unit);
  return buf;
}

std::string format_count(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

}  // namespace ferry::core
