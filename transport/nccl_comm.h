// Device buffers between the ranks of a World over NCCL (Debian's Open MPI is not CUDA-aware). The communicator
// is bootstrapped over MPI the way nccl-tests does it (shared/spec/transport.md §1): the device chosen first, rank
// 0's unique id broadcast over the World, a non-blocking ncclCommInitRankConfig polled under the World's deadline.
// Transfers run on a non-blocking stream of the communicator's own; every wait polls the stream and NCCL's
// asynchronous error with the deadline, and a timeout or an NCCL/CUDA failure aborts the communicator and ends
// the run with one line (World::abort), since the other ranks would otherwise wait on it. No CUDA or NCCL header
// here: the communicator lives in nccl_comm.cpp, or, built without NCCL, make_nccl_comm refuses.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "transport/layer_roles.h"
#include "transport/world.h"

namespace ferry::transport {

// The CUDA devices NCCL can use in this process: 0, with the reason in `why`, when ferry was built without NCCL or
// CUDA reports no device or fails (no driver: any error means no GPU).
int nccl_devices(std::string& why);

// Collective: whether every rank of `world` can run NCCL on a GPU of its own, local rank r on device r (NCCL does
// not support two ranks of one communicator on one device). The same answer on every rank; otherwise `why` names
// the first rank that cannot and the reason.
bool nccl_usable(const World& world, std::string& why);

// One point-to-point transfer of a device buffer, `peer` a rank of the World.
struct NcclTransfer {
  enum class Kind { Send, Recv };
  Kind kind = Kind::Send;
  void* data = nullptr;
  int64_t bytes = 0;
  int peer = 0;
};

// The transfers of runtime::RankExchange::combine for rank `me` on device rows eo [·, d] (floats): each holder's
// rows (its experts' positions offsets[first] … offsets[last + 1] − 1, one contiguous block) go from the holder to
// every runner but itself; empty blocks are left out on both sides. The same plan as MpiRankExchange::combine.
std::vector<NcclTransfer> combine_transfers(const LayerRoles& roles, int me, float* eo,
                                            std::span<const int64_t> offsets, int64_t d);

class NcclComm {
 public:
  virtual ~NcclComm() = default;  // ncclCommFinalize, then ncclCommDestroy (ncclCommAbort after a failure)

  virtual int device() const = 0;

  // Posts the transfers together (one NCCL group) and returns when they are done. Every rank passes the transfers
  // that match its peers'; zero-byte ones are skipped (both sides know the count). `what` names the exchange in
  // the line of a timeout or failure.
  virtual void exchange(std::span<const NcclTransfer> transfers, std::string_view what) = 0;
  void send(const void* data, int64_t bytes, int to, std::string_view what) {
    const NcclTransfer t{NcclTransfer::Kind::Send, const_cast<void*>(data), bytes, to};
    exchange({&t, 1}, what);
  }
  void recv(void* data, int64_t bytes, int from, std::string_view what) {
    const NcclTransfer t{NcclTransfer::Kind::Recv, data, bytes, from};
    exchange({&t, 1}, what);
  }
  // combine_transfers(roles, rank, eo, offsets, d), exchanged.
  virtual void combine(const LayerRoles& roles, float* eo, std::span<const int64_t> offsets, int64_t d,
                       std::string_view what) = 0;
  // Every rank's `bytes` bytes of `mine`, in rank order, into `all` (size × bytes; `mine` may be this rank's place
  // in it).
  virtual void allgather(const void* mine, void* all, int64_t bytes, std::string_view what) = 0;
};

// Collective over `world`: this rank's communicator on CUDA device `device`, made the calling thread's current
// device (one rank per GPU: world.node_rank() is the usual choice). Throws AgreedError on every rank when some rank
// has no such device, two ranks of one host name the same device, or rank 0 gets no NCCL id; a communicator that
// fails to start, or does not within the deadline, ends the run (World::abort).
std::unique_ptr<NcclComm> make_nccl_comm(const World& world, int device);

}  // namespace ferry::transport
