#!/usr/bin/env python3
"""check_chat_ranks.py FERRY DIR MPIRUN...: `ferry chat` under `mpirun -np 2` (input piped to rank 0, each rank a
node holding half of every layer's experts) answers a two-turn conversation, with /reset between, with exactly the
text of the single-process chat (greedy, fixed answer length), and exits 0 at /exit. A conversation /save'd under
mpirun and /load'ed by a single-process chat (and the other way round) answers its next turn as the unbroken chat
does; a /load of a missing file under mpirun prints one line and leaves the conversation as it was."""
import os
import re
import shutil
import subprocess
import sys

ferry, work, mpirun = sys.argv[1], sys.argv[2], sys.argv[3:]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
tiny = os.path.join(work, "tiny")
subprocess.run([ferry, "make-tiny", tiny, "--seed", "5"], check=True, capture_output=True)
TALK = "hello there\nand a second turn\n/reset\nafter the reset\n/exit\n"
CHAT = [ferry, "chat", "-m", tiny, "--temp", "0", "-n", "12", "--ignore-eos", "--ctx", "1024"]


def chat(ranks, talk=TALK):
    cmd = [*mpirun, "-np", str(ranks), *CHAT, "--ranks-as-nodes"] if ranks else CHAT
    r = subprocess.run(cmd, input=talk, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (cmd, r.stdout, r.stderr)
    return r.stdout


def answers(ranks, *lines):
    """The chat's answer lines ("> " prompts that mpirun's terminal shows removed) and its stderr."""
    cmd = [*mpirun, "-np", str(ranks), *CHAT, "--ranks-as-nodes"] if ranks else CHAT
    r = subprocess.run(cmd, input="\n".join([*lines, "/exit"]) + "\n", capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (cmd, r.stdout, r.stderr)
    return re.sub(r"^(> )+", "", r.stdout, flags=re.M).splitlines(), r.stderr


one = chat(0)
assert one.count("\n") >= 3 and len(one.strip()) > 20, one
# mpirun gives rank 0 a terminal for stdout, so the chat prints its "> " prompts there: not part of the answers.
two = re.sub(r"^(> )+", "", chat(2), flags=re.M)
assert two == one, f"under mpirun -np 2:\n{two!r}\none process:\n{one!r}"
print("chat under mpirun -np 2 == one process")

# /save and /load across mpirun and one process: the files are the same whoever wrote them.
(first, second), _ = answers(0, "hello there", "and a second turn")
for saver, loader in [(2, 0), (0, 2)]:
    conv = os.path.join(work, f"conv_{saver}_{loader}")
    out, err = answers(saver, "hello there", f"/save {conv}")
    assert out == [first] and "(saved 2 messages" in err, (saver, out, err)
    out, err = answers(loader, f"/load {conv}", "and a second turn")
    assert out == [second] and "(loaded 2 messages" in err, (loader, out, err)
    print(f"saved by {saver or 1} process(es), loaded by {loader or 1}: the unbroken chat's second answer")
out, err = answers(2, f"/load {os.path.join(work, 'missing')}", "hello there")
lines = [l for l in err.splitlines() if l.startswith("ferry chat: /load")]
assert out == [first] and len(lines) == 1 and lines[0].endswith("(the conversation is unchanged)"), (out, err)
print("a missing file under mpirun: one line, the conversation unchanged")
