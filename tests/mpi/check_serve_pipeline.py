#!/usr/bin/env python3
"""check_serve_pipeline.py FERRY DIR MPIRUN...: `ferry serve --parallel 4` under mpirun with the layers split (a
pipeline of 2 and of 3 ranks, each a node of its own) answers 8 requests sent 4 at a time with exactly the texts of
the single-process server (greedy), and its sequences' steps overlap: rank 0 reports steps that started while
another sequence's step was still on the later ranks. With --pipeline off the same texts come one step at a time."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ferry, work, mpirun = sys.argv[1], sys.argv[2], sys.argv[3:]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
tiny = os.path.join(work, "tiny")
subprocess.run([ferry, "make-tiny", tiny, "--seed", "7"], check=True, capture_output=True)
PROMPTS = [f"request {i}: " + "word " * (3 + 5 * i) for i in range(8)]


class Server:
    """ferry serve in the background; its stderr collected; stopped with `stop_signal` (SIGUSR1 under mpirun)."""

    def __init__(self, cmd, stop_signal):
        self.stop_signal, self.log, self.port = stop_signal, "", None
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, FERRY_LOG_LEVEL="info"))
        announced = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.log += line
                m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    announced.set()
            announced.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        assert announced.wait(120) and self.port, (cmd, self.log)

    def complete(self, prompt):
        body = json.dumps({"model": "tiny", "prompt": prompt, "max_tokens": 16, "temperature": 0}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            choice = json.load(r)["choices"][0]
            return choice["text"], choice["finish_reason"]

    def answers(self):
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(self.complete, PROMPTS))

    def stop(self):
        self.proc.send_signal(self.stop_signal)
        assert self.proc.wait(timeout=60) == 0, self.log
        self.reader.join(10)
        return self.log


SERVE = [ferry, "serve", "-m", tiny, "--port", "0", "--parallel", "4", "--ctx", "512"]
one = Server(SERVE, signal.SIGTERM)
expected = one.answers()
one.stop()
assert len({text for text, _ in expected}) > 1, expected


def ranks_run(np, *flags):
    server = Server([*mpirun, "-np", str(np), *SERVE, "--ranks-as-nodes", "--split", "layers", *flags], signal.SIGUSR1)
    got = server.answers()
    log = server.stop()
    assert got == expected, f"-np {np} {flags}: {got}\none process: {expected}"
    return log


for np in (2, 3):
    log = ranks_run(np)
    m = re.search(r"pipeline: (\d+) of (\d+) steps started while", log)
    assert m, log
    overlapped, steps = int(m.group(1)), int(m.group(2))
    assert steps >= len(PROMPTS) and overlapped > 0, (np, m.group(0))
    print(f"-np {np}: the same answers; {overlapped} of {steps} steps overlapped another sequence's")

log = ranks_run(2, "--pipeline", "off")
assert re.search(r"pipeline: none, \d+ steps one at a time across the ranks \(--pipeline off\)", log), log
print("--pipeline off: the same answers, one step at a time")
