// `ferry bench transport` (under `mpirun -np 2` or more): ferry's exchanges between ranks
// (transport::MpiRankExchange, as the forward pass calls them) side by side with raw MPI moving the same bytes
// between the same pairs in the same run, at V4-Flash's and V4-Pro's shapes (6 choices per token, hidden 4096
// and 7168, 4 streams) from 1 to 512 tokens:
//   combine    all ranks run the layer, each holds a contiguous quarter/half/... of its experts (round-robin
//              routing gives each rank its share of the 6·n rows): each rank's block to every other rank;
//              raw: MPI_Isend/Irecv + MPI_Waitall, and MPI_Allgatherv in place
//   dispatch   one rank runs the layer, every other holds experts: inputs [n, d] and choices [n, 6] to each
//   hand_over  pipeline stages: the hidden streams [4, n, d] from one stage's rank to the next's
// Each iteration begins after a barrier and every rank times it; an iteration's time is the slowest rank's, the
// row shows the median over the repetitions. One-way exchanges run as a ring over the ranks (the layers' roles
// rotate), so an iteration ends where it began, and one exchange takes the iteration over the ranks. Ferry and raw
// MPI alternate within each repetition, and ferry's overhead is the median of their ratio in one repetition, so
// that the noise of a busy machine cancels rather than decides. Then the planner's V4-Pro
// prediction for 2 and 4 nodes, with its default network and with the link measured here (`ferry plan
// --net-bw --net-latency-us` take the measured figures).
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace ferry::launch {

std::function<int()> add_transport_bench(CLI::App& bench, CLI::App*& subcommand);

}  // namespace ferry::launch
