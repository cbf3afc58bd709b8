"""What the scripts comparing `ferry run` under mpirun with one process share: a tiny checkpoint in a fresh work
directory, the prompt, and one run (1 process, or N ranks each a node of its own) that returns its ids, its logits
file's bytes and its stderr."""
import os
import shutil
import subprocess

PROMPT = ",".join(str((i * 37 + 11) % 200) for i in range(70))


class Runs:
    def __init__(self, argv, seed=7):
        self.ferry, self.work, self.mpirun = argv[1], argv[2], argv[3:]
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work)
        self.tiny = os.path.join(self.work, "tiny")
        subprocess.run([self.ferry, "make-tiny", self.tiny, "--seed", str(seed)], check=True, capture_output=True)

    def run(self, name, ranks, *args):
        """ferry run of PROMPT + 12 tokens; under mpirun with `ranks` > 0. Logged at level info (the ranks' roles)."""
        out = os.path.join(self.work, name + ".npy")
        cmd = [self.ferry, "run", "-m", self.tiny, "--tokens", PROMPT, "-n", "12", "--ignore-eos", "--logits-out", out,
               *args]
        if ranks:
            cmd = [*self.mpirun, "-np", str(ranks), *cmd, "--ranks-as-nodes"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, FERRY_LOG_LEVEL="info"))
        assert r.returncode == 0, (cmd, r.stdout, r.stderr)
        with open(out, "rb") as f:
            return r.stdout.strip().splitlines()[-1], f.read(), r.stderr
