#!/usr/bin/env python3
"""glmtp generate on JSONL: batching changes no token, bad lines fail alone.

  - a file of many requests (raw prompts, chat messages, token ids; greedy and
    seeded sampling; stop strings; short and long prompts) run as one batch,
    with a small --step-tokens so long prompts are prefilled in chunks next to
    other requests' decode tokens, gives every request the record it gets when
    run alone; for tp = 1 and tp = 2;
  - bad lines (invalid JSON, missing prompt, unknown role, negative
    temperature, top_p outside (0, 1], prompt longer than the context) get an
    error record naming the line and field, the others complete, exit code 1;
  - a malformed tokenizer.model stops the run with the file and line named.
usage: generate_batch.py GLMTP VOCAB [--mpirun "mpiexec --oversubscribe"]
"""
import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish  # noqa: E402


def generate(launch, glmtp, model, lines, tmp, extra=()):
    inp, out = f"{tmp}/in.jsonl", f"{tmp}/out.jsonl"
    with open(inp, "w") as f:
        f.write("\n".join(lines) + "\n")
    p = subprocess.run(launch + [glmtp, "generate", "--model", model, "--input", inp, "--output", out, *extra],
                       capture_output=True, text=True, timeout=300)
    recs = [json.loads(l) for l in open(out)] if os.path.exists(out) else []
    return p.returncode, recs, p.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmtp")
    ap.add_argument("vocab")
    ap.add_argument("--mpirun", default="")
    a = ap.parse_args()
    mpirun = shlex.split(a.mpirun)
    words = "the quick brown fox jumps over the lazy dog 天气 很好 123 4567 😀".split()
    reqs = []
    for i in range(12):
        n = 1 + (i * 7) % 40
        text = " ".join(words[(i + k) % len(words)] for k in range(n))
        r = {"id": i, "max_new_tokens": 4 + (i * 5) % 17}
        if i % 3 == 0:
            r["prompt"] = text
        elif i % 3 == 1:
            r["messages"] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]
        else:
            r["input_ids"] = [151331, 151333] + [(97 * i + 31 * k) % 150000 for k in range(n)]
        if i % 4 == 3:
            r.update(temperature=0.9, top_p=0.9, top_k=50, seed=1000 + i)
        if i in (4, 10):  # top_k past the candidates the devices send: the whole row, every step
            r.update(temperature=0.1, top_p=0.9, top_k=5000, seed=2000 + i)
        if i == 5:
            r["stop"] = ["e", "的"]
        reqs.append(r)
    lines = [json.dumps(r, ensure_ascii=False) for r in reqs]
    with tempfile.TemporaryDirectory() as tmp:
        model = f"{tmp}/model"
        subprocess.run([a.glmtp, "make-model", "--preset", "tiny", "--out", model, "--seed", "5", "--dtype", "f32",
                        "--tokenizer", a.vocab], check=True, capture_output=True)
        alone = []
        for line in lines:
            rc, recs, err = generate([], a.glmtp, model, [line], tmp)
            if rc != 0 or len(recs) != 1:
                sys.exit(f"FAIL: single request failed: {line}\n{err}")
            alone.append(recs[0])
        check("requests alone complete", all(r["finish_reason"] in ("stop", "length") for r in alone))
        check("stop string truncates text", alone[5]["finish_reason"] == "stop" or "e" not in alone[5]["text"],
              json.dumps(alone[5], ensure_ascii=False)[:200])
        launches = [("tp=1", [], []), ("tp=1, KV pool of 160 tokens (preemption)", [], ["--kv-tokens", "160"])]
        launches += [("tp=2", mpirun + ["-np", "2"], [])] if mpirun else []
        for name, launch, extra in launches:
            rc, recs, err = generate(launch, a.glmtp, model, lines, tmp, ["--step-tokens", "24"] + extra)
            check(f"batch {name} exit 0", rc == 0, err[-300:])
            if extra:
                check(f"batch {name}: the run preempted", "preemptions" in err, err[-300:])
            same = len(recs) == len(alone) and all(x == y for x, y in zip(recs, alone))
            bad = [(x["id"], x["token_ids"], y["token_ids"]) for x, y in zip(recs, alone) if x != y][:2]
            check(f"batch {name}: every record equals the request run alone", same, str(bad))

        bad_lines = [lines[0], "{not json", json.dumps({"id": "np"}),
                     json.dumps({"id": "role", "messages": [{"role": "wizard", "content": "hi"}]}),
                     json.dumps({"id": "temp", "prompt": "x", "temperature": -0.5}),
                     json.dumps({"id": "topp", "prompt": "x", "top_p": 1.5}),
                     json.dumps({"id": "long", "prompt": "word " * 5000}), lines[1]]
        rc, recs, err = generate(mpirun + ["-np", "2"] if mpirun else [], a.glmtp, model, bad_lines, tmp)
        check("bad lines: exit code non-zero", rc != 0, f"exit {rc}")
        check("bad lines: one record per line, in order", [r["id"] for r in recs] ==
              [0, None, "np", "role", "temp", "topp", "long", 1], str([r["id"] for r in recs]))
        want = {1: ("line 2", "not a JSON"), 2: ("line 3", "'prompt'"), 3: ("line 4", "'messages[0].role'"),
                4: ("line 5", "'temperature'"), 5: ("line 6", "'top_p'"), 6: ("line 7", "context length")}
        for i, (where, what) in want.items():
            r = recs[i] if i < len(recs) else {}
            ok = r.get("finish_reason") == "error" and where in r.get("error", "") and what in r.get("error", "")
            check(f"bad line {i + 1} answered with an error naming {where} and {what}", ok, r.get("error", ""))
        check("bad lines: the good lines still complete", len(recs) == 8 and recs[0] == alone[0] and recs[7] == alone[1])

        broken = f"{tmp}/broken"
        shutil.copytree(model, broken)
        with open(f"{broken}/tokenizer.model", "r+b") as f:
            data = f.read().split(b"\n")
            data[2] = b"!!!notbase64 2"
            f.seek(0)
            f.truncate()
            f.write(b"\n".join(data))
        rc, recs, err = generate([], a.glmtp, broken, lines[:1], tmp)
        check("malformed tokenizer.model: error names the file and line",
              rc != 0 and "tokenizer.model:3" in err, err.strip()[:200])
    finish()


if __name__ == "__main__":
    main()
