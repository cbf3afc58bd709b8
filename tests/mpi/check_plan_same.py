#!/usr/bin/env python3
"""check_plan_same.py FERRY DIR MPIRUN...: the Plan a run under `mpirun -np N` executes (rank 0's, saved with
--plan-out) is the Plan `ferry plan --nodes N` makes for the same hardware (the ranks' probed host, given as flags):
CPU only, every field but where the hardware figures came from; with a simulated device per node, the same
placement (devices and their use, every layer's runs and expert homes, the KV cache, whether it fits)."""
import json
import os
import shutil
import subprocess
import sys

ferry, work, mpirun = sys.argv[1], sys.argv[2], sys.argv[3:]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
tiny = os.path.join(work, "tiny")
subprocess.run([ferry, "make-tiny", tiny, "--seed", "7"], check=True, capture_output=True)


def ranks_plan(name, ranks, *args):
    out = os.path.join(work, name + ".json")
    cmd = [*mpirun, "-np", str(ranks), ferry, "run", "-m", tiny, "--tokens", "1,2,3", "-n", "2", "--ranks-as-nodes",
           "--plan-out", out, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (cmd, r.stderr)
    with open(out) as f:
        return json.load(f)


def cli_plan(plan, *gpu):
    h, o = plan["hardware"]["host"], plan["options"]
    cmd = [ferry, "plan", "-m", tiny, "--json", "--nodes", str(plan["hardware"]["nodes"]), "--host-ram",
           str(h["ram_bytes"]), "--host-reserve", "0", "--gpu-reserve", "0", "--cores", str(h["cores"]), "--numa", str(h["numa_nodes"]),
           "--ctx", str(o["ctx"]), "--kv-type", o["kv_type"], "--ubatch", str(o["ubatch"]), "--split", o["split"],
           "--threads", str(o["threads"]), *gpu]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (cmd, r.stderr)
    return json.loads(r.stdout)


def without_sources(plan):
    """The plan without where its hardware figures came from (probed by the ranks, flags for ferry plan), with
    the worker threads resolved (the ranks count theirs, ferry plan takes the host's cores), and without the
    option that keeps the ranks from borrowing the expert cache for prefill (ferry plan has no flag for it; over
    several nodes no plan borrows, as every device's prefill_borrowed_bytes, compared, says)."""
    p = json.loads(json.dumps(plan))
    p["hardware"].pop("source")
    p["hardware"]["host"].pop("probed")
    p["options"].pop("borrow_cache_for_prefill")
    if p["options"]["threads"] == 0:
        p["options"]["threads"] = p["hardware"]["host"]["cores"]
    return p


for ranks in (2, 3):
    for split in ("experts", "layers", "layers+experts"):
        mine = ranks_plan(f"cpu-{ranks}-{split}", ranks, "--split", split)
        assert mine["hardware"]["nodes"] == ranks and mine["split"] == split, (mine["hardware"], mine["split"])
        theirs = cli_plan(mine, "--no-gpu")
        assert without_sources(mine) == without_sources(theirs), (ranks, split)
        # `ferry plan` itself under mpirun: each rank probes its node, rank 0 plans for all of them.
        o = mine["options"]
        cmd = [*mpirun, "-np", str(ranks), ferry, "plan", "-m", tiny, "--json", "--ranks-as-nodes", "--no-gpu",
               "--host-reserve", "0", "--gpu-reserve", "0", "--ctx", str(o["ctx"]), "--kv-type", o["kv_type"],
               "--ubatch", str(o["ubatch"]), "--split", split]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (cmd, r.stderr)
        planned = json.loads(r.stdout)
        # Warnings aside: it says where its nodes came from.
        assert dict(without_sources(planned), warnings=[]) == dict(without_sources(mine), warnings=[]), (
            ranks, split, "mpirun ferry plan")
        print(f"CPU, {ranks} ranks, --split {split}: the run's plan == ferry plan --nodes {ranks} == mpirun ferry plan")

    mine = ranks_plan(f"sim-{ranks}", ranks, "--gpu", "sim:10MiB", "--split", "layers", "--ubatch", "32")
    gpu = mine["devices"][0]
    theirs = cli_plan(mine, "--gpu", f"{gpu['capacity_bytes']}B")
    mine_, theirs_ = without_sources(mine), without_sources(theirs)
    for key in ("layers", "kv_cache", "fits", "split", "options"):
        assert mine_[key] == theirs_[key], (ranks, key, mine_[key], theirs_[key])
    strip = lambda devices: [{k: v for k, v in d.items() if k != "name"} for d in devices]
    assert strip(mine["devices"]) == strip(theirs["devices"]), (ranks, mine["devices"], theirs["devices"])
    print(f"sim:10MiB per node, {ranks} ranks: the run's placement == ferry plan --nodes {ranks} --gpu 10MiB")
