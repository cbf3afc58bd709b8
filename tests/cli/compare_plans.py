#!/usr/bin/env python3
"""compare_plans.py FERRY: `ferry plan --model <real config.json>` must give the same plan as the preset.
Everything but the model's name and source must be identical."""
import json
import subprocess
import sys

ferry, config = sys.argv[1], sys.argv[2]
flags = ["--gpu", "rtx3090", "--host-ram", "256GiB", "--ctx", "1048576", "--json"]


def plan(model):
    run = subprocess.run([ferry, "plan", "--model", model, *flags], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"ferry plan --model {model} exited {run.returncode}: {run.stderr}")
    j = json.loads(run.stdout)
    del j["model"]["name"], j["model"]["source"]
    return j


a, b = plan("deepseek-v4-flash"), plan(config)
if a != b:
    for key in a:
        if a[key] != b.get(key):
            print(f"differs: {key}")
    sys.exit("the preset and the real config.json give different plans")
assert a["fits"] is True
print("identical plans:", len(json.dumps(a)), "bytes of JSON")
