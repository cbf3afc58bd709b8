// transport::NcclComm under `mpirun -np 1 and 2` (tests/mpi/CMakeLists.txt), run like test_world: every rank runs
// every test in the same order, one failing rank fails the run, only rank 0's printer reports.
//
// NcclPlan needs no device: the transfers NcclComm::combine posts, run over MPI on host buffers, must move the bytes
// MpiRankExchange::combine moves. The device tests (NcclDevice) need a GPU per rank (NCCL does not support two
// ranks on one device); without, every rank learns it together (nccl_usable over the World), checks that
// make_nccl_comm refuses on every rank at once (NcclAbsent), and the run exits 77 (skipped): a machine without a
// driver, a build without NCCL, and -np 2 on a one-GPU machine all end so.
//
// `test_nccl --silent-rank-1` is no test run: rank 1 makes the communicator, then never sends what rank 0 waits
// for; rank 0 must end the job at the deadline naming rank 1 (check_nccl_timeout.py). 77 without the GPUs.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "runtime/model/rank_exchange.h"
#include "tests/mpi/mpi_gtest.h"
#include "transport/nccl_comm.h"
#include "transport/rank_exchange.h"
#include "transport/world.h"

#ifdef FERRY_HAVE_NCCL
#include <cuda_runtime_api.h>
#endif

namespace ferry::transport {
namespace {

const World& world() { return *World::current(); }
// The device tests' communicator (made by the first, in the same order on every rank); main destroys it before
// the World, which its destructor waits with.
std::unique_ptr<NcclComm> g_comm;
size_t sz(int64_t v) { return static_cast<size_t>(v); }

// ---- the combine's cases: uneven blocks of rows, one rank's block empty, runners in several places ----

constexpr int64_t kD = 33;  // floats per row: not a multiple of anything NCCL might round to

struct CombineCase {
  std::string name;
  LayerRoles roles;
  std::vector<int64_t> offsets;  // experts + 1
};

// 3 experts per rank, holders in expert order with the ranks in `rank_order`; the rows per expert are uneven and
// the block of the last rank in `rank_order` is empty (a holder none of the layer's tokens chose).
CombineCase combine_case(std::string name, std::vector<int> runners, const std::vector<int>& rank_order) {
  CombineCase c{std::move(name), {std::move(runners), {}}, {0}};
  for (size_t i = 0; i < rank_order.size(); ++i) {
    const auto first = static_cast<int64_t>(3 * i);
    c.roles.holders.push_back({rank_order[i], first, first + 2});
    for (int64_t e = first; e <= first + 2; ++e) {
      const int64_t rows = i + 1 == rank_order.size() ? 0 : (e * 7 + 3) % 5;
      c.offsets.push_back(c.offsets.back() + rows);
    }
  }
  return c;
}

std::vector<CombineCase> combine_cases(int size) {
  std::vector<int> in_order, reversed, all;
  for (int r = 0; r < size; ++r) in_order.push_back(r), reversed.push_back(size - 1 - r), all.push_back(r);
  return {combine_case("one runner, rank 0", {0}, in_order), combine_case("every rank runs", all, in_order),
          combine_case("the last rank runs, ranks reversed", {size - 1}, reversed)};
}

const ExpertRange* range_of(const LayerRoles& roles, int rank) {
  for (const ExpertRange& h : roles.holders)
    if (h.rank == rank) return &h;
  return nullptr;
}

float value(int rank, int64_t row, int64_t col) { return static_cast<float>(rank * 100000 + row * 100 + col) + 0.25f; }

// Before the combine: this rank's experts' rows hold its values, every other row a mark of the rank that has it.
std::vector<float> rows_before(const CombineCase& c, int me) {
  const int64_t rows = c.offsets.back();
  std::vector<float> eo(sz(rows * kD), -1.0f - static_cast<float>(me));
  if (const ExpertRange* mine = range_of(c.roles, me))
    for (int64_t row = c.offsets[sz(mine->first)]; row < c.offsets[sz(mine->last + 1)]; ++row)
      for (int64_t col = 0; col < kD; ++col) eo[sz(row * kD + col)] = value(me, row, col);
  return eo;
}

// After: a runner has every holder's rows; another rank only its own.
std::vector<float> rows_after(const CombineCase& c, int me) {
  const bool runs = std::find(c.roles.runners.begin(), c.roles.runners.end(), me) != c.roles.runners.end();
  std::vector<float> eo = rows_before(c, me);
  if (runs)
    for (const ExpertRange& h : c.roles.holders)
      for (int64_t row = c.offsets[sz(h.first)]; row < c.offsets[sz(h.last + 1)]; ++row)
        for (int64_t col = 0; col < kD; ++col) eo[sz(row * kD + col)] = value(h.rank, row, col);
  return eo;
}

std::vector<float> mpi_combine(const CombineCase& c) {
  RankGroup group(world(), {c.roles});
  MpiRankExchange exchange(group, 0);
  std::vector<float> eo = rows_before(c, world().rank());
  exchange.expect_rows(0, eo.data(), c.offsets, kD);
  exchange.combine(0, eo.data(), c.offsets, kD);
  return eo;
}

bool same_bytes(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// combine_transfers' plan, carried out over MPI on host rows: what NcclComm::combine posts to NCCL.
TEST(NcclPlan, CombineTransfersMoveWhatMpiRankExchangeMoves) {
  const World& w = world();
  for (const CombineCase& c : combine_cases(w.size())) {
    std::vector<float> eo = rows_before(c, w.rank());
    World::Pending p(w);
    for (const NcclTransfer& t : combine_transfers(c.roles, w.rank(), eo.data(), c.offsets, kD)) {
      EXPECT_GT(t.bytes, 0) << c.name << ": an empty block is sent";
      EXPECT_NE(t.peer, w.rank()) << c.name << ": a transfer to itself";
      if (t.kind == NcclTransfer::Kind::Send) p.send(t.data, t.bytes, t.peer, 21);
      if (t.kind == NcclTransfer::Kind::Recv) p.recv(t.data, t.bytes, t.peer, 21);
    }
    p.wait("the combine's plan over MPI");
    EXPECT_TRUE(same_bytes(eo, mpi_combine(c))) << c.name;
    EXPECT_TRUE(same_bytes(eo, rows_after(c, w.rank()))) << c.name;
  }
}

// Without a GPU for every rank, asking for the communicator fails on every rank together, naming why.
TEST(NcclAbsent, EveryRankRefusesTogether) {
  const World& w = world();
  try {
    (void)make_nccl_comm(w, w.node_rank());
    ADD_FAILURE() << "an NCCL communicator without a GPU for every rank";
  } catch (const AgreedError& e) {
    const std::string what = e.what();
#ifdef FERRY_HAVE_NCCL
    EXPECT_NE(what.find("no GPU"), std::string::npos) << what;
    EXPECT_NE(what.find("for NCCL"), std::string::npos) << what;
#else
    EXPECT_NE(what.find("built without NCCL"), std::string::npos) << what;
#endif
  }
}

#ifdef FERRY_HAVE_NCCL

void cuda_ok(cudaError_t e, const char* call) { ASSERT_EQ(e, cudaSuccess) << call << ": " << cudaGetErrorString(e); }

// A device copy of host bytes, on this rank's GPU.
class DeviceBytes {
 public:
  explicit DeviceBytes(int64_t bytes) : bytes_(bytes) {
    cuda_ok(cudaMalloc(&data_, sz(std::max<int64_t>(bytes, 1))), "cudaMalloc");
  }
  template <class T>
  explicit DeviceBytes(const std::vector<T>& host) : DeviceBytes(static_cast<int64_t>(host.size() * sizeof(T))) {
    cuda_ok(cudaMemcpy(data_, host.data(), sz(bytes_), cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  }
  ~DeviceBytes() { cudaFree(data_); }
  DeviceBytes(const DeviceBytes&) = delete;
  DeviceBytes& operator=(const DeviceBytes&) = delete;
  void* data() const { return data_; }
  template <class T>
  std::vector<T> host() const {
    std::vector<T> out(sz(bytes_) / sizeof(T));
    cuda_ok(cudaMemcpy(out.data(), data_, sz(bytes_), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
    return out;
  }

 private:
  void* data_ = nullptr;
  int64_t bytes_;
};

uint8_t pattern(int from, int tag, int64_t i) { return static_cast<uint8_t>(from * 31 + tag * 7 + i * 13 + (i >> 9)); }

std::vector<uint8_t> message(int from, int tag, int64_t bytes) {
  std::vector<uint8_t> m(sz(bytes));
  for (int64_t i = 0; i < bytes; ++i) m[sz(i)] = pattern(from, tag, i);
  return m;
}

int next_rank() { return (world().rank() + 1) % world().size(); }
int prev_rank() { return (world().rank() + world().size() - 1) % world().size(); }

// The communicator on this rank's GPU; each test makes that GPU current again, since a refusal may have switched
// devices.
NcclComm& comm() {
  if (!g_comm) g_comm = make_nccl_comm(world(), world().node_rank());
  return *g_comm;
}

class NcclDevice : public testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(comm().device(), world().node_rank());
    cuda_ok(cudaSetDevice(comm().device()), "cudaSetDevice");
  }
};

// A few MiB to the next rank and nothing (a zero-byte transfer, skipped on both sides) to the previous one, posted
// together (to itself on one rank).
TEST_F(NcclDevice, ExchangeAroundTheRing) {
  const int64_t big = (int64_t{3} << 20) + 5;
  const DeviceBytes to_next(message(world().rank(), 1, big)), from_prev(big), empty(int64_t{0});
  const std::vector<NcclTransfer> transfers{{NcclTransfer::Kind::Recv, from_prev.data(), big, prev_rank()},
                                            {NcclTransfer::Kind::Send, empty.data(), 0, prev_rank()},
                                            {NcclTransfer::Kind::Recv, empty.data(), 0, next_rank()},
                                            {NcclTransfer::Kind::Send, to_next.data(), big, next_rank()}};
  comm().exchange(transfers, "a test ring");
  EXPECT_EQ(from_prev.host<uint8_t>(), message(prev_rank(), 1, big));
}

// send and recv each wait for their own transfer: rank 0 sends first, every other rank receives first.
TEST_F(NcclDevice, SendAndRecvAroundTheRing) {
  if (!world().distributed()) GTEST_SKIP() << "a blocking send needs another rank";
  const int64_t bytes = (int64_t{2} << 20) + 3;
  const DeviceBytes mine(message(world().rank(), 2, bytes)), got(bytes);
  if (world().leader()) comm().send(mine.data(), bytes, next_rank(), "a test send");
  comm().recv(got.data(), bytes, prev_rank(), "a test receive");
  if (!world().leader()) comm().send(mine.data(), bytes, next_rank(), "a test send");
  EXPECT_EQ(got.host<uint8_t>(), message(prev_rank(), 2, bytes));
}

// The same bytes as the exchange over MPI on host copies.
TEST_F(NcclDevice, CombineMatchesMpiRankExchange) {
  for (const CombineCase& c : combine_cases(world().size())) {
    const DeviceBytes eo(rows_before(c, world().rank()));
    comm().combine(c.roles, static_cast<float*>(eo.data()), c.offsets, kD, "a test combine");
    const std::vector<float> got = eo.host<float>();
    EXPECT_TRUE(same_bytes(got, mpi_combine(c))) << c.name;
    EXPECT_TRUE(same_bytes(got, rows_after(c, world().rank()))) << c.name;
  }
}

TEST_F(NcclDevice, AllgatherInRankOrder) {
  const int64_t bytes = (int64_t{1} << 20) + 7;
  const DeviceBytes mine(message(world().rank(), 3, bytes)), all(bytes * world().size());
  comm().allgather(mine.data(), all.data(), bytes, "a test allgather");
  const std::vector<uint8_t> got = all.host<uint8_t>();
  for (int r = 0; r < world().size(); ++r)
    EXPECT_TRUE(std::equal(got.begin() + r * bytes, got.begin() + (r + 1) * bytes, message(r, 3, bytes).begin()))
        << "rank " << r << "'s part";
}

// NCCL does not support two ranks of one communicator on one device: every rank refuses, naming both.
TEST_F(NcclDevice, TwoRanksOnOneGpuRefused) {
  const World& w = world();
  if (w.node_size() < 2) GTEST_SKIP() << "needs two ranks on one host";
  try {
    (void)make_nccl_comm(w, 0);
    ADD_FAILURE() << "two ranks got a communicator on cuda:0";
  } catch (const AgreedError& e) {
    EXPECT_NE(std::string(e.what()).find("one rank per GPU"), std::string::npos) << e.what();
  }
}

int run_silent_rank_1(const World& w) {
  const int64_t bytes = 1 << 20;
  const DeviceBytes buffer(bytes);
  if (w.rank() == 0) {
    comm().recv(buffer.data(), bytes, 1, "a test message from rank 1");
    std::fprintf(stderr, "rank 0 got an answer from the silent rank 1\n");
    return 1;
  }
  (void)comm();
  std::this_thread::sleep_for(std::chrono::seconds(120));  // MPI_Abort ends this rank well before
  return 0;
}

#endif  // FERRY_HAVE_NCCL

}  // namespace
}  // namespace ferry::transport

int main(int argc, char** argv) {
  using ferry::transport::World;
  World world(&argc, &argv);
  testing::InitGoogleTest(&argc, argv);
  const bool silent = argc == 2 && std::strcmp(argv[1], "--silent-rank-1") == 0;
  if (argc != 1 && !silent) {
    std::fprintf(stderr, "usage: test_nccl [gtest flags] | test_nccl --silent-rank-1 (see test_nccl.cpp)\n");
    return 2;
  }
  std::string why;
  const bool usable = ferry::transport::nccl_usable(world, why);
  if (world.leader() && !usable) std::printf("NCCL tests skipped: %s\n", why.c_str());
  if (silent) {
    if (!usable) return 77;
    if (world.size() < 2) return 2;
#ifdef FERRY_HAVE_NCCL
    const int rc = ferry::transport::run_silent_rank_1(world);
    ferry::transport::g_comm.reset();
    return rc;
#endif
  }
  testing::GTEST_FLAG(filter) = usable ? "NcclPlan.*:NcclDevice.*" : "NcclPlan.*:NcclAbsent.*";
  const bool failed = ferry::transport::testing_mpi::run_all_tests_on_ranks(world, "test_nccl");
  ferry::transport::g_comm.reset();
  // Every rank knows `usable`, so every rank exits 77 together: mpirun passes a rank's 77 on.
  return failed ? 1 : usable ? 0 : 77;
}
