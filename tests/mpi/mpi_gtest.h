// GoogleTest under mpirun (../shared/spec/transport.md §6.2): every rank runs the tests; rank 0's printer reports
// them, the others print only their failed assertions, with their rank; the job fails when a test failed on any
// rank (an allreduce of the outcome under the World's deadline).
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <vector>

#include "transport/world.h"

namespace ferry::transport::testing_mpi {

class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?", r.line_number(),
                 r.summary());
  }

 private:
  int rank_;
};

// RUN_ALL_TESTS on every rank; true when a test failed on some rank (every rank returns the same).
inline bool run_all_tests_on_ranks(const World& world, const char* binary) {
  ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (!world.leader()) {
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter(world.rank()));
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  if (world.distributed()) {
    std::vector<MPI_Request> r(1);
    MPI_Iallreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, world.comm(), &r[0]);
    world.wait_all(r, {-1}, "the ranks' test results");
  }
  if (failed && world.leader()) std::fprintf(stderr, "%s: a test failed on some rank (see above)\n", binary);
  return failed != 0;
}

}  // namespace ferry::transport::testing_mpi
