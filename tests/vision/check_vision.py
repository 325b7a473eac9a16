#!/usr/bin/env python3
"""GLM-4V against THUDM's own code (tests/vision/data/tiny4v, make_vision_golden.py).

With the committed preprocessed pixels (pixels.f32) and prompt ids, through
`glmtp score --pixels`:
  - the vision tower + adapter output (--dump image) against `vision_out`;
  - the logits of every position of the spliced sequence, as one prefill and
    token by token (--incremental), against `prefill_logits`;
  - the prompt plus the reference's 8 greedy tokens, incremental: each decode
    row against `decode.logits`, and every greedy choice (argmax) equal;
  - a text-only prompt against `text_only`.
With the committed PNG (image.png; case `png` of reference.json, when present)
through `glmtp generate --ids --image`, the whole path (decode, Pillow bicubic
resize, normalisation, the scheduler): the 8 greedy tokens equal.
All within --tol (1e-4: f32 against f32). Standard library only.
--greedy-tol G (bf16 on a GPU: tests/gpu/device-check.sh): a greedy choice
other than the reference's passes when, along the reference's path, the
reference's token is within G of this run's top logit (a near-tie broken the
other way); for generate with image.png, the reference's tokens are then
scored with image_pixels.f32 and held to the same rule.

usage: check_vision.py GLMTP DATA_DIR [--launcher "mpirun -np 2"] [--tol 1e-4] [--greedy-tol 0]
                       [--extra-args ...]
"""
import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {p.returncode}\n{p.stderr}")
    return p.stdout


def maxdiff(a, b):
    worst = 0.0
    for ra, rb in zip(a, b):
        if len(ra) != len(rb):
            sys.exit(f"FAIL: row widths {len(ra)} and {len(rb)}")
        for x, y in zip(ra, rb):
            worst = max(worst, abs(x - y))
    return worst


def check(name, worst, tol):
    print(f"{'ok  ' if worst <= tol else 'FAIL'} {name}: max|diff| {worst:.3g} (tol {tol:g})")
    return worst <= tol


def argmax(row):
    return max(range(len(row)), key=lambda i: (row[i], -i))


def near_ties(logits, want, tol):
    """Positions where the argmax is not the reference's token and the
    reference's logit is more than tol below the top: real disagreements."""
    return [i for i, (r, w) in enumerate(zip(logits, want)) if argmax(r) != w and max(r) - r[w] > tol]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmtp")
    ap.add_argument("data")
    ap.add_argument("--launcher", default="")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--greedy-tol", type=float, default=0.0)
    ap.add_argument("--extra-args", default="")
    a = ap.parse_args()
    launch = shlex.split(a.launcher)
    extra = shlex.split(a.extra_args)
    ref = json.load(open(os.path.join(a.data, "reference.json")))
    pixels = os.path.join(a.data, "pixels.f32")
    ids = ref["input_ids"]
    n_kv = len(ref["prefill_logits"])
    ok = True

    def score(ids, *more):
        out = run(launch + [a.glmtp, "score", "--model", a.data, "--ids", ",".join(map(str, ids))] + list(more) + extra)
        return [json.loads(l) for l in out.splitlines() if l.strip()]

    rows = score(ids, "--pixels", pixels, "--dump", "image", "--top", "0")
    ok &= check("vision tower + adapter (image rows)", maxdiff(rows[0]["image"], ref["vision_out"]), a.tol)

    for mode in ([], ["--incremental"]):
        rows = score(ids, "--pixels", pixels, "--dump", "logits", "--top", "0", *mode)
        if len(rows) != n_kv:
            sys.exit(f"FAIL: {len(rows)} positions, the reference's spliced sequence has {n_kv}")
        ok &= check(f"prefill logits {'incremental' if mode else 'one step'}",
                    maxdiff([r["logits"] for r in rows], ref["prefill_logits"]), a.tol)

    dec = ref["decode"]
    rows = score(ids + dec["tokens"], "--pixels", pixels, "--dump", "logits", "--top", "0", "--incremental",
                 "--from", str(n_kv - 1))
    logits = [r["logits"] for r in rows]  # positions n_kv - 1 .. n_kv + 7
    ok &= check("decode logits (8 cached steps)", maxdiff(logits[1:], dec["logits"]), a.tol)
    greedy = [argmax(r) for r in logits]
    want = dec["tokens"] + [dec["next_token"]]
    same = greedy == want or (a.greedy_tol > 0 and not near_ties(logits, want, a.greedy_tol))
    print(f"{'ok  ' if same else 'FAIL'} greedy tokens {greedy} (reference {want}"
          f"{'' if greedy == want else f'; differences within {a.greedy_tol:g} of the top: near-ties'})")
    ok &= same

    t = ref["text_only"]
    rows = score(t["input_ids"], "--dump", "logits", "--top", "0")
    ok &= check("text-only logits", maxdiff([r["logits"] for r in rows], t["logits"]), a.tol)

    png = ref.get("png")
    if png:
        out = run(launch + [a.glmtp, "generate", "--model", a.data, "--ids", ",".join(map(str, ids)), "--image",
                            os.path.join(a.data, "image.png"), "--max-new-tokens", str(len(png["decode"]["tokens"])),
                            "--ignore-eos"] + extra)
        got = json.loads(out.splitlines()[0])["token_ids"]
        want = png["decode"]["tokens"]
        same = got == want
        if not same and a.greedy_tol > 0:  # along the reference's path, from the committed preprocessed pixels
            rows = score(ids + want, "--pixels", os.path.join(a.data, "image_pixels.f32"), "--dump", "logits",
                         "--top", "0", "--incremental", "--from", str(n_kv - 1))
            same = not near_ties([r["logits"] for r in rows][:len(want)], want, a.greedy_tol)
        print(f"{'ok  ' if same else 'FAIL'} generate with image.png: tokens {got} (reference {want})")
        ok &= same

        # The same image in two requests at once: one vision tower run, a shared slot, each answer that of one alone.
        line = json.dumps({"input_ids": ids, "image": os.path.join(a.data, "image.png"),
                           "max_new_tokens": len(want)})
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "two.jsonl")
            with open(path, "w") as f:
                f.write(line + "\n" + line + "\n")
            p = subprocess.run(launch + [a.glmtp, "generate", "--model", a.data, "--input", path, "--ignore-eos"] +
                               extra, capture_output=True, text=True, timeout=300)
        got2 = [json.loads(x)["token_ids"] for x in p.stdout.splitlines()] if p.returncode == 0 else []
        m = re.search(r"images: (\d+) encoded by the vision tower, (\d+) shared", p.stderr)
        same2 = got2 == [got, got] and m is not None and (m.group(1), m.group(2)) == ("1", "1")
        print(f"{'ok  ' if same2 else 'FAIL'} two requests with image.png at once: tokens {got2}, "
              f"{m.group(0) if m else 'no images line: ' + p.stderr[-300:]}")
        ok &= same2
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
