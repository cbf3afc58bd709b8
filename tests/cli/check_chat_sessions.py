#!/usr/bin/env python3
"""check_chat_sessions.py FERRY DIR: `ferry chat`'s /save NAME and /load NAME. A conversation saved after its first
turn and loaded by a later chat answers its second turn exactly as the unbroken chat does (greedy, fixed answer
length); a /load that cannot read the files (missing, another model's KV cache, a broken conversation file) prints
one line and leaves the conversation as it was, so the next turn answers as it would have."""
import os
import re
import shutil
import subprocess
import sys

ferry, work = sys.argv[1], sys.argv[2]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
tiny, other = os.path.join(work, "tiny"), os.path.join(work, "other")
subprocess.run([ferry, "make-tiny", tiny, "--seed", "5"], check=True, capture_output=True)
subprocess.run([ferry, "make-tiny", other, "--seed", "6"], check=True, capture_output=True)


def chat(model, *lines):
    cmd = [ferry, "chat", "-m", model, "--temp", "0", "-n", "8", "--ignore-eos", "--ctx", "1024"]
    r = subprocess.run(cmd, input="\n".join([*lines, "/exit"]) + "\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (lines, r.stdout, r.stderr)
    return r.stdout.splitlines(), r.stderr


conv = os.path.join(work, "conv")
(first, second), _ = chat(tiny, "hello there", "and a second turn")
assert first != second, (first, second)
out, err = chat(tiny, "hello there", f"/save {conv}")
assert out == [first] and re.search(r"\(saved 2 messages and \d+ tokens to ", err), (out, err)
out, err = chat(tiny, f"/load {conv}", "and a second turn")
assert out == [second] and "(loaded 2 messages" in err, (out, err)
print("saved after the first turn, loaded by another chat: the second answer of the unbroken chat")

# Files /load refuses; each leaves the conversation empty, as it was: the next turn is a first turn.
wrong = os.path.join(work, "wrong")
chat(other, "hello there", f"/save {wrong}")
broken = os.path.join(work, "broken")
shutil.copy(conv, broken)
with open(broken + ".json", "w") as f:
    f.write("{not json")
for name, pattern in [(os.path.join(work, "missing"), r"cannot read|No such file"),
                      (wrong, r"another model"), (broken, r"not a saved conversation")]:
    out, err = chat(tiny, f"/load {name}", "hello there")
    lines = [l for l in err.splitlines() if l.startswith("ferry chat: /load")]
    assert out == [first] and len(lines) == 1 and re.search(pattern, lines[0]), (name, out, err)
    assert lines[0].endswith("(the conversation is unchanged)"), lines[0]
    print(f"/load {os.path.basename(name)}: {lines[0]}")
