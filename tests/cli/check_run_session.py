#!/usr/bin/env python3
"""check_run_session.py FERRY DIR: `ferry run --session F` twice, the second prompt extending the first run's
tokens, gives bitwise the ids and logits of one run of the whole prompt (on the CPU, and restored onto --gpu
sim); bad session files (another model, another KV type, truncated, flipped bytes, a directory, no read
permission, a prompt that does not extend the saved tokens) give one line and a non-zero exit and leave the file
as it was; a save killed mid-write (kill -9, paused by the test hook FERRY_TEST_SESSION_SAVE_STALL_S) leaves the
previous file intact and loadable, and the next save removes the temporary file it left."""
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from ferry_test_support import (csv, expect_one_line_error, fresh_dir, ids_of, make_tiny, npy_rows,  # noqa: E402
                                printed_ids)

ferry, work = sys.argv[1], fresh_dir(sys.argv[2])
good = make_tiny(ferry, os.path.join(work, "good"))
other = make_tiny(ferry, os.path.join(work, "other"), seed=7)
KV = ["--kv-type", "q8_0", "--ctx", "256", "--ignore-eos"]


def run(*args, model=good, env=None, prefix=()):
    return subprocess.run([*prefix, ferry, "run", "-m", model, *args], capture_output=True, text=True, timeout=300,
                          env=None if env is None else {**os.environ, **env})


F = os.path.join(work, "s.ferry")
P1 = ids_of(37, 1)
# First run: the file does not exist yet; the prompt and the generated tokens (all fed: --logits-out) are saved.
r1 = run("--tokens", csv(P1), "-n", "3", "--logits-out", os.path.join(work, "a.npy"), "--session", F, *KV)
g1 = printed_ids(r1)
assert f"session: {F} does not exist yet; fed all 37 prompt tokens" in r1.stderr, r1.stderr
assert f"session: saved 40 tokens to {F} (" in r1.stderr and "MiB)" in r1.stderr, r1.stderr
P2 = P1 + g1 + ids_of(12, 2)
saved_after_first = open(F, "rb").read()
shutil.copy(F, F + ".copy")

# One run of the whole prompt.
whole = printed_ids(run("--tokens", csv(P2), "-n", "5", "--logits-out", os.path.join(work, "whole.npy"), *KV))
# Second run: restores 40 tokens and feeds the 12 new ones.
r2 = run("--tokens", csv(P2), "-n", "5", "--logits-out", os.path.join(work, "b.npy"), "--session", F, *KV)
assert printed_ids(r2) == whole, (r2.stdout, whole)
assert f"session: restored 40 tokens from {F}; fed 12 new" in r2.stderr, r2.stderr
assert f"session: saved 57 tokens to {F}" in r2.stderr, r2.stderr
rows_whole, rows_a, rows_b = (npy_rows(os.path.join(work, n)) for n in ("whole.npy", "a.npy", "b.npy"))
assert len(rows_a) == 40 and len(rows_b) == 12 + 5 and len(rows_whole) == len(P2) + 5
assert rows_a == rows_whole[:40], "the first session run's logits differ from the whole run's"
assert rows_b == rows_whole[40:], "the restored run's logits differ from the whole run's"

# The same file restored onto the simulated device: the same ids and logits.
G = os.path.join(work, "sim.ferry")
shutil.copy(F + ".copy", G)
r3 = run("--tokens", csv(P2), "-n", "5", "--logits-out", os.path.join(work, "c.npy"), "--session", G,
         "--gpu", "sim:64MiB", *KV)
assert printed_ids(r3) == whole, (r3.stdout, r3.stderr)
assert npy_rows(os.path.join(work, "c.npy")) == rows_whole[40:], "on sim the logits differ"


def expect_error(pattern, session, model=good, prefix=(), kv="q8_0", tokens=P2):
    before = open(session, "rb").read() if os.path.isfile(session) and os.access(session, os.R_OK) else None
    r = run("--tokens", csv(tokens), "-n", "2", "--session", session, *KV[2:], "--kv-type", kv, model=model,
            prefix=prefix)
    expect_one_line_error(r, pattern, session)
    if before is not None:
        assert open(session, "rb").read() == before, f"{session} changed"


saved = open(F, "rb").read()
H = os.path.join(work, "h.ferry")
shutil.copy(F + ".copy", H)
expect_error("saved from another model (the weights differ", H, model=other)
expect_error("saved with KV type q8_0, this session uses bf16", H, kv="bf16")
expect_error("the prompt does not start with the 40 tokens saved there (they differ at token 37)", H,
             tokens=P1 + [5] + ids_of(12, 2))
expect_error("the prompt adds no token to the 40 saved there", H, tokens=P1 + g1)
for at in (0, 50, 300, len(saved) // 2, len(saved) - 1):
    t = os.path.join(work, f"trunc{at}.ferry")
    open(t, "wb").write(saved[:at])
    expect_error("empty" if at == 0 else "truncated", t)
for at in (0, 30, 200, len(saved) // 2, len(saved) - 1):
    b = bytearray(saved)
    b[at] ^= 0x01
    f = os.path.join(work, f"flip{at}.ferry")
    open(f, "wb").write(bytes(b))
    expect_error("not a ferry session file" if at == 0 else "corrupted", f)
os.makedirs(os.path.join(work, "adir"))
expect_error("a directory, not a session file", os.path.join(work, "adir"))
# No read permission: root reads any file, so as root the run is made as nobody (setpriv), reading a file
# only root may read.
N = os.path.join(work, "noperm.ferry")
shutil.copy(F, N)
if os.geteuid() == 0:
    assert shutil.which("setpriv"), "running as root needs setpriv (util-linux) to run as another user"
    os.chmod(N, stat.S_IRUSR | stat.S_IWUSR)
    expect_error("cannot open the session file (Permission denied)", N,
                 prefix=("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"))
else:
    os.chmod(N, 0)
    expect_error("cannot open the session file (Permission denied)", N)
assert open(F, "rb").read() == saved

# A save killed mid-write: the process pauses after writing part of the temporary file (test hook), is killed
# with SIGKILL there, and the file still holds the previous session, loadable.
P3 = P2 + whole + ids_of(20, 3)
p = subprocess.Popen([ferry, "run", "-m", good, "--tokens", csv(P3), "-n", "2", "--session", F, *KV],
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                     env={**os.environ, "FERRY_TEST_SESSION_SAVE_STALL_S": "60"})
sel = selectors.DefaultSelector()
sel.register(p.stderr, selectors.EVENT_READ)
deadline, err = time.monotonic() + 60, ""
while "save stalled" not in err:
    assert time.monotonic() < deadline and p.poll() is None, f"the save did not stall: {err!r}"
    if sel.select(timeout=1):
        err += p.stderr.readline()
tmp = err.split(" with ")[1].split(" partly written")[0]
assert os.path.getsize(tmp) > 0, tmp
# "<file>.<host>.<pid>.<serial>.tmp": the pid tells the next save that its writer is gone.
assert tmp.startswith(F + ".") and tmp.endswith(f".{p.pid}.0.tmp"), tmp
p.send_signal(signal.SIGKILL)
p.wait(timeout=30)
assert open(F, "rb").read() == saved, "the killed save changed the previous file"
r4 = run("--tokens", csv(P3), "-n", "2", "--session", F, *KV)
printed_ids(r4)
assert f"session: restored 57 tokens from {F}; fed 20 new" in r4.stderr, r4.stderr
assert not os.path.exists(tmp), f"the next save left the killed save's {tmp}"
assert sorted(n for n in os.listdir(work) if n.startswith("s.ferry")) == ["s.ferry", "s.ferry.copy"], os.listdir(work)
print("ok")
