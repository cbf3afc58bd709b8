// transport::World under `mpirun -np 1, 2 and 3` (tests/mpi/CMakeLists.txt): every rank runs every test in the
// same order, the ranks' verdicts are combined (one failing rank fails the run on every rank), and only rank 0's
// printer reports; the other ranks print their failed assertions only.
//
// `test_world --silent-rank-1 MODE` is no test run: rank 1 never answers while rank 0 waits for it (MODE recv: a
// receive, broadcast: a broadcast from rank 1, pending: rank 2's message and rank 1's posted together,
// fail-alone: rank 1 fails on its own while rank 0 waits for it), or, MODE stopped, rank 0 stops rank 1 (SIGSTOP)
// while it waits, for longer than the deadline, then resumes it and answers: the time rank 1 was stopped must not
// count, the job succeeds. check_world_timeout.py runs it and reads the line.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "planner/core/error.h"
#include "tests/mpi/mpi_gtest.h"
#include "transport/world.h"

namespace ferry::transport {
namespace {

const World& world() { return *World::current(); }

int env_int(const char* name) {
  const char* v = std::getenv(name);
  if (!v) throw std::runtime_error(std::string(name) + " is not set: run this test under mpirun");
  return std::atoi(v);
}

// A byte that depends on who wrote it and where, so that a message delivered to the wrong buffer or shifted fails.
uint8_t pattern(int from, int tag, int64_t i) { return static_cast<uint8_t>(from * 31 + tag * 7 + i * 13 + (i >> 9)); }

std::vector<uint8_t> message(int from, int tag, int64_t bytes) {
  std::vector<uint8_t> m(static_cast<size_t>(bytes));
  for (int64_t i = 0; i < bytes; ++i) m[static_cast<size_t>(i)] = pattern(from, tag, i);
  return m;
}

int next_rank() { return (world().rank() + 1) % world().size(); }
int prev_rank() { return (world().rank() + world().size() - 1) % world().size(); }

TEST(World, RankSizeAndHosts) {
  const World& w = world();
  EXPECT_EQ(World::current(), &w);
  EXPECT_EQ(w.size(), env_int("OMPI_COMM_WORLD_SIZE"));
  EXPECT_EQ(w.rank(), env_int("OMPI_COMM_WORLD_RANK"));
  EXPECT_EQ(w.node_size(), env_int("OMPI_COMM_WORLD_LOCAL_SIZE"));
  EXPECT_EQ(w.node_rank(), env_int("OMPI_COMM_WORLD_LOCAL_RANK"));
  EXPECT_EQ(w.distributed(), w.size() > 1);
  EXPECT_EQ(w.leader(), w.rank() == 0);
  char name[256] = {};
  ASSERT_EQ(gethostname(name, sizeof name - 1), 0);
  EXPECT_EQ(w.host(), name);
  ASSERT_EQ(w.hosts().size(), static_cast<size_t>(w.size()));
  for (int r = 0; r < w.size(); ++r) {
    EXPECT_EQ(w.hosts()[static_cast<size_t>(r)], name) << "rank " << r << " (every rank runs on this machine)";
    EXPECT_EQ(w.where(r), "rank " + std::to_string(r) + " (" + name + ")");
  }
  EXPECT_EQ(w.where(), w.where(w.rank()));
}

TEST(World, BroadcastFromEveryRoot) {
  const World& w = world();
  for (int root = 0; root < w.size(); ++root)
    for (const int64_t bytes : {int64_t{0}, int64_t{1}, (int64_t{3} << 20) + 5}) {
      std::vector<uint8_t> got = w.rank() == root ? message(root, 1, bytes) : std::vector<uint8_t>(bytes, 0);
      w.broadcast(got.data(), bytes, root, "a test broadcast");
      EXPECT_EQ(got, message(root, 1, bytes)) << "root " << root << ", " << bytes << " bytes";
    }
}

TEST(World, BroadcastTextFromEveryRoot) {
  const World& w = world();
  for (int root = 0; root < w.size(); ++root) {
    // The root's text, of a length no other rank has; the others pass something else, which must be replaced.
    const std::string text = "from rank " + std::to_string(root) + ": " + std::string(1000 * root + 3, 'x');
    const std::string mine = w.rank() == root ? text : "not the root's " + std::to_string(w.rank());
    EXPECT_EQ(w.broadcast_text(mine, root, "a test text"), text) << "root " << root;
    EXPECT_EQ(w.broadcast_text(w.rank() == root ? "" : "ignored", root, "an empty text"), "") << "root " << root;
  }
}

TEST(World, AllgatherTextInRankOrder) {
  const World& w = world();
  // Rank 1's text is empty, the others' lengths differ: each must land at its rank's place, whole.
  auto text_of = [](int r) { return r == 1 ? std::string() : std::to_string(r) + std::string(7 * r + 1, 'a' + r); };
  const std::vector<std::string> all = w.allgather_text(text_of(w.rank()), "test texts");
  ASSERT_EQ(all.size(), static_cast<size_t>(w.size()));
  for (int r = 0; r < w.size(); ++r) EXPECT_EQ(all[static_cast<size_t>(r)], text_of(r)) << "rank " << r;
}

// World::send and World::recv each wait for their own transfer: around the ring, rank 0 sends first and every other
// rank receives first, so that no two ranks wait for each other.
TEST(World, SendAndRecvAroundTheRing) {
  const World& w = world();
  if (!w.distributed()) GTEST_SKIP() << "a blocking send needs another rank";
  for (const int64_t bytes : {int64_t{0}, (int64_t{3} << 20) + 5}) {
    const int tag = bytes == 0 ? 3 : 4;
    std::vector<uint8_t> got(static_cast<size_t>(bytes), 0);
    const std::vector<uint8_t> mine = message(w.rank(), tag, bytes);
    if (w.leader()) w.send(mine.data(), bytes, next_rank(), tag, "a test message");
    w.recv(got.data(), bytes, prev_rank(), tag, "a test message");
    if (!w.leader()) w.send(mine.data(), bytes, next_rank(), tag, "a test message");
    EXPECT_EQ(got, message(prev_rank(), tag, bytes)) << bytes << " bytes";
  }
}

// Transfers posted together both ways around the ring (to itself in a world of one), waited for together.
TEST(World, PendingBothWaysAroundTheRing) {
  const World& w = world();
  const int64_t big = (int64_t{4} << 20) + 3;
  std::vector<uint8_t> from_prev(static_cast<size_t>(big), 0), from_next(1, 0xff);
  const std::vector<uint8_t> to_next = message(w.rank(), 5, big), empty;
  World::Pending p(w);
  p.recv(from_prev.data(), big, prev_rank(), 5);
  p.recv(from_next.data(), 0, next_rank(), 6);
  p.send(to_next.data(), big, next_rank(), 5);
  p.send(empty.data(), 0, prev_rank(), 6);
  EXPECT_FALSE(p.empty());
  p.wait("test messages");
  EXPECT_TRUE(p.empty());
  EXPECT_EQ(from_prev, message(prev_rank(), 5, big));
  EXPECT_EQ(from_next[0], 0xff) << "a message of 0 bytes wrote into its buffer";
}

// A receive posted and never waited for is cancelled with its Pending: it must not take the next message sent
// with its tag, which the next receive must get.
TEST(World, PendingCancelsWhatWasNotWaitedFor) {
  const World& w = world();
  std::vector<uint8_t> stale(64, 0);
  {
    World::Pending p(w);
    p.recv(stale.data(), 64, prev_rank(), 7);
  }
  w.barrier("the cancelled receives");
  std::vector<uint8_t> got(64, 0);
  const std::vector<uint8_t> mine = message(w.rank(), 7, 64);
  World::Pending p(w);
  p.recv(got.data(), 64, prev_rank(), 7);
  p.send(mine.data(), 64, next_rank(), 7);
  p.wait("the message after the cancelled receive");
  EXPECT_EQ(got, message(prev_rank(), 7, 64));
  EXPECT_EQ(stale, std::vector<uint8_t>(64, 0)) << "the cancelled receive got a message";
}

// A message longer than its receive is an MPI error: a ferry::Error naming the exchange, not MPI's abort.
TEST(World, TruncatedMessageThrowsNamingTheExchange) {
  const World& w = world();
  if (!w.distributed()) GTEST_SKIP() << "needs two ranks";
  std::vector<uint8_t> buffer(16, 1);
  if (w.rank() == 0) w.send(buffer.data(), 16, 1, 8, "sixteen bytes");
  if (w.rank() == 1) {
    try {
      w.recv(buffer.data(), 8, 0, 8, "the short receive");
      ADD_FAILURE() << "a 16-byte message went into an 8-byte receive without an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("the short receive"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("MPI_ERR_TRUNCATE"), std::string::npos) << e.what();
    }
  }
  w.barrier("after the truncated message");
}

TEST(World, AgreeWithoutFailureDoesNotThrow) {
  const World& w = world();
  int runs = 0;
  EXPECT_NO_THROW(w.agree("nothing failing", [&] { ++runs; }));
  EXPECT_EQ(runs, 1);
}

// Rank f and the last rank fail: every rank throws AgreedError with rank f's line, whichever rank it is.
TEST(World, AgreeNamesTheLowestFailingRank) {
  const World& w = world();
  for (int f = 0; f < w.size(); ++f) {
    const std::string line = "step failed on rank " + std::to_string(f);
    try {
      w.agree("a failing step", [&] {
        if (w.rank() == f) throw std::runtime_error("step failed on rank " + std::to_string(w.rank()));
        if (w.rank() == w.size() - 1) FERRY_THROW("the last rank failed too");
      });
      ADD_FAILURE() << "rank " << w.rank() << " did not throw (rank " << f << " failed)";
    } catch (const AgreedError& e) {
      EXPECT_EQ(e.what(), w.distributed() ? w.where(f) + ": " + line : line);
    }
  }
}

// Every rank fails on its own: the distinct lines come back, lowest rank first, each naming its rank.
TEST(World, FailOnEveryRankGivesTheDistinctLines) {
  const World& w = world();
  EXPECT_EQ(
      w.fail("the same on every rank"),
      std::vector<std::string>{w.distributed() ? w.where(0) + ": the same on every rank" : "the same on every rank"});
  if (!w.distributed()) return;
  const std::vector<std::string> lines = w.fail(w.rank() % 2 ? "odd" : "even");
  EXPECT_EQ(lines, (std::vector<std::string>{w.where(0) + ": even", w.where(1) + ": odd"}));
}

// Rank 0 stops rank 1 while it waits for rank 0, for longer than the deadline, then resumes it and answers.
int run_stopped_rank_1(const World& w) {
  const std::vector<std::string> pids = w.allgather_text(std::to_string(getpid()), "the ranks' pids");
  std::vector<uint8_t> buffer(1024);
  if (w.rank() == 0) {
    const pid_t rank1 = std::stoi(pids[1]);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // rank 1 is in its wait, sleeping between polls
    kill(rank1, SIGSTOP);
    std::this_thread::sleep_for(std::chrono::duration<double>(w.timeout_s() + 1));
    kill(rank1, SIGCONT);
    // Long enough for rank 1 to look at its clock again: that it was stopped past its deadline must not end it.
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    w.send(buffer.data(), 1024, 1, 9, "the message to the stopped rank 1");
  }
  if (w.rank() == 1) w.recv(buffer.data(), 1024, 0, 9, "a message rank 0 sends after stopping this rank");
  return 0;
}

// Rank 1 never answers what rank 0 waits for (see the header); the other ranks wait without a deadline.
int run_silent_rank_1(const World& w, const std::string& mode) {
  if (w.size() < (mode == "pending" ? 3 : 2)) {
    std::fprintf(stderr, "--silent-rank-1 %s: too few ranks\n", mode.c_str());
    return 2;
  }
  if (w.rank() == 1) {
    if (mode == "fail-alone") (void)w.fail("rank 1 failed alone");
    std::this_thread::sleep_for(std::chrono::seconds(120));  // MPI_Abort ends this rank well before
    return 0;
  }
  std::vector<uint8_t> buffer(1024);
  if (w.rank() == 0) {
    if (mode == "recv" || mode == "fail-alone") w.recv(buffer.data(), 1024, 1, 9, "a test message from rank 1");
    if (mode == "broadcast") w.broadcast(buffer.data(), 1024, 1, "a test broadcast from rank 1");
    if (mode == "pending") {
      // Rank 2's message arrives, rank 1's does not: the line must name rank 1, not the first posted peer.
      World::Pending p(w);
      p.recv(buffer.data(), 512, 2, 9);
      p.recv(buffer.data() + 512, 512, 1, 9);
      p.wait("test messages from ranks 2 and 1");
    }
    std::fprintf(stderr, "rank 0 got an answer from the silent rank 1 (mode %s)\n", mode.c_str());
    return 1;
  }
  if (mode == "pending" && w.rank() == 2) w.send(buffer.data(), 512, 0, 9, "a test message to rank 0");
  if (mode == "broadcast") {
    std::vector<MPI_Request> r(1);
    MPI_Ibcast(buffer.data(), 1024, MPI_BYTE, 1, w.comm(), &r[0]);
    w.wait_all(r, {1}, "a test broadcast from rank 1", /*bounded=*/false);
  }
  std::this_thread::sleep_for(std::chrono::seconds(120));
  return 0;
}

}  // namespace
}  // namespace ferry::transport

int main(int argc, char** argv) {
  using ferry::transport::World;
  World world(&argc, &argv);
  testing::InitGoogleTest(&argc, argv);
  if (argc == 3 && std::strcmp(argv[1], "--silent-rank-1") == 0)
    return std::strcmp(argv[2], "stopped") == 0 ? ferry::transport::run_stopped_rank_1(world)
                                                : ferry::transport::run_silent_rank_1(world, argv[2]);
  if (argc != 1) {
    std::fprintf(stderr, "usage: test_world [gtest flags] | test_world --silent-rank-1 MODE (see test_world.cpp)\n");
    return 2;
  }
  return ferry::transport::testing_mpi::run_all_tests_on_ranks(world, "test_world") ? 1 : 0;
}
