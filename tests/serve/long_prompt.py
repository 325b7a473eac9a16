#!/usr/bin/env python3
"""Long prompts as the user sees them (issue 17 items 5 and 6), tiny model, tp 2:

  - serve: a streamed prompt of several --step-tokens chunks gets Progress
    messages (glmtp-client --json's "progress" list) whose tokens_done rise to
    tokens_total, before its first token; a prompt within one step gets none;
  - a 6 MB document (about 1M tokens) goes through the real client
    (--prompt-file, within the default --max-frame) and is refused at
    admission naming its tokens and the context; so is a prompt one token too long;
  - start-up: --max-model-len above the KV pool exits non-zero with the figures
    and the ways out; above the model's context, the same; by default a pool
    smaller than the context serves with a warning and refuses what it cannot hold;
  - generate: a prompt longer than the context is refused with both numbers;
    per-request prefill progress lines for a long prompt; --max-model-len above
    --kv-tokens exits non-zero.
usage: long_prompt.py GLMTP GLMTP_CLIENT VOCAB [--mpirun "mpiexec --oversubscribe"]
"""
import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from testlib import check, finish  # noqa: E402
from serve_test import Server  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmtp")
    ap.add_argument("client")
    ap.add_argument("vocab")
    ap.add_argument("--mpirun", default="")
    a = ap.parse_args()
    a.mpirun = shlex.split(a.mpirun)
    launch = a.mpirun + ["-np", "2"] if a.mpirun else []
    with tempfile.TemporaryDirectory() as tmp:
        model = f"{tmp}/model"  # tiny: context 4096
        subprocess.run([a.glmtp, "make-model", "--preset", "tiny", "--out", model, "--seed", "5", "--dtype", "f32",
                        "--tokenizer", a.vocab], check=True, capture_output=True)

        # ---- progress of a long streamed prompt ----
        srv = Server(a, model, tmp, "long", ["--step-tokens", "32", "--progress-ms", "0"])
        ids = ",".join(str(5 + i % 1000) for i in range(600))
        rc, out, err = srv.run("--json", "--ids", ids, "--max-new-tokens", "2")
        rec = json.loads(out) if rc == 0 else {}
        prog = rec.get("progress", [])
        done = [p["tokens_done"] for p in prog]
        check("serve: a 600-token prompt at --step-tokens 32 gets Progress messages", len(prog) >= 10,
              f"rc {rc}: {len(prog)} messages {err[-300:]}")
        check("serve: tokens_done increases to tokens_total = 600",
              done == sorted(set(done)) and done[-1:] == [600] and all(p["tokens_total"] == 600 for p in prog),
              str(done))
        check("serve: tokens/s and elapsed reported", all(p["tokens_per_s"] > 0 and p["elapsed_s"] > 0 for p in prog),
              str(prog[:2]))
        check("serve: the request then completes", rec.get("finish_reason") == "length" and len(rec.get("token_ids", [])) == 2,
              str(rec)[:300])
        rc, out, err = srv.run("--json", "--ids", "5,6,7,8", "--max-new-tokens", "2")
        check("serve: a prompt within one step gets no Progress", rc == 0 and "progress" not in json.loads(out), out[:300])

        # ---- a 1M-token document through the real client; too long: refused with the numbers ----
        with open(f"{tmp}/doc.txt", "w") as f:
            f.write("hello world " * 500000)  # 6,000,000 bytes
        rc, out, err = srv.run("--prompt-file", f"{tmp}/doc.txt", "--max-new-tokens", "4")
        check("serve: a 6 MB document goes through and is refused with its tokens and the context",
              rc == 1 and re.search(r"prompt of 100000\d tokens", err) and "context length 4096" in err, err[-400:])
        p = subprocess.run([a.client, "--connect", srv.addr, "--prompt-file", "-", "--max-new-tokens", "4"],
                           input="hello " * 5000, capture_output=True, text=True, timeout=120)
        check("serve: --prompt-file - reads stdin", p.returncode == 1 and "prompt of 500" in p.stderr, p.stderr[-300:])
        rc, out, err = srv.run("--ids", ",".join(["5"] * 4096), "--max-new-tokens", "1")
        check("serve: a prompt filling the whole context is refused with both numbers",
              rc == 1 and "4096 tokens" in err and "context length 4096" in err, err[-300:])
        check("long server: exit 0", srv.stop() == 0)

        # ---- start-up: --max-model-len against the pool ----
        def start(*extra):
            return subprocess.run(launch + [a.glmtp, "serve", "--model", model, "--listen", "127.0.0.1:1",
                                            "--threads", "1", *extra], capture_output=True, text=True, timeout=120)
        p = start("--kv-tokens", "256", "--max-model-len", "1024")
        check("serve: --max-model-len 1024 over a 256-token pool exits non-zero with the figures and the ways out",
              p.returncode != 0 and "--max-model-len 1024 does not fit" in p.stderr and "holds 256 tokens" in p.stderr
              and "Ways out: more ranks" in p.stderr and "fp8" in p.stderr and "at most 256" in p.stderr,
              p.stderr[-600:])
        p = start("--max-model-len", "5000")
        check("serve: --max-model-len above the model's context exits non-zero naming both",
              p.returncode != 0 and "5000" in p.stderr and "context length 4096" in p.stderr, p.stderr[-300:])
        srv = Server(a, model, tmp, "small", ["--kv-tokens", "256"])
        srv.errf.seek(0)
        log = srv.errf.read()
        check("serve: by default a pool under the context warns and serves with the pool's tokens",
              "does not fit" in log and "max model len 256" in log, log[-600:])
        rc, out, err = srv.run("--ids", ",".join(["5"] * 300), "--max-new-tokens", "1")
        check("serve: a request beyond the pool is refused at admission with the numbers",
              rc == 1 and "300 tokens" in err and "256" in err and "4096" in err, err[-300:])
        rc, out, err = srv.run("--ids", ",".join(["5"] * 200), "--max-new-tokens", "8")
        check("serve: a request within the pool runs", rc == 0, err[-300:])
        check("small server: exit 0", srv.stop() == 0)

        # ---- generate ----
        inp = f"{tmp}/in.jsonl"
        with open(inp, "w") as f:
            f.write(json.dumps({"id": 1, "input_ids": [5 + i % 1000 for i in range(600)], "max_new_tokens": 2}) + "\n")
            f.write(json.dumps({"id": 2, "input_ids": [5] * 5000}) + "\n")
        p = subprocess.run(launch + [a.glmtp, "generate", "--model", model, "--input", inp, "--threads", "1",
                                     "--step-tokens", "32"], capture_output=True, text=True, timeout=300)
        recs = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
        check("generate: the long request runs, the one over the context is refused with both numbers",
              len(recs) == 2 and recs[0].get("finish_reason") == "length" and recs[1].get("finish_reason") == "error"
              and "prompt of 5000 tokens" in recs[1].get("error", "") and "4096" in recs[1].get("error", ""),
              str(recs)[:400] + p.stderr[-300:])
        check("generate: prefill progress of the long prompt on stderr",
              "line 1: prefill" in p.stderr and "line 1: prompt of 600 tokens in" in p.stderr, p.stderr[-600:])
        p = subprocess.run(launch + [a.glmtp, "generate", "--model", model, "--input", inp, "--threads", "1",
                                     "--kv-tokens", "256", "--max-model-len", "1024"],
                           capture_output=True, text=True, timeout=300)
        check("generate: --max-model-len above --kv-tokens exits non-zero with the figures",
              p.returncode != 0 and "does not fit" in p.stderr and "holds 256 tokens" in p.stderr, p.stderr[-400:])
    return finish()


if __name__ == "__main__":
    sys.exit(main())
