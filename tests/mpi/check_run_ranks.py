#!/usr/bin/env python3
"""check_run_ranks.py FERRY DIR MPIRUN...: `ferry run` under `mpirun -np 2` and `-np 3` (each rank a node of its
own) gives the logits file and the ids of the single-process run, byte for byte: a prompt prefilled in several
chunks, then decode, with bf16 KV (and fp8, the default), in every layout (`--split experts|layers|layers+experts`
and auto). Each rank's roles (its log line at FERRY_LOG_LEVEL=info) show the layout really ran: with experts every
rank runs every layer; in a pipeline each rank runs its own contiguous range of layers, in rank order, and with
layers it holds all of their experts and no other's."""
import re
import sys

from ranks_common import Runs

runs = Runs(sys.argv)
LAYERS = set(range(5))  # the tiny model's
N_EXPERTS = 16
ROLE = re.compile(r"rank (\d+) .*; split ([a-z+]+)\); rank \d+ \(.*?\): (?:runs layers ([0-9,-]+)|runs no layer)"
                  r"(?:; experts (\d+)-(\d+) of layers ([0-9,-]+))?")


def layer_set(ranges):
    out = set()
    for part in ranges.split(","):
        first, _, last = part.partition("-")
        out |= set(range(int(first), int(last or first) + 1))
    return out


def run(name, ranks, *args):
    return runs.run(name, ranks, "--ubatch", "32", *args)


def check_roles(split, ranks, log):
    """Each rank's layers and experts, from its log line, are those of the layout."""
    roles = {}
    for m in ROLE.finditer(log):
        rank, placed = int(m[1]), m[2]
        assert split in ("auto", placed), (split, placed)
        runs = layer_set(m[3]) if m[3] else set()
        held = (int(m[4]), int(m[5]), layer_set(m[6])) if m[4] else None
        roles[rank] = (placed, runs, held)
    assert sorted(roles) == list(range(ranks)), log
    placed = roles[0][0]
    if placed == "experts":
        assert all(runs == LAYERS for _, runs, _ in roles.values()), roles
        return placed
    order = [roles[r][1] for r in range(ranks)]
    assert all(order), f"{placed}: a rank without layers: {roles}"
    assert set().union(*order) == LAYERS and sum(map(len, order)) == len(LAYERS), roles
    assert all(max(a) < min(b) for a, b in zip(order, order[1:])), f"{placed}: layers not in rank order: {roles}"
    for runs in order:
        assert max(runs) - min(runs) + 1 == len(runs), f"{placed}: a rank's layers are not one range: {roles}"
    for _, runs, held in roles.values():
        if placed == "layers":
            assert held == (0, N_EXPERTS - 1, runs), f"layers: a rank's experts are not its layers' all: {roles}"
        else:
            assert held and held[2] == LAYERS, f"{placed}: a rank does not hold a share of every layer: {roles}"
    return placed


UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def check_memory(name, ranks, log):
    """Rank 0 prints every rank's memory: its KV cache exactly what the plan gives its node (a pipeline stage holds
    only its layers'), its workspace within the plan."""
    size = lambda v, u: float(v) * UNITS[u]
    found = re.findall(r"^rank (\d+) \([^)]*\):\nmemory host: .*?kv cache ([\d.]+) (\w+) \(planned ([\d.]+) (\w+)\), "
                       r"workspace ([\d.]+) (\w+) \(planned ([\d.]+) (\w+)\)$", log, flags=re.M)
    assert [int(f[0]) for f in found] == list(range(ranks)), (name, log)
    for r, kv, kvu, kvp, kvpu, ws, wsu, wsp, wspu in found:
        assert size(kv, kvu) == size(kvp, kvpu), (name, r, kv, kvp)
        assert size(ws, wsu) <= size(wsp, wspu), (name, r, ws, wsp)


for kv in ("bf16", "fp8"):
    ids, logits, _ = run(kv + "-1", 0, "--kv-type", kv)
    assert len(logits) > 70 * 512 * 4, len(logits)
    for split in ("experts", "layers", "layers+experts", "auto"):
        for ranks in (2, 3):
            name = f"{kv}-{split}-{ranks}"
            got_ids, got, log = run(name, ranks, "--kv-type", kv, "--split", split)
            placed = check_roles(split, ranks, log)
            assert got_ids == ids, (name, got_ids, ids)
            assert got == logits, f"{name}: the logits of {ranks} ranks differ from one process's"
            check_memory(name, ranks, log)
            print(f"{kv}: {ranks} ranks, split {placed}{' (auto)' if split == 'auto' else ''} == 1 process ({ids})")
