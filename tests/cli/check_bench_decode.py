#!/usr/bin/env python3
"""check_bench_decode.py FERRY DIR: `ferry bench decode` on a tiny checkpoint: the phases it times cover the step
(timed ops plus what is left between them make the step), its calibration file fed to `ferry plan --calibration` predicts the bench's own
decode and prefill, and the prediction moves with the rates (half of every rate: half the decode rate; half the
FLOP/s: half the prefill rate), and `bench decode --calibration FILE` prints its run's prediction from FILE's
rates. Bad calibration files give one line naming the problem. Nothing is timed."""
import json
import os
import re
import subprocess
import sys

ferry, tmp = sys.argv[1], sys.argv[2]
os.makedirs(tmp, exist_ok=True)
model, cal = os.path.join(tmp, "tiny"), os.path.join(tmp, "cal.json")


def run(*args, ok=True):
    r = subprocess.run([ferry, *args], capture_output=True, text=True)
    assert (r.returncode == 0) == ok, (args, r.returncode, r.stdout, r.stderr)
    return r


run("make-tiny", model, "--seed", "7")
out = run("bench", "decode", "--model", model, "--ctx", "2K", "--ubatch", "32", "--steps", "2",
          "--calibration-out", cal).stdout
rows = {}
for line in out.splitlines():
    m = re.match(r"^(\S.*?)\s+(-?[0-9.]+)(?:\s+-?[0-9.]+%)?\s+(-?[0-9.]+)(?:\s+-?[0-9.]+%)?\s*$", line)
    if m:
        rows[m.group(1)] = (float(m.group(2)), float(m.group(3)))
for name in ["attention", "indexer", "router", "shared expert", "experts (layer stream)", "waits", "other",
             "between ops (host)", "step (wall)"]:
    assert name in rows, (name, out)
step = rows.pop("step (wall)")
left = rows.pop("between ops (host)")
for i in range(2):  # decode, prefill
    timed = sum(v[i] for v in rows.values())
    assert abs(timed + left[i] - step[i]) <= 0.01 * step[i] + 0.002, (i, timed, left[i], step[i])
    # How much of the step falls between ops depends on the machine's load (CI runs tests side by side): only
    # its sign is checked, the bench reports its share.
    assert left[i] >= -0.002, ("more time in ops than in the step", i, left[i], step[i])
    assert rows["attention"][i] > 0 and rows["indexer"][i] > 0 and rows["experts (layer stream)"][i] > 0

c = json.load(open(cal))
assert c["schema"] == "ferry.calibration" and c["version"] == 1
m = c["measured"]
assert m["ctx"] >= 2048 and m["ubatch"] == 32, m


def plan(path, ctx):
    r = run("plan", "-m", model, "--no-gpu", "--host-ram", "64GiB", "--ctx", str(ctx), "--ubatch", "32",
            "--calibration", path, "--json")
    return json.loads(r.stdout)["cost"]


# The bench's prefill chunk starts after the decode steps: its mean position is the plan's at ctx 2·p0 + ubatch.
p0 = m["ctx"] + 2
decode = plan(cal, m["ctx"])["decode_tok_s"]
prefill = plan(cal, 2 * p0 + 32)["prefill_full_tok_s"]
assert abs(decode / m["decode_tok_s"] - 1) < 0.15, (decode, m)
assert abs(prefill / m["prefill_tok_s"] - 1) < 0.15, (prefill, m)
text = run("plan", "-m", model, "--no-gpu", "--host-ram", "64GiB", "--ctx", str(m["ctx"]), "--calibration",
           cal).stdout
assert "Calibration: " + cal in text and "this plan predicts" in text, text


def variant(name, **scale):
    v = json.loads(json.dumps(c))
    for k, f in scale.items():
        v["rates"][k] *= f
    path = os.path.join(tmp, name + ".json")
    json.dump(v, open(path, "w"))
    return path


# Decode reads at the bandwidths and computes attention at the FLOP rate (a roofline per layer): halving every
# rate halves it, halving the bandwidths alone slows it by less when the arithmetic outlasts some reads.
half_all = variant("half_all", host_dense_gbs=0.5, host_expert_gbs=0.5, host_dense_gflops=0.5, host_expert_gflops=0.5)
assert abs(plan(half_all, m["ctx"])["decode_tok_s"] / decode - 0.5) < 0.01
half_bw = variant("half_bw", host_dense_gbs=0.5, host_expert_gbs=0.5)
assert 0.5 - 0.01 < plan(half_bw, m["ctx"])["decode_tok_s"] / decode < 1
half_flops = variant("half_flops", host_dense_gflops=0.5, host_expert_gflops=0.5)
assert abs(plan(half_flops, 2 * p0 + 32)["prefill_full_tok_s"] / prefill - 0.5) < 0.05
# Without a calibration the defaults stand, and they differ from this machine's.
r = run("plan", "-m", model, "--no-gpu", "--host-ram", "64GiB", "--ctx", str(m["ctx"]), "--json")
assert json.loads(r.stdout)["cost"]["decode_tok_s"] != decode


def bad(name, text, expect):
    path = os.path.join(tmp, name + ".json")
    open(path, "w").write(text)
    r = run("plan", "-m", model, "--no-gpu", "--host-ram", "64GiB", "--calibration", path, ok=False)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(expect, lines[0]) and path in lines[0], (name, r.stderr)


bad("truncated", json.dumps(c)[:40], "not JSON")
missing = json.loads(json.dumps(c))
del missing["rates"]["host_expert_gbs"]
bad("missing", json.dumps(missing), 'missing "host_expert_gbs"')
negative = json.loads(json.dumps(c))
negative["rates"]["triad_gbs"] = -3
bad("negative", json.dumps(negative), '"triad_gbs" must be positive')
bad("wrong_schema", '{"schema": "ferry.plan"}', "not a ferry.calibration file")
r = run("plan", "-m", model, "--no-gpu", "--host-ram", "64GiB", "--calibration", os.path.join(tmp, "absent.json"),
        ok=False)
assert len(r.stderr.strip().splitlines()) == 1, r.stderr

# --calibration FILE: the bench predicts its own run from an earlier run's rates (the half-bandwidth variant here),
# as `ferry plan --calibration FILE` does at the context the run decoded at; a bad file fails before measuring.
out = run("bench", "decode", "--model", model, "--ctx", "1K", "--ubatch", "32", "--steps", "1", "--calibration",
          half_bw).stdout
after = out.split("predicted from " + half_bw, 1)
assert len(after) == 2, out
row = re.search(r"^decode\s+([0-9.]+) tok/s\s+([0-9.]+) tok/s", after[1], re.M)
ctx = int(re.search(r"^decode [0-9.]+ tok/s at ctx ([0-9]+);", out, re.M).group(1))
expected = plan(half_bw, ctx)["decode_tok_s"]
assert row and abs(float(row.group(2)) / expected - 1) < 0.01, (row, expected, out)
r = run("bench", "decode", "--model", model, "--ctx", "1K", "--calibration", os.path.join(tmp, "truncated.json"),
        ok=False)
assert len(r.stderr.strip().splitlines()) == 1 and "not JSON" in r.stderr and "ferry bench decode:" not in r.stdout, r

# On the simulated device: the ops the device runs are timed there, and the copies over its link are counted.
out = run("bench", "decode", "--model", model, "--ctx", "1K", "--ubatch", "32", "--steps", "1", "--gpu",
          "sim:8MiB@25GB/s").stdout
assert "on device" in out and re.search(r"^link: [1-9][0-9]* copies", out, re.M), out
print("ok")
