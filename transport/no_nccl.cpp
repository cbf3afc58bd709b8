// nccl_comm.h's entry points in a build without NCCL: no device for NCCL, and no communicator.
#include "planner/core/error.h"
#include "transport/nccl_comm.h"

namespace ferry::transport {

int nccl_devices(std::string& why) {
  why = "built without NCCL";
  return 0;
}

std::unique_ptr<NcclComm> make_nccl_comm([[maybe_unused]] const World& world, int device) {
  // Every rank runs the same binary, so every rank throws this together.
  throw AgreedError(fmt::format("no NCCL communicator on cuda:{}: built without NCCL", device));
}

}  // namespace ferry::transport
