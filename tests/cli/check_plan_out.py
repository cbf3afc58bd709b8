#!/usr/bin/env python3
"""check_plan_out.py FERRY DIR: --plan-out writes the same JSON as --json, and it follows the documented schema:
every node's devices, and every routed expert of every layer homed exactly once, a quarter on each node."""
import json
import os
import subprocess
import sys

ferry, tmp = sys.argv[1], sys.argv[2]
os.makedirs(tmp, exist_ok=True)
path = os.path.join(tmp, "plan.json")
flags = ["plan", "-m", "deepseek-v4-pro", "--gpu", "rtx3090", "--host-ram", "256GiB", "--nodes", "4"]
run = subprocess.run([ferry, *flags, "--json", "--plan-out", path], capture_output=True, text=True)
assert run.returncode == 0, run.stderr
printed = json.loads(run.stdout)
saved = json.load(open(path))
assert printed == saved, "--plan-out differs from --json"
assert saved["schema"] == "ferry.plan" and saved["schema_version"] == 2
for key in ["model", "hardware", "options", "fits", "layout", "kv_cache", "devices", "layers", "cost", "kv_fits",
            "shortfalls", "suggestions", "warnings"]:
    assert key in saved, key
for d in saved["devices"]:
    assert d["used_bytes"] == sum(d["use"].values()), d["id"]
    assert d["used_bytes"] <= d["capacity_bytes"], d["id"]
assert saved["hardware"]["nodes"] == 4 and len([d for d in saved["devices"] if d["kind"] == "host"]) == 4
assert not os.path.exists(path + ".tmp")
node = {d["id"]: d["node"] for d in saved["devices"]}
for layer in saved["layers"]:
    homed = [0] * 384
    per_node = [0] * 4
    for h in layer["experts"]:
        for i in range(h["count"]):
            homed[h["first"] + i * h["step"]] += 1
        per_node[node[h["device"]]] += h["count"]
    assert homed == [1] * 384, layer["layer"]
    assert per_node == [96] * 4, (layer["layer"], per_node)
    assert len(layer["runs"]) in (1, 4), layer["runs"]

# Prefix-reuse snapshots (serve and chat keep 4 per sequence): each snapshot copies every main layer's window ring
# and compressor state, so each node's host holds keep x (the ring and state bytes of the layers the node runs),
# and on one node that is keep x the KV cache's ring and state totals; without --snapshots, none.
def snapshot_plan(*extra):
    r = subprocess.run([ferry, "plan", "-m", "deepseek-v4-flash", "--ctx", "64K", "--parallel", "3", *extra, "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)

for extra in (["--gpu", "rtx3090", "--host-ram", "256GiB"], ["--no-gpu", "--host-ram", "256GiB"]):
    plain, kept = snapshot_plan(*extra), snapshot_plan(*extra, "--snapshots", "4")
    assert all("kv_snapshots" not in d["use"] for d in plain["devices"]), extra
    by_kind = kept["kv_cache"]["by_kind"]
    hosts = [d for d in kept["devices"] if d["kind"] == "host"]
    assert kept["options"]["snapshot_keep"] == 4 and len(hosts) == 1
    assert hosts[0]["use"]["kv_snapshots"] == 4 * (by_kind["swa_ring"] + by_kind["compressor_state"]), extra
    assert hosts[0]["used_bytes"] == [d for d in plain["devices"] if d["kind"] == "host"][0]["used_bytes"] + \
        hosts[0]["use"]["kv_snapshots"], extra
nodes = snapshot_plan("--no-gpu", "--host-ram", "96GiB", "--nodes", "2", "--split", "layers", "--snapshots", "2")
per_node = {}
for d in nodes["devices"]:
    ring_state = d["use"].get("kv.swa_ring", 0) + d["use"].get("kv.compressor_state", 0)
    per_node.setdefault(d["node"], [0, 0])[0] += ring_state
    per_node[d["node"]][1] += d["use"].get("kv_snapshots", 0)
assert len(per_node) == 2 and all(snap == 2 * ring for ring, snap in per_node.values()) and \
    all(ring > 0 for ring, _ in per_node.values()), per_node
print("ok:", len(saved["devices"]), "devices,", len(saved["layers"]), "layers; snapshots counted per node")
