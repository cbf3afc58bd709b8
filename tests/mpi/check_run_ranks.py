#!/usr/bin/env python3
"""check_run_ranks.py FERRY DIR MPIRUN...: `ferry run` under `mpirun -np 2` and `-np 3` (each rank a node of its
own) gives the logits file and the ids of the single-process run, byte for byte: a prompt prefilled in several
chunks, then decode, with bf16 KV (and fp8, the default)."""
import os
import shutil
import subprocess
import sys

ferry, work, mpirun = sys.argv[1], sys.argv[2], sys.argv[3:]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
tiny = os.path.join(work, "tiny")
subprocess.run([ferry, "make-tiny", tiny, "--seed", "7"], check=True, capture_output=True)
PROMPT = ",".join(str((i * 37 + 11) % 200) for i in range(70))


def run(name, ranks, *args):
    out = os.path.join(work, name + ".npy")
    cmd = [ferry, "run", "-m", tiny, "--tokens", PROMPT, "-n", "12", "--ignore-eos", "--ubatch", "32",
           "--logits-out", out, *args]
    if ranks:
        cmd = [*mpirun, "-np", str(ranks), *cmd, "--ranks-as-nodes"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (cmd, r.stdout, r.stderr)
    with open(out, "rb") as f:
        return r.stdout.strip().splitlines()[-1], f.read()


for kv in ("bf16", "fp8"):
    ids, logits = run(kv + "-1", 0, "--kv-type", kv)
    assert len(logits) > 70 * 512 * 4, len(logits)
    for ranks in (2, 3):
        got_ids, got = run(f"{kv}-{ranks}", ranks, "--kv-type", kv)
        assert got_ids == ids, (kv, ranks, got_ids, ids)
        assert got == logits, f"{kv}: the logits of {ranks} ranks differ from one process's"
        print(f"{kv}: {ranks} ranks == 1 process ({ids})")
