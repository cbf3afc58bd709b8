#!/usr/bin/env python3
"""check_serve_slots_ranks.py FERRY DIR MPIRUN...: POST /slots/{id}?action=save|restore on `ferry serve` under
mpirun -np 2, for --split layers and --split experts. A slot saved under mpirun is byte for byte the file the
single-process server saves (its snapshots included); that file restored into a fresh server under mpirun
continues the conversation with the unbroken server's answer, reusing the restored snapshots. A truncated file
and another model's get a 400 with one line, the slot untouched (saved again, the same bytes) and the server
still serving."""
import os
import re
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from ferry_test_support import Server, fresh_dir, make_tiny, under_mpirun  # noqa: E402

ferry, work, mpirun = sys.argv[1], fresh_dir(sys.argv[2]), sys.argv[3:]
tiny = make_tiny(ferry, os.path.join(work, "tiny"), seed=5)
other = make_tiny(ferry, os.path.join(work, "other"), seed=6)
saves = os.path.join(work, "saves")
os.makedirs(saves)


def serve(model, split=None):
    """One process, or under mpirun -np 2 with `split`."""
    cmd = [ferry, "serve", "-m", model, "--port", "0", "--ctx", "1024", "--parallel", "2", "--snapshot-every", "8",
           "--slot-save-path", saves]
    if not split:
        return Server(cmd)
    return Server(under_mpirun(mpirun, 2, cmd, "--split", split), signal.SIGUSR1)


def cached_tokens(server):
    return server.metric("ferry_prompt_tokens_cached_total")


def read(name):
    with open(os.path.join(saves, name), "rb") as f:
        return f.read()


FIRST = "The first turn of a conversation that goes on and on about many things"
SECOND = " and then a second turn"

single = serve(tiny)
answer1 = single.complete(FIRST)
assert single.post("/slots/0?action=save", {"filename": "single.bin"})[0] == 200
answer2 = single.complete(FIRST + answer1 + SECOND)
single.stop()
good = read("single.bin")
with open(os.path.join(saves, "truncated.bin"), "wb") as f:
    f.write(good[: len(good) // 2])
other_server = serve(other)
assert other_server.complete("another model") is not None
assert other_server.post("/slots/0?action=save", {"filename": "other.bin"})[0] == 200
other_server.stop()

for split in ("layers", "experts"):
    first = serve(tiny, split)
    assert first.complete(FIRST) == answer1
    status, saved = first.post("/slots/0?action=save", {"filename": f"{split}.bin"})
    assert status == 200 and saved["n_written"] == len(good), saved
    first.stop()
    assert read(f"{split}.bin") == good, f"{split}: the slot saved under mpirun differs from the single process's"

    server = serve(tiny, split)
    status, restored = server.post("/slots/0?action=restore", {"filename": "single.bin"})
    assert status == 200 and restored["n_restored"] == saved["n_saved"], restored
    for name, pattern in (("truncated.bin", r"truncated"), ("other.bin", r"another model")):
        status, answer = server.post("/slots/0?action=restore", {"filename": name})
        message = answer["error"]["message"]
        assert status == 400 and re.search(pattern, message) and "\n" not in message, (split, name, status, answer)
        print(f"{split}: restore {name}: {status} {message}")
    status, again = server.post("/slots/0?action=save", {"filename": f"{split}-again.bin"})
    assert status == 200 and read(f"{split}-again.bin") == good, f"{split}: the slot changed after refused restores"
    before = cached_tokens(server)
    assert server.complete(FIRST + answer1 + SECOND) == answer2, f"{split}: the restored slot answers otherwise"
    cached = cached_tokens(server) - before
    assert cached >= 8, f"{split}: the restored snapshots were not used (cached {cached})"
    assert server.complete("still serving") is not None
    server.stop()
    print(f"--split {split}: saved == single process's file; restored, answered as the unbroken server "
          f"(cached {cached:.0f}); bad files 400, slot untouched")
