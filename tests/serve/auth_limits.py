#!/usr/bin/env python3
"""The protobuf channel's token (issue 20 item 6), with glmtp serve on loopback
and the real glmtp-client:

  - the right token is accepted; a wrong one, its prefix, and the token with a
    byte more are refused (the comparison runs over the whole token, in a time
    that does not depend on how much of a guess is right: util_secret_equal);
  - at most 32 connections may wait to authenticate: with 32 silent ones open,
    the next is closed at once, while an authenticated client still gets in
    after they are gone;
  - a connection that sends nothing is closed after --auth-timeout seconds, with
    an error frame.

usage: auth_limits.py GLMTP GLMTP_CLIENT [--mpirun "mpiexec ..."]
"""
import argparse
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish  # noqa: E402
from serve_test import Server  # noqa: E402


def closed_within(sock, seconds):
    """Seconds until the server closed sock (reading what it sent), or None."""
    sock.settimeout(seconds)
    t0 = time.time()
    try:
        while sock.recv(4096):
            pass
        return time.time() - t0
    except (socket.timeout, ConnectionResetError):
        return None if time.time() - t0 >= seconds else time.time() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmtp")
    ap.add_argument("client")
    ap.add_argument("--mpirun", default="")
    a = ap.parse_args()
    a.mpirun = shlex.split(a.mpirun)
    with tempfile.TemporaryDirectory() as tmp:
        model = f"{tmp}/m"
        p = subprocess.run([a.glmtp, "make-model", "--preset", "tiny", "--vocab", "300", "--out", model, "--seed", "5"],
                           capture_output=True, text=True)
        check("make-model", p.returncode == 0, p.stderr[-200:])
        token = "s3cret-token-0123456789"
        files = {}
        for name, t in (("right", token), ("wrong", "x" + token[1:]), ("prefix", token[:-1]), ("longer", token + "9")):
            files[name] = f"{tmp}/{name}.tok"
            open(files[name], "w").write(t + "\n")
        srv = Server(a, model, tmp, "auth", ["--auth-token-file", files["right"], "--auth-timeout", "1.5"], np=1)
        for name in ("wrong", "prefix", "longer"):
            rc, out, err = srv.run("--auth-token-file", files[name], "--health")
            check(f"token: {name} guess refused", rc != 0 and "Auth" in err, (out + err)[-200:])
        rc, out, err = srv.run("--auth-token-file", files["right"], "--health")
        check("token: the right one accepted", rc == 0, (out + err)[-200:])

        silent = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(32)]
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", srv.port))
        t = closed_within(extra, 1.0)
        check("33rd unauthenticated connection closed at once", t is not None and t < 1.0, f"closed after {t}")
        extra.close()
        times = [closed_within(s, 5.0) for s in silent]
        late = [t for t in times if t is None]
        check("silent connections closed after --auth-timeout 1.5 s", not late and max(times) < 4.0,
              f"{len(late)} still open; latest closed after {max(t for t in times if t is not None):.2f} s"
              if len(late) < len(times) else "none closed")
        for s in silent:
            s.close()
        rc, out, err = srv.run("--auth-token-file", files["right"], "--health")
        check("after them, an authenticated client gets in", rc == 0, (out + err)[-200:])
        errs = open(f"{tmp}/auth.err").read()
        check("the refusal is logged with its cause", "waiting to authenticate" in errs, errs[-300:])
        check("server stops cleanly", srv.stop() == 0)
    finish()


if __name__ == "__main__":
    main()
