#!/usr/bin/env python3
"""Writes the hand-made seed corpus of the safetensors header fuzzer (tests/fuzz/corpus, README.md here).

valid_* seeds must parse and bad_* seeds must throw ferry::Error (replay_corpus.cpp checks both). Files starting
with '{' are index JSON for a model directory holding shard.safetensors (the fuzz target's shard: one tensor 'w',
F32 [2]); all others are whole .safetensors files. Standard library only; the output is byte-for-byte stable.
"""
import json
import pathlib
import struct
import sys

U64_MAX = 2**64 - 1
I64_MAX = 2**63 - 1


def encode(value):
    """Bytes and str as they are (for deliberately broken JSON), anything else as compact JSON."""
    if isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))).encode()


def safetensors(header, data_bytes, claimed_len=None):
    """Length prefix (the true one unless claimed_len), header JSON, then data_bytes of deterministic data."""
    raw = encode(header)
    length = len(raw) if claimed_len is None else claimed_len
    # The fuzz target routes inputs that start with '{' (0x7b) to the index parser.
    if length & 0xFF == ord("{"):
        raise ValueError(f"header length {length} would make this file look like an index")
    return struct.pack("<Q", length) + raw + bytes(i % 251 for i in range(data_bytes))


def tensor(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def index(weight_map):
    return encode({"metadata": {"total_size": 8}, "weight_map": weight_map})


THREE = {
    "__metadata__": {"format": "pt"},
    "embed": tensor("BF16", [4, 2], 0, 16),
    "norm": tensor("F32", [2], 16, 24),
    "step": tensor("I64", [], 24, 32),
}

SEEDS = {
    "valid_three_dtypes.safetensors": safetensors(THREE, 32),
    "valid_zero_sized.safetensors": safetensors(
        {"empty": tensor("F16", [0, 4], 4, 4), "w": tensor("I8", [4], 0, 4)}, 4),
    "bad_too_short.safetensors": b"\x10\x00\x00\x00",
    "bad_truncated_data.safetensors": safetensors(THREE, 20),
    "bad_header_length_past_eof.safetensors": safetensors(THREE, 32, claimed_len=4096),
    "bad_header_length_max.safetensors": safetensors(THREE, 32, claimed_len=U64_MAX),
    "bad_overlapping_ranges.safetensors": safetensors(
        {"a": tensor("F32", [4], 0, 16), "b": tensor("F32", [4], 8, 24)}, 24),
    "bad_offsets_out_of_range.safetensors": safetensors({"w": tensor("F32", [2], 1000, 1008)}, 8),
    "bad_offsets_too_large.safetensors": safetensors({"w": tensor("I8", [1], I64_MAX, I64_MAX + 1)}, 8),
    "bad_offsets_reversed.safetensors": safetensors({"w": tensor("I8", [0], 8, 0)}, 8),
    "bad_unknown_dtype.safetensors": safetensors({"w": tensor("Q4_K", [2], 0, 8)}, 8),
    "bad_shape_bytes_mismatch.safetensors": safetensors({"w": tensor("F32", [3], 0, 8)}, 8),
    "bad_malformed_json.safetensors": safetensors('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}', 8),
    "bad_header_not_object.safetensors": safetensors([tensor("F32", [2], 0, 8)], 8),
    "bad_tensor_not_object.safetensors": safetensors({"w": [0, 8]}, 8),
    "bad_negative_shape.safetensors": safetensors({"w": tensor("F32", [-2], 0, 8)}, 8),
    "bad_huge_shape.safetensors": safetensors({"w": tensor("F32", [2**32, 2**32, 2**32], 0, 0)}, 8),
    "bad_huge_shape_bytes.safetensors": safetensors({"w": tensor("I64", [2**31, 2**31], 0, 0)}, 8),
    "bad_metadata_non_string.safetensors": safetensors(
        {"__metadata__": {"format": "pt", "step": 7}, "w": tensor("F32", [2], 0, 8)}, 8),
    "bad_name_invalid_utf8.safetensors": safetensors(b'{"w\xff":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', 8),
    "valid_index.json": index({"w": "shard.safetensors"}),
    "bad_index_missing_shard.json": index({"w": "shard.safetensors", "v": "model-00002-of-00002.safetensors"}),
    "bad_index_wrong_shard.json": index({"w": "shard.safetensors", "x": "shard.safetensors"}),
    "bad_index_path_escape.json": index({"w": "../shard.safetensors"}),
    "bad_index_names_itself.json": index({"w": "model.safetensors.index.json"}),
    "bad_index_shard_not_string.json": index({"w": 1}),
    "bad_index_no_weight_map.json": encode({"metadata": {"total_size": 8}}),
    "bad_index_malformed.json": b'{"weight_map":{"w":"shard.safetensors"',
    # Regressions the fuzzer found: a number beyond double (the JSON library's out_of_range, not a parse error),
    # nesting past the parser's depth limit, and a NUL inside a shard name.
    "bad_number_overflow.safetensors": safetensors('{"w":1e400}', 8),
    "bad_deep_nesting.safetensors": safetensors('{"w":' + "[" * 40 + "]" * 40 + "}", 8),
    "bad_index_number_overflow.json": b'{"metadata":{"total_size":1e400},"weight_map":{}}',
    "bad_index_nul_in_shard_name.json": index({"w": "shard.safetensors\u0000junk"}),
}


def main():
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).with_name("corpus")
    out.mkdir(parents=True, exist_ok=True)
    for name, content in sorted(SEEDS.items()):
        (out / name).write_bytes(content)
    print(f"make_corpus: wrote {len(SEEDS)} seeds to {out}")


if __name__ == "__main__":
    main()
