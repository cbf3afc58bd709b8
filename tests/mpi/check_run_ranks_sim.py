#!/usr/bin/env python3
"""check_run_ranks_sim.py FERRY DIR MPIRUN...: `ferry run --gpu sim:…` under `mpirun -np 2` and `-np 3` (each rank
a node with its own simulated device and RAM) gives the logits file and ids of the single-process run with the same
device, byte for byte: chunked prefill and decode with bf16 KV, an expert cache of 2 slots per layer with streaming,
the other experts computed by each rank's CPU from its RAM (mapped, and copied to 2 NUMA nodes). Each rank reports
its own memory (planned next to high-water, within the plan) and where its experts ran, gathered by rank 0. Every
layout: experts sharded (each rank runs every layer), layers pipelined with their experts, and the pipeline of
layers with experts sharded over all ranks."""
import re
import sys

from ranks_common import Runs

runs = Runs(sys.argv)
# 10 MiB: too small for a node's share of the experts when there are 1 or 2 nodes (cache, streaming and CPU).
DEVICE = ["--gpu", "sim:10MiB", "--expert-cache-slots", "2", "--kv-type", "bf16", "--ubatch", "32"]


def run(name, ranks, *args):
    return runs.run(name, ranks, *DEVICE, *args)


def per_rank(stderr, ranks):
    """The gathered report: one block per rank, in rank order."""
    blocks = re.split(r"^rank (\d+) \([^)]*\):\n", stderr, flags=re.M)
    got = {int(blocks[i]): blocks[i + 1] for i in range(1, len(blocks), 2)}
    assert sorted(got) == list(range(ranks)), (sorted(got), stderr)
    return got


for split, extra in (("experts", []), ("experts", ["--host-experts", "numa", "--numa", "2"]), ("layers", []),
                     ("layers+experts", [])):
    ids, logits, _ = run("one", 0, *extra)
    for ranks in (2, 3):
        got_ids, got, err = run(f"ranks{ranks}", ranks, *extra, "--split", split)
        assert got_ids == ids, (extra, ranks, got_ids, ids)
        assert got == logits, f"{extra}: the logits of {ranks} ranks differ from one process's"
        reports = per_rank(err, ranks)
        for r, text in reports.items():
            # Every device of the rank within its plan, each class too.
            for planned, high, share in re.findall(r"^\s+\S.*?\s([\d.]+ \w?i?B)\s+([\d.]+ \w?i?B)\s+([\d.]+)%$", text,
                                                   flags=re.M):
                assert float(share) <= 100.0, (r, planned, high, share, text)
            uses = re.search(r"^experts: (\d+) uses.*CPU (\d+)$", text, flags=re.M)
            assert uses and int(uses.group(1)) > 0, (r, text)
        if ranks == 2 and split == "experts":
            # Rank 1 holds half of every layer's experts, more than its device takes: its CPU computes some.
            cpu = int(re.search(r"^experts: .*CPU (\d+)$", reports[1], flags=re.M).group(1))
            assert cpu > 0, reports[1]
        print(f"--split {split} {extra or 'mmap'}: {ranks} ranks == 1 process ({ids})")
