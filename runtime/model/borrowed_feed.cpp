#include "runtime/model/borrowed_feed.h"

#include <utility>

#include "planner/core/error.h"
#include "planner/core/log.h"
#include "planner/core/units.h"

namespace ferry::runtime::detail {

BorrowedFeed::BorrowedFeed(ExpertProvider& experts, OpStream& ops, std::shared_ptr<FeedBuffers>& feed,
                           const planner::CpuForwardWorkspace& layout, const core::ModelConfig& c)
    : experts_(experts), ops_(ops), feed_(feed), bytes_(layout.bytes()) {
  Backend& device = ops.device();
  ops_.sync();
  const int64_t lent = experts_.lend_cache();
  try {
    FERRY_CHECK(lent >= bytes_, "{}: a prefill chunk of {} tokens needs {} of workspace, the expert cache lends {}",
                device.name(), layout.ubatch, core::format_bytes(bytes_), core::format_bytes(lent));
    device.ledger().lend(MemoryClass::ExpertCache, MemoryClass::Workspace, bytes_);
    try {
      std::shared_ptr<FeedBuffers> borrowed = std::make_shared<FeedBuffers>(layout, c, &device);
      resident_ = std::exchange(feed_, std::move(borrowed));
    } catch (...) {
      device.ledger().lend(MemoryClass::Workspace, MemoryClass::ExpertCache, bytes_);
      throw;
    }
  } catch (...) {
    experts_.take_back_cache();
    throw;
  }
}

// Nothing here may throw out of a destructor: a failure leaves decode without a cache (its experts then go to
// their hosts, still correct) and is logged.
BorrowedFeed::~BorrowedFeed() {
  Backend& device = ops_.device();
  try {
    ops_.sync();
  } catch (const std::exception& e) {
    core::logger().error("{}: waiting for a prefill chunk's ops: {}", device.name(), e.what());
  }
  feed_ = std::move(resident_);  // frees the borrowed buffers: the session held the only other reference
  try {
    device.ledger().lend(MemoryClass::Workspace, MemoryClass::ExpertCache, bytes_);
    experts_.take_back_cache();
  } catch (const std::exception& e) {
    core::logger().error("{}: taking the expert cache back after prefill: {}", device.name(), e.what());
  }
}

}  // namespace ferry::runtime::detail
