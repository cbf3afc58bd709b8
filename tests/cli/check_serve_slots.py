#!/usr/bin/env python3
"""check_serve_slots.py FERRY DIR: llama-server's POST /slots/{id}?action=save|restore|erase on `ferry serve
--slot-save-path`. A conversation's slot saved, the server restarted, the slot restored: the next turn continues
from it (the slot then holds more than was restored) and answers exactly what the unbroken server answers. Bad requests and bad files get a
4xx with one message and leave the slot as it was (saved again, the same bytes); without --slot-save-path,
save and restore get 501."""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from ferry_test_support import Server, fresh_dir, make_tiny  # noqa: E402

ferry, work = sys.argv[1], fresh_dir(sys.argv[2])
tiny = make_tiny(ferry, os.path.join(work, "tiny"), seed=5)
other = make_tiny(ferry, os.path.join(work, "other"), seed=6)
saves = os.path.join(work, "saves")
os.makedirs(saves)


def serve(model, *flags):
    return Server([ferry, "serve", "-m", model, "--port", "0", "--ctx", "1024", "--parallel", "2", "--snapshot-every",
                   "8", *flags])


def counters(server):
    return {k: server.metric(f"ferry_prompt_tokens_{k}_total") for k in ("cached", "computed")}


FIRST = "The first turn of a conversation that goes on and on about many things"
SECOND = " and then a second turn"

# The unbroken run: two turns on one server.
unbroken = serve(tiny, "--slot-save-path", saves)
answer1 = unbroken.complete(FIRST)
answer2 = unbroken.complete(FIRST + answer1 + SECOND)
unbroken.stop()

# The same first turn, its slot saved, the server restarted, the slot restored, the second turn.
first = serve(tiny, "--slot-save-path", saves)
assert first.complete(FIRST) == answer1
status, saved = first.post("/slots/0?action=save", {"filename": "conv.bin"})
assert status == 200 and saved["id_slot"] == 0 and saved["n_saved"] > 10 and saved["n_written"] > 0, saved
assert os.path.getsize(os.path.join(saves, "conv.bin")) == saved["n_written"], saved
first.stop()
good = open(os.path.join(saves, "conv.bin"), "rb").read()

server = serve(tiny, "--slot-save-path", saves)
status, restored = server.post("/slots/0?action=restore", {"filename": "conv.bin"})
assert status == 200 and restored["n_restored"] == saved["n_saved"] and restored["n_read"] == saved["n_written"], \
    restored

# Bad requests and bad files: 4xx, one message, and slot 0 as it was.
with open(os.path.join(saves, "truncated.bin"), "wb") as f:
    f.write(good[: len(good) // 2])
flipped = bytearray(good)
flipped[len(good) // 2] ^= 0x40
with open(os.path.join(saves, "flipped.bin"), "wb") as f:
    f.write(flipped)
other_server = serve(other, "--slot-save-path", saves)
assert other_server.complete("another model") is not None
assert other_server.post("/slots/0?action=save", {"filename": "other.bin"})[0] == 200
other_server.stop()
os.makedirs(os.path.join(saves, "a-directory"))
bad = [
    ("/slots/0?action=restore", {"filename": "truncated.bin"}, 400, r"truncated|corrupt"),
    ("/slots/0?action=restore", {"filename": "flipped.bin"}, 400, r"corrupt|checksum"),
    ("/slots/0?action=restore", {"filename": "other.bin"}, 400, r"weights differ|config|model"),
    ("/slots/0?action=restore", {"filename": "a-directory"}, 400, r"directory"),
    ("/slots/0?action=restore", {"filename": "missing.bin"}, 400, r"missing|exist|No such|cannot open"),
    ("/slots/0?action=restore", {"filename": "../conv.bin"}, 400, r"plain file name"),
    ("/slots/0?action=restore", {"name": "conv.bin"}, 400, r"filename"),
    ("/slots/0?action=launch", {"filename": "conv.bin"}, 400, r"save, restore or erase"),
    ("/slots/7?action=restore", {"filename": "conv.bin"}, 404, r"no slot 7"),
]
for path, body, want, pattern in bad:
    status, answer = server.post(path, body)
    message = answer["error"]["message"]
    assert status == want and re.search(pattern, message) and "\n" not in message, (path, body, status, answer)
    print(f"{path} {body}: {status} {message}")

# Slot 0 is as restored: saved again, it is the same file byte for byte.
status, again = server.post("/slots/0?action=save", {"filename": "again.bin"})
assert status == 200 and again["n_saved"] == saved["n_saved"], again
assert open(os.path.join(saves, "again.bin"), "rb").read() == good, "the slot changed after the refused restores"

# The next turn continues from the restored slot (it holds the restored tokens and more afterwards) with the
# unbroken server's answer. The slot's snapshots (every 8 tokens) were restored with it: the turn reuses the
# restored prefix up to a snapshot instead of computing it again (without them a rewind into it would start at 0
# and nothing would count as cached).
before = counters(server)
assert server.complete(FIRST + answer1 + SECOND) == answer2
after = counters(server)
cached, computed = after['cached'] - before['cached'], after['computed'] - before['computed']
print(f"restored slot: the second turn answered as the unbroken server; cached {cached:.0f}, computed {computed:.0f}"
      " prompt tokens")
assert cached >= 8, f"the restored slot's snapshots were not used: cached {cached}, computed {computed}"
status, erased = server.post("/slots/0?action=erase", {})
assert status == 200 and erased["n_erased"] > saved["n_saved"], erased
server.stop()

plain = serve(tiny)
status, answer = plain.post("/slots/0?action=save", {"filename": "x.bin"})
assert status == 501 and "--slot-save-path" in answer["error"]["message"], (status, answer)
plain.stop()
print("without --slot-save-path: 501")
