#!/usr/bin/env python3
"""check_run.py FERRY DIR: `ferry run` on a tiny checkpoint prints the generated ids, writes a logits .npy
whose rows agree with those ids, and rejects bad input (missing tensor, token id beyond the vocabulary,
a context smaller than the prompt, an unknown KV type, a bad --host-experts) with one line on stderr and a
non-zero exit; with --gpu and --host-experts numa on a two-node plan it generates the CPU-only run's ids."""
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys

ferry, work = sys.argv[1], sys.argv[2]
shutil.rmtree(work, ignore_errors=True)
good = os.path.join(work, "good")
subprocess.run([ferry, "make-tiny", good], check=True, capture_output=True)
VOCAB = 512
PROMPT = "0,17,42,99,300,7,8,9"


def run(*args, env=None):
    return subprocess.run([ferry, "run", *args], capture_output=True, text=True,
                          env=None if env is None else {**os.environ, **env})


def read_npy(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x93NUMPY\x01\x00", "not a .npy v1 file"
        (n,) = struct.unpack("<H", f.read(2))
        header = f.read(n).decode()
        assert "'descr': '<f4'" in header and "'fortran_order': False" in header, header
        shape = tuple(int(x) for x in header[header.index("(") + 1:header.index(")")].split(",") if x.strip())
        data = f.read()
    count = shape[0] * shape[1]
    assert len(data) == 4 * count, f"{len(data)} bytes for shape {shape}"
    return shape, struct.unpack(f"<{count}f", data)


# Greedy generation; the logits file has a row per prompt position and per generated token, and each
# generated id is the argmax of the row before it.
npy = os.path.join(work, "logits.npy")
r = run("-m", good, "--tokens", PROMPT, "-n", "8", "--ignore-eos", "--logits-out", npy, "--kv-type", "bf16")
assert r.returncode == 0, r.stderr
ids = [int(x) for x in r.stdout.strip().split(",")]
assert len(ids) == 8 and all(0 <= i < VOCAB for i in ids), r.stdout
assert "timing: prefill 8 tokens" in r.stderr and "decode" in r.stderr, r.stderr
assert "memory host:" in r.stderr and "planned" in r.stderr, r.stderr
shape, values = read_npy(npy)
n_prompt = len(PROMPT.split(","))
assert shape == (n_prompt + 8, VOCAB), shape
assert all(math.isfinite(v) for v in values)
for i, tok in enumerate(ids):
    row = values[(n_prompt - 1 + i) * VOCAB:(n_prompt + i) * VOCAB]
    assert row.index(max(row)) == tok, f"generated token {i} is not the argmax of its logits row"
# The same run again gives the same ids (deterministic), sampling with a seed is reproducible too.
assert run("-m", good, "--tokens", PROMPT, "-n", "8", "--ignore-eos", "--kv-type", "bf16").stdout == r.stdout
s1 = run("-m", good, "--tokens", PROMPT, "-n", "8", "--temp", "0.8", "--top-p", "0.9", "--seed", "5").stdout
s2 = run("-m", good, "--tokens", PROMPT, "-n", "8", "--temp", "0.8", "--top-p", "0.9", "--seed", "5").stdout
assert s1 == s2 and s1.strip(), (s1, s2)


# The portable MXFP4 path computes the same integer block products as the vector ones (only float sums differ
# in order): the same greedy ids, and the timing line names the path and the activation precision.
p = run("-m", good, "--tokens", PROMPT, "-n", "8", "--ignore-eos", "--kv-type", "bf16", env={"FERRY_CPU_ISA": "portable"})
assert p.returncode == 0 and p.stdout == r.stdout, (p.stdout, r.stdout, p.stderr)
assert "mxfp4 portable int24" in p.stderr, p.stderr
for bits in ("int16", "int8"):
    q = run("-m", good, "--tokens", PROMPT, "-n", "8", "--expert-activations", bits)
    assert q.returncode == 0 and re.search(rf"mxfp4 \w+ {bits}", q.stderr), q.stderr

# --gpu with the routed experts copied to NUMA-bound memory, planned for two NUMA nodes (both bound to this
# machine's node 0 on a one-node machine): the CPU-only run's ids, and the report lists both host nodes.
n = run("-m", good, "--tokens", PROMPT, "-n", "8", "--ignore-eos", "--kv-type", "bf16", "--gpu", "sim:20MiB",
        "--expert-cache-slots", "0", "--host-experts", "numa", "--numa", "2")
assert n.returncode == 0 and n.stdout == r.stdout, (n.stdout, r.stdout, n.stderr)
assert "host.numa0" in n.stderr and "host.numa1" in n.stderr, n.stderr
assert "host experts: numa, plan node 0:" in n.stderr and "plan node 1:" in n.stderr, n.stderr


def expect_error(pattern, *args, model=good, env=None):
    r = run("-m", model, *args, env=env)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0, f"{args}: exit 0"
    assert len(lines) == 1, f"{args}: expected one stderr line, got {r.stderr!r}"
    assert pattern in lines[0], f"{args}: {lines[0]!r} does not mention {pattern!r}"


expect_error("token id 512 is outside the vocabulary", "--tokens", "0,512")
expect_error("'x' is not a token id", "--tokens", "0,x")
expect_error("--ctx 4 is smaller than the prompt", "--tokens", PROMPT, "--ctx", "4")
expect_error("--kv-type", "--tokens", PROMPT, "--kv-type", "fp7")
expect_error("has no config.json", "--tokens", PROMPT, model=work)
expect_error("--expert-activations", "--tokens", PROMPT, "--expert-activations", "int4")
expect_error("--host-experts", "--tokens", PROMPT, "--gpu", "sim:20MiB", "--host-experts", "pinned")
expect_error("--host-experts needs --gpu", "--tokens", PROMPT, "--host-experts", "numa")
expect_error("--numa needs --gpu", "--tokens", PROMPT, "--numa", "2")
expect_error("FERRY_CPU_ISA=neon", "--tokens", PROMPT, env={"FERRY_CPU_ISA": "neon"})

# A checkpoint missing one tensor (dropped from its shard and from the index).
broken = os.path.join(work, "missing")
shutil.copytree(good, broken)
victim = "layers.1.attn.wkv.scale"
index_path = os.path.join(broken, "model.safetensors.index.json")
index = json.load(open(index_path))
shard = os.path.join(broken, index["weight_map"].pop(victim))
json.dump(index, open(index_path, "w"))
with open(shard, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header, data = json.loads(f.read(n)), f.read()
del header[victim]
text = json.dumps(header).encode()
with open(shard, "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + data)
expect_error("missing tensor " + victim, "--tokens", PROMPT, model=broken)
print("ok")
