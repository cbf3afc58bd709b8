#!/usr/bin/env python3
"""check_nccl_timeout.py TEST_NCCL DIR MPIRUN...: over NCCL as over MPI, a rank that never sends what rank 0 waits
for ends the job within the deadline (FERRY_RANK_TIMEOUT=2) with one line from rank 0 naming rank 1 and NCCL.
Exits 77 (skipped) when test_nccl does: no GPU for each of the 2 ranks."""
import os
import re
import subprocess
import sys
import time

test_nccl, work, mpirun = sys.argv[1], sys.argv[2], sys.argv[3:]
os.makedirs(work, exist_ok=True)
TIMEOUT = 2
LIMIT = TIMEOUT + 30  # the deadline, then ncclCommAbort and MPI_Abort's teardown on a loaded machine

cmd = [*mpirun, "-np", "2", "-x", f"FERRY_RANK_TIMEOUT={TIMEOUT}", test_nccl, "--silent-rank-1"]
start = time.monotonic()
r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # a hang fails here
took, out = time.monotonic() - start, r.stdout + r.stderr
if r.returncode == 77:
    print(out.strip())
    sys.exit(77)
assert r.returncode != 0, ("the job exited 0", out)
assert took < LIMIT, (f"the job took {took:.1f} s", out)
lines = [l for l in out.splitlines() if l.startswith("ferry: error:")]
assert len(lines) == 1, ("want one ferry line", out)
assert re.fullmatch(r"ferry: error: rank 0 \((\S+)\): no answer from rank 1 \(\1\) within 2 s over NCCL \(.+\)",
                    lines[0]), lines[0]
print(f"exit {r.returncode} after {took:.1f} s: {lines[0]}")
