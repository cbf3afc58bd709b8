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
print("ok:", len(saved["devices"]), "devices,", len(saved["layers"]), "layers")
