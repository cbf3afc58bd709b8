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

ferry, work, mpirun = sys.argv[1], sys.argv[2], sys.argv[3:]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
good, other = os.path.join(work, "good"), os.path.join(work, "other")
subprocess.run([ferry, "make-tiny", good], check=True, capture_output=True, timeout=120)
subprocess.run([ferry, "make-tiny", other, "--seed", "7"], check=True, capture_output=True, timeout=120)
VOCAB = 512
KV = ["--kv-type", "q8_0", "--ctx", "256", "--ignore-eos"]


def ids_of(n, seed):
    x, out = seed, []
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) % 2**64
        out.append(3 + (x >> 33) % 509)
    return out


def csv(ids):
    return ",".join(str(i) for i in ids)


def run(name, split, tokens, n, session=None, model=good):
    """ferry run of `tokens` + n; under mpirun -np 2 with `split`, else one process. Returns (result, logits rows)."""
    out = os.path.join(work, name + ".npy")
    cmd = [ferry, "run", "-m", model, "--tokens", csv(tokens), "-n", str(n), "--logits-out", out, *KV]
    if session:
        cmd += ["--session", session]
    if split:
        cmd = [*mpirun, "-np", "2", *cmd, "--ranks-as-nodes", "--split", split]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    rows = None
    if r.returncode == 0:
        with open(out, "rb") as f:
            data = f.read()
        h = int.from_bytes(data[8:10], "little")
        body = data[10 + h:]
        rows = [body[i:i + 4 * VOCAB] for i in range(0, len(body), 4 * VOCAB)]
    return r, rows


def ids(r):
    assert r.returncode == 0, r.stderr
    return [int(x) for x in r.stdout.strip().splitlines()[-1].split(",")]


P1 = ids_of(37, 1)
r, rows_a = run("single-a", None, P1, 3, session=os.path.join(work, "single.ferry"))
g1 = ids(r)
single_file = open(os.path.join(work, "single.ferry"), "rb").read()
P2 = P1 + g1 + ids_of(12, 2)
r, rows_whole = run("whole", None, P2, 5)
whole = ids(r)
assert rows_a == rows_whole[:40]

for split in ("layers", "experts"):
    # Two runs under mpirun: the file rank 0 writes is the single process's, and the second run continues it.
    F = os.path.join(work, f"ranks-{split}.ferry")
    r, rows = run(f"{split}-a", split, P1, 3, session=F)
    assert ids(r) == g1, (split, r.stdout)
    assert rows == rows_whole[:40], f"{split}: the first run's logits differ"
    assert open(F, "rb").read() == single_file, f"{split}: the file saved under mpirun differs from one process's"
    saved_by_ranks = F + ".copy"
    shutil.copy(F, saved_by_ranks)
    r, rows = run(f"{split}-b", split, P2, 5, session=F)
    assert ids(r) == whole, (split, r.stdout, r.stderr)
    assert f"session: restored 40 tokens from {F}; fed 12 new" in r.stderr, r.stderr
    assert rows == rows_whole[40:], f"{split}: the restored run's logits differ from the unbroken run's"

    # One process's file continues under mpirun, and the file saved under mpirun in one process.
    G = os.path.join(work, f"from-single-{split}.ferry")
    shutil.copy(os.path.join(work, "single.ferry"), G)
    r, rows = run(f"{split}-from-single", split, P2, 5, session=G)
    assert ids(r) == whole and rows == rows_whole[40:], f"{split}: a single process's file under mpirun differs"
    r, rows = run(f"{split}-to-single", None, P2, 5, session=saved_by_ranks)
    assert ids(r) == whole and rows == rows_whole[40:], f"{split}: a file saved under mpirun differs in one process"

    # Bad files: one line, every rank ends non-zero, the file untouched.
    cases = [("truncated", single_file[:len(single_file) // 2], good),
             ("saved from another model", single_file, other)]
    for pattern, data, model in cases:
        B = os.path.join(work, f"bad-{split}.ferry")
        open(B, "wb").write(data)
        r, _ = run(f"{split}-bad", split, P2, 2, session=B, model=model)
        lines = [line for line in r.stderr.strip().splitlines() if line.startswith("ferry")]
        assert r.returncode != 0, f"{split}: {pattern}: exit 0"
        assert len(lines) == 1 and pattern in lines[0] and B in lines[0], (split, pattern, r.stderr)
        assert open(B, "rb").read() == data, f"{split}: {pattern}: the file changed"
    print(f"--split {split}: 2 runs under mpirun == 1 unbroken run; files the same either way; bad files refused")
