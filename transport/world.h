// The processes of one ferry run: a world of MPI ranks under `mpirun -np N`, or a world of one without it (the
// same binary, no MPI call made). Every wait for another rank has a deadline, so no rank hangs forever: past it
// the run ends with one line naming the rank that did not answer (World::abort: the line, then MPI_Abort, which
// ends every rank). Host buffers only: Debian's Open MPI is not CUDA-aware, device buffers travel over NCCL.
#pragma once

#include <mpi.h>

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "planner/core/error.h"

namespace ferry::transport {

// A failure every rank knows of (World::agree): each rank throws it, rank 0 prints it, all exit non-zero
// together without MPI_Abort.
class AgreedError : public Error {
 public:
  using Error::Error;
};

class World {
 public:
  // Starts MPI when mpirun launched this process, asking for MPI_THREAD_MULTIPLE: a server's slots each run their
  // forward pass on a thread of their own, and on rank 0 one slot waits for its logits from the last pipeline stage
  // while another slot's step exchanges with the ranks (RankGroup). With only MPI_THREAD_SERIALIZED (an MPI built
  // without thread support) the slots' steps run one at a time, whole (concurrent_threads() false). The kernels'
  // worker threads never call MPI. Names the logger's lines "rank R host" when size > 1.
  World(int* argc, char*** argv);
  ~World();  // MPI_Finalize
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  // The world of this process once constructed; nullptr before (tests without one, tools).
  static World* current();

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool distributed() const { return size_ > 1; }
  bool leader() const { return rank_ == 0; }
  // Two threads may call MPI at once (MPI_THREAD_MULTIPLE); always true in a world of one.
  bool concurrent_threads() const { return concurrent_threads_; }
  // Rank within this host (MPI_COMM_TYPE_SHARED) and the ranks on it.
  int node_rank() const { return node_rank_; }
  int node_size() const { return node_size_; }
  const std::string& host() const { return host_; }
  // "rank 1 (host)": how lines name a rank.
  std::string where() const { return where(rank_); }
  std::string where(int rank) const;
  const std::vector<std::string>& hosts() const { return hosts_; }  // of every rank

  // Seconds any wait for another rank may take (FERRY_RANK_TIMEOUT, default 300: longer than any one step of the
  // forward pass takes on a rank; an idle follower waiting for its next command has no deadline).
  double timeout_s() const { return timeout_s_; }
  void set_timeout(double seconds) { timeout_s_ = seconds; }

  // Prints "ferry: error: rank R (host): LINE" and ends every rank (MPI_Abort); a world of one exits.
  [[noreturn]] void abort(std::string_view line) const;

  // This rank failed outside agree() with `line`. When every rank fails within a short grace (the same flags fail
  // the same check on every rank), returns the ranks' distinct lines, each as "rank R (host): line", lowest rank
  // first, for rank 0 to print once, and every rank may exit non-zero together. Otherwise this rank's line ends
  // every rank (abort). A world of one returns {line}.
  std::vector<std::string> fail(std::string_view line) const;

  // Runs `step` on every rank and shares the outcome: when any rank throws, every rank throws AgreedError with
  // the line of the lowest failing rank ("rank R (host): what"), so all end together and rank 0 prints it.
  template <class Step>
  void agree(std::string_view what, Step&& step) const {
    std::string failure;
    try {
      step();
    } catch (const std::exception& e) {
      failure = e.what();
    }
    share_failure(what, failure);
  }

  // ---- moving bytes; `what` names the exchange in the timeout's line ----
  void broadcast(void* data, int64_t bytes, int root, std::string_view what) const;
  // Rank `root`'s text on every rank.
  std::string broadcast_text(std::string text, int root, std::string_view what) const;
  // Every rank's text, in rank order, on every rank.
  std::vector<std::string> allgather_text(const std::string& mine, std::string_view what) const;
  void send(const void* data, int64_t bytes, int to, int tag, std::string_view what) const;
  void recv(void* data, int64_t bytes, int from, int tag, std::string_view what) const;
  void barrier(std::string_view what) const;

  // Non-blocking transfers posted together and waited for together, with the world's deadline.
  class Pending {
   public:
    explicit Pending(const World& world) : world_(world) {}
    ~Pending();  // cancels what was not waited for (an exception between post and wait)
    Pending(const Pending&) = delete;
    Pending& operator=(const Pending&) = delete;
    void send(const void* data, int64_t bytes, int to, int tag);
    void recv(void* data, int64_t bytes, int from, int tag);
    // Waits for every posted transfer; past the deadline, aborts naming `what` (followed by `layer` when >= 0:
    // the line is formatted only then, a wait builds no string) and the first peer not done.
    void wait(std::string_view what, int64_t layer = -1);
    bool empty() const { return count_ == 0; }
    // Moves what it can of the posted transfers (MPI progresses only inside its calls) without waiting.
    void progress();

   private:
    MPI_Request& add(int peer);
    MPI_Request* requests() { return count_ > kInline ? heap_requests_.data() : inline_requests_.data(); }
    const int* peers() const { return count_ > kInline ? heap_peers_.data() : inline_peers_.data(); }

    const World& world_;
    // The first kInline transfers live in the object (an exchange posts a few per peer), so that posting
    // allocates nothing; past that, all of them move to the heap.
    static constexpr size_t kInline = 8;
    size_t count_ = 0;
    std::array<MPI_Request, kInline> inline_requests_{};
    std::array<int, kInline> inline_peers_{};
    std::vector<MPI_Request> heap_requests_;
    std::vector<int> heap_peers_;
  };

  // Waits for `requests` (peers[i] is request i's peer, -1 for a collective) until the deadline, or forever with
  // `bounded` false; past the deadline, aborts naming the first peer whose transfer is not done. An MPI error
  // (e.g. a message longer than its receive) throws ferry::Error naming `what`. Public for the exchanges built on
  // the world (transport/exchange).
  void wait_all(std::vector<MPI_Request>& requests, const std::vector<int>& peers, std::string_view what,
                bool bounded = true) const {
    wait_all(requests, peers, what, -1, bounded);
  }
  void wait_all(std::span<MPI_Request> requests, std::span<const int> peers, std::string_view what, int64_t layer,
                bool bounded) const;

  MPI_Comm comm() const { return comm_; }

 private:
  void share_failure(std::string_view what, const std::string& failure) const;
  // Polls until every request is done (true) or `limit_s` seconds have passed (false); completed requests become
  // MPI_REQUEST_NULL, the others stay posted.
  bool poll(std::span<MPI_Request> requests, double limit_s, std::string_view what) const;
  // A wait for `peer` passed its deadline with `line` to say. Tells every rank so (a notice on notice_comm_),
  // then watches a moment for the same notice from `peer`: a peer that sends one was itself waiting, for a rank
  // that the first of the chain to time out names, so this rank ends the run without a line of its own (mpirun's
  // processes die at different times: one line blaming a waiting peer could otherwise come out beside the true
  // one). Without such a notice, abort(line).
  [[noreturn]] void time_out(int peer, std::string_view line) const;

  bool mpi_ = false;
  MPI_Comm comm_ = MPI_COMM_NULL;
  MPI_Comm fail_comm_ = MPI_COMM_NULL;    // fail() only: its collective must not match one of comm_'s
  MPI_Comm notice_comm_ = MPI_COMM_NULL;  // time_out()'s notices only
  mutable int notice_ = -1;               // time_out()'s notice: the rank this one waited for
  MPI_Comm node_comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1, node_rank_ = 0, node_size_ = 1;
  bool concurrent_threads_ = true;
  bool oversubscribed_ = false;  // more ranks on this host than it has cores
  std::string host_;
  std::vector<std::string> hosts_;
  double timeout_s_ = 300;
};

// True when this process was started by mpirun (Open MPI's or PMIx's environment), before MPI is initialized.
bool launched_by_mpirun();

}  // namespace ferry::transport
