#!/usr/bin/env python3
"""check_bench_transport.py FERRY DIR MPIRUN...: `ferry bench transport` under `mpirun -np 2` and `-np 3` prints
one row per exchange, model and token count, each with ferry's and raw MPI's latency, GB/s and ferry's overhead in
%, then the acceptance line and the planner's default and calibrated predictions; without mpirun it fails with one
line. The shape of the output only: no timing is asserted."""
import re
import subprocess
import sys

ferry, work, mpirun = sys.argv[1], sys.argv[2], sys.argv[3:]
TOKENS = [1, 4]
NUMBER = r"-?\d+(?:\.\d+)?"
ROW = re.compile(rf"^(combine|dispatch|hand_over|latency) +(flash|pro|-) +(\d+|-) +{NUMBER} [KMG]?i?B +({NUMBER}) +({NUMBER}) "
                 rf"+(-|{NUMBER}) +({NUMBER}) +({NUMBER}) +([+-]{NUMBER})%$")

r = subprocess.run([ferry, "bench", "transport"], capture_output=True, text=True, timeout=60)
assert r.returncode != 0, r
lines = r.stderr.strip().splitlines()
assert len(lines) == 1 and "mpirun -np 2" in lines[0], r.stderr

for ranks in (2, 3):
    cmd = [*mpirun, "-np", str(ranks), ferry, "bench", "transport", "--repetitions", "3", "--warmup", "1", "--tokens",
           ",".join(map(str, TOKENS))]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (cmd, r.stdout, r.stderr)
    out = r.stdout.splitlines()
    assert out[0].startswith(f"ferry bench transport: {ranks} ranks"), out[0]
    header = next(l for l in out if l.startswith("exchange"))
    assert header.split()[-1] == "overhead", header
    rows = [ROW.match(l) for l in out if l.startswith(("combine", "dispatch", "hand_over", "latency"))]
    assert all(rows), [l for l in out if l.startswith(("combine", "dispatch", "hand_over", "latency"))]
    got = [(m[1], m[2], m[3]) for m in rows]
    want = [(op, model, str(n)) for op in ("combine", "dispatch", "hand_over") for model in ("flash", "pro")
            for n in TOKENS] + [("latency", "-", "-")]  # ferry's hand_over of one float
    assert got == want, got
    for m in rows:
        assert float(m[4]) > 0 and float(m[5]) > 0, m[0]
        assert (m[6] == "-") == (m[1] != "combine"), m[0]  # MPI_Allgatherv for the combine only
    assert any(re.match(r"^acceptance .*: (holds|does not hold)", l) for l in out), out
    predictions = [l.split() for l in out if re.match(r"^ +[24] +(default|calibrated) ", l)]
    assert [(p[0], p[1]) for p in predictions] == [("2", "default"), ("2", "calibrated"), ("4", "default"),
                                                   ("4", "calibrated")], predictions
    plan = next(l for l in out if l.startswith("plan with the measured link: "))
    assert "--net-bw" in plan and "--net-latency-us" in plan, plan
    print(f"{ranks} ranks: {len(rows)} rows, {header}")
