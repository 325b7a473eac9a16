#!/usr/bin/env python3
"""glmtp serve --http (the OpenAI-compatible API, issue 18) end to end, with the
real `openai` and `prometheus_client` packages, the tiny model under mpirun -np 2:

  - chat and text completions, streamed and not, equal `glmtp generate` on the
    same requests (greedy); usage counts; n > 1; seeded sampling repeats;
  - tool calls through the server: the model's text is canned with
    GLMTP_HTTP_DEBUG_OUTPUT (a random-weight model never writes a call), a
    second server: a call comes back as tool_calls whole and streamed, plain
    text as content, malformed JSON as content, a name not offered as content;
  - 32 concurrent streaming clients; a client that disconnects mid-stream frees
    its request and KV blocks (/metrics: running 0, KV usage 0, an abort);
  - curl: bad JSON, a bad field (named), an oversize body (413), a wrong or
    missing key (401), a wrong path (404), a wrong model (404), /health,
    /v1/models, /tokenize, /detokenize;
  - /metrics parsed by prometheus_client; counters move as requests finish;
  - figures: requests/s and time to first token of the same load through the
    protobuf channel (glmtp-client --load) and through HTTP (raw SSE client and
    the openai package), same server, same run.
usage: openai_test.py GLMTP GLMTP_CLIENT VOCAB [--mpirun "mpiexec --oversubscribe"]
"""
import argparse
import atexit
import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import http.client

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from testlib import check, finish  # noqa: E402

try:
    import openai
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:  # CI installs them (deploy/test.sh); say so plainly elsewhere
    print(f"SKIP: {e} (pip install openai prometheus_client)")
    sys.exit(0)

KEY = "sk-test-key-123"
_procs = []


@atexit.register
def _stop_all():
    for p, pid in _procs:
        if p.poll() is None:
            try:
                os.kill(pid, signal.SIGTERM)
                p.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                p.kill()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(a, model, tmp, name, extra=(), env=None):
    port, hport = free_port(), free_port()
    err = open(f"{tmp}/{name}.err", "w+")
    launch = a.mpirun + ["-np", "2"] if a.mpirun else []
    p = subprocess.Popen(launch + [a.glmtp, "serve", "--model", model, "--listen", f"127.0.0.1:{port}",
                                   "--http", f"127.0.0.1:{hport}", "--threads", "1", *extra],
                         stdout=subprocess.DEVNULL, stderr=err, env=env)
    t0 = time.time()
    while time.time() - t0 < 90:
        err.seek(0)
        m = re.search(r"listening on .* \(pid (\d+)", err.read())
        if m:
            _procs.append((p, int(m.group(1))))
            return p, int(m.group(1)), port, hport
        if p.poll() is not None:
            break
        time.sleep(0.2)
    err.seek(0)
    sys.exit(f"server {name} did not start: {err.read()}")


def stop(p, pid):
    os.kill(pid, signal.SIGTERM)
    p.wait(timeout=30)


def raw(hport, method, path, body=None, headers=None, key=KEY):
    """One HTTP request; returns (status, parsed JSON or text)."""
    c = http.client.HTTPConnection("127.0.0.1", hport, timeout=60)
    h = {"Content-Type": "application/json"}
    if key:
        h["Authorization"] = f"Bearer {key}"
    h.update(headers or {})
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    t = r.read().decode()
    c.close()
    try:
        return r.status, json.loads(t)
    except ValueError:
        return r.status, t


def metrics(hport):
    st, text = raw(hport, "GET", "/metrics", key=None)
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            lbl = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "model_name")
            out[s.name + ("{" + lbl + "}" if lbl else "")] = s.value
    return out


def wait_metric(hport, cond, timeout=20):
    t0 = time.time()
    while time.time() - t0 < timeout:
        m = metrics(hport)
        if cond(m):
            return m, True
        time.sleep(0.1)
    return m, False


def generate_ref(a, model, tmp, lines):
    """glmtp generate on the same requests: {id: text}."""
    inp, out = f"{tmp}/ref.jsonl", f"{tmp}/ref.out.jsonl"
    with open(inp, "w") as f:
        for ln in lines:
            f.write(json.dumps(ln) + "\n")
    launch = a.mpirun + ["-np", "2"] if a.mpirun else []
    subprocess.run(launch + [a.glmtp, "generate", "--model", model, "--input", inp, "--output", out, "--threads",
                             "1", "--quiet"], check=True)
    return {json.loads(ln)["id"]: json.loads(ln) for ln in open(out)}


def equal_to_generate(a, model, tmp, cl, hport):
    chats = [[{"role": "user", "content": "hello"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
             [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "hi"},
              {"role": "user", "content": "again"}]]
    prompts = ["The capital of France is", "1, 2, 3,"]
    lines = [{"id": f"c{i}", "messages": m, "max_tokens": 12} for i, m in enumerate(chats)]
    lines += [{"id": f"t{i}", "prompt": p, "max_tokens": 12} for i, p in enumerate(prompts)]
    lines += [{"id": "stop", "prompt": prompts[0], "max_tokens": 12}]
    ref = generate_ref(a, model, tmp, lines)
    for i, m in enumerate(chats):
        r = cl.chat.completions.create(model="tiny", messages=m, max_tokens=12)
        want = ref[f"c{i}"]["text"]
        check(f"chat {i} equals generate", r.choices[0].message.content == want,
              f"{r.choices[0].message.content!r} vs {want!r}")
        check(f"chat {i} usage", 0 < r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 0 and
              r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, str(r.usage))
        s = cl.chat.completions.create(model="tiny", messages=m, max_tokens=12, stream=True,
                                       stream_options={"include_usage": True})
        text, usage, fin = "", None, None
        for ch in s:
            if ch.usage:
                usage = ch.usage
            for c in ch.choices:
                text += c.delta.content or ""
                fin = c.finish_reason or fin
        check(f"chat {i} streamed equals whole", text == want and fin == r.choices[0].finish_reason,
              f"{text!r} {fin}")
        check(f"chat {i} streamed usage", usage is not None and usage.total_tokens == r.usage.total_tokens,
              str(usage))
    for i, p in enumerate(prompts):
        r = cl.completions.create(model="tiny", prompt=p, max_tokens=12)
        want = ref[f"t{i}"]["text"]
        check(f"completion {i} equals generate", r.choices[0].text == want, f"{r.choices[0].text!r} vs {want!r}")
        s = cl.completions.create(model="tiny", prompt=p, max_tokens=12, stream=True)
        text = "".join(c.choices[0].text for c in s if c.choices)
        check(f"completion {i} streamed equals whole", text == want, repr(text))
    # a stop string cuts the text where generate cuts it
    full = ref["t0"]["text"]
    word = full.split()[2] if len(full.split()) > 2 else full[-3:]
    r = cl.completions.create(model="tiny", prompt=prompts[0], max_tokens=12, stop=[word])
    check("stop string", r.choices[0].text == full[:full.find(word)] and r.choices[0].finish_reason == "stop",
          f"{r.choices[0].text!r} stop {word!r}")
    s = cl.completions.create(model="tiny", prompt=prompts[0], max_tokens=12, stop=[word], stream=True)
    text = "".join(c.choices[0].text for c in s if c.choices)
    check("stop string streamed", text == r.choices[0].text, repr(text))
    # echo, a list of prompts, token ids, n > 1
    r = cl.completions.create(model="tiny", prompt=prompts, max_tokens=12, echo=True)
    check("echo and a list of prompts", [c.text for c in r.choices] ==
          [p + ref[f"t{i}"]["text"] for i, p in enumerate(prompts)], str([c.text for c in r.choices]))
    st, tk = raw(hport, "POST", "/tokenize", {"prompt": prompts[0]})
    r = cl.completions.create(model="tiny", prompt=tk["tokens"], max_tokens=12)
    check("token ids prompt equals text prompt", st == 200 and r.choices[0].text == ref["t0"]["text"],
          f"{tk} {r.choices[0].text!r}")
    st, dt = raw(hport, "POST", "/detokenize", {"tokens": tk["tokens"][2:]})
    check("detokenize", st == 200 and dt["prompt"] == prompts[0], str(dt))
    # The first of these fills the prefix cache; the three compared below then take the same path (cached
    # blocks, the rest fed in the same steps). A cold run and a cached one differ in the last bits of the
    # logits (other step shapes), which at temperature 1 over this model's flat logits can move a draw.
    cl.chat.completions.create(model="tiny", messages=chats[0], max_tokens=8, n=3, temperature=1.0, seed=7)
    r = cl.chat.completions.create(model="tiny", messages=chats[0], max_tokens=8, n=3, temperature=1.0, seed=7)
    r2 = cl.chat.completions.create(model="tiny", messages=chats[0], max_tokens=8, n=3, temperature=1.0, seed=7)
    texts = [c.message.content for c in r.choices]
    check("n=3: three choices, indexed", len(r.choices) == 3 and [c.index for c in r.choices] == [0, 1, 2], str(texts))
    check("n=3 sampled: choices differ, a seed repeats them", len(set(texts)) > 1 and
          texts == [c.message.content for c in r2.choices], str(texts))
    s = cl.chat.completions.create(model="tiny", messages=chats[0], max_tokens=8, n=3, temperature=1.0, seed=7,
                                   stream=True)
    acc = ["", "", ""]
    for ch in s:
        for c in ch.choices:
            acc[c.index] += c.delta.content or ""
    check("n=3 streamed equals whole", acc == texts, str(acc))
    r = cl.chat.completions.create(model="tiny", messages=chats[0], max_tokens=20, extra_body={
        "top_k": 1, "ignore_eos": True, "stop_token_ids": [ref["c0"].get("token_ids", [5])[0]]})
    check("vLLM extras (top_k, ignore_eos, stop_token_ids) accepted", r.choices[0].finish_reason in ("stop", "length"),
          str(r.choices[0]))
    r = cl.chat.completions.create(model="tiny", messages=chats[0], max_completion_tokens=3)
    check("max_completion_tokens", r.usage.completion_tokens == 3, str(r.usage))


def tool_calls(a, model, tmp):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    cases = [("call", 'get_weather\n{"city": "Paris", "unit": "c"}', True),
             ("plain text", "\nIt is sunny in Paris.", False),
             ("malformed JSON", 'get_weather\n{"city": "Par', False),
             ("a name not offered", 'delete_all\n{"x": 1}', False)]
    for name, text, is_call in cases:
        env = dict(os.environ, GLMTP_HTTP_DEBUG_OUTPUT=text)
        p, pid, port, hport = start(a, model, tmp, "canned", env=env)
        cl = openai.OpenAI(base_url=f"http://127.0.0.1:{hport}/v1", api_key="none")
        r = cl.chat.completions.create(model="tiny", messages=msgs, tools=tools, max_tokens=8)
        m = r.choices[0].message
        if is_call:
            tc = m.tool_calls[0] if m.tool_calls else None
            check(f"tool call whole: {name}", tc is not None and tc.type == "function" and tc.id.startswith("call_")
                  and tc.function.name == "get_weather" and json.loads(tc.function.arguments)["city"] == "Paris"
                  and m.content is None and r.choices[0].finish_reason == "tool_calls", str(m))
        else:
            check(f"plain content whole: {name}", not m.tool_calls and m.content == text.lstrip("\n") and
                  r.choices[0].finish_reason != "tool_calls", str(m))
        s = cl.chat.completions.create(model="tiny", messages=msgs, tools=tools, max_tokens=8, stream=True)
        content, tname, args, tid, fin, n_chunks, first = "", None, "", None, None, 0, None
        for ch in s:
            for c in ch.choices:
                n_chunks += 1
                content += c.delta.content or ""
                for t in c.delta.tool_calls or []:
                    first = first or t
                    tid = t.id or tid
                    if t.function.name:
                        tname = t.function.name
                    args += t.function.arguments or ""
                fin = c.finish_reason or fin
        if is_call:
            check(f"tool call streamed: {name}", tname == "get_weather" and args == tc.function.arguments and
                  tid.startswith("call_") and first.index == 0 and first.type == "function" and
                  first.function.arguments == "" and fin == "tool_calls" and content == "" and n_chunks >= 3,
                  f"{tname} {args!r} {tid} {fin} {n_chunks} chunks")
        else:
            check(f"plain content streamed: {name}", tname is None and content == m.content, repr(content))
        # tool_choice "none": nothing parses as a call
        if is_call:
            r = cl.chat.completions.create(model="tiny", messages=msgs, tools=tools, tool_choice="none", max_tokens=8)
            check("tool_choice none: content", not r.choices[0].message.tool_calls, str(r.choices[0].message))
            # a history with an assistant tool call and a tool result maps and runs
            hist = msgs + [{"role": "assistant", "content": None, "tool_calls": [
                {"id": tc.id, "type": "function", "function": {"name": "get_weather", "arguments": tc.function.arguments}}]},
                {"role": "tool", "tool_call_id": tc.id, "content": '{"temp": 21}'}]
            r = cl.chat.completions.create(model="tiny", messages=hist, tools=tools, max_tokens=8,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
            check("history with tool_calls and a tool result", r.choices[0].finish_reason == "tool_calls", str(r))
        stop(p, pid)
        _procs.remove((p, pid))


def score(a, model, ids):
    """glmtp score on ids: logprob_next of each position."""
    launch = a.mpirun + ["-np", "2"] if a.mpirun else []
    out = subprocess.run(launch + [a.glmtp, "score", "--model", model, "--ids", ",".join(map(str, ids)), "--threads",
                                   "1", "--top", "1"], check=True, capture_output=True, text=True).stdout
    return [json.loads(ln)["logprob_next"] for ln in out.splitlines() if ln.startswith("{")]


def logprobs(a, model, cl, hport, tol=1e-4):
    """logprobs (issue 18): chat logprobs + top_logprobs, completions logprobs=N, streamed and not, echo; the
    tokens are those of the run without; each logprob equals `glmtp score` on prompt + generated ids."""
    worst = 0.0

    def ids_of(entries):
        return [int(t.split(":")[1]) for t in entries]

    msgs = [{"role": "user", "content": "hello"}]
    plain = cl.chat.completions.create(model="tiny", messages=msgs, max_tokens=10)
    r = cl.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, logprobs=True, top_logprobs=3)
    lp = r.choices[0].logprobs.content
    check("chat logprobs: same text as without", r.choices[0].message.content == plain.choices[0].message.content,
          f"{r.choices[0].message.content!r} vs {plain.choices[0].message.content!r}")
    check("chat logprobs: one entry per token", len(lp) == r.usage.completion_tokens, f"{len(lp)} {r.usage}")
    check("chat logprobs: bytes join to the text", b"".join(bytes(e.bytes) for e in lp).decode(errors="replace")
          .lstrip() == r.choices[0].message.content, str([e.token for e in lp]))
    check("chat top_logprobs: 3, sorted, the greedy token first",
          all(len(e.top_logprobs) == 3 and [t.logprob for t in e.top_logprobs] ==
              sorted([t.logprob for t in e.top_logprobs], reverse=True) and e.top_logprobs[0].token == e.token and
              e.top_logprobs[0].logprob == e.logprob for e in lp), str(lp[:2]))
    ri = cl.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, logprobs=True, top_logprobs=3,
                                    extra_body={"return_tokens_as_token_ids": True})
    gen = ids_of(e.token for e in ri.choices[0].logprobs.content)
    st, tk = raw(hport, "POST", "/tokenize", {"messages": msgs})
    sc = score(a, model, tk["tokens"] + gen)
    n0 = len(tk["tokens"])
    d = max(abs(e.logprob - sc[n0 + i - 1]) for i, e in enumerate(ri.choices[0].logprobs.content))
    worst = max(worst, d)
    check(f"chat logprobs equal glmtp score within {tol}", d <= tol, f"max diff {d}")
    s = cl.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, logprobs=True, top_logprobs=3,
                                   stream=True)
    sl, text = [], ""
    for ch in s:
        for c in ch.choices:
            text += c.delta.content or ""
            if c.logprobs and c.logprobs.content:
                sl += c.logprobs.content
    check("chat logprobs streamed equal whole", text == r.choices[0].message.content and
          [e.token for e in sl] == [e.token for e in lp] and
          max(abs(x.logprob - y.logprob) for x, y in zip(sl, lp)) <= tol, f"{len(sl)} {len(lp)}")

    # completions: logprobs=2, streamed and not, echo
    p = "The capital of France is"
    plain = cl.completions.create(model="tiny", prompt=p, max_tokens=10)
    r = cl.completions.create(model="tiny", prompt=p, max_tokens=10, logprobs=2)
    L = r.choices[0].logprobs
    check("completion logprobs: same text as without", r.choices[0].text == plain.choices[0].text,
          f"{r.choices[0].text!r} vs {plain.choices[0].text!r}")
    check("completion logprobs: tokens join to the text, offsets, 2 alternatives",
          "".join(L.tokens) == r.choices[0].text and len(L.token_logprobs) == len(L.tokens) and
          L.text_offset == [sum(len(t.encode()) for t in L.tokens[:i]) for i in range(len(L.tokens))] and
          all(len(t) <= 2 and max(t.values()) == lpv for t, lpv in zip(L.top_logprobs, L.token_logprobs)),
          str(L)[:300])
    ri = cl.completions.create(model="tiny", prompt=p, max_tokens=10, logprobs=2, echo=True,
                               extra_body={"return_tokens_as_token_ids": True})
    E = ri.choices[0].logprobs
    st, tk = raw(hport, "POST", "/tokenize", {"prompt": p})
    n0 = len(tk["tokens"])
    all_ids = ids_of(E.tokens)
    check("echo logprobs: prompt ids then generated, first null", all_ids[:n0] == tk["tokens"] and
          E.token_logprobs[0] is None and E.top_logprobs[0] is None and len(all_ids) == n0 + len(L.tokens),
          f"{all_ids} {tk['tokens']}")
    sc = score(a, model, all_ids)
    d = max(abs(E.token_logprobs[i] - sc[i - 1]) for i in range(1, len(all_ids)))
    worst = max(worst, d)
    check(f"echo + completion logprobs equal glmtp score within {tol}", d <= tol, f"max diff {d}")
    d2 = max(abs(x - y) for x, y in zip(E.token_logprobs[n0:], L.token_logprobs))
    check("echo's generated logprobs equal those without echo", d2 <= tol, f"{d2}")
    re_ = cl.completions.create(model="tiny", prompt=p, max_tokens=10, logprobs=2, echo=True)
    check("echo logprobs: text is prompt + completion", re_.choices[0].text == p + r.choices[0].text,
          repr(re_.choices[0].text))
    for echo in (False, True):
        s = cl.completions.create(model="tiny", prompt=p, max_tokens=10, logprobs=2, echo=echo, stream=True)
        toks, lps, text = [], [], ""
        for ch in s:
            for c in ch.choices:
                text += c.text
                if c.logprobs:
                    toks += c.logprobs.tokens
                    lps += c.logprobs.token_logprobs
        want = re_.choices[0].logprobs if echo else L
        check(f"completion logprobs streamed (echo {echo}) equal whole",
              text == (re_.choices[0].text if echo else r.choices[0].text) and toks == want.tokens and
              all((x is None and y is None) or abs(x - y) <= tol for x, y in zip(lps, want.token_logprobs)),
              f"{toks} {want.tokens}")
    print(f"logprobs: max |logprob - glmtp score| = {worst:.3g} (tolerance {tol})")


def concurrency_and_disconnect(cl, hport):
    m0 = metrics(hport)
    res, errs = [None] * 32, []

    def one(i):
        try:
            s = cl.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"client {i} " * (i % 5 + 1)}],
                                           max_tokens=16, stream=True)
            res[i] = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
        except Exception as e:  # noqa: BLE001
            errs.append(repr(e))

    t0 = time.time()
    th = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    check("32 concurrent streaming clients", not errs and all(r is not None for r in res),
          f"{time.time() - t0:.1f} s; {errs[:2]}")
    m, ok = wait_metric(hport, lambda m: m["vllm:request_success_total{finished_reason=length}"] +
                        m["vllm:request_success_total{finished_reason=stop}"] >=
                        m0["vllm:request_success_total{finished_reason=length}"] +
                        m0["vllm:request_success_total{finished_reason=stop}"] + 32)
    check("metrics: 32 more requests finished, counters moved", ok and
          m["vllm:generation_tokens_total"] > m0["vllm:generation_tokens_total"] and
          m["vllm:prompt_tokens_total"] > m0["vllm:prompt_tokens_total"] and
          m["vllm:e2e_request_latency_seconds_count"] >= m0["vllm:e2e_request_latency_seconds_count"] + 32 and
          m["vllm:time_to_first_token_seconds_count"] >= m0["vllm:time_to_first_token_seconds_count"] + 32,
          f"gen {m['vllm:generation_tokens_total']}")
    # disconnect mid-stream: a long request, two chunks read, the socket closed
    c = http.client.HTTPConnection("127.0.0.1", hport, timeout=60)
    c.request("POST", "/v1/completions", body=json.dumps({"prompt": "x", "max_tokens": 3000, "ignore_eos": True,
                                                          "stream": True}),
              headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    r = c.getresponse()
    r.fp.readline(), r.fp.readline(), r.fp.readline()
    busy, ok1 = wait_metric(hport, lambda m: m["vllm:num_requests_running"] == 1 and
                            m["vllm:kv_cache_usage_perc"] > 0, 10)
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    m, ok2 = wait_metric(hport, lambda m: m["vllm:num_requests_running"] == 0 and m["vllm:kv_cache_usage_perc"] == 0
                         and m["vllm:request_success_total{finished_reason=abort}"] >
                         m0["vllm:request_success_total{finished_reason=abort}"], 20)
    check("disconnect mid-stream cancels it and frees its KV blocks (metrics)", ok1 and ok2 and
          m["vllm:generation_tokens_total"] < m0["vllm:generation_tokens_total"] + 32 * 16 + 2900,
          f"while running: kv {busy['vllm:kv_cache_usage_perc']:.4f}; after: running {m['vllm:num_requests_running']}, "
          f"kv {m['vllm:kv_cache_usage_perc']}")


def bad_requests(hport, tmp):
    def curl(args, body=None):
        cmd = ["curl", "-s", "-o", f"{tmp}/curl.out", "-w", "%{http_code}", *args]
        if body is not None:
            with open(f"{tmp}/curl.in", "wb") as f:
                f.write(body)
            cmd += ["--data-binary", f"@{tmp}/curl.in", "-H", "Content-Type: application/json"]
        code = int(subprocess.run(cmd, capture_output=True, text=True).stdout or 0)
        try:
            return code, json.load(open(f"{tmp}/curl.out"))
        except ValueError:
            return code, None

    base = f"http://127.0.0.1:{hport}"
    auth = ["-H", f"Authorization: Bearer {KEY}"]

    def is_err(b, param="-"):
        e = b and b.get("error")
        return bool(e) and set(e) == {"message", "type", "param", "code"} and (param == "-" or e["param"] == param)

    cases = [
        ("bad JSON", [base + "/v1/chat/completions", *auth], b'{"messages": [', 400, None),
        ("not an object", [base + "/v1/chat/completions", *auth], b'[1, 2]', 400, None),
        ("bad field named", [base + "/v1/chat/completions", *auth],
         b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', 400, "temperature"),
        ("unknown field named", [base + "/v1/completions", *auth], b'{"prompt": "x", "best_of_all": 2}', 400,
         "best_of_all"),
        ("bad role named", [base + "/v1/chat/completions", *auth], b'{"messages": [{"role": "robot", "content": "x"}]}',
         400, "-"),
        ("too long for the context", [base + "/v1/completions", *auth], b'{"prompt": "x", "max_tokens": 100000}', 400,
         "max_tokens"),
        ("oversize body", [base + "/v1/completions", *auth], b'{"prompt": "' + b"a" * 70000 + b'"}', 413, None),
        ("wrong key", [base + "/v1/models", "-H", "Authorization: Bearer sk-wrong"], None, 401, None),
        ("no key", [base + "/v1/completions"], b'{"prompt": "x"}', 401, None),
        ("wrong path", [base + "/v1/nothing", *auth], None, 404, None),
        ("wrong model", [base + "/v1/completions", *auth], b'{"model": "gpt-9", "prompt": "x"}', 404, "model"),
        ("logprobs over 20", [base + "/v1/completions", *auth], b'{"prompt": "x", "logprobs": 21}', 400, "logprobs"),
    ]
    for name, args, body, want, param in cases:
        code, b = curl(args, body)
        check(f"curl {name}: {want} and an OpenAI error body", code == want and is_err(b, param if param else "-"),
              f"{code} {b}")
    code, b = curl([base + "/health"])
    check("GET /health 200 without a key", code == 200)
    code, b = curl([base + "/v1/models", *auth])
    check("GET /v1/models", code == 200 and b["data"][0]["id"] == "tiny", str(b))


def figures(a, cl, port, hport, tmp, n=32, in_len=64, out_len=16):
    """The same load through the protobuf channel and HTTP (same server): requests/s and TTFT."""
    out = subprocess.run([a.client, "--connect", f"127.0.0.1:{port}", "--load", "--requests", str(n), "--rate", "0",
                          "--input-len", str(in_len), "--output-len", str(out_len), "--json-out", f"{tmp}/load.json"],
                         capture_output=True, text=True)
    pb = json.load(open(f"{tmp}/load.json")) if out.returncode == 0 else None
    rng = random.Random(1)
    prompts = [[rng.randrange(1000, 150000) for _ in range(in_len)] for _ in range(n)]

    def run(use_openai):
        ttft = [None] * n

        def one(i):
            t0 = time.time()
            if use_openai:
                s = cl.chat.completions.create(model="tiny", max_tokens=out_len, stream=True, extra_body={
                    "ignore_eos": True}, messages=[{"role": "user", "content": " ".join(map(str, prompts[i][:40]))}])
                for ch in s:
                    if ch.choices and ch.choices[0].delta.content and ttft[i] is None:
                        ttft[i] = time.time() - t0
                return
            c = http.client.HTTPConnection("127.0.0.1", hport, timeout=120)
            c.request("POST", "/v1/completions", body=json.dumps({"prompt": prompts[i], "max_tokens": out_len,
                                                                  "ignore_eos": True, "stream": True}),
                      headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
            r = c.getresponse()
            while True:
                ln = r.fp.readline()
                if not ln or ln.startswith(b"data: [DONE]"):
                    break
                if ln.startswith(b"data: ") and ttft[i] is None:
                    ttft[i] = time.time() - t0
            c.close()

        t0 = time.time()
        th = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in th:
            t.start()
        for t in th:
            t.join()
        wall = time.time() - t0
        ok = [t for t in ttft if t is not None]
        ok.sort()
        return n / wall, (ok[len(ok) // 2] * 1e3 if ok else float("nan")), len(ok)

    h_rps, h_ttft, h_n = run(False)
    o_rps, o_ttft, o_n = run(True)
    print(f"# figures: {n} requests at once, {in_len} prompt tokens, {out_len} new tokens, tiny model, tp 2, one server")
    print(f"# {'channel':34s} {'req/s':>8s} {'TTFT p50 (ms)':>14s}")
    if pb:
        print(f"# {'protobuf (glmtp-client --load)':34s} {pb['requests_per_s']:8.2f} {pb['ttft']['p50_ms']:14.1f}")
    print(f"# {'HTTP /v1/completions, raw SSE':34s} {h_rps:8.2f} {h_ttft:14.1f}")
    print(f"# {'HTTP chat, openai package stream':34s} {o_rps:8.2f} {o_ttft:14.1f}  (chat prompt of ~40 words)")
    check("figures: every HTTP request got a first token", h_n == n and o_n == n, f"{h_n} {o_n}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmtp")
    ap.add_argument("client")
    ap.add_argument("vocab")
    ap.add_argument("--mpirun", default="")
    a = ap.parse_args()
    a.mpirun = shlex.split(a.mpirun)
    os.environ.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    with tempfile.TemporaryDirectory() as tmp:
        model = f"{tmp}/tiny"
        subprocess.run([a.glmtp, "make-model", "--preset", "tiny", "--out", model, "--seed", "1", "--tokenizer",
                        a.vocab], check=True, stdout=subprocess.DEVNULL)
        with open(f"{tmp}/key", "w") as f:
            f.write(KEY + "\n")
        p, pid, port, hport = start(a, model, tmp, "main", ["--api-key-file", f"{tmp}/key", "--served-model-name",
                                                            "tiny", "--max-request-bytes", "65536"])
        cl = openai.OpenAI(base_url=f"http://127.0.0.1:{hport}/v1", api_key=KEY, max_retries=0)
        m0 = metrics(hport)
        check("metrics parse (prometheus_client), vLLM names",
              all(k in m0 for k in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                                    "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                                    "vllm:num_preemptions_total", "vllm:prefix_cache_queries_total",
                                    "vllm:time_to_first_token_seconds_count", "vllm:inter_token_latency_seconds_count",
                                    "vllm:e2e_request_latency_seconds_count")), str(sorted(m0))[:300])
        equal_to_generate(a, model, tmp, cl, hport)
        logprobs(a, model, cl, hport)
        concurrency_and_disconnect(cl, hport)
        bad_requests(hport, tmp)
        figures(a, cl, port, hport, tmp)
        bad_addr = subprocess.run([a.glmtp, "serve", "--model", model, "--http", "0.0.0.0:1"], capture_output=True,
                                  text=True, timeout=60)
        check("--http beyond loopback needs --api-key-file", bad_addr.returncode != 0 and
              "--api-key-file" in bad_addr.stderr, bad_addr.stderr.strip()[-200:])
        stop(p, pid)
        _procs.clear()
        check("SIGTERM: server stops", p.returncode is not None)
        tool_calls(a, model, tmp)
    finish()


if __name__ == "__main__":
    main()
