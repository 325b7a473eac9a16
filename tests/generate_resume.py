#!/usr/bin/env python3
"""glmtp generate loses nothing (issue 20 item 3): output first, streamed input,
records written as they finish, --resume after a kill. On the tiny model:

  - an output path that cannot be opened fails before any work: non-zero exit,
    the path and errno's text in the message, and no rank loaded weights (no
    start-up line), under mpirun -np 2;
  - duplicate ids are refused before any work, naming both lines;
  - kill -9 of the whole mpirun job (mpirun and every process under it) at 5
    seeded random moments (one while the ranks start, four a seeded number of
    records further on plus 0-150 ms: mid-step or mid-write), each followed by
    a --resume that the next kill interrupts, then a last --resume to
    the end, gives a file byte-equal to an uninterrupted run's (same lines in
    the same order, greedy and seeded-sampled requests, lines with and without
    ids); every intermediate file holds whole records only, no duplicates, and
    is a prefix of the uninterrupted file; the same with SIGKILL of rank 0
    alone (5 more moments);
  - a torn last line (half a record, no newline) is dropped by --resume, named
    on stderr, and the file ends equal to the uninterrupted one;
  - memory is bounded by the window: an input of 800 lines of 128 KB each
    (100 MB; the bulk is a stop string, so it costs no compute) with --window 8 runs with a peak resident set of rank 0 within
    24 MB of the same job on 40 lines (the old read-it-all driver held the
    whole input), and the summary line says at most 8 lines were in memory.
usage: generate_resume.py GLMTP VOCAB [--mpirun "mpiexec --oversubscribe"] [--seed S]
"""
import argparse
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish  # noqa: E402

STARTUP = re.compile(r"weights \d+ bytes|GiB of weights")  # engine_open's per-rank start-up line
N_REQ = 24


def descendants(pid):
    """Every process under pid (from /proc), children first seen first."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for k in kids.get(p, []):
            out.append(k)
            todo.append(k)
    return out


def rank_pid(pid, rank):
    """The pid of MPI rank `rank` under pid, or None."""
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if f"OMPI_COMM_WORLD_RANK={rank}".encode() in env:
            return p
    return None


def records(path):
    """(lines, whole) of an output file: its lines, and whether it ends with a newline."""
    data = open(path, "rb").read() if os.path.exists(path) else b""
    return data.split(b"\n")[:-1], data == b"" or data.endswith(b"\n")


class Job:
    def __init__(self, a, model, tmp):
        self.a, self.model, self.tmp = a, model, tmp
        self.launch = shlex.split(a.mpirun) + ["-np", "2"] if a.mpirun else []

    def cmd(self, inp, out, extra=(), tp2=True):
        return [*(self.launch if tp2 else []), self.a.glmtp, "generate", "--model", self.model, "--input", inp,
                "--output", out, "--threads", "1", *extra]

    def run(self, inp, out, extra=(), tp2=True):
        t0 = time.time()
        p = subprocess.run(self.cmd(inp, out, extra, tp2), capture_output=True, text=True, timeout=300)
        return p.returncode, p.stderr, time.time() - t0

    def killed_run(self, inp, out, extra, when, whole):
        """Starts a --resume run and SIGKILLs it (the whole job, or rank 0 only) at a moment: when = ("time", s)
        after s seconds, or ("records", m, s) s seconds after the file holds m records. Returns (records in the
        file at the kill, whether the run had ended by itself)."""
        p = subprocess.Popen(self.cmd(inp, out, ["--resume", *extra]), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        if when[0] == "records":
            while p.poll() is None and len(records(out)[0]) < when[1]:
                time.sleep(0.01)
        time.sleep(when[-1])
        ended = p.poll() is not None
        if not ended:
            if whole:
                for q in [p.pid] + descendants(p.pid):
                    try:
                        os.kill(q, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            else:
                r0 = rank_pid(p.pid, 0)
                if r0:
                    os.kill(r0, signal.SIGKILL)
                else:  # not started yet: the job as a whole
                    os.killpg(p.pid, signal.SIGKILL)
        n = len(records(out)[0])
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        try:
            os.killpg(p.pid, signal.SIGKILL)  # leftovers of a killed job (its session)
        except ProcessLookupError:
            pass
        return n, ended


def requests():
    words = "the quick brown fox jumps over the lazy dog 天气 很好 123 4567".split()
    reqs = []
    for i in range(N_REQ):
        text = " ".join(words[(i + k) % len(words)] for k in range(1 + (i * 7) % 30))
        r = {"id": f"r{i}" if i % 5 else i, "max_new_tokens": 4 + (i * 5) % 11}
        if i % 3 == 0:
            r["prompt"] = text
        elif i % 3 == 1:
            r["messages"] = [{"role": "user", "content": text}]
        else:
            r["input_ids"] = [151331, 151333] + [(97 * i + 31 * k) % 150000 for k in range(1 + i % 20)]
        if i % 4 == 1:
            r.update(temperature=0.9, top_p=0.9, top_k=40, seed=100 + i)
        if i % 4 == 2:
            r.update(temperature=0.8)  # sampled with the default seed: --seed plus the line number
        if i in (7, 20):
            del r["id"]  # keyed by line number; the record carries "line"
        reqs.append(r)
    return [json.dumps(r, ensure_ascii=False) for r in reqs]


def kill_series(job, rng, inp, ref, whole, name):
    out = f"{job.tmp}/{name}.jsonl"
    extra = ["--window", "4", "--step-tokens", "32"]
    seen, moments, ok_prefix, ok_whole = [], [], True, True
    for k in range(5):
        have = len(records(out)[0])
        if k == 0:  # while the ranks start: before any record
            when = ("time", round(rng.uniform(0.1, 1.0), 2))
        else:  # a seeded record count ahead, then a few ms more: mid-step, mid-write
            when = ("records", min(len(ref) - 1, have + rng.randint(1, max(1, (len(ref) - have) // 3))),
                    round(rng.uniform(0.0, 0.15), 3))
        n, ended = job.killed_run(inp, out, extra, when, whole)
        lines, whole_file = records(out)
        moments.append(f"{'/'.join(map(str, when))}->{n}{'(ended)' if ended else ''}")
        seen.append(n)
        ok_whole &= whole_file
        ok_prefix &= lines == ref[:len(lines)]
    rc, err, _ = job.run(inp, out, ["--resume", *extra])
    lines, whole_file = records(out)
    print(f"  {name}: kill moments (time/s or records/m/s -> records in the file at the kill) {', '.join(moments)}")
    check(f"{name}: every killed run left whole records only", ok_whole and whole_file)
    check(f"{name}: every killed run left a prefix of the uninterrupted file", ok_prefix)
    check(f"{name}: 3 or more kills landed mid-job (records 0 < n < all)", sum(0 < n < len(ref) for n in seen) >= 3, str(seen))
    check(f"{name}: the last --resume exits 0", rc == 0, "" if rc == 0 else err[-400:])
    ids = [json.loads(x).get("id") for x in lines]
    keys = [i if i is not None else ("line", json.loads(x)["line"]) for i, x in zip(ids, lines)]
    check(f"{name}: no duplicate records", len(set(map(str, keys))) == len(keys))
    check(f"{name}: the file is byte-equal to an uninterrupted run's", lines == ref, "" if lines == ref else
          f"{len(lines)} vs {len(ref)} lines; first difference at line "
          f"{next((i for i, (x, y) in enumerate(zip(lines, ref)) if x != y), min(len(lines), len(ref)))}")


def peak_rss_kb(cmd):
    """Runs cmd (one process, no mpirun); returns (exit code, stderr, its peak resident set in KiB)."""
    env = dict(os.environ)  # ASan builds: a small quarantine, or freed lines would count as held
    env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"), "quarantine_size_mb=4"]))
    with tempfile.TemporaryFile() as errf:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        errf.seek(0)
        return p.returncode, errf.read().decode(errors="replace"), ru.ru_maxrss


def memory_check(job):
    pad = "x" * 130000  # a stop string: held with its request, costs no compute
    def write(path, n):
        with open(path, "w") as f:
            for i in range(n):
                f.write(json.dumps({"id": i, "input_ids": [151331, 151333, 100 + i % 50], "max_new_tokens": 1,
                                    "stop": [pad + str(i)]}) + "\n")
        return os.path.getsize(path)
    small, big = f"{job.tmp}/small.jsonl", f"{job.tmp}/big.jsonl"
    write(small, 40)
    size = write(big, 800)
    extra = ["--window", "8"]
    rc1, err1, rss1 = peak_rss_kb(job.cmd(small, f"{job.tmp}/small.out", extra, tp2=False))
    rc2, err2, rss2 = peak_rss_kb(job.cmd(big, f"{job.tmp}/big.out", extra, tp2=False))
    check("memory: both runs exit 0", rc1 == 0 and rc2 == 0, (err1 + err2)[-400:])
    n_big = len(records(f"{job.tmp}/big.out")[0])
    check("memory: every line of the big input has its record", n_big == 800, str(n_big))
    grow = (rss2 - rss1) / 1024
    check(f"memory: {size / 2**20:.0f} MB input, window 8: peak RSS of rank 0 {rss2 / 1024:.0f} MB, "
          f"within 24 MB of the 40-line run's {rss1 / 1024:.0f} MB", grow < 24, f"grew {grow:.1f} MB")
    m = re.search(r"at most (\d+) input lines in memory", err2)
    check("memory: the summary says at most 8 lines were held", m is not None and int(m.group(1)) <= 8,
          m.group(0) if m else err2[-300:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmtp")
    ap.add_argument("vocab")
    ap.add_argument("--mpirun", default="")
    ap.add_argument("--seed", type=int, default=20)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        model = f"{tmp}/model"
        subprocess.run([a.glmtp, "make-model", "--preset", "tiny", "--out", model, "--seed", "5", "--dtype", "f32",
                        "--tokenizer", a.vocab], check=True, capture_output=True)
        job = Job(a, model, tmp)
        inp = f"{tmp}/in.jsonl"
        with open(inp, "w") as f:
            f.write("\n".join(requests()) + "\n")

        bad = f"{tmp}/no-such-dir/out.jsonl"
        rc, err, dt = job.run(inp, bad)
        check("unwritable output: fails", rc != 0, f"exit {rc}")
        check("unwritable output: the message names the path and errno",
              bad in err and "No such file or directory" in err, err.strip()[:300])
        check("unwritable output: no rank started (no weights loaded)", not STARTUP.search(err), err.strip()[:300])

        dup = f"{tmp}/dup.jsonl"
        lines = requests()
        with open(dup, "w") as f:
            f.write("\n".join(lines[:4] + [lines[2]] + lines[4:6]) + "\n")
        rc, err, _ = job.run(dup, f"{tmp}/dup.out")
        check("duplicate ids: refused, naming both lines",
              rc != 0 and "lines 3 and 5 have the same id" in err, err.strip()[:300])
        check("duplicate ids: before any work", not STARTUP.search(err), err.strip()[:300])

        ref_path = f"{tmp}/ref.jsonl"
        rc, err, t_ref = job.run(inp, ref_path, ["--window", "4", "--step-tokens", "32"])
        ref, whole = records(ref_path)
        check("uninterrupted run: exit 0, one record per line", rc == 0 and len(ref) == N_REQ and whole, err[-300:])
        print(f"  uninterrupted run: {t_ref:.1f} s")
        if a.mpirun:
            kill_series(job, rng, inp, ref, True, "kill -9 of the whole job")
            kill_series(job, rng, inp, ref, False, "SIGKILL of rank 0")

        torn = f"{tmp}/torn.jsonl"
        with open(torn, "wb") as f:
            f.write(b"".join(x + b"\n" for x in ref[:15]) + ref[15][:len(ref[15]) // 2])
        rc, err, _ = job.run(inp, torn, ["--resume", "--window", "4"])
        check("torn last line: --resume names and drops it", rc == 0 and "torn last record" in err, re.search(r".*torn.*", err).group(0) if "torn" in err else err[-300:])
        check("torn last line: the file ends equal to the uninterrupted one", records(torn)[0] == ref)

        memory_check(job)
    finish()


if __name__ == "__main__":
    main()
