#!/usr/bin/env python3
"""check_run_cuda.py FERRY DIR: `ferry run --gpu cuda:0` on the tiny model, as users call it, against the same run on
the simulated device (whose logits are the CPU's bit for bit): the greedy tokens identical at >= 99% of the
generated positions (the issue's criterion is argmax at >= 99% of positions), every logits row within a relative
L2 error of 2e-3 (bf16 KV), the end-of-run memory report with the device's own figure next to the plan; and a
plan that does not fit the device's free memory refused before loading with the planner's line. Exit 77 (skipped)
without a usable CUDA GPU or in a build without CUDA."""
import math
import os
import shutil
import struct
import subprocess
import sys

ferry, work = sys.argv[1], sys.argv[2]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
tiny = os.path.join(work, "tiny")
subprocess.run([ferry, "make-tiny", tiny, "--seed", "7"], check=True, capture_output=True)
PROMPT = ",".join(str((i * 37 + 11) % 200) for i in range(200))


def run(gpu, out, *extra):
    return subprocess.run([ferry, "run", "-m", tiny, "--tokens", PROMPT, "-n", "32", "--ignore-eos", "--kv-type",
                           "bf16", "--gpu", gpu, "--logits-out", os.path.join(work, out), *extra],
                          capture_output=True, text=True)


def read_npy(name):
    with open(os.path.join(work, name), "rb") as f:
        assert f.read(8) == b"\x93NUMPY\x01\x00"
        (n,) = struct.unpack("<H", f.read(2))
        header = f.read(n).decode()
        rows, cols = (int(x) for x in header[header.index("(") + 1:header.index(")")].split(",") if x.strip())
        flat = struct.unpack(f"<{rows * cols}f", f.read())
        return [flat[r * cols:(r + 1) * cols] for r in range(rows)]


cuda = run("cuda:0", "cuda.npy")
if cuda.returncode != 0 and ("no usable CUDA" in cuda.stderr or "built without CUDA" in cuda.stderr or
                             "CUDA GPU" in cuda.stderr):
    print("no usable CUDA GPU: skipped:", cuda.stderr.strip())
    sys.exit(77)
assert cuda.returncode == 0, cuda.stderr
sim = run("sim:64MiB", "sim.npy")
assert sim.returncode == 0, sim.stderr

got, want = read_npy("cuda.npy"), read_npy("sim.npy")
assert len(got) == len(want) and len(got) > 0, (len(got), len(want))
same = sum(max(range(len(g)), key=g.__getitem__) == max(range(len(w)), key=w.__getitem__) for g, w in zip(got, want))
errs = [math.sqrt(sum((a - b) ** 2 for a, b in zip(g, w)) / max(sum(b * b for b in w), 1e-300))
        for g, w in zip(got, want)]
print(f"{len(got)} rows: argmax identical at {same}, max rel err {max(errs):.2e}")
assert same >= 0.99 * len(got), f"argmax identical at only {same} of {len(got)} rows"
assert max(errs) <= 2e-3, f"a row {max(errs):.2e} from the simulated device's"
ids_cuda = cuda.stdout.split()
ids_sim = sim.stdout.split()
agree = sum(a == b for a, b in zip(ids_cuda, ids_sim))
assert agree >= 0.99 * max(len(ids_sim), 1), (ids_cuda, ids_sim)
assert "measured by the device:" in cuda.stderr, cuda.stderr

# A context no device holds: refused by the plan, before anything is loaded, in one line.
big = run("cuda:0", "big.npy", "--ctx", "1048576", "--ubatch", "65536")
lines = [line for line in big.stderr.splitlines() if line.strip()]
assert big.returncode != 0 and len(lines) == 1 and "does not fit" in lines[0], big.stderr
print("ok")
