"""What the Python scripts driving `ferry` share (tests/cli, tests/mpi): a fresh work directory with tiny
checkpoints, `ferry serve` in the background with its HTTP requests, commands under mpirun, token ids and logits
files, and the one-line error of a refused run. Every wait has a timeout.

A script imports it from its own location, so that it runs the same under CTest and by hand:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
"""
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import urllib.error
import urllib.request

VOCAB = 512  # the tiny model's


def fresh_dir(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def make_tiny(ferry, path, seed=None):
    """`ferry make-tiny PATH` (with --seed where given); returns PATH."""
    cmd = [ferry, "make-tiny", path] + ([] if seed is None else ["--seed", str(seed)])
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return path


def under_mpirun(mpirun, ranks, cmd, *flags):
    """`cmd` run by `ranks` ranks under mpirun, each a node of its own, with ferry's `flags` after it."""
    return [*mpirun, "-np", str(ranks), *cmd, "--ranks-as-nodes", *flags]


class Server:
    """`cmd` (ferry serve --port 0, alone or under mpirun) in the background: the port it announces on stderr,
    its stderr collected, stopped with `stop_signal` (SIGUSR1 under mpirun, which passes it on to every rank)."""

    def __init__(self, cmd, stop_signal=signal.SIGTERM, env=None, timeout=120):
        self.stop_signal, self.timeout, self.log, self.port = stop_signal, timeout, "", None
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=None if env is None else {**os.environ, **env})
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
        assert announced.wait(timeout) and self.port, (cmd, self.log)

    def post(self, path, body):
        """POST `body` as JSON; returns the status and the JSON answer, errors included."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def completion(self, prompt, max_tokens=8, **fields):
        """The first choice of a greedy /v1/completions request, which must succeed."""
        status, body = self.post("/v1/completions",
                                 {**fields, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
        assert status == 200, body
        return body["choices"][0]

    def complete(self, prompt, max_tokens=8):
        return self.completion(prompt, max_tokens)["text"]

    def metric(self, name):
        """The value of one line of /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=self.timeout) as r:
            text = r.read().decode()
        return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))

    def stop(self):
        """Stops the server, which must exit 0; returns all it wrote on stderr."""
        self.proc.send_signal(self.stop_signal)
        assert self.proc.wait(timeout=self.timeout) == 0, self.log
        self.reader.join(10)
        return self.log


def ids_of(n, seed):
    """n token ids from a fixed generator, none of them special (3 … 511)."""
    x, out = seed, []
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) % 2**64
        out.append(3 + (x >> 33) % 509)
    return out


def csv(ids):
    return ",".join(str(i) for i in ids)


def printed_ids(r):
    """The ids a successful `ferry run` printed (its last line of stdout)."""
    assert r.returncode == 0, r.stderr
    return [int(x) for x in r.stdout.strip().splitlines()[-1].split(",")]


def npy_rows(path, vocab=VOCAB):
    """The raw float32 bytes of each row of a [n, vocab] .npy file."""
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[8:10], "little")
    body = data[10 + n:]
    assert len(body) % (4 * vocab) == 0, path
    return [body[i:i + 4 * vocab] for i in range(0, len(body), 4 * vocab)]


def expect_one_line_error(r, *fragments, prefix=""):
    """A refused run: a non-zero exit and one line on stderr (of those starting with `prefix`: mpirun writes lines
    of its own) holding every fragment. Returns the line."""
    lines = [line for line in r.stderr.strip().splitlines() if line.startswith(prefix)]
    assert r.returncode != 0, f"{fragments}: exit 0"
    assert len(lines) == 1, f"{fragments}: expected one stderr line, got {r.stderr!r}"
    assert all(f in lines[0] for f in fragments), f"{lines[0]!r} does not mention all of {fragments!r}"
    return lines[0]
