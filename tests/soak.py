#!/usr/bin/env python3
"""Soak test of glmtp serve (issue 20 item 4): for a bounded time, clients send
requests with the real glmtp-client, some of which are cancelled from another
client or disconnect mid-stream, with a KV pool small enough for preemptions.

Checked at the end:
  - no request lost: every request that was neither cancelled nor disconnected
    got exactly one final record with finish_reason stop or length; a cancelled
    one got "cancelled" or had already finished; none hung;
  - every KV block is free of references once idle (Stats: kv_blocks_used 0);
  - open file descriptors of each rank are back to their count before the load;
  - resident memory stays flat: the largest RSS of each rank in the last third
    of the run is within --rss-slack MB of its largest in the first third;
  - the server stops cleanly on SIGTERM (exit 0), and with a sanitizer build
    (no mpirun) LeakSanitizer reports nothing.
Short in CI (--seconds 20); deploy/soak.sh runs it for minutes.

usage: soak.py GLMTP GLMTP_CLIENT [--mpirun "mpiexec ..."] [--seconds S] [--clients C] [--seed N]
"""
import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve"))
from testlib import check, finish  # noqa: E402
from serve_test import Server  # noqa: E402


def rank_pids(port):
    """PIDs of the serve processes listening on this port (rank 0 and the others)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if cmd[0].endswith(b"glmtp") and b"serve" in cmd and f":{port}".encode() in b" ".join(cmd):  # not mpirun
            pids.append(int(d))
    return sorted(pids)


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def n_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmtp")
    ap.add_argument("client")
    ap.add_argument("--mpirun", default="")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rss-slack", type=float, default=16.0)
    a = ap.parse_args()
    a.mpirun = shlex.split(a.mpirun)
    rng = random.Random(a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        model = f"{tmp}/m"
        p = subprocess.run([a.glmtp, "make-model", "--preset", "tiny", "--vocab", "300", "--out", model, "--seed", "9"],
                           capture_output=True, text=True)
        check("make-model", p.returncode == 0, p.stderr[-200:])
        env = dict(os.environ)
        env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"), "detect_leaks=1:quarantine_size_mb=4"]))  # freed memory held in quarantine would look like growth
        srv = Server(a, model, tmp, "soak", ["--kv-tokens", "1024", "--step-tokens", "64"],
                     np=2 if a.mpirun else 1, env=env)
        pids = rank_pids(srv.port)
        check("found the ranks' processes", len(pids) == (2 if a.mpirun else 1), str(pids))
        fds0 = {pid: n_fds(pid) for pid in pids}
        samples = {pid: [] for pid in pids}
        running, done, i = [], [], 0
        t0 = time.time()
        last_sample = 0.0
        while time.time() - t0 < a.seconds or running:
            now = time.time()
            if now - last_sample > 0.5:
                for pid in pids:
                    samples[pid].append((now - t0, rss_mb(pid)))
                last_sample = now
            while time.time() - t0 < a.seconds and len(running) < a.clients:
                i += 1
                kind = rng.choices(["complete", "cancel", "disconnect"], [6, 2, 2])[0]
                rid = f"soak-{i}"
                ids = ",".join(str(rng.randrange(1, 299)) for _ in range(rng.randrange(8, 240)))
                args = [a.client, "--connect", srv.addr, "--json", "--id", rid, "--ids", ids,
                        "--max-new-tokens", str(rng.randrange(4, 48))]
                if rng.random() < 0.5:
                    args += ["--temperature", "0.8", "--seed", str(i)]
                if kind == "disconnect":
                    args += ["--disconnect-after", str(rng.randrange(1, 6))]
                proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                cancel_at = time.time() + rng.uniform(0.0, 0.5) if kind == "cancel" else None
                running.append({"id": rid, "kind": kind, "p": proc, "cancel_at": cancel_at, "t": time.time()})
            for r in list(running):
                if r["cancel_at"] and time.time() >= r["cancel_at"]:
                    subprocess.run([a.client, "--connect", srv.addr, "--cancel", r["id"]], capture_output=True)
                    r["cancel_at"] = None
                if r["p"].poll() is not None or time.time() - r["t"] > 120:
                    if r["p"].poll() is None:
                        r["p"].kill()
                        r["hung"] = True
                    out, err = r["p"].communicate()
                    r["rc"], r["out"], r["err"] = r["p"].returncode, out, err
                    running.remove(r)
                    done.append(r)
            time.sleep(0.02)
        elapsed = time.time() - t0
        lost, bad = [], []
        for r in done:
            recs = [json.loads(l) for l in r["out"].splitlines() if l.startswith("{")]
            fin = recs[0].get("finish_reason") if len(recs) == 1 else None
            if r.get("hung"):
                lost.append((r["id"], "hung"))
            elif r["kind"] == "complete" and not (r["rc"] == 0 and fin in ("stop", "length")):
                lost.append((r["id"], r["rc"], fin, r["err"][-120:]))
            elif r["kind"] == "cancel" and fin not in ("stop", "length", "cancelled"):
                lost.append((r["id"], r["rc"], fin, r["err"][-120:]))
            if len(recs) > 1:
                bad.append(r["id"])
        kinds = {k: sum(1 for r in done if r["kind"] == k) for k in ("complete", "cancel", "disconnect")}
        check(f"{len(done)} requests in {elapsed:.0f} s ({kinds}): none lost or hung", not lost and len(done) > 10,
              str(lost[:5]))
        check("no client got more than one final record", not bad, str(bad[:5]))
        st = srv.wait_idle(timeout=60)
        check("idle: no KV block referenced", st.get("kv_blocks_used") == 0 and st.get("running") == 0,
              json.dumps(st)[:300])
        check("the pool was under pressure (preemptions or evictions)",
              st.get("preemptions", 0) + st.get("kv_blocks_evicted", 0) > 0, json.dumps(st)[:300])
        time.sleep(0.5)  # closed client sockets leave the network thread's table
        fds1 = {pid: n_fds(pid) for pid in pids}
        check("open file descriptors back to their count before the load", fds1 == fds0, f"{fds0} -> {fds1}")
        for pid, ss in samples.items():
            third = max(1, len(ss) // 3)
            first, last = max(m for _, m in ss[:third]), max(m for _, m in ss[-third:])
            check(f"rank pid {pid}: resident memory flat ({first:.1f} MB in the first third, {last:.1f} MB in the "
                  f"last)", last - first <= a.rss_slack, f"grew {last - first:.1f} MB")
        rc = srv.stop()
        errs = open(f"{tmp}/soak.err").read()
        check("SIGTERM: clean stop", rc == 0 or (a.mpirun and rc == 1), f"exit {rc}")
        check("no sanitizer report", "LeakSanitizer" not in errs and "AddressSanitizer" not in errs and
              "runtime error" not in errs, errs[-600:])
    finish()


if __name__ == "__main__":
    main()
