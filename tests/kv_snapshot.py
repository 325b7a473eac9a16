#!/usr/bin/env python3
"""KV snapshots of a document (--kv-snapshot-dir, worker/kvsnap.c,
coordinator/engine/kvstore.c). On the tiny model:

  - generate with "keep_prefix": true writes one file per rank (tp 1 and 2);
    a new process with the same directory answers questions on the same
    document (greedy, and seeded sampling) with the same tokens as a run with
    no cache at all, and takes the document's full blocks from the snapshot
    (loaded on the cache miss: the summary line's cached tokens), at tp 1 and 2;
  - serve: a snapshot loaded at start-up serves a question whose step log shows
    only the tokens past the document were fed (the cached field, the prefill
    chunks), with the reference's tokens; the protobuf keep_prefix field
    (encoded by hand here) writes a snapshot from serve;
  - refusals, each with a message naming the cause and the request still
    answered as without the snapshot: another model (another seed), another
    tp, another block size, another KV dtype (a header whose dtype field says
    fp8, checksum fixed; and --kv-cache-dtype fp8 where this build has it), a
    truncated file, one flipped byte in the payload (at tp 1, and in rank 1's
    file at tp 2);
  - a figure: snapshot write and read MB/s (the log lines) beside the disk's,
    measured in the same run with a plain sequential write + fsync and read of
    a file as large as the snapshot (printed, not checked).
usage: kv_snapshot.py GLMTP GLMTP_CLIENT VOCAB [--mpirun "mpiexec --oversubscribe"]
"""
import argparse
import glob
import json
import os
import random
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "serve"))
from testlib import check, finish  # noqa: E402
from serve_test import Server, frame, raw  # noqa: E402

BS = 16
HEAD = [151331, 151333]


def generate(a, model, reqs, tmp, launch=(), extra=()):
    inp, out = f"{tmp}/in.jsonl", f"{tmp}/out.jsonl"
    with open(inp, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in reqs))
    if os.path.exists(out):
        os.remove(out)
    p = subprocess.run([*launch, a.glmtp, "generate", "--model", model, "--input", inp, "--output", out,
                        "--threads", "1", *extra], capture_output=True, text=True, timeout=300)
    recs = [json.loads(l) for l in open(out)] if os.path.exists(out) else []
    return p.returncode, [r["token_ids"] for r in recs], p.stderr


def cached(err):
    m = re.search(r"prefix cache: (\d+) of (\d+) prompt tokens cached", err)
    return int(m.group(1)) if m else -1


def fnv64(b):
    h = 1469598103934665603
    for x in b:
        h = ((h ^ x) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def copy_dir(src, dst):
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return dst


def rank_file(d, rank=0):
    f = glob.glob(f"{d}/*.rank{rank}-of-*.kv")
    return f[0] if f else None


def questions(doc, rnd):
    qs = [doc + [rnd.randrange(1000, 150000) for _ in range(7)] for _ in range(2)]
    return [{"id": "g", "input_ids": qs[0], "max_new_tokens": 16},
            {"id": "s", "input_ids": qs[1], "max_new_tokens": 16, "temperature": 0.9, "top_k": 40, "seed": 7}]


def recompute_check(name, a, model, d, reqs, ref, tmp, want_msg, launch=(), extra=()):
    rc, outs, err = generate(a, model, reqs, tmp, launch, ["--kv-snapshot-dir", d, *extra])
    refused = [l for l in err.splitlines() if "kv snapshot refused" in l]
    check(f"{name}: refused with a message naming the cause", rc == 0 and any(re.search(want_msg, l) for l in refused),
          (refused or err.splitlines()[-3:])[0][:300] if (refused or err) else "no output")
    check(f"{name}: the requests are answered as without a snapshot (recomputed)",
          outs == ref and "kv snapshot: loaded" not in err, f"cached {cached(err)}")


def test_generate(a, tmp, m1, m2, mpirun):
    rnd = random.Random(3)
    doc = HEAD + [rnd.randrange(1000, 150000) for _ in range(318)]  # 320 tokens: 20 full blocks
    keep = [{"id": "k", "input_ids": doc + [11, 12, 13], "max_new_tokens": 4, "keep_prefix": True}]
    reqs = questions(doc, rnd)
    want = len(doc) // BS * BS
    rc, ref, err = generate(a, m1, reqs, tmp, (), ["--no-prefix-cache"])
    if rc or len(ref) != 2:
        sys.exit(f"FAIL: reference: {err[-500:]}")

    s1 = f"{tmp}/s1"
    rc, _, err = generate(a, m1, keep, tmp, (), ["--kv-snapshot-dir", s1])
    files = sorted(os.listdir(s1)) if os.path.isdir(s1) else []
    check("generate keep_prefix (tp 1): one snapshot file, named by the prefix hash", rc == 0 and len(files) == 1 and
          re.fullmatch(r"[0-9a-f]{16}\.rank0-of-1\.kv", files[0]) is not None, f"{files} {err[-300:]}")
    m = re.search(r"saved .* \((\d+) tokens", err)
    check("generate keep_prefix: the document's full blocks and the question's first tokens are saved",
          m is not None and int(m.group(1)) == (len(doc) + 3) // BS * BS, m.group(0) if m else err[-300:])

    rc, outs, err = generate(a, m1, reqs, tmp, (), ["--kv-snapshot-dir", s1])
    check("new process (tp 1): same tokens as recomputing (greedy and seeded)", rc == 0 and outs == ref,
          f"{outs} vs {ref}")
    check("new process (tp 1): the document came from the snapshot, not recomputed",
          "loaded" in err and cached(err) == 2 * want, f"cached {cached(err)} of want {2 * want}")

    if mpirun:
        s2 = f"{tmp}/s2"
        rc, _, err = generate(a, m1, keep, tmp, mpirun + ["-np", "2"], ["--kv-snapshot-dir", s2])
        files = sorted(os.listdir(s2)) if os.path.isdir(s2) else []
        check("generate keep_prefix (tp 2): one file per rank", rc == 0 and len(files) == 2 and
              files[0].endswith(".rank0-of-2.kv") and files[1].endswith(".rank1-of-2.kv"), f"{files} {err[-500:]}")
        rc, ref2, _ = generate(a, m1, reqs, tmp, mpirun + ["-np", "2"], ["--no-prefix-cache"])
        rc, outs, err = generate(a, m1, reqs, tmp, mpirun + ["-np", "2"], ["--kv-snapshot-dir", s2])
        check("new process (tp 2): same tokens as recomputing, document from the snapshot",
              rc == 0 and outs == ref2 and cached(err) == 2 * want, f"cached {cached(err)}")
        recompute_check("tp 2 snapshot at tp 1", a, m1, s2, reqs, ref, tmp, r"made with tp 2, this run has tp 1")
        bad = copy_dir(s2, f"{tmp}/s2flip")
        flip(rank_file(bad, 1))
        recompute_check("tp 2, one flipped byte in rank 1's file", a, m1, bad, reqs, ref2, tmp,
                        r"rank1-of-2\.kv: payload checksum mismatch", mpirun + ["-np", "2"])

    # another model: same shapes, another seed
    rc, ref_m2, _ = generate(a, m2, reqs, tmp, (), ["--no-prefix-cache"])
    recompute_check("another model (seed)", a, m2, s1, reqs, ref_m2, tmp, r"made from another model")
    rc, ref_b8, _ = generate(a, m1, reqs, tmp, (), ["--no-prefix-cache", "--block-size", "8"])
    recompute_check("another block size", a, m1, s1, reqs, ref_b8, tmp, r"block size 16, this run has --block-size 8",
                    (), ["--block-size", "8"])

    # another KV dtype: the header says fp8 (checksum recomputed, so only the dtype differs)
    bad = copy_dir(s1, f"{tmp}/sdtype")
    f = rank_file(bad)
    b = bytearray(open(f, "rb").read())
    struct.pack_into("<II", b, 32, 1, 1)
    struct.pack_into("<Q", b, 120, fnv64(bytes(b[:120])))
    open(f, "wb").write(b)
    recompute_check("another KV dtype (header says fp8)", a, m1, bad, reqs, ref, tmp, r"KV dtype fp8 with 1-byte")
    helptext = subprocess.run([a.glmtp, "generate", "--help"], capture_output=True, text=True).stdout
    if "--kv-cache-dtype" in helptext:
        rc, ref_f8, _ = generate(a, m1, reqs, tmp, (), ["--no-prefix-cache", "--kv-cache-dtype", "fp8"])
        recompute_check("another KV dtype (--kv-cache-dtype fp8 run)", a, m1, s1, reqs, ref_f8, tmp,
                        r"KV dtype act \(fp32\) with 4-byte elements, this run's KV cache is fp8", (),
                        ["--kv-cache-dtype", "fp8"])
        s8 = f"{tmp}/s8"
        generate(a, m1, keep, tmp, (), ["--kv-snapshot-dir", s8, "--kv-cache-dtype", "fp8"])
        rc, outs, err = generate(a, m1, reqs, tmp, (), ["--kv-snapshot-dir", s8, "--kv-cache-dtype", "fp8"])
        check("fp8 KV cache: a snapshot saved and loaded gives the same tokens as recomputing in fp8",
              rc == 0 and outs == ref_f8 and cached(err) == 2 * want, f"cached {cached(err)}")

    bad = copy_dir(s1, f"{tmp}/strunc")
    f = rank_file(bad)
    os.truncate(f, os.path.getsize(f) - 100)
    recompute_check("truncated file", a, m1, bad, reqs, ref, tmp, r"truncated: the file has \d+ bytes, its header says")
    bad = copy_dir(s1, f"{tmp}/sflip")
    flip(rank_file(bad))
    recompute_check("one flipped byte in the payload (loaded on the cache miss)", a, m1, bad, reqs, ref, tmp,
                    r"payload checksum mismatch", (), ["--kv-tokens", "400"])
    # loaded at start-up (a pool large enough): the damage is found there too
    recompute_check("one flipped byte, loaded at start-up", a, m1, bad, reqs, ref, tmp, r"payload checksum mismatch",
                    (), ["--kv-tokens", "4096"])
    return doc, reqs, ref


def flip(path):
    b = bytearray(open(path, "rb").read())
    b[len(b) - 37] ^= 0x10  # in the last layer's V rows
    open(path, "wb").write(b)


def pb_varint(v):
    v &= (1 << 64) - 1
    out = b""
    while True:
        byte, v = v & 0x7F, v >> 7
        out += bytes([byte | (0x80 if v else 0)])
        if not v:
            return out


def pb_generate(rid, ids, max_new, keep):
    tok = b"".join(b"\x08" + pb_varint(i) for i in ids)  # TokenIds.ids = 1
    g = b"\x0a" + pb_varint(len(rid)) + rid.encode() + b"\x22" + pb_varint(len(tok)) + tok
    g += b"\x48" + pb_varint(max_new) + b"\x68" + pb_varint(keep)  # max_new_tokens = 9, keep_prefix = 13
    return b"\x12" + pb_varint(len(g)) + g  # ClientMessage.generate = 2


def test_serve(a, tmp, m1, doc, reqs, ref, mpirun):
    np = 2 if mpirun else 1
    if np == 2:  # the tp 1 snapshot would be refused: save one at tp 2 through the protobuf field first
        s1 = f"{tmp}/s3"
        srv = Server(a, m1, tmp, "snap3", ["--kv-snapshot-dir", s1, "--kv-tokens", "4096"], np=np)
        got = raw(srv, frame(pb_generate("k", doc + [5, 6, 7], 2, -1)), shut=False)
        srv.stop()
        errs = open(srv.errf.name).read()
        check("serve: GenerateRequest.keep_prefix = -1 saves the prompt's full blocks (tp 2: two files)",
              len(got) > 4 and len(glob.glob(f"{s1}/*.kv")) == 2 and "saved" in errs, errs[-300:])
    else:
        s1 = f"{tmp}/s1"
    srv = Server(a, m1, tmp, "snap", ["--kv-snapshot-dir", s1, "--kv-tokens", "4096", "--step-tokens", "64"], np=np)
    errf = open(srv.errf.name).read()
    check("serve: the snapshot was loaded at start-up", re.search(r"kv snapshot: loaded .*\n(.*\n)*.*1 loaded", errf)
          is not None, errf[-400:])
    ids = ",".join(map(str, reqs[0]["input_ids"]))
    p = srv.gen("--id", "q", "--ids", ids, "--max-new-tokens", "16")
    out, _ = p.communicate(timeout=120)
    o = json.loads(out) if p.returncode == 0 and out.strip() else {}
    check("serve: same tokens as recomputing", o.get("token_ids") == ref[0], out[-300:])
    want = len(doc) // BS * BS
    q = [x for st in srv.steps() for x in st["seqs"] if x[0] == "q"]
    fed = sum(x[1] for x in q if x[3] == "p")
    check("serve: the document was not recomputed (step log: cached tokens, prompt tokens fed)",
          q and q[0][4] == want and fed == len(reqs[0]["input_ids"]) - want, f"{q[:2]} fed {fed}")
    if np == 1:
        got = raw(srv, frame(pb_generate("k", doc + [5, 6, 7, 8], 2, 160)), shut=False)
        srv.wait_idle()
        errs = open(srv.errf.name).read()
        check("serve: GenerateRequest.keep_prefix = 160 saves 10 blocks", len(got) > 4 and
              re.search(r"saved .*\(160 tokens", errs) is not None and len(glob.glob(f"{s1}/*.kv")) == 2, errs[-300:])
    srv.stop()


def figure(a, tmp):
    """Snapshot write and read MB/s against the disk's, same run, same directory."""
    model = f"{tmp}/big"
    subprocess.run([a.glmtp, "make-model", "--preset", "tiny", "--out", model, "--seed", "9", "--dtype", "f32",
                    "--layers", "8", "--kv-groups", "8", "--tokenizer", a.vocab], check=True, capture_output=True)
    rnd = random.Random(9)
    doc = HEAD + [rnd.randrange(1000, 150000) for _ in range(2046)]
    d = f"{tmp}/sfig"
    rc, _, err = generate(a, model, [{"id": 1, "input_ids": doc + [1], "max_new_tokens": 1, "keep_prefix": True}],
                          tmp, (), ["--kv-snapshot-dir", d, "--step-tokens", "2048"])
    w = re.search(r"saved .*?([\d.]+) MB per rank\) in ([\d.]+) s", err)
    rc, _, err = generate(a, model, [{"id": 1, "input_ids": doc + [2], "max_new_tokens": 1}], tmp, (),
                          ["--kv-snapshot-dir", d, "--kv-tokens", "8192"])
    r = re.search(r"loaded .*?([\d.]+) MB per rank read\) in ([\d.]+) s", err)
    if not (w and r):
        check("figure: snapshot save and load lines", False, err[-400:])
        return
    size = int(float(w.group(1)) * 1e6)
    path = f"{d}/disk.bin"
    buf = os.urandom(1 << 20)
    t0 = time.time()
    with open(path, "wb") as f:
        for _ in range(max(1, size >> 20)):
            f.write(buf)
        f.flush()
        os.fsync(f.fileno())
    tw = time.time() - t0
    t0 = time.time()
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
    tr = time.time() - t0
    mb = max(1, size >> 20) * (1 << 20) / 1e6
    os.remove(path)
    print(f"# figure: snapshot {float(w.group(1)):.1f} MB per rank: write {float(w.group(1)) / float(w.group(2)):.0f} "
          f"MB/s (with fsync, rename), read {float(r.group(1)) / float(r.group(2)):.0f} MB/s (checksum + copy into the "
          f"KV pool); disk, same size: write+fsync {mb / tw:.0f} MB/s, read {mb / tr:.0f} MB/s (page cache warm)")
    check("figure: measured", True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmtp")
    ap.add_argument("client")
    ap.add_argument("vocab")
    ap.add_argument("--mpirun", default="")
    a = ap.parse_args()
    a.mpirun = shlex.split(a.mpirun)
    with tempfile.TemporaryDirectory() as tmp:
        for name, seed in (("m1", 5), ("m2", 6)):
            subprocess.run([a.glmtp, "make-model", "--preset", "tiny", "--out", f"{tmp}/{name}", "--seed", str(seed),
                            "--dtype", "f32", "--tokenizer", a.vocab], check=True, capture_output=True)
        doc, reqs, ref = test_generate(a, tmp, f"{tmp}/m1", f"{tmp}/m2", a.mpirun)
        test_serve(a, tmp, f"{tmp}/m1", doc, reqs, ref, a.mpirun)
        figure(a, tmp)
    finish()


if __name__ == "__main__":
    main()
