#!/usr/bin/env python3
"""check_perplexity.py FERRY DIR: `ferry perplexity` on a tiny checkpoint and a text written here.
1. A bf16 run compared with its own bf16 base: KL exactly 0, top-1 agreement 100%, the same perplexity.
2. fp8, q8_0 and q4_0 KV against the bf16 base: the statistics are printed (in the test's log); q4_0's KL > 0.
3. The perplexity equals exp(mean NLL) computed here from `ferry run --tokens CHUNK -n 0 --logits-out` of the same
   chunks (BOS-led, second half scored), and so does its standard error.
4. Base files that do not match (other ctx, text, chunks, model) or are damaged (truncated, flipped bytes, not such
   a file) are refused with one line; so are bad flags (no file, empty text, ctx too small or beyond the text).
5. --gpu sim:… (experts streamed, cached with evictions and on the CPU) and another --ubatch give the CPU run's
   perplexity and KL 0."""
import math
import os
import random
import re
import shutil
import struct
import subprocess
import sys

ferry, work = sys.argv[1], sys.argv[2]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
tiny, other_model = os.path.join(work, "tiny"), os.path.join(work, "tiny8")
subprocess.run([ferry, "make-tiny", tiny, "--seed", "7"], check=True, capture_output=True)
subprocess.run([ferry, "make-tiny", other_model, "--seed", "8"], check=True, capture_output=True)
VOCAB, BOS, CTX, CHUNKS = 512, 0, 32, 4

rng = random.Random(3)
words = "the quick brown fox jumps over a lazy dog while seven green birds sing far away in deep woods".split()
text = os.path.join(work, "text.txt")
with open(text, "w") as f:
    f.write(" ".join(rng.choice(words) for _ in range(150)) + "\n")
other_text = os.path.join(work, "other.txt")
with open(other_text, "w") as f:
    f.write(" ".join(rng.choice(words) for _ in range(150)) + "\n")


def ppl_run(*args, model=tiny):
    return subprocess.run([ferry, "perplexity", "-m", model, "-f", text, "-c", str(CTX), "--chunks", str(CHUNKS),
                           *args], capture_output=True, text=True)


def ok(*args, model=tiny):
    r = ppl_run(*args, model=model)
    assert r.returncode == 0, (args, r.stderr)
    return r


def final(r):
    m = re.search(r"^Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)$", r.stdout, re.M)
    assert m, r.stdout
    return float(m.group(1)), float(m.group(2))


def kl_stats(r):
    stats = {}
    for key, pattern in [("mean", r"mean KL = (\S+) \+/- (\S+)"), ("median", r"median KL = (\S+)"),
                         ("p99.9", r"99\.9% KL = (\S+)"), ("max", r"max KL = (\S+)"),
                         ("ratio", r"PPL\(this\)/PPL\(base\) = (\S+)"), ("ppl_base", r"PPL\(base\) = (\S+)"),
                         ("ppl_this", r"PPL\(this\) = (\S+)"), ("dp", r"top token = (\S+)%")]:
        m = re.search(pattern, r.stdout)
        assert m, (key, r.stdout)
        stats[key] = m.group(1)
    m = re.search(r"top-1 agreement = (\S+)% \((\d+)/(\d+)\)", r.stdout)
    assert m, r.stdout
    stats["same_top"], stats["positions"] = int(m.group(2)), int(m.group(3))
    return stats


# The base: bf16 KV on the CPU; the file is written in place (no temporary left) with a progress line per chunk.
base = os.path.join(work, "base.kld")
b = ok("--kv-type", "bf16", "--kl-divergence-base", base)
assert os.path.isfile(base) and not [f for f in os.listdir(work) if ".tmp" in f], os.listdir(work)
assert f"chunk {CHUNKS}/{CHUNKS}" in b.stderr and "ETA" in b.stderr, b.stderr
base_ppl = final(b)
positions = CHUNKS * (CTX - 1 - CTX // 2)

# 1. bf16 against its own base: exactly zero.
s = kl_stats(ok("--kv-type", "bf16", "--kl-divergence", base))
assert s["positions"] == positions and s["same_top"] == positions, s
for key in ("mean", "median", "p99.9", "max"):
    assert float(s[key]) == 0.0, s
assert s["ratio"] == "1.000000" and s["ppl_base"] == s["ppl_this"] and float(s["dp"]) == 0.0, s

# 2. The quantized KV types: printed for the report; q4_0 moves the distribution.
for kv in ("fp8", "q8_0", "q4_0"):
    r = ok("--kv-type", kv, "--kl-divergence", base)
    s = kl_stats(r)
    print(f"--kv-type {kv} vs bf16: PPL {final(r)[0]} (base {base_ppl[0]}), ratio {s['ratio']}, mean KL {s['mean']}, "
          f"median {s['median']}, 99.9% {s['p99.9']}, max {s['max']}, top-1 {s['same_top']}/{s['positions']}, "
          f"mean |dp| {s['dp']}%")
    assert all(math.isfinite(float(s[k])) and float(s[k]) >= 0 for k in ("median", "max")), s
    if kv == "q4_0":
        assert float(s["mean"]) > 0 and float(s["max"]) > 0, s


# 3. The perplexity from `ferry run`'s logits of the same chunks, computed independently here.
def read_npy(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x93NUMPY\x01\x00"
        (n,) = struct.unpack("<H", f.read(2))
        header = f.read(n).decode()
        rows, cols = (int(x) for x in header[header.index("(") + 1:header.index(")")].split(",") if x.strip())
        return rows, cols, struct.unpack(f"<{rows * cols}f", f.read())


tok = subprocess.run([ferry, "tokenize", "-m", tiny], input=open(text, "rb").read(), capture_output=True)
assert tok.returncode == 0, tok.stderr
ids = [int(x) for x in tok.stdout.decode().strip().strip("[]").split(",")]
if ids[0] != BOS:
    ids = [BOS] + ids
nlls = []
for c in range(CHUNKS):
    chunk = [BOS] + ids[c * CTX + 1:(c + 1) * CTX]  # llama-perplexity: the chunk's first token becomes BOS
    npy = os.path.join(work, f"chunk{c}.npy")
    r = subprocess.run([ferry, "run", "-m", tiny, "--tokens", ",".join(map(str, chunk)), "-n", "0", "-c", str(CTX),
                        "--kv-type", "bf16", "--logits-out", npy], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows, cols, logits = read_npy(npy)
    assert (rows, cols) == (CTX, VOCAB)
    for j in range(CTX // 2, CTX - 1):
        row = logits[j * VOCAB:(j + 1) * VOCAB]
        top = max(row)
        lse = top + math.log(math.fsum(math.exp(v - top) for v in row))
        nlls.append(lse - row[chunk[j + 1]])
assert len(nlls) == positions
mean = math.fsum(nlls) / len(nlls)
var = math.fsum(v * v for v in nlls) / len(nlls) - mean * mean
want_ppl, want_err = math.exp(mean), math.sqrt(var / (len(nlls) - 1)) * math.exp(mean)
# Both sides take the same float32 logits and work in float64, so they differ only by the order of float64 sums
# (~1e-12 relative); what remains is the printing: 4 decimals for PPL, 5 for its error.
assert abs(base_ppl[0] - want_ppl) <= 6e-5 and abs(base_ppl[1] - want_err) <= 6e-6, (base_ppl, want_ppl, want_err)
print(f"bf16 PPL {base_ppl[0]} +/- {base_ppl[1]}; from ferry run's logits: {want_ppl:.6f} +/- {want_err:.6f}")


# 4. Bad base files and bad flags: one line, non-zero exit.
def expect_error(pattern, *args, model=tiny, full=None):
    r = subprocess.run(full, capture_output=True, text=True) if full else ppl_run(*args, model=model)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0, f"{args}: exit 0"
    assert len(lines) == 1, f"{args}: expected one stderr line, got {r.stderr!r}"
    assert pattern in lines[0], f"{args}: {lines[0]!r} does not mention {pattern!r}"


data = open(base, "rb").read()


def damaged(name, content):
    path = os.path.join(work, name)
    with open(path, "wb") as f:
        f.write(content)
    return path


def flipped(at):
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:]


expect_error("was made with --ctx 32, this run has --ctx 16",
             full=[ferry, "perplexity", "-m", tiny, "-f", text, "-c", "16", "--chunks", "4", "--kl-divergence", base])
expect_error("covers 4 chunks, this run 3",
             full=[ferry, "perplexity", "-m", tiny, "-f", text, "-c", "32", "--chunks", "3", "--kl-divergence", base])
expect_error("was made from another text",
             full=[ferry, "perplexity", "-m", tiny, "-f", other_text, "-c", "32", "--chunks", "4", "--kl-divergence",
                   base])
expect_error("was made with another model", "--kl-divergence", base, model=other_model)
for cut in (len(data) // 2, len(data) - 1, 40):
    expect_error("truncated", "--kl-divergence", damaged(f"cut{cut}.kld", data[:cut]))
for at in (20, 100, len(data) // 2, len(data) - 3):
    expect_error("corrupted", "--kl-divergence", damaged(f"flip{at}.kld", flipped(at)))
expect_error("is not a KL base file", "--kl-divergence", text)
expect_error("format version", "--kl-divergence", damaged("v2.kld", data[:8] + b"\x02" + data[9:]))
expect_error("cannot read", "--kl-divergence", os.path.join(work, "missing.kld"))
expect_error("excludes", "--kl-divergence", base, "--kl-divergence-base", os.path.join(work, "x.kld"))
expect_error("--file is required", full=[ferry, "perplexity", "-m", tiny])
empty = damaged("empty.txt", b"")
expect_error("has no text", full=[ferry, "perplexity", "-m", tiny, "-f", empty])
expect_error("cannot read", full=[ferry, "perplexity", "-m", tiny, "-f", os.path.join(work, "nope.txt")])
expect_error("--ctx 2 is too small", full=[ferry, "perplexity", "-m", tiny, "-f", text, "-c", "2"])
expect_error("fewer than one chunk of --ctx 4096", full=[ferry, "perplexity", "-m", tiny, "-f", text, "-c", "4096"])
expect_error("--kl-top-k 600 exceeds the vocabulary", "--kl-top-k", "600", "--kl-divergence-base",
             os.path.join(work, "k.kld"))

# 5. Placement: the simulated GPU with a 2-slot expert cache (streaming, evictions, experts on the CPU), and
# another prefill chunk, compute the CPU run's logits bit for bit (tests/e2e/test_offload.cpp, test_forward_chunks.cpp): the same perplexity, KL 0.
for args in (["--gpu", "sim:10MiB", "--expert-cache-slots", "2"], ["--ubatch", "5"]):
    r = ok("--kv-type", "bf16", "--kl-divergence", base, *args)
    s = kl_stats(r)
    assert final(r) == base_ppl and float(s["max"]) == 0.0 and s["same_top"] == positions, (args, r.stdout)
    if args[0] == "--gpu":
        evictions = re.search(r"(\d+) evictions", r.stderr)
        cpu = re.search(r"streamed (\d+)\), CPU (\d+)", r.stderr)
        assert evictions and int(evictions.group(1)) > 0 and cpu and min(map(int, cpu.groups())) > 0, r.stderr
print("ok")
