#!/usr/bin/env python3
"""config.json and generation_config.json as published: null means absent.

For every field of a made-up model's config.json, in both layouts: the model
with the field set to null behaves exactly as with the field removed (the same
score output, or the same error naming the field as missing); and a
generation_config.json whose fields are null gives the defaults of one without
them (generate's records equal). Before the fix a null eos_token_id was
refused ("must be an integer or a list").

usage: config_null.py GLMTP
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish  # noqa: E402


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def score(glmtp, model):
    p = run([glmtp, "score", "--model", model, "--ids", "1,5,9,3", "--top", "3", "--quiet"])
    err = p.stderr.strip().splitlines()
    return p.returncode, p.stdout, err[-1] if err else ""


def with_config(src, dst, edit):
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    path = os.path.join(dst, "config.json")
    cfg = json.load(open(path))
    edit(cfg)
    json.dump(cfg, open(path, "w"))


def main():
    glmtp = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        for layout in ("chatglm", "hf"):
            base = f"{tmp}/{layout}"
            p = run([glmtp, "make-model", "--preset", "tiny", "--vocab", "300", "--layout", layout, "--out", base,
                     "--seed", "4", "--dtype", "f32"])
            check(f"make-model {layout}", p.returncode == 0, p.stderr[-200:])
            keys = list(json.load(open(f"{base}/config.json")))
            loaded = 0
            for k in keys:
                with_config(base, f"{tmp}/null", lambda c: c.__setitem__(k, None))
                with_config(base, f"{tmp}/gone", lambda c: c.pop(k))
                rn, outn, errn = score(glmtp, f"{tmp}/null")
                rg, outg, errg = score(glmtp, f"{tmp}/gone")
                same = (rn, outn) == (rg, outg) and (rn == 0 or errn.replace("/null/", "/gone/") == errg)
                check(f"{layout}: '{k}': null behaves as absent ({'loads' if rn == 0 else 'refused'})", same,
                      f"null: {rn} {errn[:120]} | absent: {rg} {errg[:120]}")
                loaded += rn == 0
            check(f"{layout}: some fields are optional (null loads)", loaded > 0, str(loaded))
        # generation_config.json: null sampling fields mean the defaults
        m = f"{tmp}/chatglm"
        prompts = f"{tmp}/p.jsonl"
        with open(prompts, "w") as f:
            f.write(json.dumps({"id": 1, "input_ids": [1, 5, 9], "max_tokens": 6}) + "\n")
        outs = []
        for gen in ({"do_sample": None, "temperature": None, "top_p": None, "top_k": None, "max_new_tokens": None,
                     "eos_token_id": None}, {}):
            json.dump(gen, open(f"{m}/generation_config.json", "w"))
            p = run([glmtp, "generate", "--model", m, "--input", prompts, "--output", f"{tmp}/o.jsonl", "--quiet"])
            outs.append((p.returncode, open(f"{tmp}/o.jsonl").read() if p.returncode == 0 else p.stderr[-200:]))
        check("generation_config.json: null fields give the defaults of absent ones", outs[0] == outs[1] and
              outs[0][0] == 0, str(outs)[:300])
    finish()


if __name__ == "__main__":
    main()
