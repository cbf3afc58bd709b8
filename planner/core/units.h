// Parsing and printing of sizes and bandwidths as users write them: 24GiB, 24GB, 512MiB, 25GB/s.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace ferry::core {

constexpr int64_t kKiB = 1024;
constexpr int64_t kMiB = 1024 * kKiB;
constexpr int64_t kGiB = 1024 * kMiB;
constexpr int64_t kTiB = 1024 * kGiB;

// "24GiB", "24 GiB", "24GB" (10^9), "512MiB", "1.5TiB", "1048576" (bytes). Throws ferry::Error naming the text.
int64_t parse_size(std::string_view text, std::string_view what = "size");

// "25GB/s", "25", "25GB" -> bytes per second (decimal GB, as bandwidths are quoted). Throws on bad text.
double parse_bandwidth(std::string_view text, std::string_view what = "bandwidth");

// A positive integer with an optional K/M suffix (1024-based): "1048576", "1M", "128K". Used for token counts.
int64_t parse_count(std::string_view text, std::string_view what = "count");

// "148.65 GiB", "12.75 MiB", "512 B": binary units, `decimals` after the point.
std::string format_bytes(int64_t bytes, int decimals = 2);

// "1,048,576"
std::string format_count(int64_t n);

}  // namespace ferry::core
