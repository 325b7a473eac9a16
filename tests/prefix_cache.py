#!/usr/bin/env python3
"""Prefix caching (coordinator/engine/prefix_cache.c) changes no output and feeds
only what is not cached. On the tiny model:

  - generate: a batch of requests sharing prefixes (a long document with
    several questions, the same document twice, chat messages with a shared
    system prompt, token ids with a shared head; greedy and seeded sampling)
    gives the same records with the cache as with --no-prefix-cache, at tp 1
    and tp 2, with preemptions forced by a small --kv-tokens; the cache was hit
    (the summary line's cached tokens), and --no-prefix-cache prints no such line;
  - eviction: distinct documents through a pool too small to keep them all
    (blocks evicted, a document coming back after its blocks were evicted)
    give the same records as without the cache;
  - chat: three scripted turns give the same replies with and without the cache;
  - serve (step log): a second question on the same document takes every full
    block of the document from the cache and feeds only the rest (the step
    log's cached field, its prefill chunks, Usage.cached_tokens);
  - serve: while A and B share the document's blocks, B is cancelled (then, in
    a second round, its client disconnects) and another request takes fresh
    blocks; A's output equals the uncached reference; once idle, Stats says no
    block is referenced (kv_blocks_used 0, kv_blocks_free = the pool's blocks)
    while the document stays cached (kv_blocks_cached > 0).
usage: prefix_cache.py GLMTP GLMTP_CLIENT VOCAB [--mpirun "mpiexec --oversubscribe"]
"""
import argparse
import json
import os
import random
import re
import shlex
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "serve"))
from testlib import check, finish  # noqa: E402
from serve_test import Server  # noqa: E402

BS = 16  # --block-size default
HEAD = [151331, 151333]  # [gMASK]<sop>


def generate(a, model, reqs, tmp, launch=(), extra=()):
    inp, out = f"{tmp}/in.jsonl", f"{tmp}/out.jsonl"
    with open(inp, "w") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in reqs))
    if os.path.exists(out):
        os.remove(out)
    p = subprocess.run([*launch, a.glmtp, "generate", "--model", model, "--input", inp, "--output", out,
                        "--threads", "1", *extra], capture_output=True, text=True, timeout=300)
    recs = [json.loads(l) for l in open(out)] if os.path.exists(out) else []
    return p.returncode, recs, p.stderr


def cached_summary(err):
    """(cached, prompt, evicted) from generate's prefix cache line, or None."""
    m = re.search(r"prefix cache: (\d+) of (\d+) prompt tokens cached .*?, (\d+) blocks evicted", err)
    return tuple(int(x) for x in m.groups()) if m else None


def shared_reqs(rnd):
    doc = " ".join(rnd.choice("alpha beta gamma delta 天气 很好 river stone 42 lamp".split()) for _ in range(220))
    ids_head = HEAD + [rnd.randrange(1000, 150000) for _ in range(70)]
    reqs = []
    for i in range(10):
        r = {"id": i, "max_new_tokens": 10 + (i * 5) % 19}
        if i < 4:
            r["prompt"] = doc + f" question {i}: what is {i * 7}?"
        elif i == 4:
            r["prompt"] = doc + " question 0: what is 0?"  # request 0 again: every full block cached
        elif i < 8:
            r["messages"] = [{"role": "system", "content": doc[:300]}, {"role": "user", "content": f"hi {i}"}]
        else:
            r["input_ids"] = ids_head + [rnd.randrange(1000, 150000) for _ in range(5 + i)]
        if i % 2:
            r.update(temperature=0.9, top_p=0.9, top_k=40, seed=100 + i)
        reqs.append(r)
    return reqs


def test_generate(a, model, tmp, mpirun):
    reqs = shared_reqs(random.Random(7))
    launches = [("tp=1", [])] + ([("tp=2", mpirun + ["-np", "2"])] if mpirun else [])
    # 400 tokens: two of the ~230-token prompts do not fit unshared, and ten sharing one document outgrow it
    for name, launch in launches:
        for kv in ("0", "400"):
            extra = ["--step-tokens", "48"] + (["--kv-tokens", kv] if kv != "0" else [])
            rc0, ref, err0 = generate(a, model, reqs, tmp, launch, extra + ["--no-prefix-cache"])
            rc1, got, err1 = generate(a, model, reqs, tmp, launch, extra)
            what = f"generate {name}" + (f", --kv-tokens {kv}" if kv != "0" else "")
            check(f"{what}: both runs exit 0 with one record per request",
                  rc0 == 0 and rc1 == 0 and len(ref) == len(got) == len(reqs), (err0 + err1)[-400:])
            bad = [(x["id"], x["token_ids"], y["token_ids"]) for x, y in zip(got, ref) if x != y]
            check(f"{what}: records with the cache equal records without", not bad and len(got) == len(reqs),
                  str(bad[:2])[:300])
            s = cached_summary(err1)
            check(f"{what}: the cache was hit", s is not None and s[0] >= 10 * BS, str(s))
            check(f"{what}: --no-prefix-cache reports no cached tokens", cached_summary(err0) is None, err0[-200:])
            if kv != "0":
                check(f"{what}: requests were preempted", "preemptions" in err1 and "preemptions" in err0,
                      err1[-300:])


def test_eviction(a, model, tmp):
    rnd = random.Random(11)
    docs = [HEAD + [rnd.randrange(1000, 150000) for _ in range(200)] for _ in range(5)]
    reqs = []
    for i, d in enumerate(docs + [docs[0], docs[1]]):  # documents 0 and 1 again, after the others evicted them
        reqs.append({"id": i, "input_ids": d + [5000 + i], "max_new_tokens": 8,
                     **({"temperature": 0.8, "seed": i} if i % 2 else {})})
    extra = ["--kv-tokens", "512", "--step-tokens", "64"]
    rc0, ref, err0 = generate(a, model, reqs, tmp, (), extra + ["--no-prefix-cache"])
    rc1, got, err1 = generate(a, model, reqs, tmp, (), extra)
    s = cached_summary(err1)
    check("eviction: both runs exit 0", rc0 == 0 and rc1 == 0 and len(got) == len(reqs), (err0 + err1)[-300:])
    check("eviction: the small pool evicted cached blocks", s is not None and s[2] > 0, str(s))
    bad = [(x["id"], x["token_ids"], y["token_ids"]) for x, y in zip(got, ref) if x != y]
    check("eviction: records with the cache equal records without", not bad and len(got) == len(reqs),
          str(bad[:2])[:300])


def test_chat(a, model, tmp):
    script = "tell me about rivers\nand stones?\nwhy 42\n/exit\n"
    outs = []
    for extra in ([], ["--no-prefix-cache"]):
        p = subprocess.run([a.glmtp, "chat", "--model", model, "--threads", "1", "--max-new-tokens", "12",
                            "--temperature", "0.8", "--seed", "3", "--system", "a long system prompt " * 20, *extra],
                           input=script, capture_output=True, text=True, timeout=120)
        outs.append((p.returncode, p.stdout))
    check("chat: three turns give the same replies with and without the cache",
          outs[0] == outs[1] and outs[0][0] == 0 and len(outs[0][1].strip().splitlines()) >= 3,
          str(outs)[:400])


def client_json(p):
    o, e = p.communicate(timeout=180)
    return json.loads(o) if p.returncode == 0 and o.strip() else {"rc": p.returncode, "err": e[-300:]}


def test_serve(a, model, tmp, mpirun):
    rnd = random.Random(5)
    doc = HEAD + [rnd.randrange(1000, 150000) for _ in range(400)]
    qa, qb, qc = [doc + [rnd.randrange(1000, 150000) for _ in range(9)] for _ in range(3)]
    ids = lambda v: ",".join(map(str, v))  # noqa: E731
    ref_reqs = [{"id": "a", "input_ids": qa, "max_new_tokens": 100}, {"id": "b", "input_ids": qb, "max_new_tokens": 8},
                {"id": "c", "input_ids": qc, "max_new_tokens": 8}]
    rc, ref, err = generate(a, model, ref_reqs, tmp, (), ["--no-prefix-cache"])
    if rc or len(ref) != 3:
        sys.exit(f"FAIL: reference generate: {err[-500:]}")

    srv = Server(a, model, tmp, "pc", ["--step-tokens", "32", "--kv-tokens", "4096"], np=2 if mpirun else 1)
    errf = open(srv.errf.name).read()
    m = re.search(r"(\d+) KV blocks of (\d+), prefix cache on", errf)
    total = int(m.group(1)) if m else -1
    check("serve: the startup line says the prefix cache is on", m is not None, errf[-300:])

    # a second question on the same document feeds only what follows its cached blocks
    first = client_json(srv.gen("--id", "q1", "--ids", ids(qb), "--max-new-tokens", "8"))
    second = client_json(srv.gen("--id", "q2", "--ids", ids(qc), "--max-new-tokens", "8"))
    want = (len(doc) // BS) * BS  # every full block of the shared part
    steps = srv.steps()
    q2 = [x for st in steps for x in st["seqs"] if x[0] == "q2"]
    fed = sum(x[1] for x in q2 if x[3] == "p")
    check("serve: the second question took every full block of the document from the cache",
          q2 and all(x[4] == want for x in q2), str(q2[:3]))
    check("serve: the second question fed only the tokens past them (step log)",
          fed == len(qc) - want, f"fed {fed}, prompt {len(qc)}, cached {want}")
    check("serve: Usage.cached_tokens of the second question", second.get("usage", {}).get("cached_tokens") == want,
          str(second)[:300])
    check("serve: the first question found nothing cached", first.get("usage", {}).get("cached_tokens") == 0,
          str(first)[:300])
    check("serve: both questions' outputs equal the uncached reference",
          first.get("token_ids") == ref[1]["token_ids"] and second.get("token_ids") == ref[2]["token_ids"],
          str((first, second))[:300])

    # cancel, then disconnect, of B while A shares the document's blocks; C then takes fresh blocks
    for how in ("cancel", "disconnect"):
        pa = srv.gen("--id", f"A{how}", "--ids", ids(qa), "--max-new-tokens", "100")
        extra = ["--disconnect-after", "3"] if how == "disconnect" else []
        pb = srv.gen("--id", f"B{how}", "--ids", ids(qb), "--max-new-tokens", "1500", *extra)
        mid, t0 = {}, time.time()
        while mid.get("running", 0) < 1 and time.time() - t0 < 30:  # A runs for 100 tokens
            mid = srv.stats()
        time.sleep(0.3)
        if how == "cancel":
            srv.run("--cancel", f"B{how}")
        rb = client_json(pb)
        other = HEAD + [rnd.randrange(1000, 150000) for _ in range(600)]  # new content: fresh blocks
        pc = srv.gen("--id", f"C{how}", "--ids", ids(other), "--max-new-tokens", "4")
        ra, rc_ = client_json(pa), client_json(pc)
        s = srv.wait_idle()
        steps = srv.steps()
        b_seqs = [x for st in steps for x in st["seqs"] if x[0] == f"B{how}"]
        check(f"serve {how}: B shared the document's cached blocks",
              b_seqs and b_seqs[0][4] == want, str(b_seqs[:2]))
        check(f"serve {how}: B ended early", rb.get("finish_reason") in ("cancelled", "disconnected")
              and len(rb.get("token_ids", [])) < 1500, str(rb)[:200])
        check(f"serve {how}: A's output equals the uncached reference",
              ra.get("token_ids") == ref[0]["token_ids"], str(ra)[:300])
        check(f"serve {how}: C completed, on blocks of its own", rc_.get("finish_reason") in ("stop", "length")
              and rc_.get("usage", {}).get("cached_tokens") == 0, str(rc_)[:200])
        check(f"serve {how}: while running, used + free = the pool's blocks",
              mid.get("kv_blocks_used", 0) > 0 and mid.get("kv_blocks_used", 0) + mid.get("kv_blocks_free", 0) == total,
              str(mid))
        check(f"serve {how}: idle, no block is referenced (used 0, free = {total})",
              s.get("kv_blocks_used") == 0 and s.get("kv_blocks_free") == total and s.get("running") == 0, str(s))
        check(f"serve {how}: idle, the document stays cached", 0 < s.get("kv_blocks_cached", 0) <= total, str(s))
    s = srv.stats()
    rate = s.get("cached_tokens", 0) / max(1, s.get("prompt_tokens", 0))
    check("serve: Stats hit rate = cached_tokens / prompt_tokens, and > 0",
          s.get("prefix_cache") is True and s.get("cached_tokens", 0) > 0
          and abs(s.get("prefix_hit_rate", -1) - rate) < 1e-3, str(s))
    check("serve: SIGTERM, exit 0", srv.stop() == 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmtp")
    ap.add_argument("client")
    ap.add_argument("vocab")
    ap.add_argument("--mpirun", default="")
    a = ap.parse_args()
    mpirun = shlex.split(a.mpirun)
    a.mpirun = mpirun
    with tempfile.TemporaryDirectory() as tmp:
        model = f"{tmp}/model"
        subprocess.run([a.glmtp, "make-model", "--preset", "tiny", "--out", model, "--seed", "5", "--dtype", "f32",
                        "--tokenizer", a.vocab], check=True, capture_output=True)
        test_generate(a, model, tmp, mpirun)
        test_eviction(a, model, tmp)
        test_chat(a, model, tmp)
        test_serve(a, model, tmp, mpirun)
    finish()


if __name__ == "__main__":
    main()
