// The prefill phase of a per-phase workspace (planner::DevicePlan::prefill_borrowed): the GPU keeps the feed
// buffers of a small chunk through decode, and a prompt longer than that is fed in bigger chunks whose buffers
// take the room of the expert cache, which the expert provider lends for the feed and gets back, empty, after.
// Internal to runtime/model (Session::compute).
#pragma once

#include <cstdint>
#include <memory>

#include "planner/core/model_config.h"
#include "planner/memory.h"
#include "runtime/backend/backend.h"
#include "runtime/model/forward_parts.h"
#include "runtime/model/moe_schedule.h"

namespace ferry::runtime::detail {

class BorrowedFeed {
 public:
  // Waits for the ops issued on `ops` (they may read the cache and the session's buffers), has `experts` lend its
  // cache, moves the plan of the bytes a `layout` chunk's buffers take from the device's expert cache to its
  // workspace, allocates them and puts them in `feed` in place of the session's. Throws ferry::Error, with the
  // cache and `feed` as they were, when the cache lends less than the buffers need.
  BorrowedFeed(ExpertProvider& experts, OpStream& ops, std::shared_ptr<FeedBuffers>& feed,
               const planner::CpuForwardWorkspace& layout, const core::ModelConfig& c);
  // Waits for the ops, puts the session's buffers back, frees the borrowed ones, and has the cache taken back.
  ~BorrowedFeed();
  BorrowedFeed(const BorrowedFeed&) = delete;
  BorrowedFeed& operator=(const BorrowedFeed&) = delete;

 private:
  ExpertProvider& experts_;
  OpStream& ops_;
  std::shared_ptr<FeedBuffers>& feed_;
  std::shared_ptr<FeedBuffers> resident_;  // the session's own, while the borrowed ones are in `feed_`
  int64_t bytes_ = 0;                      // of the plan moved from the expert cache to the workspace
};

}  // namespace ferry::runtime::detail
