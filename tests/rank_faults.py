#!/usr/bin/env python3
"""A failed or mismatched rank ends the whole job, with a message, quickly.

  - ranks started with different arguments (MPMD launch): every rank exits
    non-zero and the message names the odd rank;
  - one rank loading a different model than rank 0's (same arguments, the
    model directory differs per rank through a symlink in its own cwd): the
    configuration check names the rank;
  - a rank that dies before joining: the job ends non-zero instead of hanging.
usage: rank_faults.py GLMTP --mpirun "mpiexec --oversubscribe"
"""
import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish  # noqa: E402


def run(cmd, cwd=None, timeout=60):
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
        return p.returncode, p.stderr, time.time() - t0
    except subprocess.TimeoutExpired:
        return None, "timed out", time.time() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmtp")
    ap.add_argument("--mpirun", required=True)
    a = ap.parse_args()
    mpirun = shlex.split(a.mpirun)
    glmtp = os.path.abspath(a.glmtp)
    with tempfile.TemporaryDirectory() as tmp:
        for name, kv in (("m2", "2"), ("m4", "4")):
            subprocess.run([glmtp, "make-model", "--preset", "tiny", "--vocab", "300", "--kv-groups", kv,
                            "--out", f"{tmp}/{name}", "--seed", "3"], check=True, capture_output=True)

        rc, err, dt = run(mpirun + ["-np", "1", glmtp, "score", "--model", f"{tmp}/m2", "--ids", "1,2", ":",
                                    "-np", "1", glmtp, "score", "--model", f"{tmp}/m2", "--ids", "1,3"])
        check("mismatched arguments end the job", rc not in (0, None) and dt < 30, f"exit {rc}, {dt:.1f} s")
        check("mismatched arguments: message names rank 1",
              "rank 1 was started with different arguments than rank 0" in err, err.strip()[:300])

        # Same argv, different model per rank: each rank's cwd has its own "model" link.
        for r, target in ((0, "m2"), (1, "m4")):
            os.makedirs(f"{tmp}/cwd{r}")
            os.symlink(f"{tmp}/{target}", f"{tmp}/cwd{r}/model")
        rc, err, dt = run(mpirun + ["-np", "1", "--wdir", f"{tmp}/cwd0", glmtp, "score", "--model", "model",
                                    "--ids", "1,2", ":", "-np", "1", "--wdir", f"{tmp}/cwd1", glmtp, "score",
                                    "--model", "model", "--ids", "1,2"])
        check("different model on one rank ends the job", rc not in (0, None) and dt < 30, f"exit {rc}, {dt:.1f} s")
        check("different model: message names rank 1",
              "rank 1 loaded a different model configuration than rank 0" in err, err.strip()[:300])

        rc, err, dt = run(mpirun + ["-np", "1", glmtp, "score", "--model", f"{tmp}/m2", "--ids", "1,2", ":",
                                    "-np", "1", "false"])
        check("a rank that dies at start ends the job", rc not in (0, None) and dt < 30, f"exit {rc}, {dt:.1f} s")
    finish()


if __name__ == "__main__":
    main()
