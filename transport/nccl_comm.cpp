// NcclComm over NCCL 2.28 (shared/spec/transport.md §1.3): nccl-tests' handshake with a non-blocking communicator,
// so that no call blocks past the World's deadline: init, group ends and finalize return ncclInProgress and are
// polled with ncclCommGetAsyncError, transfers with cudaStreamQuery (never cudaStreamSynchronize).
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>

#include "planner/core/error.h"
#include "planner/core/log.h"
#include "transport/nccl_comm.h"

namespace ferry::transport {

namespace {

using Clock = std::chrono::steady_clock;

// As World's waits: a gap this long between two polls means this process did not run, which does not count.
constexpr auto kNotRunning = std::chrono::seconds(1);

std::string nccl_text(ncclResult_t r, ncclComm_t comm) {
  std::string text = ncclGetErrorString(r);
  const char* last = ncclGetLastError(comm);
  if (last && *last) text += std::string(" (") + last + ")";
  return text;
}

std::string cuda_text(cudaError_t e) {
  cudaGetLastError();  // off the thread's slot, so that a later check does not report it again
  return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

// The deadline of one wait, polled between tries: spins first (an answer due in microseconds), then gives the core
// away (ranks may share cores), then, after 50 ms, sleeps between polls.
class Deadline {
 public:
  explicit Deadline(double seconds)
      : start_(Clock::now()),
        last_(start_),
        end_(start_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds))) {}

  bool passed() {
    ++polls_;
    if (idle_)
      usleep(200);
    else if (polls_ > 1000)
      sched_yield();
    if (polls_ % 256 != 0) return false;
    const auto now = Clock::now();
    if (now - last_ > kNotRunning) end_ += now - last_;
    last_ = now;
    idle_ = idle_ || now - start_ > std::chrono::milliseconds(50);
    return now > end_;
  }

 private:
  Clock::time_point start_, last_, end_;
  uint64_t polls_ = 0;
  bool idle_ = false;
};

struct StreamDeleter {
  void operator()(cudaStream_t s) const { cudaStreamDestroy(s); }
};
using Stream = std::unique_ptr<CUstream_st, StreamDeleter>;

class Comm final : public NcclComm {
 public:
  Comm(const World& world, int device);
  ~Comm() override;

  int device() const override { return device_; }
  void exchange(std::span<const NcclTransfer> transfers, std::string_view what) override;
  void combine(const LayerRoles& roles, float* eo, std::span<const int64_t> offsets, int64_t d,
               std::string_view what) override {
    const std::vector<NcclTransfer> transfers = combine_transfers(roles, world_.rank(), eo, offsets, d);
    exchange(transfers, what);
  }
  void allgather(const void* mine, void* all, int64_t bytes, std::string_view what) override;

 private:
  void choose_device();
  void start(const ncclUniqueId& id);
  // Ends every rank: this communicator aborted, then `line` (World::abort).
  [[noreturn]] void fail(const std::string& line);
  // An NCCL call that returned at once: ncclInProgress is its non-blocking success.
  void check(ncclResult_t r, std::string_view call, std::string_view what);
  // Until NCCL's pending calls are done and the stream is idle, with the World's deadline; `peers` are named
  // when it passes.
  void wait(std::string_view what, const std::vector<int>& peers);
  std::string names(const std::vector<int>& peers) const;
  std::vector<int> others() const;

  const World& world_;
  int device_;
  Stream stream_;
  ncclComm_t comm_ = nullptr;
};

Comm::Comm(const World& world, int device) : world_(world), device_(device) {
  choose_device();
  ncclUniqueId id{};
  world_.agree("the NCCL unique id", [&] {
    if (!world_.leader()) return;
    const ncclResult_t r = ncclGetUniqueId(&id);
    FERRY_CHECK(r == ncclSuccess, "ncclGetUniqueId failed: {}", nccl_text(r, nullptr));
  });
  world_.broadcast(&id, sizeof id, 0, "the NCCL unique id");
  start(id);
}

// Before any NCCL call: NCCL binds the communicator to the calling thread's current device.
void Comm::choose_device() {
  world_.agree("the GPUs for NCCL", [&] {
    std::string why;
    const int devices = nccl_devices(why);
    FERRY_CHECK(devices > 0, "no GPU for NCCL: {}", why);
    FERRY_CHECK(device_ >= 0 && device_ < devices, "no GPU cuda:{} for NCCL: this host has {}", device_, devices);
    cudaError_t e = cudaSetDevice(device_);
    FERRY_CHECK(e == cudaSuccess, "cudaSetDevice({}) failed: {}", device_, cuda_text(e));
    cudaStream_t s = nullptr;
    e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    FERRY_CHECK(e == cudaSuccess, "cudaStreamCreateWithFlags on cuda:{} failed: {}", device_, cuda_text(e));
    stream_.reset(s);
  });
  // Every rank sees every rank's place, so every rank refuses together.
  const std::vector<std::string> places =
      world_.allgather_text("cuda:" + std::to_string(device_) + " of host " + world_.host(), "the ranks' GPUs");
  for (size_t a = 0; a < places.size(); ++a)
    for (size_t b = a + 1; b < places.size(); ++b)
      if (places[a] == places[b])
        throw AgreedError(
            fmt::format("ranks {} and {} both use GPU {}: NCCL runs one rank per GPU (give each rank a "
                        "GPU of its own, e.g. at most as many ranks per host as GPUs)",
                        a, b, places[a]));
}

void Comm::start(const ncclUniqueId& id) {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // returns at once; the wait below keeps the deadline
  const ncclResult_t r = ncclCommInitRankConfig(&comm_, world_.size(), id, world_.rank(), &config);
  check(r, "ncclCommInitRankConfig", "the NCCL communicator");
  wait("the NCCL communicator", others());
}

Comm::~Comm() {
  if (!comm_) return;
  // Finalize flushes what this rank posted; past the deadline, or failing, the communicator is aborted instead.
  ncclResult_t state = ncclCommFinalize(comm_);
  Deadline deadline(world_.timeout_s());
  while (state == ncclInProgress && !deadline.passed())
    if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) break;
  if (state == ncclSuccess) {
    ncclCommDestroy(comm_);
  } else {
    core::logger().warn(
        "ncclCommFinalize on cuda:{}: {}; aborting the communicator", device_,
        state == ncclInProgress ? std::string("not done within the deadline") : nccl_text(state, comm_));
    ncclCommAbort(comm_);
  }
}

void Comm::fail(const std::string& line) {
  if (comm_) ncclCommAbort(comm_);
  comm_ = nullptr;
  world_.abort(line);
}

void Comm::check(ncclResult_t r, std::string_view call, std::string_view what) {
  if (r != ncclSuccess && r != ncclInProgress) fail(fmt::format("{} failed ({}): {}", call, what, nccl_text(r, comm_)));
}

std::string Comm::names(const std::vector<int>& peers) const {
  std::string text;
  for (const int p : peers) text += (text.empty() ? "" : ", ") + world_.where(p);
  return text.empty() ? "this rank" : text;
}

std::vector<int> Comm::others() const {
  std::vector<int> ranks;
  for (int p = 0; p < world_.size(); ++p)
    if (p != world_.rank()) ranks.push_back(p);
  return ranks;
}

void Comm::wait(std::string_view what, const std::vector<int>& peers) {
  Deadline deadline(world_.timeout_s());
  for (;;) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    check(r, "ncclCommGetAsyncError", what);
    if (state != ncclSuccess && state != ncclInProgress)
      fail(fmt::format("NCCL failed during {} with {}: {}", what, names(peers), nccl_text(state, comm_)));
    if (state == ncclSuccess) {
      const cudaError_t e = cudaStreamQuery(stream_.get());
      if (e == cudaSuccess) return;
      if (e != cudaErrorNotReady) fail(fmt::format("cudaStreamQuery failed during {}: {}", what, cuda_text(e)));
    }
    if (deadline.passed())
      fail(fmt::format("no answer from {} within {:.0f} s over NCCL ({}; FERRY_RANK_TIMEOUT sets the limit)",
                       names(peers), world_.timeout_s(), what));
  }
}

void Comm::exchange(std::span<const NcclTransfer> transfers, std::string_view what) {
  std::vector<int> peers;
  for (const NcclTransfer& t : transfers) {
    FERRY_CHECK(t.peer >= 0 && t.peer < world_.size() && t.bytes >= 0,
                "transport: an NCCL transfer of {} bytes with rank {} of {} ({})", t.bytes, t.peer, world_.size(),
                what);
    if (t.bytes > 0 && std::find(peers.begin(), peers.end(), t.peer) == peers.end()) peers.push_back(t.peer);
  }
  if (peers.empty()) return;
  check(ncclGroupStart(), "ncclGroupStart", what);
  for (const NcclTransfer& t : transfers) {
    if (t.bytes == 0) continue;
    const auto n = static_cast<size_t>(t.bytes);
    if (t.kind == NcclTransfer::Kind::Send)
      check(ncclSend(t.data, n, ncclUint8, t.peer, comm_, stream_.get()), "ncclSend to " + world_.where(t.peer), what);
    else
      check(ncclRecv(t.data, n, ncclUint8, t.peer, comm_, stream_.get()), "ncclRecv from " + world_.where(t.peer),
            what);
  }
  check(ncclGroupEnd(), "ncclGroupEnd", what);
  wait(what, peers);
}

void Comm::allgather(const void* mine, void* all, int64_t bytes, std::string_view what) {
  FERRY_CHECK(bytes >= 0, "transport: an NCCL allgather of {} bytes ({})", bytes, what);
  if (bytes == 0) return;
  check(ncclAllGather(mine, all, static_cast<size_t>(bytes), ncclUint8, comm_, stream_.get()), "ncclAllGather", what);
  wait(what, others());
}

}  // namespace

int nccl_devices(std::string& why) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    why = "no usable CUDA device: cudaGetDeviceCount: " + cuda_text(e);
    return 0;
  }
  why = count > 0 ? "" : "no CUDA device";
  return count;
}

std::unique_ptr<NcclComm> make_nccl_comm(const World& world, int device) {
  return std::make_unique<Comm>(world, device);
}

}  // namespace ferry::transport
