#!/usr/bin/env python3
"""A new user's first hour (issue 21), on the installed binaries.

usage: first_hour.py BUILD_DIR SOURCE_DIR [--mpirun "mpiexec --oversubscribe"] [--gpu-test PATH]

Installs BUILD_DIR into a temporary prefix (cmake --install --prefix) and checks:
install layout and --version; --help of every command and of glmtp-client lists
every option the README's synopsis shows for it; make-model with a bad --tokenizer
writes nothing; unknown JSONL keys are error records naming the key, max_tokens is
understood; a prompt near the context end gets finish_reason "length" with the
tokens that fit; bench --model-only --json writes the file; rank 0 alone prints
start-up lines (all ranks at --log-level debug, none at --quiet) and an error all
ranks agree on; generate says the weights are random; chat rejects /bogus and
shows prompt markers; glmtp-client takes --stop twice; bench --preset says where
its checkpoint stays; the GPU test exits with ctest's skip code without a GPU.
Python standard library only; exits 1 on any failure.
"""
import argparse, json, os, re, shlex, subprocess, sys, tempfile

FAILS = []


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else ": " + str(detail)[:600]))
    if not ok:
        FAILS.append(name)


def run(cmd, **kw):
    kw.setdefault("timeout", 300)
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def readme_synopsis(src):
    """{command: set of options} from the README's Commands block."""
    text = open(os.path.join(src, "README.md"), encoding="utf-8").read()
    block = text.split("## Commands", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    opts, cmd = {}, None
    for line in block.splitlines():
        if line.lstrip().startswith("#"):
            continue
        m = re.search(r"\bglmtp(-client)?(?: ([a-z-]+))?", line)
        if not line.startswith(" "):  # a new command line (indented lines continue the last one)
            cmd = "scaling.sh" if "deploy/scaling.sh" in line else \
                ("glmtp-client" if m.group(1) else m.group(2)) if m else None
        if cmd:
            found = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", line))
            opts.setdefault(cmd, set()).update(found)
    return opts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("src")
    ap.add_argument("--mpirun", default="")
    ap.add_argument("--gpu-test", default="")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="glmtp-first-hour-")
    prefix = os.path.join(tmp, "prefix")
    p = run(["cmake", "--install", a.build, "--prefix", prefix])
    check("cmake --install", p.returncode == 0, p.stderr)
    g, cl = os.path.join(prefix, "bin", "glmtp"), os.path.join(prefix, "bin", "glmtp-client")
    for f in ["bin/glmtp", "share/man/man1/glmtp.1", "share/glmtp/tokenizer.model", "share/doc/glmtp/README.md"]:
        check("installed " + f, os.path.isfile(os.path.join(prefix, f)))
    has_client = os.path.isfile(cl)
    if has_client:
        check("installed share/glmtp/glmtp.proto", os.path.isfile(os.path.join(prefix, "share/glmtp/glmtp.proto")))
    version = re.search(r"project\(glmtp LANGUAGES C VERSION ([0-9.]+)\)",
                        open(os.path.join(a.src, "CMakeLists.txt")).read()).group(1)
    p = run([g, "--version"])
    check("glmtp --version", p.returncode == 0 and p.stdout.strip() == "glmtp " + version, p.stdout + p.stderr)
    if has_client:
        p = run([cl, "--version"])
        check("glmtp-client --version", p.returncode == 0 and version in p.stdout, p.stdout + p.stderr)
    man = open(os.path.join(prefix, "share/man/man1/glmtp.1"), encoding="utf-8").read()
    check("man page has every command", all("glmtp " + c in man for c in ["make-model", "generate", "bench"]))

    # --help everywhere, listing what the README shows.
    top = run([g, "--help"])
    check("glmtp --help lists bench --model-only and the client",
          top.returncode == 0 and "--model-only" in top.stdout and "glmtp-client" in top.stdout, top.stdout)
    for cmd, opts in sorted(readme_synopsis(a.src).items()):
        if cmd == "glmtp-client" and not has_client:
            continue
        argv = [cl, "--help"] if cmd == "glmtp-client" else \
            ["bash", os.path.join(a.src, "deploy/scaling.sh"), "--help"] if cmd == "scaling.sh" else [g, cmd, "--help"]
        h = run(argv)
        missing = sorted(o for o in opts if not re.search(re.escape(o) + r"(?![\w-])", h.stdout))
        check("%s --help lists the README's options" % cmd, h.returncode == 0 and not missing,
              "rc %d, missing %s" % (h.returncode, missing))
    if has_client:
        check("glmtp-client --help documents --id", "--id REQUEST_ID" in run([cl, "--help"]).stdout)
    p = run(["bash", os.path.join(a.src, "deploy/scaling.sh"), "--help"])
    check("deploy/scaling.sh --help", p.returncode == 0 and "--max-tp" in p.stdout, p.stderr)
    check("--threads default told truthfully", "all cores" not in run([g, "generate", "--help"]).stdout)

    # make-model: a bad --tokenizer is refused before anything is written.
    bad_out = os.path.join(tmp, "never")
    p = run([g, "make-model", "--out", bad_out, "--tokenizer", os.path.join(tmp, "nope.model")])
    check("make-model bad --tokenizer writes nothing",
          p.returncode != 0 and not os.path.exists(bad_out) and "nope.model" in p.stderr, p.stderr)

    model = os.path.join(tmp, "tiny")
    p = run([g, "make-model", "--out", model, "--seed", "1", "--layers", "1",
             "--tokenizer", os.path.join(prefix, "share/glmtp/tokenizer.model")])
    check("make-model", p.returncode == 0, p.stderr)
    launch = shlex.split(a.mpirun) + ["-np", "2"] if a.mpirun else []
    seq = json.load(open(os.path.join(model, "config.json")))["seq_length"]

    # JSONL: unknown keys, max_tokens, the context's end.
    jl = os.path.join(tmp, "in.jsonl")
    with open(jl, "w") as f:
        f.write(json.dumps({"id": "typo", "prompt": "Hi", "max_tokens": 3, "temprature": 0.5}) + "\n")
        f.write(json.dumps({"id": "openai", "prompt": "Hi", "max_tokens": 3}) + "\n")
        f.write(json.dumps({"id": "end", "input_ids": [100] * (seq - 3)}) + "\n")
    p = run(launch + [g, "generate", "--model", model, "--input", jl, "--ignore-eos"])
    recs = {r["id"]: r for r in map(json.loads, p.stdout.splitlines())} if p.stdout else {}
    r = recs.get("typo", {})
    check("unknown JSONL key is an error naming it",
          r.get("finish_reason") == "error" and "'temprature'" in r.get("error", ""), r)
    r = recs.get("openai", {})
    check("max_tokens (OpenAI spelling) is honoured", r.get("usage", {}).get("completion_tokens") == 3, r)
    r = recs.get("end", {})
    check("prompt near the context end: finish_reason length with the tokens that fit",
          r.get("finish_reason") == "length" and len(r.get("token_ids", [])) == 3, r)
    check("generate says the weights are random", "random weights" in p.stderr, p.stderr)
    if launch:
        check("start-up lines: rank 0 only by default",
              "rank 0/2: weights" in p.stderr and "rank 1/2:" not in p.stderr, p.stderr)
        ids = ["--ids", "1,2,3"]
        d = run(launch + [g, "score", "--model", model] + ids + ["--log-level", "debug"])
        check("--log-level debug: every rank's start-up line", "rank 1/2: weights" in d.stderr, d.stderr)
        q = run(launch + [g, "score", "--model", model] + ids + ["--quiet"])
        check("--quiet: no start-up lines", q.returncode == 0 and "weights" not in q.stderr, q.stderr)
        e = run(launch + [g, "score", "--model", os.path.join(tmp, "no-such-dir")] + ids)
        mine = [l for l in e.stderr.splitlines() if l.startswith("glmtp")]
        check("an error every rank agrees on is printed once, by rank 0",
              e.returncode != 0 and len(mine) == 1 and "rank" not in mine[0], mine)
        e = run(launch + [g, "generate", "--model", model, "--ids", "1", "--bogus"])
        mine = [l for l in e.stderr.splitlines() if l.startswith("glmtp")]
        check("an option error is printed once", e.returncode != 0 and len(mine) == 1 and "--bogus" in mine[0], mine)

    # bench --model-only --json writes the file.
    bj = os.path.join(tmp, "model.json")
    p = run([g, "bench", "--model-only", "--json", bj])
    ok = p.returncode == 0 and os.path.isfile(bj) and json.load(open(bj)).get("results")
    check("bench --model-only --json FILE writes FILE", bool(ok), p.stderr)
    env = dict(os.environ, TMPDIR=tmp)
    p = run([g, "bench", "prefill", "--preset", "tiny", "--layers", "1", "--lens", "8", "--dtype", "f32"], env=env)
    check("bench --preset says where its checkpoint stays", p.returncode == 0 and "rm -r" in p.stderr and tmp in p.stderr,
          p.stderr)

    # chat: markers on stderr, unknown /commands are not sent to the model.
    p = run(launch + [g, "chat", "--model", model, "--max-new-tokens", "2"], input="/bogus\n/exit\n")
    check("chat rejects /bogus and shows a prompt marker",
          p.returncode == 0 and "unknown command '/bogus'" in p.stderr and "user> " in p.stderr and not p.stdout.strip(),
          p.stdout + p.stderr)

    if has_client:
        p = run([cl, "--connect", "unix:" + os.path.join(tmp, "no-server"), "--prompt", "x", "--stop", "a", "--stop", "b"])
        check("glmtp-client takes --stop twice", p.returncode == 2 and "unknown option" not in p.stderr, p.stderr)
    if a.gpu_test:
        p = run([a.gpu_test], env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
        check("GPU test without a device exits 77 (ctest: skipped)", p.returncode == 77, p.stdout + p.stderr)

    print("%d failed" % len(FAILS))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
