#!/usr/bin/env python3
"""The README's command lines run as written (issue 21).

usage: readme_check.py BUILD_DIR SOURCE_DIR

Installs BUILD_DIR into a temporary prefix, puts its bin/ first on PATH, takes
the ```sh blocks between the README's `<!-- readme-test` marks and runs them
with bash -e in an empty temporary directory, with Open MPI's OMPI_* variables
removed from the environment: the README's own lines must make mpirun work in
a root shell and on a machine with fewer cores than ranks. Exits 1 on failure.
"""
import os, re, subprocess, sys, tempfile


def main():
    build, src = sys.argv[1], sys.argv[2]
    text = open(os.path.join(src, "README.md"), encoding="utf-8").read()
    m = re.search(r"<!-- readme-test:.*?-->(.*?)<!-- readme-test: end -->", text, re.S)
    if not m:
        sys.exit("FAIL: README.md has no <!-- readme-test --> section")
    blocks = re.findall(r"```sh\n(.*?)```", m.group(1), re.S)
    script = "set -euo pipefail\n" + "\n".join(blocks)
    tmp = tempfile.mkdtemp(prefix="glmtp-readme-")
    prefix = os.path.join(tmp, "prefix")
    p = subprocess.run(["cmake", "--install", build, "--prefix", prefix], capture_output=True, text=True)
    if p.returncode:
        sys.exit("FAIL: cmake --install: " + p.stderr)
    work = os.path.join(tmp, "work")
    os.mkdir(work)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMPI_")}
    env["PATH"] = os.path.join(prefix, "bin") + os.pathsep + env.get("PATH", "")
    print(script)
    p = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    print(p.stdout[-3000:])
    print(p.stderr[-3000:], file=sys.stderr)
    if p.returncode:
        sys.exit("FAIL: the README's commands exited %d" % p.returncode)
    out = open(os.path.join(work, "out.jsonl")).read()
    if '"finish_reason"' not in out or not os.path.isfile(os.path.join(work, "model.json")):
        sys.exit("FAIL: the README's commands did not write out.jsonl and model.json")
    print("ok: the README's %d command lines ran as written" % len(script.splitlines()))


if __name__ == "__main__":
    main()
