#!/usr/bin/env python3
"""check_run_faults.py FERRY DIR MPIRUN...: how `ferry run` under mpirun fails. Every case: the job exits non-zero
within 30 s, no rank hangs (each job has a timeout), and one line names the rank at fault.
  - a rank killed (SIGKILL) during prefill, during decode: mpirun's line naming it;
  - a rank frozen (SIGSTOP) during decode: the waiting ranks' line "no answer from rank 1", within the deadline;
  - a rank on another checkpoint (other config, other shard count, same shapes but other weights), a rank missing
    a shard, a rank whose node has too little RAM (a topology of 16 MiB given to hwloc): refused before the model
    is loaded, with the rank and the difference or the planner's shortfall;
  - every rank meeting the same error: one line, not one per rank."""
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

ferry, work, mpirun = sys.argv[1], sys.argv[2], sys.argv[3:]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
LIMIT = 30  # seconds from the fault (or the start, for a refusal) to the end of the job
HOST = r"\(\S+\)"


def make_tiny(name, *args, seed="7"):
    path = os.path.join(work, name)
    subprocess.run([ferry, "make-tiny", path, "--seed", seed, *args], check=True, capture_output=True, timeout=120)
    return path


tiny = make_tiny("tiny")
tiny8 = make_tiny("tiny8", seed="8")  # the same shapes, other weights
pro = make_tiny("pro", "--like", "pro")
three = make_tiny("three", "--shards", "3")
three_less = os.path.join(work, "three-less")
shutil.copytree(three, three_less)
os.remove(os.path.join(three_less, "model-00002-of-00003.safetensors"))

# A machine of 2 cores whose only allowed NUMA node has 16 MiB (the other, disallowed, is there so that hwloc's
# count is believed over the kernel's total: see runtime/backend/hardware_probe.cpp).
small_topology = os.path.join(work, "small.xml")
sets = 'cpuset="0x3" complete_cpuset="0x3"'
with open(small_topology, "w") as f:
    f.write(f"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE topology SYSTEM "hwloc2.dtd">
<topology version="2.0">
 <object type="Machine" os_index="0" {sets} allowed_cpuset="0x3" nodeset="0x3" complete_nodeset="0x3"
         allowed_nodeset="0x1" gp_index="1">
  <object type="Package" os_index="0" {sets} nodeset="0x3" complete_nodeset="0x3" gp_index="2">
   <object type="NUMANode" os_index="0" {sets} nodeset="0x1" complete_nodeset="0x1" gp_index="3"
           local_memory="16777216"/>
   <object type="NUMANode" os_index="1" {sets} nodeset="0x2" complete_nodeset="0x2" gp_index="4"
           local_memory="17179869184"/>
   <object type="Core" os_index="0" cpuset="0x1" complete_cpuset="0x1" nodeset="0x3" complete_nodeset="0x3"
           gp_index="5">
    <object type="PU" os_index="0" cpuset="0x1" complete_cpuset="0x1" nodeset="0x3" complete_nodeset="0x3"
            gp_index="6"/>
   </object>
   <object type="Core" os_index="1" cpuset="0x2" complete_cpuset="0x2" nodeset="0x3" complete_nodeset="0x3"
           gp_index="7">
    <object type="PU" os_index="1" cpuset="0x2" complete_cpuset="0x2" nodeset="0x3" complete_nodeset="0x3"
            gp_index="8"/>
   </object>
  </object>
 </object>
</topology>
""")

ENV = dict(os.environ, FERRY_LOG_LEVEL="info")
PART = r"rank \d+ \([^)]*\): runs "  # RankRun's info line: this rank has its part of the plan
RUN = ["run", "--tokens", "1,2,3", "-n", "4", "--ranks-as-nodes"]


def ferry_lines(out):
    return [l for l in out.splitlines() if re.match(r"ferry( \w+)?: error: ", l)]


def check_refused(name, cmd, pattern, checks_ranks=True):
    """A job refused before loading: non-zero, in time, one ferry line matching `pattern`, and, for the checks of
    the ranks, no rank got as far as its part of the plan (RankRun's info line)."""
    start = time.monotonic()
    r = subprocess.run([*mpirun, *cmd], capture_output=True, text=True, timeout=120, env=ENV)
    took = time.monotonic() - start
    out = r.stdout + r.stderr
    lines = ferry_lines(out)
    assert r.returncode != 0, (name, "exited 0", out)
    assert took < LIMIT, (name, f"took {took:.1f} s", out)
    assert len(lines) == 1, (name, "want one ferry line", out)
    assert re.fullmatch(pattern, lines[0]), (name, lines[0], pattern)
    assert not (checks_ranks and re.search(PART, out)), (name, "a rank went past the checks", out)
    print(f"{name}: exit {r.returncode} after {took:.1f} s: {lines[0]}")


def app(ranks, model, *extra):
    return ["-np", str(ranks), *extra, ferry, *RUN, "-m", model]


# ---- refusals before loading ----
check_refused("another config", [*app(1, tiny), ":", *app(1, pro)],
              rf"ferry run: error: rank 1 {HOST}: its checkpoint {re.escape(pro)} is not rank 0's {re.escape(tiny)}: "
              r"config\.json differs")
check_refused("another shard count", [*app(1, tiny), ":", *app(1, three)],
              rf"ferry run: error: rank 1 {HOST}: its checkpoint {re.escape(three)} is not rank 0's "
              rf"{re.escape(tiny)}: the checkpoint has 3 shards, not 2")
check_refused("other weights", [*app(2, tiny), ":", *app(1, tiny8)],
              rf"ferry run: error: rank 2 {HOST}: its checkpoint {re.escape(tiny8)} is not rank 0's "
              rf"{re.escape(tiny)}: the weights differ \(pages sampled from every shard\)")
check_refused("a shard missing", [*app(2, three), ":", *app(1, three_less)],
              rf"ferry run: error: rank 2 {HOST}: model\.safetensors\.index\.json names shard "
              rf"'model-00002-of-00003\.safetensors', which is missing from {re.escape(three_less)}")
check_refused("a node too small", [*app(1, tiny), ":", *app(1, tiny, "-x", f"HWLOC_XMLFILE={small_topology}")],
              rf"ferry run: error: rank 0 {HOST}: does not fit on 2 nodes of 16\.00 MiB RAM, the least of any rank "
              rf"\(rank 1 {HOST}'s\): node0\.host needs [\d.]+ MiB but has 16\.00 MiB: short by .+ "
              rf"\(`ferry plan -m {re.escape(tiny)} --nodes 2 --host-ram 16777216 --host-reserve 0 .+` shows the whole "
              r"plan\)")
check_refused("the same error on every rank", ["-np", "3", ferry, *RUN, "-m", tiny, "--ctx", "5"],
              rf"ferry: error: rank 0 {HOST}: run: --ctx 5 is smaller than the prompt \(3 tokens\) plus -n 4",
              checks_ranks=False)

# ---- a rank lost or frozen while the run computes ----
WORDS = " ".join(f"word{i % 97}" for i in range(500))  # ~2,400 tokens of the tiny tokenizer: seconds of prefill


def rank_pid(job, rank):
    """The pid of `rank` of the job: the child of mpirun whose environment says so."""
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) != job.pid:
                    continue
            with open(f"/proc/{d}/environ", "rb") as f:
                if f"OMPI_COMM_WORLD_RANK={rank}".encode() in f.read().split(b"\0"):
                    return int(d)
        except (OSError, ValueError):
            continue
    raise AssertionError(f"no process of rank {rank} under mpirun {job.pid}")


def fault(name, phase, rank, sig, words, env=None):
    """Runs 3 ranks, sends `sig` to `rank` in `phase` (prefill: before rank 0 printed any text, decode: after), and
    returns the job's output and the seconds from the signal to its end."""
    cmd = [*mpirun, "-np", "3", ferry, "run", "-m", tiny, "--prompt", words, "-n", "3000", "--ignore-eos", "--ctx",
           "8192", "--ranks-as-nodes", "--split", "experts"]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(ENV, **(env or {})))
    out, err = [], []

    def read(stream, into):
        for chunk in iter(lambda: stream.read1(65536), b""):
            into.append(chunk)

    readers = [threading.Thread(target=read, args=a, daemon=True) for a in ((job.stdout, out), (job.stderr, err))]
    for t in readers:
        t.start()
    try:
        started = time.monotonic()
        # Every rank has its part of the plan: the run is about to load (milliseconds) and prefill.
        while len(re.findall(PART, b"".join(err).decode(errors="replace"))) < 3 or (phase == "decode" and not out):
            assert job.poll() is None and time.monotonic() - started < 120, (name, b"".join(err).decode())
            time.sleep(0.02)
        time.sleep(0.3)
        printed = len(b"".join(out))
        pid = rank_pid(job, rank)
        os.kill(pid, sig)
        hit = time.monotonic()
        job.wait(timeout=120)  # a hang fails here
        took = time.monotonic() - hit
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    for t in readers:
        t.join(timeout=10)
    text = (b"".join(out) + b"".join(err)).decode(errors="replace")
    assert (printed == 0) == (phase == "prefill"), (name, f"rank 0 had printed {printed} bytes", text)
    assert job.returncode != 0, (name, "exited 0", text)
    assert took < LIMIT, (name, f"took {took:.1f} s after the signal", text)
    return text, took, pid


for phase, rank, words in (("prefill", 1, WORDS), ("decode", 2, WORDS[:600]), ("decode", 0, WORDS[:600])):
    name = f"rank {rank} killed during {phase}"
    text, took, pid = fault(name, phase, rank, signal.SIGKILL, words)
    lost = re.findall(r"(?:mpirun|mpiexec) noticed that process rank (\d+) with PID \d+ on node \S+ exited on signal 9",
                      text)
    assert lost == [str(rank)], (name, "want mpirun's line naming the rank", text)
    blamed = re.findall(r"no answer from rank (\d+)", text)
    assert all(r == str(rank) for r in blamed), (name, "a line blames another rank", text)
    print(f"{name} (pid {pid}): exit after {took:.1f} s; mpirun: process rank {rank} exited on signal 9")

name = "rank 1 frozen during decode"
text, took, pid = fault(name, "decode", 1, signal.SIGSTOP, WORDS[:600], {"FERRY_RANK_TIMEOUT": "3"})
lines = ferry_lines(text)
assert lines, (name, "no line", text)
for line in lines:  # ranks 0 and 2 may both time out before the first one's MPI_Abort ends the other
    assert re.fullmatch(rf"ferry: error: rank [02] {HOST}: no answer from rank 1 {HOST} within 3 s \(.+\)", line), (
        name, line, text)
assert took >= 3, (name, f"gave up after {took:.1f} s, before the deadline")
print(f"{name} (pid {pid}): exit after {took:.1f} s, {len(lines)} line(s): {lines[0]}")
