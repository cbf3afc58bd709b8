// The parts of nccl_comm.h that need neither CUDA nor NCCL, in every build.
#include <fmt/format.h>

#include "transport/nccl_comm.h"

namespace ferry::transport {

bool nccl_usable(const World& world, std::string& why) {
  std::string mine;
  const int devices = nccl_devices(mine);
  if (devices > 0 && world.node_rank() >= devices)
    mine = fmt::format("local rank {} of {} on a host with {} GPU(s): NCCL runs one rank per GPU", world.node_rank(),
                       world.node_size(), devices);
  const std::vector<std::string> all = world.allgather_text(mine, "whether NCCL can run on every rank");
  for (size_t r = 0; r < all.size(); ++r)
    if (!all[r].empty()) {
      why = world.distributed() ? world.where(static_cast<int>(r)) + ": " + all[r] : all[r];
      return false;
    }
  why.clear();
  return true;
}

std::vector<NcclTransfer> combine_transfers(const LayerRoles& roles, int me, float* eo,
                                            std::span<const int64_t> offsets, int64_t d) {
  std::vector<NcclTransfer> transfers;
  for (const ExpertRange& h : roles.holders) {
    const int64_t begin = offsets[static_cast<size_t>(h.first)], end = offsets[static_cast<size_t>(h.last + 1)];
    if (end == begin) continue;
    float* rows = eo + begin * d;
    const int64_t bytes = (end - begin) * d * static_cast<int64_t>(sizeof(float));
    for (const int r : roles.runners) {
      if (r == h.rank) continue;
      if (me == h.rank) transfers.push_back({NcclTransfer::Kind::Send, rows, bytes, r});
      if (me == r) transfers.push_back({NcclTransfer::Kind::Recv, rows, bytes, h.rank});
    }
  }
  return transfers;
}

}  // namespace ferry::transport
