#!/usr/bin/env python3
"""check_chat_ranks.py FERRY DIR MPIRUN...: `ferry chat` under `mpirun -np 2` (input piped to rank 0, each rank a
node holding half of every layer's experts) answers a two-turn conversation, with /reset between, with exactly the
text of the single-process chat (greedy, fixed answer length), and exits 0 at /exit."""
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


def chat(ranks):
    cmd = [*mpirun, "-np", str(ranks), *CHAT, "--ranks-as-nodes"] if ranks else CHAT
    r = subprocess.run(cmd, input=TALK, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (cmd, r.stdout, r.stderr)
    return r.stdout


one = chat(0)
assert one.count("\n") >= 3 and len(one.strip()) > 20, one
# mpirun gives rank 0 a terminal for stdout, so the chat prints its "> " prompts there: not part of the answers.
two = re.sub(r"^(> )+", "", chat(2), flags=re.M)
assert two == one, f"under mpirun -np 2:\n{two!r}\none process:\n{one!r}"
print("chat under mpirun -np 2 == one process")
