#!/usr/bin/env python3
"""check_world_waits.py PROBE MPIRUN...: World::Pending under mpirun -np 2: more transfers in one wait than it
keeps inline all arrive; a wait for a rank that never answers ends at FERRY_RANK_TIMEOUT with one line naming
that rank and the layer, and every rank exits non-zero."""
import os
import subprocess
import sys
import time

probe, mpirun = sys.argv[1], sys.argv[2:]

r = subprocess.run([*mpirun, "-np", "2", probe, "spill"], capture_output=True, text=True, timeout=120)
assert r.returncode == 0 and r.stdout.strip() == "spill ok", (r.stdout, r.stderr)

env = dict(os.environ, FERRY_RANK_TIMEOUT="1")
t0 = time.monotonic()
r = subprocess.run([*mpirun, "-np", "2", probe, "timeout"], capture_output=True, text=True, timeout=120, env=env)
elapsed = time.monotonic() - t0
assert r.returncode != 0, (r.stdout, r.stderr)
assert elapsed < 20, f"the wait outlived its 1 s deadline: {elapsed:.1f} s"
lines = [l for l in r.stderr.splitlines() if l.startswith("ferry: error:")]
assert lines == [f"ferry: error: rank 0 ({os.uname().nodename}): no answer from rank 1 ({os.uname().nodename}) "
                 "within 1 s (the hidden state before layer 3; FERRY_RANK_TIMEOUT sets the limit)"], r.stderr
print(f"spill ok; timeout after {elapsed:.1f} s: {lines[0]}")
