#!/usr/bin/env python3
"""check_run_session_ranks.py FERRY DIR MPIRUN...: `ferry run --session F` under mpirun -np 2, for --split layers
(each rank holds half of the layers' KV) and --split experts (both hold every layer's): two runs, the second
prompt extending the first run's tokens, give bitwise the ids and logits of one unbroken single-process run; the
file rank 0 writes is byte for byte the one a single process writes (the file does not depend on the ranks), so a
file saved by one process continues under mpirun and one saved under mpirun continues in one process; a bad file
(truncated, another model's) gives one line and a non-zero exit, every rank ending, the file untouched."""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from ferry_test_support import (csv, expect_one_line_error, fresh_dir, ids_of, make_tiny, npy_rows,  # noqa: E402
                                printed_ids, under_mpirun)

ferry, work, mpirun = sys.argv[1], fresh_dir(sys.argv[2]), sys.argv[3:]
good = make_tiny(ferry, os.path.join(work, "good"))
other = make_tiny(ferry, os.path.join(work, "other"), seed=7)
KV = ["--kv-type", "q8_0", "--ctx", "256", "--ignore-eos"]


def run(name, split, tokens, n, session=None, model=good):
    """ferry run of `tokens` + n; under mpirun -np 2 with `split`, else one process. Returns (result, logits rows)."""
    out = os.path.join(work, name + ".npy")
    cmd = [ferry, "run", "-m", model, "--tokens", csv(tokens), "-n", str(n), "--logits-out", out, *KV]
    if session:
        cmd += ["--session", session]
    if split:
        cmd = under_mpirun(mpirun, 2, cmd, "--split", split)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return r, npy_rows(out) if r.returncode == 0 else None


P1 = ids_of(37, 1)
r, rows_a = run("single-a", None, P1, 3, session=os.path.join(work, "single.ferry"))
g1 = printed_ids(r)
single_file = open(os.path.join(work, "single.ferry"), "rb").read()
P2 = P1 + g1 + ids_of(12, 2)
r, rows_whole = run("whole", None, P2, 5)
whole = printed_ids(r)
assert rows_a == rows_whole[:40]

for split in ("layers", "experts"):
    # Two runs under mpirun: the file rank 0 writes is the single process's, and the second run continues it.
    F = os.path.join(work, f"ranks-{split}.ferry")
    r, rows = run(f"{split}-a", split, P1, 3, session=F)
    assert printed_ids(r) == g1, (split, r.stdout)
    assert rows == rows_whole[:40], f"{split}: the first run's logits differ"
    assert open(F, "rb").read() == single_file, f"{split}: the file saved under mpirun differs from one process's"
    saved_by_ranks = F + ".copy"
    shutil.copy(F, saved_by_ranks)
    r, rows = run(f"{split}-b", split, P2, 5, session=F)
    assert printed_ids(r) == whole, (split, r.stdout, r.stderr)
    assert f"session: restored 40 tokens from {F}; fed 12 new" in r.stderr, r.stderr
    assert rows == rows_whole[40:], f"{split}: the restored run's logits differ from the unbroken run's"

    # One process's file continues under mpirun, and the file saved under mpirun in one process.
    G = os.path.join(work, f"from-single-{split}.ferry")
    shutil.copy(os.path.join(work, "single.ferry"), G)
    r, rows = run(f"{split}-from-single", split, P2, 5, session=G)
    assert printed_ids(r) == whole and rows == rows_whole[40:], \
        f"{split}: a single process's file under mpirun differs"
    r, rows = run(f"{split}-to-single", None, P2, 5, session=saved_by_ranks)
    assert printed_ids(r) == whole and rows == rows_whole[40:], \
        f"{split}: a file saved under mpirun differs in one process"

    # Bad files: one line, every rank ends non-zero, the file untouched.
    cases = [("truncated", single_file[:len(single_file) // 2], good),
             ("saved from another model", single_file, other)]
    for pattern, data, model in cases:
        B = os.path.join(work, f"bad-{split}.ferry")
        open(B, "wb").write(data)
        r, _ = run(f"{split}-bad", split, P2, 2, session=B, model=model)
        expect_one_line_error(r, pattern, B, prefix="ferry")
        assert open(B, "rb").read() == data, f"{split}: {pattern}: the file changed"
    print(f"--split {split}: 2 runs under mpirun == 1 unbroken run; files the same either way; bad files refused")
