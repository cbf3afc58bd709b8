#!/usr/bin/env python3
"""check_perplexity_ranks.py FERRY DIR MPIRUN...: `ferry perplexity` under `mpirun -np 2` (each rank a node, the
experts split and the layers split) prints exactly the single process's perplexity, and a KL comparison against
the single process's base is exactly 0 with 100% top-1 agreement."""
import os
import re
import shutil
import subprocess
import sys

ferry, work, mpirun = sys.argv[1], sys.argv[2], sys.argv[3:]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
tiny = os.path.join(work, "tiny")
subprocess.run([ferry, "make-tiny", tiny, "--seed", "3"], check=True, capture_output=True)
text = os.path.join(work, "text.txt")
with open(text, "w") as f:
    f.write(" ".join(f"word{i % 41} and the {i % 9} of it" for i in range(300)))
base = os.path.join(work, "base.kld")
PPL = [ferry, "perplexity", "-m", tiny, "-f", text, "-c", "48", "--chunks", "3", "--kv-type", "bf16"]


def final(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (cmd, r.stdout, r.stderr)
    m = re.search(r"^Final estimate: PPL = .*$", r.stdout, re.M)
    assert m, (cmd, r.stdout)
    return m.group(0), r.stdout


one, _ = final([*PPL, "--kl-divergence-base", base])
for split in ("experts", "layers"):
    got, out = final([*mpirun, "-np", "2", *PPL, "--ranks-as-nodes", "--split", split, "--kl-divergence", base])
    assert got == one, (split, got, one)
    assert re.search(r"mean KL = 0\.000000e\+00 ", out) and "top-1 agreement = 100.000%" in out, (split, out)
    print(f"--split {split}: {got}, KL 0, top-1 100%")
