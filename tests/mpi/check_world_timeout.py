#!/usr/bin/env python3
"""check_world_timeout.py TEST_WORLD DIR MPIRUN...: a rank that never answers ends the job within the deadline
(FERRY_RANK_TIMEOUT=2) with one line from the waiting rank 0 naming rank 1, whether rank 0 waits in a receive, a
broadcast from rank 1, or transfers posted together with another rank's (which did arrive); and a rank that fails
on its own while rank 0 waits for it ends the job with its own line, not rank 0's timeout; and a rank stopped
(SIGSTOP) for longer than the deadline while it waits does not count that time: resumed and answered, it goes on."""
import os
import re
import subprocess
import sys
import time

test_world, work, mpirun = sys.argv[1], sys.argv[2], sys.argv[3:]
os.makedirs(work, exist_ok=True)
TIMEOUT = 2
LIMIT = TIMEOUT + 15  # the deadline, then MPI_Abort's teardown on a loaded 2-core machine


def job(mode, ranks):
    cmd = [*mpirun, "-np", str(ranks), "-x", f"FERRY_RANK_TIMEOUT={TIMEOUT}", test_world, "--silent-rank-1", mode]
    start = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=90)  # a hang fails here
    return r, time.monotonic() - start, r.stdout + r.stderr


def run(mode, ranks):
    r, took, out = job(mode, ranks)
    assert r.returncode != 0, (mode, "the job exited 0", out)
    assert took < LIMIT, (mode, f"the job took {took:.1f} s", out)
    lines = [l for l in out.splitlines() if l.startswith("ferry: error:")]
    assert len(lines) == 1, (mode, "want one ferry line", out)
    print(f"{mode} ({ranks} ranks): exit {r.returncode} after {took:.1f} s: {lines[0]}")
    return lines[0], took


for mode, ranks in (("recv", 2), ("broadcast", 2), ("pending", 3)):
    line, took = run(mode, ranks)
    assert re.fullmatch(r"ferry: error: rank 0 \((\S+)\): no answer from rank 1 \(\1\) within 2 s \(.+\)", line), line
    assert took >= TIMEOUT, (mode, f"rank 0 gave up after {took:.1f} s, before the deadline")

line, took = run("fail-alone", 2)
assert re.fullmatch(r"ferry: error: rank 1 \(\S+\): rank 1 failed alone", line), line
assert took < TIMEOUT + 10, f"rank 1's failure took {took:.1f} s to end the job"

r, took, out = job("stopped", 2)
assert r.returncode == 0 and "ferry: error:" not in out, ("stopped", out)
print(f"stopped (2 ranks): rank 1 stopped for {TIMEOUT + 1} s, resumed, answered: exit 0 after {took:.1f} s")
