// world_probe MODE, run under mpirun by check_world_waits.py: World::Pending's waits as the forward pass's
// exchanges use them.
//   spill    rank 0 waits for 20 messages (more than Pending keeps inline) from rank 1 in one wait and checks
//            what arrived; prints "spill ok"
//   timeout  rank 0 waits for a message rank 1 never sends: the wait ends at its deadline (FERRY_RANK_TIMEOUT)
//            with World::abort's line naming rank 1 and the layer
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "planner/core/error.h"
#include "transport/world.h"

namespace {

using ferry::transport::World;

constexpr int kMessages = 20;

// Rank 0 receives kMessages from rank 1 in one wait; rank 1 sends them last to first and the first one late, so
// that a wait which lost track of the first transfers (the ones kept inline) would return before it arrives.
void spill(const World& w) {
  std::vector<int> got(kMessages, -1);
  if (w.rank() == 0) {
    World::Pending p(w);
    for (int i = 0; i < kMessages; ++i) p.recv(&got[static_cast<size_t>(i)], sizeof(int), 1, i);
    p.wait("the probe's messages", 0);
    for (int i = 0; i < kMessages; ++i)
      FERRY_CHECK(got[static_cast<size_t>(i)] == 1000 + i, "message {} arrived as {}", i, got[static_cast<size_t>(i)]);
  }
  if (w.rank() == 1)
    for (int i = kMessages - 1; i >= 0; --i) {
      const int v = 1000 + i;
      if (i == 0) usleep(300'000);
      w.send(&v, sizeof v, 0, i, "a probe's message");
    }
  w.barrier("the probe's end");
  if (w.leader()) std::printf("spill ok\n");
}

void timeout(const World& w) {
  if (w.rank() == 1) {
    sleep(30);  // past rank 0's deadline: its abort ends this rank
    return;
  }
  if (w.rank() != 0) return;
  int value = 0;
  World::Pending p(w);
  p.recv(&value, sizeof value, 1, 11);
  p.wait("the hidden state before layer", 3);
}

}  // namespace

int main(int argc, char** argv) {
  World world(&argc, &argv);
  if (argc == 2 && std::strcmp(argv[1], "spill") == 0) spill(world);
  if (argc == 2 && std::strcmp(argv[1], "timeout") == 0) timeout(world);
  return 0;
}
