#!/usr/bin/env python3
"""check_tiny_with_python.py FERRY DIR: an independent reader of the tiny checkpoint, in Python's standard
library only. It derives the tensor list DeepSeek V4's layout implies from config.json by itself (names,
dtypes, shapes: ../shared/spec/deepseek-v4.md §4) and checks every shard's header against it: names, dtypes,
shapes, contiguous in-bounds offsets, and the index."""
import json
import os
import struct
import subprocess
import sys

ferry, out = sys.argv[1], sys.argv[2]
subprocess.run([ferry, "make-tiny", out, "--seed", "3"], check=True, capture_output=True)
cfg = json.load(open(os.path.join(out, "config.json")))


def cdiv(a, b):
    return -(-a // b)


def expected():
    dim, heads, hd, ql = cfg["hidden_size"], cfg["num_attention_heads"], cfg["head_dim"], cfg["q_lora_rank"]
    g, ol, E, inter = cfg["o_groups"], cfg["o_lora_rank"], cfg["n_routed_experts"], cfg["moe_intermediate_size"]
    ih, ihd, hc, vocab = cfg["index_n_heads"], cfg["index_head_dim"], cfg["hc_mult"], cfg["vocab_size"]
    t = {}

    def fp8(name, o, i):
        t[name + ".weight"] = ("F8_E4M3", [o, i])
        t[name + ".scale"] = ("F8_E8M0", [cdiv(o, 128), cdiv(i, 128)])

    def fp4(name, o, i):
        t[name + ".weight"] = ("I8", [o, i // 2])
        t[name + ".scale"] = ("F8_E8M0", [o, i // 32])

    def compressor(p, ratio, d):
        coff = 2 if ratio == 4 else 1
        t[p + ".wkv.weight"] = ("BF16", [coff * d, dim])
        t[p + ".wgate.weight"] = ("BF16", [coff * d, dim])
        t[p + ".ape"] = ("F32", [ratio, coff * d])
        t[p + ".norm.weight"] = ("BF16", [d])

    def head(p):
        t[p + "hc_head_fn"] = ("F32", [hc, hc * dim])
        t[p + "hc_head_base"] = ("F32", [hc])
        t[p + "hc_head_scale"] = ("F32", [1])

    n = cfg["num_hidden_layers"]
    for layer in range(n + cfg["num_nextn_predict_layers"]):
        p = f"layers.{layer}." if layer < n else f"mtp.{layer - n}."
        ratio = cfg["compress_ratios"][layer]
        fp8(p + "attn.wq_a", ql, dim)
        t[p + "attn.q_norm.weight"] = ("BF16", [ql])
        fp8(p + "attn.wq_b", heads * hd, ql)
        fp8(p + "attn.wkv", hd, dim)
        t[p + "attn.kv_norm.weight"] = ("BF16", [hd])
        fp8(p + "attn.wo_a", g * ol, heads * hd // g)
        fp8(p + "attn.wo_b", dim, g * ol)
        t[p + "attn.attn_sink"] = ("F32", [heads])
        if ratio:
            compressor(p + "attn.compressor", ratio, hd)
        if ratio == 4:
            fp8(p + "attn.indexer.wq_b", ih * ihd, ql)
            t[p + "attn.indexer.weights_proj.weight"] = ("BF16", [ih, dim])
            compressor(p + "attn.indexer.compressor", ratio, ihd)
        t[p + "attn_norm.weight"] = ("BF16", [dim])
        t[p + "ffn_norm.weight"] = ("BF16", [dim])
        for site in ("attn", "ffn"):
            t[p + f"hc_{site}_fn"] = ("F32", [(2 + hc) * hc, hc * dim])
            t[p + f"hc_{site}_base"] = ("F32", [(2 + hc) * hc])
            t[p + f"hc_{site}_scale"] = ("F32", [3])
        t[p + "ffn.gate.weight"] = ("BF16", [E, dim])
        if layer < cfg["num_hash_layers"]:
            t[p + "ffn.gate.tid2eid"] = ("I64", [vocab, cfg["num_experts_per_tok"]])
        else:
            t[p + "ffn.gate.bias"] = ("F32", [E])
        for e in range(E):
            fp4(p + f"ffn.experts.{e}.w1", inter, dim)
            fp4(p + f"ffn.experts.{e}.w2", dim, inter)
            fp4(p + f"ffn.experts.{e}.w3", inter, dim)
        fp8(p + "ffn.shared_experts.w1", inter, dim)
        fp8(p + "ffn.shared_experts.w2", dim, inter)
        fp8(p + "ffn.shared_experts.w3", inter, dim)
        if layer >= n:
            fp8(p + "e_proj", dim, dim)
            fp8(p + "h_proj", dim, dim)
            for k in ("enorm", "hnorm", "norm"):
                t[p + k + ".weight"] = ("BF16", [dim])
            head(p)
    t["embed.weight"] = ("BF16", [vocab, dim])
    t["head.weight"] = ("BF16", [vocab, dim])
    t["norm.weight"] = ("BF16", [dim])
    head("")
    return t


SIZE = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1, "F8_E8M0": 1, "I8": 1, "I32": 4, "I64": 8}
want = expected()
index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
seen = {}
shards = sorted(set(index["weight_map"].values()))
assert len(shards) >= 2, shards
for shard in shards:
    path = os.path.join(out, shard)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    data = os.path.getsize(path) - 8 - n
    header.pop("__metadata__", None)
    end = 0
    for name, e in header.items():
        assert name not in seen, f"{name} in two shards"
        seen[name] = shard
        dtype, shape = want.get(name, (None, None))
        assert dtype is not None, f"unexpected tensor {name}"
        assert e["dtype"] == dtype, f"{name}: {e['dtype']} != {dtype}"
        assert e["shape"] == shape, f"{name}: {e['shape']} != {shape}"
        b, en = e["data_offsets"]
        count = 1
        for d in shape:
            count *= d
        assert en - b == count * SIZE[dtype], name
        assert b == end, f"{name}: not contiguous"
        end = en
        assert index["weight_map"][name] == shard
    assert end == data, f"{shard}: data section {data} bytes, tensors end at {end}"
missing = set(want) - set(seen)
assert not missing, f"missing {sorted(missing)[:5]}"
print(f"ok: {len(seen)} tensors in {len(shards)} shards match the layout derived from config.json")
