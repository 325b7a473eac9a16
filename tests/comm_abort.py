#!/usr/bin/env python3
"""comm.h's abort from a second thread ends the job quickly with its code and
runs no exit handler (tests/test_comm_abort.c): one rank without a launcher
(the single-rank build), or 1 and 2 ranks under mpirun (the MPI build).

usage: comm_abort.py TEST_COMM_ABORT [--mpirun "mpiexec --oversubscribe"]
"""
import argparse
import os
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--mpirun", default="")
    a = ap.parse_args()
    launch = shlex.split(a.mpirun)
    runs = [(f"{np} rank(s) under mpirun", launch + ["-np", str(np)]) for np in (1, 2)] if launch else [
        ("one rank", [])]
    for what, prefix in runs:
        t0 = time.time()
        try:
            p = subprocess.run(prefix + [a.binary], capture_output=True, text=True, timeout=60)
            rc, err = p.returncode, p.stderr
        except subprocess.TimeoutExpired:
            rc, err = None, "timed out after 60 s"
        dt = time.time() - t0
        # Rank 0 holds the collective back for 30 s: an abort that did not end
        # the job shows as a run that long (or one that returns 0).
        want = (rc == 7) if not launch else (rc not in (0, None))
        check(f"{what}: the job ends with the abort's status", want, f"exit {rc}")
        check(f"{what}: within 15 s", dt < 15, f"{dt:.1f} s")
        check(f"{what}: the aborting thread ran", "aborting from a second thread" in err, err.strip()[-300:])
        check(f"{what}: no exit handler ran", "exit handler ran" not in err and "did not end" not in err,
              err.strip()[-300:])
    finish()


if __name__ == "__main__":
    main()
