#!/usr/bin/env python3
"""check_tokenize.py FERRY DIR: `ferry tokenize` round trips text through ids on a tiny model's tokenizer
(--model and --tokenizer alike), handles special tokens with and without --no-special, and rejects bad input
with one line on stderr and a non-zero exit; `ferry run --prompt` tokenizes the text with BOS in front and
prints the text of exactly the tokens that `--tokens` with those ids generates."""
import json
import os
import shutil
import subprocess
import sys

ferry, work = sys.argv[1], sys.argv[2]
shutil.rmtree(work, ignore_errors=True)
tiny = os.path.join(work, "tiny")
subprocess.run([ferry, "make-tiny", tiny], check=True, capture_output=True)
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"


def tokenize(*args, stdin=b""):
    return subprocess.run([ferry, "tokenize", *args], input=stdin, capture_output=True)


def encode(text, *args):
    r = tokenize("-m", tiny, *args, stdin=text.encode())
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert out.endswith("\n") and out.count("\n") == 1, f"not one line: {out!r}"
    return json.loads(out)


def decode(ids, *args):
    r = tokenize("-m", tiny, "--decode", *args, stdin=json.dumps(ids).encode())
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()


texts = ["Hello, world!\n", "  spaces\tand\ttabs  \r\n", "数字 12345 和中文。", "emoji 👍🏽👨‍👩‍👧", "", "\n\n\n",
         "def f(x):\n    return x ** 2\n", BOS + "Hi" + EOS]
tokenizer_json = os.path.join(tiny, "tokenizer.json")
for text in texts:
    ids = encode(text)
    assert all(isinstance(i, int) and 0 <= i < 512 for i in ids), ids
    assert decode(ids) == text, (text, ids)
    via_file = tokenize("--tokenizer", tokenizer_json, stdin=text.encode())
    assert json.loads(via_file.stdout) == ids, (text, via_file.stdout, via_file.stderr)

# Special tokens: one id each when parsed, plain text with --no-special; decode --no-special leaves them out.
assert encode(BOS + "Hi" + EOS)[0] == 0 and encode(BOS + "Hi" + EOS)[-1] == 1
plain = encode(BOS + "Hi", "--no-special")
assert 0 not in plain and len(plain) > 3, plain
assert decode(plain) == BOS + "Hi"
assert decode(encode(BOS + "Hi" + EOS), "--no-special") == "Hi"

help_text = tokenize("--help").stdout.decode()
assert "--decode" in help_text and "--no-special" in help_text and "--tokenizer" in help_text, help_text


def expect_error(pattern, *args, stdin=b""):
    r = tokenize(*args, stdin=stdin)
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode != 0, f"{args}: exit 0"
    assert len(lines) == 1, f"{args}: expected one stderr line, got {r.stderr!r}"
    assert pattern in lines[0], f"{args}: {lines[0]!r} does not mention {pattern!r}"


expect_error("give --model DIR or --tokenizer FILE")
expect_error("excludes", "-m", tiny, "--tokenizer", tokenizer_json)
expect_error("has no tokenizer.json", "-m", work)
expect_error("does not exist", "--tokenizer", os.path.join(work, "missing.json"))
expect_error("not valid UTF-8 (at byte 2)", "-m", tiny, stdin=b"ok\xff")
expect_error("stdin is not JSON", "-m", tiny, "--decode", stdin=b"1, 2")
expect_error("must be a JSON array", "-m", tiny, "--decode", stdin=b'{"ids": [1]}')
expect_error("1.5 is not a token id", "-m", tiny, "--decode", stdin=b"[1, 1.5]")
expect_error("-3 is not a token id", "-m", tiny, "--decode", stdin=b"[-3]")
expect_error("token id 512 is not in the tokenizer's vocabulary", "-m", tiny, "--decode", stdin=b"[0, 512]")
broken = os.path.join(work, "broken.json")
with open(tokenizer_json, "rb") as f:
    data = f.read()
with open(broken, "wb") as f:
    f.write(data[: len(data) // 2])
expect_error("not valid JSON", "--tokenizer", broken)


# `ferry run --prompt`: BOS + the text's ids, and the generated tokens' text streamed on stdout.
def run(*args):
    return subprocess.run([ferry, "run", "-m", tiny, "-n", "12", "--ignore-eos", *args], capture_output=True)


prompt = "The quick brown fox"
ids = [0] + encode(prompt)
by_ids = run("--tokens", ",".join(map(str, ids)))
assert by_ids.returncode == 0, by_ids.stderr
generated = [int(x) for x in by_ids.stdout.decode().strip().split(",")]
by_text = run("--prompt", prompt)
assert by_text.returncode == 0, by_text.stderr
assert by_text.stdout.decode() == decode(generated, "--no-special") + "\n", (by_text.stdout, generated)
assert f"timing: prefill {len(ids)} tokens" in by_text.stderr.decode(), by_text.stderr
# A prompt that starts with BOS gets no second one.
again = run("--prompt", BOS + prompt)
assert again.stdout == by_text.stdout and f"prefill {len(ids)} tokens" in again.stderr.decode(), again.stderr

r = run("--prompt", prompt, "--tokens", "0,1")
assert r.returncode != 0 and b"excludes" in r.stderr, r.stderr
r = run()
assert r.returncode != 0 and r.stderr.decode().strip() == "ferry run: error: give the prompt as --prompt TEXT or --tokens IDS", r.stderr
no_tokenizer = os.path.join(work, "no-tokenizer")
shutil.copytree(tiny, no_tokenizer)
os.remove(os.path.join(no_tokenizer, "tokenizer.json"))
r = subprocess.run([ferry, "run", "-m", no_tokenizer, "--prompt", prompt], capture_output=True)
lines = r.stderr.decode().strip().splitlines()
assert r.returncode != 0 and len(lines) == 1 and "has no tokenizer.json" in lines[0], r.stderr
print("ok")
