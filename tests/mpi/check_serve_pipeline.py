#!/usr/bin/env python3
"""check_serve_pipeline.py FERRY DIR MPIRUN...: `ferry serve --parallel 4` under mpirun with the layers split (a
pipeline of 2 and of 3 ranks, each a node of its own) answers 8 requests sent 4 at a time with exactly the texts of
the single-process server (greedy), and its sequences' steps overlap: rank 0 reports steps that started while
another sequence's step was still on the later ranks. With --pipeline off the same texts come one step at a time."""
import os
import re
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from ferry_test_support import Server, fresh_dir, make_tiny, under_mpirun  # noqa: E402

ferry, work, mpirun = sys.argv[1], fresh_dir(sys.argv[2]), sys.argv[3:]
tiny = make_tiny(ferry, os.path.join(work, "tiny"), seed=7)
PROMPTS = [f"request {i}: " + "word " * (3 + 5 * i) for i in range(8)]


def answers(server):
    """The texts and finish reasons of PROMPTS, sent 4 at a time."""

    def complete(prompt):
        choice = server.completion(prompt, 16, model="tiny")
        return choice["text"], choice["finish_reason"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(complete, PROMPTS))


SERVE = [ferry, "serve", "-m", tiny, "--port", "0", "--parallel", "4", "--ctx", "512"]
INFO = {"FERRY_LOG_LEVEL": "info"}  # rank 0's pipeline line
one = Server(SERVE, env=INFO)
expected = answers(one)
one.stop()
assert len({text for text, _ in expected}) > 1, expected


def ranks_run(np, *flags):
    server = Server(under_mpirun(mpirun, np, SERVE, "--split", "layers", *flags), signal.SIGUSR1, env=INFO)
    got = answers(server)
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
