#!/usr/bin/env python3
"""check_inspect_corpus.py FERRY DIR: `ferry inspect` on a tiny checkpoint says valid; on each broken copy
(one problem each) it prints exactly one error line naming the problem and exits non-zero."""
import json
import os
import shutil
import struct
import subprocess
import sys

ferry, work = sys.argv[1], sys.argv[2]
shutil.rmtree(work, ignore_errors=True)
good = os.path.join(work, "good")
subprocess.run([ferry, "make-tiny", good], check=True, capture_output=True)
run = subprocess.run([ferry, "inspect", good], capture_output=True, text=True)
assert run.returncode == 0 and "valid" in run.stdout, run.stdout + run.stderr
SHARD = "model-00002-of-00002.safetensors"


def read(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), f.read()


def write(path, header, data, claimed=None):
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", claimed if claimed is not None else len(text)))
        f.write(text)
        f.write(data)


def edit_header(fn):
    def apply(d):
        header, data = read(os.path.join(d, SHARD))
        fn(header)
        write(os.path.join(d, SHARD), header, data)
    return apply


def first(header):
    return next(k for k in header if k != "__metadata__")


def second(header):
    return [k for k in header if k != "__metadata__"][1]


def truncate(d):
    path = os.path.join(d, SHARD)
    os.truncate(path, os.path.getsize(path) - 100)


def long_header(d):
    header, data = read(os.path.join(d, SHARD))
    write(os.path.join(d, SHARD), header, b"", claimed=10**9)


def overlap(h):
    h[second(h)]["data_offsets"] = [h[first(h)]["data_offsets"][0], h[first(h)]["data_offsets"][0] + (h[second(h)]["data_offsets"][1] - h[second(h)]["data_offsets"][0])]


def out_of_range(h):
    k = first(h)
    b, e = h[k]["data_offsets"]
    h[k]["data_offsets"] = [b + 10**9, e + 10**9]


def unknown_dtype(h):
    h[first(h)]["dtype"] = "F12"


def shape_mismatch(h):
    h[first(h)]["shape"] = [7, 7, 7]


def missing_shard(d):
    os.remove(os.path.join(d, SHARD))


def missing_tensor(d):
    header, data = read(os.path.join(d, SHARD))
    del header["head.weight"]
    write(os.path.join(d, SHARD), header, data)
    idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))
    del idx["weight_map"]["head.weight"]
    json.dump(idx, open(os.path.join(d, "model.safetensors.index.json"), "w"))


def wrong_shape(h):
    # Same byte count, shape the config does not imply.
    s = h["norm.weight"]["shape"]
    h["norm.weight"]["shape"] = [s[0] // 2, 2]


cases = {
    "truncated_data": (truncate, "truncated|past the end|past the data"),
    "header_longer_than_file": (long_header, "exceeds the file size"),
    "overlapping_ranges": (edit_header(overlap), "overlap"),
    "offsets_out_of_range": (edit_header(out_of_range), "past the end|past the data"),
    "unknown_dtype": (edit_header(unknown_dtype), "unknown dtype"),
    "shape_bytes_mismatch": (edit_header(shape_mismatch), "span"),
    "index_names_missing_shard": (missing_shard, "missing"),
    "missing_tensor": (missing_tensor, "missing tensor 'head.weight'"),
    "wrong_shape": (edit_header(wrong_shape), "'norm.weight' has shape"),
}
import re

failed = 0
for name, (corrupt, pattern) in cases.items():
    d = os.path.join(work, name)
    shutil.copytree(good, d)
    corrupt(d)
    run = subprocess.run([ferry, "inspect", d], capture_output=True, text=True)
    lines = run.stderr.strip().splitlines()
    ok = run.returncode != 0 and len(lines) == 1 and re.search(pattern, lines[0]) and run.returncode < 128
    print(f"{'ok  ' if ok else 'FAIL'} {name}: exit {run.returncode}: {lines}")
    failed += not ok
shutil.rmtree(work, ignore_errors=True)
sys.exit(1 if failed else 0)
