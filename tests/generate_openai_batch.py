#!/usr/bin/env python3
"""glmtp generate on OpenAI batch files (issue 18 item 7), under mpirun -np 2:

  - a file of /v1/chat/completions and /v1/completions lines (greedy, seeded,
    stop, echo) plus bad lines (unknown url, a body that is not an object, an
    unknown body field) gives one output line per input line in the OpenAI
    batch shape (id, custom_id, response {status_code, request_id, body},
    error), custom_ids in input order; each body's choices[0].message.content
    / text and usage equal the plain-JSONL record of the same request (whose
    equality to the HTTP server is ctest serve_http's); bad lines get
    status_code 400 with an error {code, message} and the others run;
  - the same bodies through serve --http (when built) give the same choices
    and usage (id and created differ: the batch's derive from custom_id);
  - --resume from a prefix of the output (custom_id keys) gives the
    uninterrupted file byte for byte; a duplicate custom_id is refused.
usage: generate_openai_batch.py GLMTP VOCAB [--mpirun "mpiexec --oversubscribe"]
"""
import argparse
import http.client
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import check, finish  # noqa: E402


def run(launch, glmtp, model, lines, tmp, name, extra=()):
    inp, out = f"{tmp}/{name}.in.jsonl", f"{tmp}/{name}.out.jsonl"
    with open(inp, "w") as f:
        f.write("\n".join(lines) + "\n")
    p = subprocess.run(launch + [glmtp, "generate", "--model", model, "--input", inp, "--output", out, *extra],
                       capture_output=True, text=True, timeout=300)
    return p, out


def serve_answers(launch, glmtp, model, tmp, bodies):
    """The HTTP server's responses to [(url, body)] (serve --http, same launch); None when it has no --http."""
    h = subprocess.run([glmtp, "serve", "--help"], capture_output=True, text=True)
    if "--http" not in h.stdout + h.stderr:
        return None
    ports = []
    for _ in range(2):
        with socket.socket() as so:
            so.bind(("127.0.0.1", 0))
            ports.append(so.getsockname()[1])
    err = open(f"{tmp}/serve.err", "w+")
    p = subprocess.Popen(launch + [glmtp, "serve", "--model", model, "--listen", f"127.0.0.1:{ports[0]}", "--http",
                                   f"127.0.0.1:{ports[1]}", "--threads", "1", "--served-model-name", "m"],
                         stdout=subprocess.DEVNULL, stderr=err)
    pid, t0 = None, time.time()
    while time.time() - t0 < 90 and p.poll() is None:
        err.seek(0)
        m = re.search(r"listening on .* \(pid (\d+)", err.read())
        if m:
            pid = int(m.group(1))
            break
        time.sleep(0.2)
    if pid is None:
        err.seek(0)
        p.kill()
        sys.exit(f"FAIL: serve --http did not start: {err.read()[-800:]}")
    out = []
    try:
        for url, body in bodies:
            c = http.client.HTTPConnection("127.0.0.1", ports[1], timeout=120)
            c.request("POST", url, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            r = c.getresponse()
            out.append((r.status, json.loads(r.read().decode())))
            c.close()
    finally:
        os.kill(pid, signal.SIGTERM)
        p.wait(timeout=60)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmtp")
    ap.add_argument("vocab")
    ap.add_argument("--mpirun", default="")
    a = ap.parse_args()
    launch = shlex.split(a.mpirun) + ["-np", "2"] if a.mpirun else []
    good = [  # (custom_id, url, body)
        ("chat-1", "/v1/chat/completions",
         {"model": "m", "messages": [{"role": "user", "content": "the quick brown fox"}], "max_tokens": 9}),
        ("cmpl-1", "/v1/completions", {"model": "m", "prompt": "jumps over the lazy dog", "max_tokens": 7}),
        ("chat-2", "/v1/chat/completions",
         {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "天气 很好 123"}],
          "max_tokens": 12, "temperature": 0.9, "top_p": 0.9, "seed": 77}),
        ("cmpl-2", "/v1/completions", {"prompt": "4567 the dog", "max_tokens": 10, "stop": ["e"], "echo": True}),
    ]
    bad = [
        ("bad-url", "/v1/embeddings", {"model": "m", "input": "x"}),
        ("bad-body", "/v1/chat/completions", "not an object"),
        ("bad-field", "/v1/completions", {"prompt": "x", "max_tokens": 3, "frobnicate": 1}),
    ]
    order = [good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3]]
    lines = [json.dumps({"custom_id": c, "method": "POST", "url": u, "body": b}, ensure_ascii=False)
             for c, u, b in order]
    with tempfile.TemporaryDirectory() as tmp:
        model = f"{tmp}/model"
        subprocess.run([a.glmtp, "make-model", "--preset", "tiny", "--out", model, "--seed", "5", "--dtype", "f32",
                        "--tokenizer", a.vocab], check=True, capture_output=True)
        p, out = run(launch, a.glmtp, model, lines, tmp, "batch")
        full = open(out).read() if os.path.exists(out) else ""
        recs = [json.loads(l) for l in full.splitlines()]
        check("bad lines make exit code 1", p.returncode == 1, p.stderr[-800:])
        check("one output line per input line, custom_ids in order",
              [r.get("custom_id") for r in recs] == [c for c, _, _ in order], full[:500])
        # The plain JSONL form of each good request, at the same line number (same default seed).
        plain = []
        for i, (c, u, b) in enumerate(order):
            if (c, u, b) not in good:
                plain.append(json.dumps({"id": c, "prompt": "x", "max_tokens": 1}))
                continue
            q = {"id": c, "max_tokens": b["max_tokens"]}
            q.update({k: b[k] for k in ("messages", "prompt", "temperature", "top_p", "seed", "stop") if k in b})
            plain.append(json.dumps(q, ensure_ascii=False))
        pp, pout = run(launch, a.glmtp, model, plain, tmp, "plain")
        ref = {r["id"]: r for r in map(json.loads, open(pout))} if os.path.exists(pout) else {}
        check("plain run completes", pp.returncode == 0 and len(ref) == len(plain), pp.stderr[-800:])
        for r, (c, u, b) in zip(recs, order):
            shape = set(r) == {"id", "custom_id", "response", "error"} and r["id"].startswith("batch_req_")
            check(f"{c}: batch output shape", shape, json.dumps(r)[:300])
            resp = r.get("response") or {}
            if (c, u, b) in bad:
                e = r.get("error") or {}
                check(f"{c}: error record (400, code, message)",
                      resp.get("status_code") == 400 and isinstance(e.get("code"), str) and e.get("message")
                      and "error" in (resp.get("body") or {}), json.dumps(r)[:300])
                continue
            body, want = resp.get("body") or {}, ref.get(c, {})
            check(f"{c}: status 200, error null", resp.get("status_code") == 200 and r.get("error") is None
                  and resp.get("request_id"), json.dumps(r)[:300])
            chat = u == "/v1/chat/completions"
            ch = (body.get("choices") or [{}])[0]
            got = (ch.get("message") or {}).get("content") if chat else ch.get("text")
            exp = want.get("text", "")
            if not chat and b.get("echo"):
                exp = b["prompt"] + exp
            check(f"{c}: object and text equal the plain record",
                  body.get("object") == ("chat.completion" if chat else "text_completion") and (got or "") == exp
                  and ch.get("finish_reason") == want.get("finish_reason"), f"{got!r} vs {exp!r}")
            us = body.get("usage") or {}
            check(f"{c}: usage counts", us.get("completion_tokens") == len(want.get("token_ids", [None]))
                  and us.get("prompt_tokens") == want.get("usage", {}).get("prompt_tokens")
                  and us.get("total_tokens") == us.get("prompt_tokens", 0) + us.get("completion_tokens", 0),
                  json.dumps(us) + " vs " + json.dumps(want.get("usage")))
        # The same bodies through serve --http: choices and usage equal (id and created differ by design).
        srv = serve_answers(launch, a.glmtp, model, tmp, [(u, b) for c, u, b in good])
        if srv is None:
            print("skip: this glmtp has no serve --http")
        else:
            byid = {r.get("custom_id"): r for r in recs}
            for (c, u, b), (st, sb) in zip(good, srv):
                bb = ((byid.get(c) or {}).get("response") or {}).get("body") or {}
                strip = lambda us: {k: v for k, v in (us or {}).items() if k != "prompt_tokens_details"}
                check(f"{c}: body equals the HTTP server's", st == 200 and sb.get("choices") == bb.get("choices")
                      and strip(sb.get("usage")) == strip(bb.get("usage")) and sb.get("object") == bb.get("object"),
                      json.dumps(sb, ensure_ascii=False)[:300] + " vs " + json.dumps(bb, ensure_ascii=False)[:300])
        bad_url = recs[1] if len(recs) > 1 else {}
        check("unknown url named in the error", "/v1/embeddings" in (bad_url.get("error") or {}).get("message", ""))
        # A second uninterrupted run writes the same bytes (ids from custom_id, created 0).
        p2, out2 = run(launch, a.glmtp, model, lines, tmp, "batch2")
        check("deterministic output", os.path.exists(out2) and open(out2).read() == full)
        # --resume from a prefix of the output: the remaining lines run, the file equals the uninterrupted one.
        head = "".join(full.splitlines(keepends=True)[:3])
        res = f"{tmp}/resume.out.jsonl"
        with open(res, "w") as f:
            f.write(head)
        with open(f"{tmp}/resume.in.jsonl", "w") as f:
            f.write("\n".join(lines) + "\n")
        p3 = subprocess.run(launch + [a.glmtp, "generate", "--model", model, "--input", f"{tmp}/resume.in.jsonl",
                                      "--output", res, "--resume"], capture_output=True, text=True, timeout=300)
        check("--resume with custom_id keys equals the uninterrupted file", open(res).read() == full,
              p3.stderr[-800:])
        dup = lines + [lines[0]]
        p4, _ = run(launch, a.glmtp, model, dup, tmp, "dup")
        check("duplicate custom_id refused", p4.returncode != 0 and "chat-1" in p4.stderr, p4.stderr[-400:])
    finish()


if __name__ == "__main__":
    main()
