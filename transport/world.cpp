#include "transport/world.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "planner/core/log.h"

namespace ferry::transport {

namespace {

World* g_world = nullptr;

// Messages above this go as several (MPI counts are int).
constexpr int64_t kChunk = int64_t{1} << 30;

std::string this_host() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0) return "unknown-host";
  return name;
}

double timeout_from_env() {
  const char* env = std::getenv("FERRY_RANK_TIMEOUT");
  if (!env) return 300;
  char* end = nullptr;
  const double s = std::strtod(env, &end);
  FERRY_CHECK(end != env && *end == '\0' && s > 0, "FERRY_RANK_TIMEOUT='{}': give seconds, e.g. 300", env);
  return s;
}

void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(rc, text, &len);
  FERRY_THROW("{} failed: {}", call, text);
}

}  // namespace

bool launched_by_mpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMIX_RANK") != nullptr ||
         std::getenv("PMI_RANK") != nullptr;
}

World::World(int* argc, char*** argv) : host_(this_host()), timeout_s_(timeout_from_env()) {
  FERRY_CHECK(!g_world, "transport: one World per process");
  if (launched_by_mpirun()) {
    int provided = 0;
    check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
    mpi_ = true;
    if (provided < MPI_THREAD_SERIALIZED) {
      MPI_Finalize();
      FERRY_THROW("this MPI gives thread level {}; ferry needs MPI_THREAD_SERIALIZED ({})", provided,
                  MPI_THREAD_SERIALIZED);
    }
    check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup");
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    check_mpi(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node_comm_),
              "MPI_Comm_split_type");
    MPI_Comm_rank(node_comm_, &node_rank_);
    MPI_Comm_size(node_comm_, &node_size_);
    oversubscribed_ = static_cast<unsigned>(node_size_) > std::max(1u, std::thread::hardware_concurrency());
  }
  g_world = this;
  hosts_ = allgather_text(host_, "the host names");
  if (distributed()) core::set_log_prefix("rank " + std::to_string(rank_) + " " + host_ + ": ");
}

World::~World() {
  g_world = nullptr;
  if (!mpi_) return;
  if (node_comm_ != MPI_COMM_NULL) MPI_Comm_free(&node_comm_);
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  MPI_Finalize();
}

World* World::current() { return g_world; }

std::string World::where(int rank) const {
  const std::string& h =
      rank >= 0 && static_cast<size_t>(rank) < hosts_.size() ? hosts_[static_cast<size_t>(rank)] : host_;
  return "rank " + std::to_string(rank) + " (" + h + ")";
}

void World::abort(std::string_view line) const {
  std::fprintf(stderr, "ferry: error: %s: %.*s\n", where().c_str(), static_cast<int>(line.size()), line.data());
  std::fflush(stderr);
  if (mpi_) MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);
}

void World::wait_all(std::span<MPI_Request> requests, std::span<const int> peers, std::string_view what, int64_t layer,
                     bool bounded) const {
  using clock = std::chrono::steady_clock;
  constexpr uint64_t kPollsPerCheck = 256;
  clock::time_point start;  // from the first check: a wait done within as many polls reads no clock
  std::chrono::time_point<clock, std::chrono::duration<double>> deadline;
  bool idle = false;  // waited long enough that a short sleep per poll costs nothing that matters
  for (uint64_t spin = 0;; ++spin) {
    int done = 0;
    check_mpi(MPI_Testall(static_cast<int>(requests.size()), requests.data(), &done, MPI_STATUSES_IGNORE),
              "MPI_Testall");
    if (done) return;
    // Poll without pause, as MPI_Waitall does: an answer due in microseconds, a transfer that moves as this rank
    // polls. Giving the core away between polls would hand it to any other process for a time slice (ms) on a
    // busy machine, so only a host with more ranks than cores does it, for a peer that may need this core.
    // After 50 ms, sleep between polls (an idle follower must not burn a core).
    if (idle)
      usleep(200);
    else if (oversubscribed_ && spin > 1000)
      sched_yield();
    if (spin % kPollsPerCheck != kPollsPerCheck - 1) continue;
    const auto now = clock::now();
    if (spin == kPollsPerCheck - 1) {
      start = now;
      deadline = now + std::chrono::duration<double>(timeout_s_);
    }
    idle = idle || now - start > std::chrono::milliseconds(50);
    if (bounded && now > deadline) {
      int peer = -1;
      for (size_t i = 0; i < requests.size(); ++i)
        if (requests[i] != MPI_REQUEST_NULL) {
          peer = peers[i];
          break;
        }
      const std::string who = peer >= 0 ? where(peer) : std::string("the other ranks");
      const std::string of = layer >= 0 ? fmt::format("{} {}", what, layer) : std::string(what);
      abort(fmt::format("no answer from {} within {:.0f} s ({}; FERRY_RANK_TIMEOUT sets the limit)", who, timeout_s_,
                        of));
    }
  }
}

void World::broadcast(void* data, int64_t bytes, int root, std::string_view what) const {
  if (!mpi_ || size_ == 1) return;
  std::vector<MPI_Request> requests;
  for (int64_t off = 0; off < bytes; off += kChunk) {
    requests.emplace_back();
    check_mpi(MPI_Ibcast(static_cast<char*>(data) + off, static_cast<int>(std::min(kChunk, bytes - off)), MPI_BYTE,
                         root, comm_, &requests.back()),
              "MPI_Ibcast");
  }
  wait_all(requests, std::vector<int>(requests.size(), root), what);
}

std::string World::broadcast_text(std::string text, int root, std::string_view what) const {
  int64_t n = static_cast<int64_t>(text.size());
  broadcast(&n, sizeof n, root, what);
  text.resize(static_cast<size_t>(n));
  broadcast(text.data(), n, root, what);
  return text;
}

std::vector<std::string> World::allgather_text(const std::string& mine, std::string_view what) const {
  if (!mpi_ || size_ == 1) return {mine};
  const int n = static_cast<int>(mine.size());
  std::vector<int> lengths(static_cast<size_t>(size_));
  std::vector<MPI_Request> r(1);
  check_mpi(MPI_Iallgather(&n, 1, MPI_INT, lengths.data(), 1, MPI_INT, comm_, &r[0]), "MPI_Iallgather");
  wait_all(r, {-1}, what);
  std::vector<int> offsets(static_cast<size_t>(size_), 0);
  for (size_t i = 1; i < offsets.size(); ++i) offsets[i] = offsets[i - 1] + lengths[i - 1];
  std::string all(static_cast<size_t>(offsets.back() + lengths.back()), '\0');
  check_mpi(
      MPI_Iallgatherv(mine.data(), n, MPI_CHAR, all.data(), lengths.data(), offsets.data(), MPI_CHAR, comm_, &r[0]),
      "MPI_Iallgatherv");
  wait_all(r, {-1}, what);
  std::vector<std::string> out;
  for (size_t i = 0; i < lengths.size(); ++i)
    out.push_back(all.substr(static_cast<size_t>(offsets[i]), static_cast<size_t>(lengths[i])));
  return out;
}

void World::send(const void* data, int64_t bytes, int to, int tag, std::string_view what) const {
  Pending p(*this);
  p.send(data, bytes, to, tag);
  p.wait(what);
}

void World::recv(void* data, int64_t bytes, int from, int tag, std::string_view what) const {
  Pending p(*this);
  p.recv(data, bytes, from, tag);
  p.wait(what);
}

void World::barrier(std::string_view what) const {
  if (!mpi_ || size_ == 1) return;
  std::vector<MPI_Request> r(1);
  check_mpi(MPI_Ibarrier(comm_, &r[0]), "MPI_Ibarrier");
  wait_all(r, {-1}, what);
}

void World::share_failure(std::string_view what, const std::string& failure) const {
  const std::vector<std::string> all = allgather_text(failure, what);
  for (size_t r = 0; r < all.size(); ++r) {
    if (all[r].empty()) continue;
    if (size_ == 1) throw AgreedError(all[r]);
    throw AgreedError(where(static_cast<int>(r)) + ": " + all[r]);
  }
}

World::Pending::~Pending() {
  MPI_Request* r = requests();
  for (size_t i = 0; i < count_; ++i)
    if (r[i] != MPI_REQUEST_NULL) {
      MPI_Cancel(&r[i]);
      MPI_Request_free(&r[i]);
    }
}

MPI_Request& World::Pending::add(int peer) {
  if (count_ < kInline) {
    inline_peers_[count_] = peer;
    inline_requests_[count_] = MPI_REQUEST_NULL;  // what the destructor skips should the post fail
    return inline_requests_[count_++];
  }
  if (count_ == kInline) {
    heap_requests_.assign(inline_requests_.begin(), inline_requests_.end());
    heap_peers_.assign(inline_peers_.begin(), inline_peers_.end());
  }
  heap_requests_.push_back(MPI_REQUEST_NULL);
  heap_peers_.push_back(peer);
  ++count_;
  return heap_requests_.back();
}

void World::Pending::send(const void* data, int64_t bytes, int to, int tag) {
  FERRY_CHECK(world_.mpi_, "transport: a send in a world of one");
  for (int64_t off = 0; off < std::max<int64_t>(bytes, 1); off += kChunk) {
    MPI_Request& r = add(to);
    check_mpi(MPI_Isend(static_cast<const char*>(data) + off, static_cast<int>(std::min(kChunk, bytes - off)), MPI_BYTE,
                        to, tag, world_.comm_, &r),
              "MPI_Isend");
  }
}

void World::Pending::recv(void* data, int64_t bytes, int from, int tag) {
  FERRY_CHECK(world_.mpi_, "transport: a receive in a world of one");
  for (int64_t off = 0; off < std::max<int64_t>(bytes, 1); off += kChunk) {
    MPI_Request& r = add(from);
    check_mpi(MPI_Irecv(static_cast<char*>(data) + off, static_cast<int>(std::min(kChunk, bytes - off)), MPI_BYTE, from,
                        tag, world_.comm_, &r),
              "MPI_Irecv");
  }
}

void World::Pending::wait(std::string_view what, int64_t layer) {
  world_.wait_all(std::span(requests(), count_), std::span(peers(), count_), what, layer, true);
  count_ = 0;
  heap_requests_.clear();
  heap_peers_.clear();
}

}  // namespace ferry::transport
