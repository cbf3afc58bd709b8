#!/usr/bin/env python3
"""check_run_plan.py FERRY DIR: a plan saved by `ferry run --plan-out` and run with `ferry run --plan` gives the
same run (the same ids, the same logits file bytes) and saves the same plan; an edited plan whose homes move
experts between the NUMA nodes runs as edited with the same logits; a plan `ferry plan` made runs too; a bad
plan file, a plan for another model, one that does not fit, and planning flags beside --plan are refused
with one line on stderr."""
import json
import os
import re
import shutil
import subprocess
import sys

ferry, work = sys.argv[1], sys.argv[2]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
tiny, other = os.path.join(work, "tiny"), os.path.join(work, "other")
subprocess.run([ferry, "make-tiny", tiny, "--seed", "7"], check=True, capture_output=True)
subprocess.run([ferry, "make-tiny", other, "--seed", "3", "--real-ratios"], check=True, capture_output=True)
PROMPT = ",".join(str((i * 37 + 11) % 200) for i in range(200))


def path(name):
    return os.path.join(work, name)


def run(*args, model=tiny):
    return subprocess.run([ferry, "run", "-m", model, "--tokens", PROMPT, "-n", "16", "--ignore-eos", *args],
                          capture_output=True, text=True)


def read(name):
    with open(path(name), "rb") as f:
        return f.read()


# The run that saves its plan: a 20 MiB device with a 2-slot cache, streaming, experts copied to two NUMA nodes.
a = run("--gpu", "sim:20MiB", "--expert-cache-slots", "2", "--host-experts", "numa", "--numa", "2", "--kv-type",
        "bf16", "--plan-out", path("p.json"), "--logits-out", path("a.npy"))
assert a.returncode == 0, a.stderr
plan = json.loads(read("p.json"))
assert plan["schema"] == "ferry.plan" and plan["schema_version"] == 2, plan["schema_version"]
homes = [h for layer in plan["layers"] for h in layer["experts"]]
assert homes and all(h["device"] in ("host.numa0", "host.numa1") and h["cache"] == "gpu0" for h in homes), homes[:2]
assert not os.path.exists(path("p.json.tmp"))

# The same run from the file: identical logits bytes and ids, and it saves the plan it ran, unchanged.
b = run("--gpu", "sim:20MiB", "--host-experts", "numa", "--plan", path("p.json"), "--plan-out", path("q.json"),
        "--logits-out", path("b.npy"))
assert b.returncode == 0, b.stderr
assert read("a.npy") == read("b.npy"), "--plan gave other logits"
assert a.stdout == b.stdout, (a.stdout, b.stdout)
assert read("p.json") == read("q.json"), "the plan --plan ran is not the plan it was given"


# An edited plan: every layer's experts 0-11 on NUMA node 0 and 12-15 on node 1 (contiguous ranges instead of
# the planner's round-robin), the two nodes' routed-expert bytes moved with them. The store follows the homes
# (three quarters of the bytes on plan node 0) and the logits stay the CPU's.
def node_bytes(stderr):
    """The bytes of each plan node in the 'host experts: numa, plan node K: SIZE on NUMA node ...' line."""
    line = next(l for l in stderr.splitlines() if l.startswith("host experts: numa"))
    units = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    sizes = re.findall(r"plan node \d+: ([0-9.]+) (B|KiB|MiB|GiB)", line)
    assert len(sizes) == 2, line
    return [float(v) * units[u] for v, u in sizes]


edited = json.loads(read("p.json"))
devices = {d["id"]: d for d in edited["devices"]}
in_ram = sum(h["count"] for layer in edited["layers"] for h in layer["experts"])
per_expert = (devices["host.numa0"]["use"]["weights.routed_experts"] +
              devices["host.numa1"]["use"]["weights.routed_experts"]) // in_ram
n_layers = 0
for layer in edited["layers"]:
    if not layer["experts"]:
        continue
    n_layers += 1
    n = sum(h["count"] for h in layer["experts"])
    assert n == 16, n
    layer["experts"] = [{"first": 0, "count": 12, "step": 1, "device": "host.numa0", "cache": "gpu0"},
                        {"first": 12, "count": 4, "step": 1, "device": "host.numa1", "cache": "gpu0"}]
for name, count in (("host.numa0", 12), ("host.numa1", 4)):
    d = devices[name]
    d["use"]["weights.routed_experts"] = count * n_layers * per_expert
    d["used_bytes"] = sum(d["use"].values())
with open(path("edited.json"), "w") as f:
    json.dump(edited, f)
e = run("--gpu", "sim:20MiB", "--host-experts", "numa", "--plan", path("edited.json"), "--logits-out", path("e.npy"))
assert e.returncode == 0, e.stderr
assert read("e.npy") == read("a.npy"), "the edited plan gave other logits"
b0, b1 = node_bytes(a.stderr)
assert abs(b0 / b1 - 1) < 0.01, (b0, b1)
e0, e1 = node_bytes(e.stderr)
assert abs(e0 / e1 - 3) < 0.01, (e0, e1)

# A plan made by `ferry plan` for this checkpoint (a 1 GiB card, so every expert resident) runs on a device as big.
p = subprocess.run([ferry, "plan", "-m", tiny, "--gpu", "1GiB", "--host-ram", "16GiB", "--plan-out", path("made.json")],
                   capture_output=True, text=True)
assert p.returncode == 0, p.stderr
m = run("--gpu", "sim:1GiB", "--plan", path("made.json"), "--logits-out", path("m.npy"))
assert m.returncode == 0, m.stderr
assert "resident 0," not in m.stderr and "CPU 0" in m.stderr, m.stderr

# Without --ubatch, run's prefill chunk is the planner's choice for the device, the one `ferry plan` prints for
# the same card (here not the 512 of a CPU-only run: a device holding every expert computes bigger chunks faster);
# --ubatch overrides it.
def planned_chunk(*flags, tool="run"):
    if tool == "run":
        r = subprocess.run([ferry, "run", "-m", tiny, "--tokens", "1,2,3", "-n", "1", "--gpu", "sim:1GiB", *flags,
                            "--plan-out", path("chunk.json")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return json.loads(read("chunk.json"))["options"]["ubatch"]
    r = subprocess.run([ferry, "plan", "-m", tiny, "--gpu", "1GiB", "--host-ram", "16GiB", *flags, "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["options"]["ubatch"]


chosen = planned_chunk("--ctx", "4096")
assert chosen == planned_chunk("--ctx", "4096", tool="plan") and chosen != 512, chosen
assert planned_chunk("--ctx", "4096", "--ubatch", "64") == 64


def expect_error(pattern, *args, model=tiny):
    r = run(*args, model=model)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0, f"{args}: exit 0"
    assert len(lines) == 1, f"{args}: expected one stderr line, got {r.stderr!r}"
    assert pattern in lines[0], f"{args}: {lines[0]!r} does not mention {pattern!r}"


def edit(name, change):
    j = json.loads(read("p.json"))
    change(j)
    with open(path(name), "w") as f:
        json.dump(j, f)
    return path(name)


GPU = ("--gpu", "sim:20MiB")
expect_error("--ctx: the plan sets it", *GPU, "--plan", path("p.json"), "--ctx", "4096")
expect_error("--kv-type: the plan sets it", *GPU, "--plan", path("p.json"), "--kv-type", "bf16")
expect_error("--numa: the plan sets", *GPU, "--plan", path("p.json"), "--numa", "2")
expect_error("--expert-cache-slots: the plan sets", *GPU, "--plan", path("p.json"), "--expert-cache-slots", "1")
expect_error("--plan needs --gpu", "--plan", path("p.json"))
expect_error("--plan-out needs --gpu", "--plan-out", path("x.json"))
expect_error("plan: made for " + tiny, *GPU, "--plan", path("p.json"), model=other)
expect_error("does not fit on --gpu sim:10MiB", "--gpu", "sim:10MiB", "--plan", path("p.json"))
small = edit("small.json", lambda j: j["devices"][0].update(capacity_bytes=1000))
expect_error("plan: does not fit: gpu0 needs", *GPU, "--plan", small)
twice = edit("twice.json", lambda j: j["layers"][1]["experts"][1].update(first=0))
expect_error("layer 1: expert 0 has two homes", *GPU, "--plan", twice)
moved = edit("moved.json", lambda j: j["layers"][1]["experts"][0].update(device="host.numa1"))
expect_error("host.numa0 plans", *GPU, "--plan", moved)
if len(os.sched_getaffinity(0)) > 1:  # the workspace of one worker thread is too small for this process's
    one = edit("threads.json", lambda j: j["options"].update(threads=1))
    expect_error("its workspace is for 1 worker threads", *GPU, "--plan", one)
old = edit("old.json", lambda j: j.update(schema_version=1))
expect_error("schema_version 1 is not supported", *GPU, "--plan", old)
with open(path("broken.json"), "w") as f:
    f.write("{not json")
expect_error("not valid JSON", *GPU, "--plan", path("broken.json"))
expect_error("cannot read the plan file", *GPU, "--plan", path("missing.json"))
three = subprocess.run([ferry, "plan", "-m", tiny, "--gpu", "1GiB", "--host-ram", "16GiB", "--nodes", "3",
                        "--plan-out", path("three.json")], capture_output=True, text=True)
assert three.returncode == 0, three.stderr
expect_error("made for 3 nodes", "--gpu", "sim:1GiB", "--plan", path("three.json"))

# --gpu names a CUDA device (cuda:N) or a simulated one; a CUDA device this machine cannot use (no GPU, no driver,
# a CPU-only build) or whose kernels do not cover the model yet stops before loading, with one line naming it.
expect_error("a CUDA device is cuda:N", "--gpu", "cuda:x")
expect_error("give a CUDA device (cuda:0) or a simulated one", "--gpu", "gpu:0")
expect_error("--gpu cuda:0", "--gpu", "cuda:0")

# serve keeps prefix-reuse snapshots: a plan without them is refused before loading; one with them, or serve without
# reuse, gets as far as listening (on an address that cannot be, so that it stops there).
def serve_plan(plan, *extra):
    return subprocess.run([ferry, "serve", "-m", tiny, "--gpu", "sim:64MiB", "--plan", plan, "--host", "256.1.1.1",
                           *extra],
                          capture_output=True, text=True, timeout=60)
for keep in ("0", "4"):
    made = subprocess.run([ferry, "plan", "-m", tiny, "--gpu", "64MiB", "--gpu-reserve", "0", "--host-ram", "16GiB",
                           "--ctx", "4096", "--snapshots", keep, "--plan-out", path(f"snap{keep}.json")],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
refused = serve_plan(path("snap0.json"))
assert refused.returncode != 0 and "it plans 0 prefix-reuse snapshot(s) per sequence; this command keeps 4" in \
    refused.stderr, refused.stderr
for ok in (serve_plan(path("snap4.json")), serve_plan(path("snap0.json"), "--prefix-reuse", "off")):
    assert "snapshot" not in ok.stderr and "cannot listen on 256.1.1.1" in ok.stderr, ok.stderr
print("ok")
