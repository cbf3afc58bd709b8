#!/usr/bin/env python3
"""check_chat.py FERRY DIR: `ferry chat` on a tiny model, driven through a pseudo-terminal as a user would.

Two messages (the second turn's prompt holds the first turn: history is re-encoded), /reset (the next prompt
is as short as the first), a message whose answer is stopped by Ctrl-C while it streams (the program lives on
and answers the next message), /exit with status 0; then Ctrl-C at an empty prompt and end of input (Ctrl-D)
each quit with status 0. Answers run to -n tokens (--ignore-eos), the stopped one to the whole context."""
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time

ferry, work = sys.argv[1], sys.argv[2]
shutil.rmtree(work, ignore_errors=True)
tiny = os.path.join(work, "tiny")
subprocess.run([ferry, "make-tiny", tiny], check=True, capture_output=True)
STATS = re.compile(rb"\[prompt (\d+) tokens, [0-9.]+ tok/s; answer (\d+) tokens, [0-9.]+ tok/s( \(stopped\)| \(length limit\))?\]")


class Chat:
    """ferry chat on the slave side of a pty (its controlling terminal, so \\x03 raises SIGINT)."""

    def __init__(self, *args):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execv(ferry, [ferry, "chat", "--model", tiny, "--temp", "0", *args])
        self.out = b""

    def read_until(self, pattern, timeout=60):
        """Reads the terminal until `pattern` (bytes regex) matches past what earlier calls consumed."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.out)
            if m:
                self.out = self.out[m.end():]
                return m
            left = deadline - time.monotonic()
            assert left > 0, f"timed out waiting for {pattern!r}; the terminal showed {self.out[-2000:]!r}"
            ready, _, _ = select.select([self.fd], [], [], min(left, 1.0))
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                assert chunk, f"ferry chat closed the terminal while {pattern!r} was awaited: {self.out[-2000:]!r}"
                self.out += chunk

    def send(self, text):
        os.write(self.fd, text.encode())

    def turn(self, message):
        """Sends a message, waits for the stats line of its answer: (prompt tokens, answer tokens, note)."""
        self.send(message + "\n")
        m = self.read_until(STATS)
        return int(m.group(1)), int(m.group(2)), (m.group(3) or b"").strip()

    def alive(self):
        return os.waitpid(self.pid, os.WNOHANG) == (0, 0)

    def wait(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                # Drain what is left so the pty does not block the child's last writes.
                return os.waitstatus_to_exitcode(status)
            try:
                if select.select([self.fd], [], [], 0.2)[0]:
                    self.out += os.read(self.fd, 65536)
            except OSError:
                pass
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"ferry chat did not exit; the terminal showed {self.out[-2000:]!r}")


N = 24
chat = Chat("-n", str(N), "--ignore-eos", "--ctx", "2048", "--system", "Be brief.")
chat.read_until(rb"/reset clears the conversation")
chat.read_until(rb"> ")
p1, a1, note = chat.turn("Hello there")
assert a1 == N and note == b"(length limit)", (a1, note)
p2, a2, _ = chat.turn("And again")
assert a2 == N and p2 > p1 + a1, f"the second prompt ({p2} tokens) must hold the first turn ({p1} + {a1})"
chat.send("/reset\n")
chat.read_until(rb"\(conversation cleared\)")
p3, _, _ = chat.turn("Hello there")
assert p3 == p1, f"after /reset the prompt is the first one again: {p3} != {p1}"
chat.send("/frobnicate\n")
chat.read_until(rb"unknown command /frobnicate")
chat.send("/exit\n")
assert chat.wait() == 0

# Ctrl-C during an answer that would fill the context: the answer stops, the chat goes on.
chat = Chat("--ignore-eos", "--ctx", "65536")
chat.read_until(rb"> ")
chat.send("Tell me everything\n")
chat.read_until(rb"Tell me everything\r?\n.+", timeout=60)  # the echo, then the answer streaming
time.sleep(0.3)
chat.send("\x03")
m = chat.read_until(STATS)
assert m.group(3).strip() == b"(stopped)", m.group(0)
assert int(m.group(2)) < 65000, m.group(0)
assert chat.alive(), "Ctrl-C during an answer must not end the program"
chat.read_until(rb"> ")
chat.send("Shorter, please\n")
chat.read_until(rb"Shorter, please\r?\n.+")
chat.send("\x03")
assert chat.read_until(STATS).group(3).strip() == b"(stopped)"
chat.read_until(rb"> ")
chat.send("/exit\n")
assert chat.wait() == 0

# Ctrl-C at an empty prompt quits, and so does end of input.
chat = Chat("-n", "4")
chat.read_until(rb"> ")
chat.send("\x03")
assert chat.wait() == 0
chat = Chat("-n", "4")
chat.read_until(rb"> ")
chat.send("\x04")
assert chat.wait() == 0

# Bad input: one line and a non-zero exit.
r = subprocess.run([ferry, "chat", "--model", os.path.join(work, "missing")], capture_output=True, input=b"")
assert r.returncode != 0 and len(r.stderr.decode().strip().splitlines()) == 1, r.stderr
shutil.rmtree(work, ignore_errors=True)
print("ok")
