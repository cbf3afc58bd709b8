#include "transport/world.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "planner/core/log.h"

namespace ferry::transport {

namespace {

using Clock = std::chrono::steady_clock;

World* g_world = nullptr;

// Messages above this go as several (MPI counts are int).
constexpr int64_t kChunk = int64_t{1} << 30;

// A gap this long between two polls means this process did not run (stopped, paused, swapped out): that time does
// not count against the deadline, so a rank resumed after a stop does not blame the ranks it was waiting for.
constexpr auto kNotRunning = std::chrono::seconds(1);

// How long a failing rank waits for the others to fail too (fail()), at most; a quarter of the deadline when that
// is shorter, so that the ranks waiting for a failing rank do not time out first and blame it for not answering.
constexpr double kFailGrace = 2;
// The bytes of each rank's line in fail()'s gather (one collective of fixed size); longer lines are cut.
constexpr int kFailLine = 4096;
// Seconds: a wait without deadline.
constexpr double kForever = 1e9;
// How long a rank whose wait timed out watches for the notice of the peer it waited for (time_out()): longer than
// the waits of a chain of ranks start apart (a layer's compute, in the forward pass), at most a quarter of the
// deadline.
constexpr double kNoticeGrace = 0.5;

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

std::string mpi_error_text(int rc) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(rc, text, &len);
  return std::string(text, static_cast<size_t>(len));
}

void check_mpi(int rc, const char* call) {
  if (rc != MPI_SUCCESS) FERRY_THROW("{} failed: {}", call, mpi_error_text(rc));
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
    check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
    mpi_ = true;
    if (provided < MPI_THREAD_SERIALIZED) {
      MPI_Finalize();
      FERRY_THROW("this MPI gives thread level {}; ferry needs MPI_THREAD_SERIALIZED ({}) at least", provided,
                  MPI_THREAD_SERIALIZED);
    }
    concurrent_threads_ = provided >= MPI_THREAD_MULTIPLE;
    check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup");
    // Errors come back as codes (check_mpi throws them as ferry::Error, main turns that into one line); the
    // communicators made from comm_ inherit it.
    check_mpi(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    check_mpi(MPI_Comm_dup(comm_, &fail_comm_), "MPI_Comm_dup");
    check_mpi(MPI_Comm_dup(comm_, &notice_comm_), "MPI_Comm_dup");
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
  if (fail_comm_ != MPI_COMM_NULL) MPI_Comm_free(&fail_comm_);
  if (notice_comm_ != MPI_COMM_NULL) MPI_Comm_free(&notice_comm_);
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

std::vector<std::string> World::fail(std::string_view line) const {
  if (!distributed()) return {std::string(line)};
  std::vector<char> mine(kFailLine, '\0'), all(static_cast<size_t>(kFailLine) * static_cast<size_t>(size_));
  std::copy_n(line.data(), std::min<size_t>(line.size(), kFailLine - 1), mine.data());
  std::vector<MPI_Request> r(1);
  check_mpi(MPI_Iallgather(mine.data(), kFailLine, MPI_CHAR, all.data(), kFailLine, MPI_CHAR, fail_comm_, &r[0]),
            "MPI_Iallgather");
  // Some rank did not fail: it may be waiting for this one, which must end the run (the posted gather dies with it).
  if (!poll(r, std::min(kFailGrace, timeout_s_ / 4), "the ranks' failures")) abort(line);
  std::vector<std::string> lines, seen;
  for (int rank = 0; rank < size_; ++rank) {
    std::string text(all.data() + static_cast<size_t>(rank) * kFailLine);
    if (std::find(seen.begin(), seen.end(), text) != seen.end()) continue;
    lines.push_back(where(rank) + ": " + text);
    seen.push_back(std::move(text));
  }
  return lines;
}

bool World::poll(std::span<MPI_Request> requests, double limit_s, std::string_view what) const {
  // Small sets (an exchange posts a few per peer) poll without allocating.
  constexpr size_t kInline = 16;
  std::array<int, kInline> done_inline{};
  std::array<MPI_Status, kInline> statuses_inline{};
  std::vector<int> done_heap;
  std::vector<MPI_Status> statuses_heap;
  if (requests.size() > kInline) {
    done_heap.resize(requests.size());
    statuses_heap.resize(requests.size());
  }
  int* done = requests.size() > kInline ? done_heap.data() : done_inline.data();
  MPI_Status* statuses = requests.size() > kInline ? statuses_heap.data() : statuses_inline.data();
  constexpr uint64_t kPollsPerCheck = 256;
  Clock::time_point start, last, deadline;  // from the first check: a wait done within as many polls reads no clock
  bool idle = false;                        // waited long enough that a short sleep per poll costs nothing that matters
  for (uint64_t spin = 0;; ++spin) {
    int count = 0;
    // Testsome, not Testall: it frees what completed, so the requests left name the peers that did not answer.
    const int rc = MPI_Testsome(static_cast<int>(requests.size()), requests.data(), &count, done, statuses);
    if (rc != MPI_SUCCESS) {
      int error = rc;
      for (int i = 0; rc == MPI_ERR_IN_STATUS && i < count; ++i)
        if (statuses[i].MPI_ERROR != MPI_SUCCESS) error = statuses[i].MPI_ERROR;
      FERRY_THROW("MPI failed while waiting for {}: {}", what, mpi_error_text(error));
    }
    if (count == MPI_UNDEFINED ||
        std::all_of(requests.begin(), requests.end(), [](MPI_Request r) { return r == MPI_REQUEST_NULL; }))
      return true;
    // Poll without pause, as MPI_Waitall does: an answer due in microseconds, a transfer that moves as this rank
    // polls. Giving the core away between polls would hand it to any other process for a time slice (ms) on a
    // busy machine, so only a host with more ranks than cores does it, for a peer that may need this core.
    // After 50 ms, sleep between polls (an idle follower must not burn a core).
    if (idle)
      usleep(200);
    else if (oversubscribed_ && spin > 1000)
      sched_yield();
    // Once idle, the clock is read every poll (it costs nothing beside the sleep): a deadline then passes within a
    // poll of its time, so of two ranks waiting in a chain the one that began waiting first times out first and
    // names the rank that went silent, not a peer that is itself waiting for it.
    if (!idle && spin % kPollsPerCheck != kPollsPerCheck - 1) continue;
    const auto now = Clock::now();
    if (spin == kPollsPerCheck - 1) {
      start = last = now;
      deadline = now + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(limit_s));
    }
    // Time this process did not run (stopped, swapped out) is no peer's silence.
    if (now - last > kNotRunning) deadline += now - last;
    last = now;
    idle = idle || now - start > std::chrono::milliseconds(50);
    if (now > deadline) return false;
  }
}

void World::wait_all(std::span<MPI_Request> requests, std::span<const int> peers, std::string_view what, int64_t layer,
                     bool bounded) const {
  if (poll(requests, bounded ? timeout_s_ : kForever, what)) return;
  int peer = -1;
  for (size_t i = 0; i < requests.size(); ++i)
    if (requests[i] != MPI_REQUEST_NULL) {
      peer = peers[i];
      break;
    }
  const std::string who = peer >= 0 ? where(peer) : std::string("the other ranks");
  const std::string of = layer >= 0 ? fmt::format("{} {}", what, layer) : std::string(what);
  time_out(peer, fmt::format("no answer from {} within {:.0f} s ({}; FERRY_RANK_TIMEOUT sets the limit)", who,
                             timeout_s_, of));
}

void World::time_out(int peer, std::string_view line) const {
  if (!mpi_ || size_ == 1 || peer < 0) abort(line);
  // The notice names the rank this one waited for; the sends are never waited for (a stopped peer may never take
  // one, and the run ends either way), so their buffer is the World's.
  notice_ = peer;
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    MPI_Request q = MPI_REQUEST_NULL;
    if (MPI_Isend(&notice_, 1, MPI_INT, r, 0, notice_comm_, &q) == MPI_SUCCESS) MPI_Request_free(&q);
  }
  const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                        std::chrono::duration<double>(std::min(kNoticeGrace, timeout_s_ / 4)));
  while (Clock::now() < until) {
    int waiting = 0, blamed = -1;
    MPI_Iprobe(peer, 0, notice_comm_, &waiting, MPI_STATUS_IGNORE);
    if (waiting && MPI_Recv(&blamed, 1, MPI_INT, peer, 0, notice_comm_, MPI_STATUS_IGNORE) == MPI_SUCCESS) {
      // Two ranks waiting for each other: the lower names the other. Otherwise the peer was itself waiting: the
      // first of the chain to time out names the rank that went silent and ends the run, this rank with it; only
      // if that never comes does this rank's own line end it.
      if (blamed == rank_ && rank_ < peer) abort(line);
      std::this_thread::sleep_for(std::chrono::duration<double>(2 * kNoticeGrace + 5));
      abort(line);
    }
    usleep(1000);
  }
  abort(line);
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

void World::Pending::progress() {
  if (count_ == 0) return;
  int done = 0;  // all done: the requests are freed and null, and wait() finds nothing left
  check_mpi(MPI_Testall(static_cast<int>(count_), requests(), &done, MPI_STATUSES_IGNORE), "MPI_Testall");
}

void World::Pending::wait(std::string_view what, int64_t layer) {
  world_.wait_all(std::span(requests(), count_), std::span(peers(), count_), what, layer, true);
  count_ = 0;
  heap_requests_.clear();
  heap_peers_.clear();
}

}  // namespace ferry::transport
