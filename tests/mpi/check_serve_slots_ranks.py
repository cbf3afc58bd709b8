#!/usr/bin/env python3
"""check_serve_slots_ranks.py FERRY DIR MPIRUN...: POST /slots/{id}?action=save|restore on `ferry serve` under
mpirun -np 2, for --split layers and --split experts. A slot saved under mpirun is byte for byte the file the
single-process server saves (its snapshots included); that file restored into a fresh server under mpirun
continues the conversation with the unbroken server's answer, reusing the restored snapshots. A truncated file
and another model's get a 400 with one line, the slot untouched (saved again, the same bytes) and the server
still serving."""
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

ferry, work, mpirun = sys.argv[1], sys.argv[2], sys.argv[3:]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
tiny, other = os.path.join(work, "tiny"), os.path.join(work, "other")
subprocess.run([ferry, "make-tiny", tiny, "--seed", "5"], check=True, capture_output=True, timeout=120)
subprocess.run([ferry, "make-tiny", other, "--seed", "6"], check=True, capture_output=True, timeout=120)
saves = os.path.join(work, "saves")
os.makedirs(saves)


class Server:
    def __init__(self, model, split=None):
        cmd = [ferry, "serve", "-m", model, "--port", "0", "--ctx", "1024", "--parallel", "2", "--snapshot-every", "8",
               "--slot-save-path", saves]
        if split:
            cmd = [*mpirun, "-np", "2", *cmd, "--ranks-as-nodes", "--split", split]
        self.stop_signal = signal.SIGUSR1 if split else signal.SIGTERM
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
        assert ready.wait(120) and self.port, self.log

    def post(self, path, body):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def cached(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=60) as r:
            text = r.read().decode()
        return float(re.search(r"^ferry_prompt_tokens_cached_total (\S+)$", text, re.M).group(1))

    def complete(self, prompt):
        status, body = self.post("/v1/completions", {"prompt": prompt, "max_tokens": 8, "temperature": 0})
        assert status == 200, body
        return body["choices"][0]["text"]

    def stop(self):
        self.proc.send_signal(self.stop_signal)
        assert self.proc.wait(timeout=120) == 0, self.log


def read(name):
    with open(os.path.join(saves, name), "rb") as f:
        return f.read()


FIRST = "The first turn of a conversation that goes on and on about many things"
SECOND = " and then a second turn"

single = Server(tiny)
answer1 = single.complete(FIRST)
assert single.post("/slots/0?action=save", {"filename": "single.bin"})[0] == 200
answer2 = single.complete(FIRST + answer1 + SECOND)
single.stop()
good = read("single.bin")
with open(os.path.join(saves, "truncated.bin"), "wb") as f:
    f.write(good[: len(good) // 2])
other_server = Server(other)
assert other_server.complete("another model") is not None
assert other_server.post("/slots/0?action=save", {"filename": "other.bin"})[0] == 200
other_server.stop()

for split in ("layers", "experts"):
    first = Server(tiny, split)
    assert first.complete(FIRST) == answer1
    status, saved = first.post("/slots/0?action=save", {"filename": f"{split}.bin"})
    assert status == 200 and saved["n_written"] == len(good), saved
    first.stop()
    assert read(f"{split}.bin") == good, f"{split}: the slot saved under mpirun differs from the single process's"

    server = Server(tiny, split)
    status, restored = server.post("/slots/0?action=restore", {"filename": "single.bin"})
    assert status == 200 and restored["n_restored"] == saved["n_saved"], restored
    for name, pattern in (("truncated.bin", r"truncated"), ("other.bin", r"another model")):
        status, answer = server.post("/slots/0?action=restore", {"filename": name})
        message = answer["error"]["message"]
        assert status == 400 and re.search(pattern, message) and "\n" not in message, (split, name, status, answer)
        print(f"{split}: restore {name}: {status} {message}")
    status, again = server.post("/slots/0?action=save", {"filename": f"{split}-again.bin"})
    assert status == 200 and read(f"{split}-again.bin") == good, f"{split}: the slot changed after refused restores"
    before = server.cached()
    assert server.complete(FIRST + answer1 + SECOND) == answer2, f"{split}: the restored slot answers otherwise"
    cached = server.cached() - before
    assert cached >= 8, f"{split}: the restored snapshots were not used (cached {cached})"
    assert server.complete("still serving") is not None
    server.stop()
    print(f"--split {split}: saved == single process's file; restored, answered as the unbroken server "
          f"(cached {cached:.0f}); bad files 400, slot untouched")
