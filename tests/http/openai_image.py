#!/usr/bin/env python3
"""GLM-4V images on the network fronts, end to end on the tiny-4v model (random
weights, 56x56 images, a real vision tower) under mpirun -np 2:

  - serve --http with the real `openai` client: an image question (a data URL
    in an image_url part) and a text question at once, both answered; the
    image one's greedy tokens (logprobs with return_tokens_as_token_ids) equal
    `glmtp generate` on the same message with the image as a file path;
    streamed equals whole; n = 2 (each choice its own pixels) gives both;
  - every bad image is a 400 naming its param, and the server then answers a
    good request: not a data URL (http URL, a server file path), bad base64,
    not an image, a truncated PNG, a decompression bomb (a PNG header of
    10000 x 10000), a second image, an unsupported part type, a text-only
    model (a second server); /v1/completions ids holding image tokens;
  - generate's OpenAI batch line with the same data URL gives the same text;
  - the protobuf channel: glmtp-client --chat --image equals generate, a
    truncated image is refused naming field 'image'.
The PNGs are written with zlib here (no Pillow needed).
usage: openai_image.py GLMTP GLMTP_CLIENT VOCAB [--mpirun "mpiexec --oversubscribe"]
"""
import argparse
import atexit
import base64
import json
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from testlib import check, finish  # noqa: E402

try:
    import openai
except ImportError as e:  # CI installs it (deploy/test.sh)
    print(f"SKIP: {e} (pip install openai)")
    sys.exit(0)

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


def png(w, h, pixel):
    """An 8-bit RGB PNG of w x h, pixel(x, y) -> (r, g, b)."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    rows = b"".join(b"\0" + b"".join(bytes(pixel(x, y)) for x in range(w)) for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def bomb():
    """A PNG whose header says 10000 x 10000 (100 M pixels, over the 64 Mi limit) with one tiny IDAT."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 10000, 10000, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def data_url(b, mime="image/png"):
    return f"data:{mime};base64," + base64.b64encode(b).decode()


def start(a, model, tmp, name, np=2):
    port, hport = free_port(), free_port()
    err = open(f"{tmp}/{name}.err", "w+")
    launch = a.mpirun + ["-np", str(np)] if a.mpirun and np > 1 else []
    p = subprocess.Popen(launch + [a.glmtp, "serve", "--model", model, "--listen", f"127.0.0.1:{port}",
                                   "--http", f"127.0.0.1:{hport}", "--threads", "1", "--served-model-name", "m"],
                         stdout=subprocess.DEVNULL, stderr=err)
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


def token_ids(choice):
    """Generated ids from logprobs with return_tokens_as_token_ids ("token_id:N")."""
    return [int(t.token.split(":")[1]) for t in choice.logprobs.content]


def expect_400(name, cl, param, msgs, want=""):
    try:
        cl.chat.completions.create(model="m", messages=msgs, max_tokens=2)
        check(name, False, "no error")
    except openai.BadRequestError as e:
        err = (e.body or {}) if isinstance(e.body, dict) else {}
        err = err.get("error", err)
        ok = e.status_code == 400 and err.get("param") == param and want in err.get("message", "")
        check(name, ok, f"{e.status_code} param={err.get('param')!r} {err.get('message')!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmtp")
    ap.add_argument("client")
    ap.add_argument("vocab")
    ap.add_argument("--mpirun", default="")
    a = ap.parse_args()
    a.mpirun = shlex.split(a.mpirun)
    tmp = tempfile.mkdtemp(prefix="glmtp_vhttp_")
    t_start = time.time()
    model, text_model = f"{tmp}/m4v", f"{tmp}/tiny"
    for preset, out in (("tiny-4v", model), ("tiny", text_model)):
        subprocess.run([a.glmtp, "make-model", "--preset", preset, "--out", out, "--tokenizer", a.vocab], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    img = png(80, 60, lambda x, y: (x * 3 % 256, y * 4 % 256, (x * y) % 256))
    with open(f"{tmp}/a.png", "wb") as f:
        f.write(img)
    url = data_url(img)
    q = "What is in this picture?"
    vmsgs = [{"role": "user", "content": [{"type": "text", "text": q}, {"type": "image_url", "image_url": {"url": url}}]}]
    tmsgs = [{"role": "user", "content": "Say something."}]

    # Reference: glmtp generate, the image given as a file path; its OpenAI batch line with the data URL.
    # Each alone: a text sequence batched after an image one once took stale RoPE positions (image_plan).
    launch = a.mpirun + ["-np", "2"] if a.mpirun else []
    ref = {}
    ref_msgs = {"v": [{"role": "user", "content": q, "image": f"{tmp}/a.png"}], "t": tmsgs}
    for line in ({"id": n, "messages": m} for n, m in ref_msgs.items()):
        inp, out = f"{tmp}/ref_{line['id']}.jsonl", f"{tmp}/ref_{line['id']}.out.jsonl"
        with open(inp, "w") as f:
            f.write(json.dumps(dict(line, max_new_tokens=12, temperature=0)) + "\n")
        subprocess.run(launch + [a.glmtp, "generate", "--model", model, "--input", inp, "--output", out, "--threads",
                                 "1", "--quiet"], check=True)
        ref[line["id"]] = json.loads(open(out).readline())
    # ... and batched, the image line first: each equals its run alone.
    with open(f"{tmp}/ref_vt.jsonl", "w") as f:
        for n in ("v", "t"):
            f.write(json.dumps({"id": n, "messages": ref_msgs[n], "max_new_tokens": 12, "temperature": 0}) + "\n")
    subprocess.run(launch + [a.glmtp, "generate", "--model", model, "--input", f"{tmp}/ref_vt.jsonl", "--output",
                             f"{tmp}/ref_vt.out.jsonl", "--threads", "1", "--quiet"], check=True)
    both = {json.loads(ln)["id"]: json.loads(ln)["token_ids"] for ln in open(f"{tmp}/ref_vt.out.jsonl")}
    check("generate: image and text lines batched equal each alone",
          both == {n: ref[n]["token_ids"] for n in ("v", "t")}, f"{both} vs alone")
    with open(f"{tmp}/batch.jsonl", "w") as f:
        f.write(json.dumps({"custom_id": "v", "method": "POST", "url": "/v1/chat/completions",
                            "body": {"messages": vmsgs, "max_tokens": 12, "temperature": 0}}) + "\n")
    subprocess.run(launch + [a.glmtp, "generate", "--model", model, "--input", f"{tmp}/batch.jsonl", "--output",
                             f"{tmp}/batch.out.jsonl", "--threads", "1", "--quiet"], check=True)
    rec = json.loads(open(f"{tmp}/batch.out.jsonl").readline())
    btext = rec["response"]["body"]["choices"][0]["message"]["content"] if rec["response"]["status_code"] == 200 else rec
    check("batch line with a data URL equals generate with the file", btext == ref["v"]["text"],
          f"{btext!r} vs {ref['v']['text']!r}")

    p, pid, port, hport = start(a, model, tmp, "srv")
    cl = openai.OpenAI(base_url=f"http://127.0.0.1:{hport}/v1", api_key="none", max_retries=0, timeout=60)

    # An image question and a text question at once.
    res = {}

    def ask(name, msgs):
        try:
            res[name] = cl.chat.completions.create(model="m", messages=msgs, max_tokens=12, temperature=0,
                                                   logprobs=True, extra_body={"return_tokens_as_token_ids": True})
        except Exception as e:  # noqa: BLE001 (reported below)
            res[name] = e
    th = [threading.Thread(target=ask, args=(n, m)) for n, m in (("v", vmsgs), ("t", tmsgs))]
    for t in th:
        t.start()
    for t in th:
        t.join()
    for n in ("v", "t"):
        r = res[n]
        ok = not isinstance(r, Exception)
        ids = token_ids(r.choices[0]) if ok else None
        check(f"concurrent {'image' if n == 'v' else 'text'} question: greedy tokens equal generate",
              ok and ids == ref[n]["token_ids"] and r.choices[0].message.content == ref[n]["text"],
              f"{ids} vs {ref[n]['token_ids']}" if ok else repr(r))
    if not isinstance(res["v"], Exception):
        check("image prompt counts the image's tokens", res["v"].usage.prompt_tokens == ref["v"]["usage"]["prompt_tokens"],
              f"{res['v'].usage.prompt_tokens} vs {ref['v']['usage']['prompt_tokens']}")
    s = cl.chat.completions.create(model="m", messages=vmsgs, max_tokens=12, temperature=0, stream=True)
    text = "".join(c.delta.content or "" for ch in s for c in ch.choices)
    check("image question streamed equals generate", text == ref["v"]["text"], repr(text))
    r = cl.chat.completions.create(model="m", messages=vmsgs, max_tokens=12, temperature=0, n=2)
    check("n = 2 with an image: both choices equal generate",
          [c.message.content for c in r.choices] == [ref["v"]["text"]] * 2, str([c.message.content for c in r.choices]))

    # Bad images: a 400 naming the param each, the server carries on.
    u1 = "messages[0].content[1].image_url.url"

    def with_url(u):
        return [{"role": "user", "content": [{"type": "text", "text": q}, {"type": "image_url", "image_url": {"url": u}}]}]
    expect_400("http URL refused", cl, u1, with_url("https://example.com/a.png"), "not fetched")
    expect_400("server file path refused", cl, u1, with_url(f"{tmp}/a.png"), "data URL")
    expect_400("bad base64", cl, u1, with_url("data:image/png;base64,@@@@"), "base64")
    expect_400("GIF media type", cl, u1, with_url(data_url(b"GIF89a" + b"\0" * 32, "image/gif")), "image/gif")
    expect_400("not an image (GIF bytes named PNG)", cl, u1, with_url(data_url(b"GIF89a" + b"\0" * 32)), "GIF")
    expect_400("truncated PNG", cl, u1, with_url(data_url(img[:len(img) // 2])), "truncated")
    expect_400("decompression bomb (10000 x 10000 header)", cl, u1, with_url(data_url(bomb())), "bomb")
    two = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": q}]},
           {"role": "assistant", "content": "ok"},
           {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    expect_400("a second image", cl, "messages[2].content[0].image_url.url", two, "second image")
    expect_400("unsupported part type", cl, "messages[0].content[1].type",
               [{"role": "user", "content": [{"type": "text", "text": q}, {"type": "input_audio", "input_audio": {}}]}],
               "input_audio")
    expect_400("image_url without url", cl, u1,
               [{"role": "user", "content": [{"type": "text", "text": q}, {"type": "image_url"}]}])
    try:
        cl.completions.create(model="m", prompt=[151331, 151333, 151339, 151329, 151340, 5], max_tokens=2)
        check("/v1/completions ids with image tokens refused", False, "no error")
    except openai.BadRequestError as e:
        check("/v1/completions ids with image tokens refused", e.status_code == 400 and "image" in str(e), str(e))
    r = cl.chat.completions.create(model="m", messages=vmsgs, max_tokens=12, temperature=0)
    check("after the bad requests the server answers", r.choices[0].message.content == ref["v"]["text"],
          repr(r.choices[0].message.content))

    # The protobuf channel: glmtp-client --chat --image.
    with open(f"{tmp}/chat.json", "w") as f:
        json.dump([{"role": "user", "content": q}], f)
    with open(f"{tmp}/trunc.png", "wb") as f:
        f.write(img[:len(img) // 2])
    cmd = [a.client, "--connect", f"127.0.0.1:{port}", "--chat", f"{tmp}/chat.json", "--max-new-tokens", "12",
           "--temperature", "0", "--json"]
    g = subprocess.run(cmd + ["--image", f"{tmp}/a.png"], capture_output=True, text=True, timeout=60)
    got = json.loads(g.stdout) if g.returncode == 0 else {}
    check("serve channel: --image equals generate", got.get("token_ids") == ref["v"]["token_ids"],
          f"{got.get('token_ids')} vs {ref['v']['token_ids']} {g.stderr.strip()}")
    g = subprocess.run(cmd + ["--image", f"{tmp}/trunc.png"], capture_output=True, text=True, timeout=60)
    check("serve channel: a truncated image is refused naming 'image'",
          g.returncode == 1 and "field 'image'" in g.stderr and "truncated" in g.stderr, g.stderr.strip())
    os.kill(pid, signal.SIGTERM)
    p.wait(timeout=30)

    # A model without a vision tower (one rank: quicker to start).
    p, pid, port, hport = start(a, text_model, tmp, "text", np=1)
    cl = openai.OpenAI(base_url=f"http://127.0.0.1:{hport}/v1", api_key="none", max_retries=0, timeout=60)
    expect_400("text-only model refuses an image", cl, u1, vmsgs, "no images")
    r = cl.chat.completions.create(model="m", messages=tmsgs, max_tokens=4)
    check("text-only model then answers", r.choices[0].finish_reason in ("stop", "length"), str(r.choices[0]))
    os.kill(pid, signal.SIGTERM)
    p.wait(timeout=30)
    print(f"openai_image: {time.time() - t_start:.1f} s")
    finish()


if __name__ == "__main__":
    main()
