#!/usr/bin/env python3
"""check_serve_slots.py FERRY DIR: llama-server's POST /slots/{id}?action=save|restore|erase on `ferry serve
--slot-save-path`. A conversation's slot saved, the server restarted, the slot restored: the next turn continues
from it (the slot then holds more than was restored) and answers exactly what the unbroken server answers. Bad requests and bad files get a
4xx with one message and leave the slot as it was (saved again, the same bytes); without --slot-save-path,
save and restore get 501."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request

ferry, work = sys.argv[1], sys.argv[2]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
tiny = os.path.join(work, "tiny")
subprocess.run([ferry, "make-tiny", tiny, "--seed", "5"], check=True, capture_output=True)
other = os.path.join(work, "other")
subprocess.run([ferry, "make-tiny", other, "--seed", "6"], check=True, capture_output=True)
saves = os.path.join(work, "saves")
os.makedirs(saves)


class Server:
    def __init__(self, model, *flags):
        cmd = [ferry, "serve", "-m", model, "--port", "0", "--ctx", "1024", "--parallel", "2", "--snapshot-every", "8",
               *flags]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log, self.port = "", None
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.log += line
                m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        assert ready.wait(60) and self.port, self.log

    def post(self, path, body):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def counters(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=60) as r:
            text = r.read().decode()
        return {k: float(re.search(rf"^ferry_prompt_tokens_{k}_total (\S+)$", text, re.M).group(1))
                for k in ("cached", "computed")}

    def complete(self, prompt):
        status, body = self.post("/v1/completions", {"prompt": prompt, "max_tokens": 8, "temperature": 0})
        assert status == 200, body
        return body["choices"][0]["text"]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=60) == 0, self.log


FIRST = "The first turn of a conversation that goes on and on about many things"
SECOND = " and then a second turn"

# The unbroken run: two turns on one server.
unbroken = Server(tiny, "--slot-save-path", saves)
answer1 = unbroken.complete(FIRST)
answer2 = unbroken.complete(FIRST + answer1 + SECOND)
unbroken.stop()

# The same first turn, its slot saved, the server restarted, the slot restored, the second turn.
first = Server(tiny, "--slot-save-path", saves)
assert first.complete(FIRST) == answer1
status, saved = first.post("/slots/0?action=save", {"filename": "conv.bin"})
assert status == 200 and saved["id_slot"] == 0 and saved["n_saved"] > 10 and saved["n_written"] > 0, saved
assert os.path.getsize(os.path.join(saves, "conv.bin")) == saved["n_written"], saved
first.stop()
good = open(os.path.join(saves, "conv.bin"), "rb").read()

server = Server(tiny, "--slot-save-path", saves)
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
other_server = Server(other, "--slot-save-path", saves)
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
before = server.counters()
assert server.complete(FIRST + answer1 + SECOND) == answer2
after = server.counters()
cached, computed = after['cached'] - before['cached'], after['computed'] - before['computed']
print(f"restored slot: the second turn answered as the unbroken server; cached {cached:.0f}, computed {computed:.0f}"
      " prompt tokens")
assert cached >= 8, f"the restored slot's snapshots were not used: cached {cached}, computed {computed}"
status, erased = server.post("/slots/0?action=erase", {})
assert status == 200 and erased["n_erased"] > saved["n_saved"], erased
server.stop()

plain = Server(tiny)
status, answer = plain.post("/slots/0?action=save", {"filename": "x.bin"})
assert status == 501 and "--slot-save-path" in answer["error"]["message"], (status, answer)
plain.stop()
print("without --slot-save-path: 501")
