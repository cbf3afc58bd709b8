#include <gtest/gtest.h>

#include "planner/core/error.h"
#include "planner/core/units.h"

using namespace ferry;

TEST(Units, ParsesBinaryAndDecimalSizes) {
  EXPECT_EQ(core::parse_size("24GiB"), 24LL << 30);
  EXPECT_EQ(core::parse_size("24 GiB"), 24LL << 30);
  EXPECT_EQ(core::parse_size("24GB"), 24000000000LL);
  EXPECT_EQ(core::parse_size("512MiB"), 512LL << 20);
  EXPECT_EQ(core::parse_size("1.5TiB"), 3LL << 39);
  EXPECT_EQ(core::parse_size("1048576"), 1048576);
  EXPECT_EQ(core::parse_size("256g"), 256LL << 30);
}

TEST(Units, RejectsMalformedSizes) {
  for (const char* bad : {"", "GiB", "24XB", "-1GiB", "0", "1e400", "24GiB extra", "abc"}) {
    EXPECT_THROW(core::parse_size(bad), ferry::Error) << bad;
  }
}

TEST(Units, ParsesCountsWithSuffixes) {
  EXPECT_EQ(core::parse_count("1M"), 1048576);
  EXPECT_EQ(core::parse_count("128K"), 131072);
  EXPECT_EQ(core::parse_count("163840"), 163840);
  for (const char* bad : {"0", "-5", "1.5", "12Q", "", "ten"})
    EXPECT_THROW(core::parse_count(bad), ferry::Error) << bad;
}

TEST(Units, ParsesBandwidth) {
  EXPECT_DOUBLE_EQ(core::parse_bandwidth("76.8"), 76.8e9);
  EXPECT_DOUBLE_EQ(core::parse_bandwidth("25GB/s"), 25e9);
  EXPECT_THROW(core::parse_bandwidth("fast"), ferry::Error);
  EXPECT_THROW(core::parse_bandwidth("0"), ferry::Error);
}

TEST(Units, FormatsBytes) {
  EXPECT_EQ(core::format_bytes(12LL << 20), "12.00 MiB");
  EXPECT_EQ(core::format_bytes(512), "512 B");
  EXPECT_EQ(core::format_count(1048576), "1,048,576");
}
