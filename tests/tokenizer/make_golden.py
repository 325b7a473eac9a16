#!/usr/bin/env python3
"""Golden data for the GLM-4 tokenizer (coordinator/text/tokenizer.c).

Developers only -- never run by CI. CI runs tests/test_tokenizer.c against the
golden.json this script wrote and needs no Python package.

Requirements:
    pip install tiktoken          # golden.json records the version used

Usage:
    python3 tests/tokenizer/make_golden.py [--vocab tests/data/glm4-tokenizer/tokenizer.model]
                                           [--out tests/tokenizer/golden.json]

The reference is tiktoken itself, loaded the way THUDM's ChatGLM4Tokenizer
loads it (spec §4): Encoding(pat_str=<spec §4.2 regex>, mergeable_ranks=<file>,
special_tokens=<14 specials>), and every text is encoded with encode_ordinary
(no special-token parsing: "<|user|>" in text is ordinary text).

golden.json holds
  meta              tiktoken/python versions, vocab sha256, the regex.
  cases             [{name, text | bytes_b64, ids}]: a varied corpus and a
                    ~200 KB deterministic "long document" (text and full ids).
  codepoint_blocks  every code point U+0000..U+10FFFF (surrogates left out)
                    in the template below, encoded per block of 4096 code
                    points; stored as (n_ids, FNV-1a-64 of the ids as uint32
                    little-endian) per block. The C test rebuilds the same
                    text, so it checks the ids exactly: it pins down the
                    regex's character classes (\\p{L}, \\p{N}, \\s, case folding)
                    against tiktoken's Rust regex, Unicode version included.
  classes           tiktoken's \\p{L}, \\p{N} and \\s as code point ranges; the
                    C test classifies every code point through the
                    pre-tokenizer (tok_split) and compares.
  decode_cases      [{ids, text_b64}]: token sequences whose bytes are not
                    valid UTF-8, with Python's bytes.decode("utf-8", "replace").

Invalid UTF-8 (cases with bytes_b64). tiktoken's public encoders take a str,
so they cannot see invalid bytes: a str with lone surrogates (e.g. from
bytes.decode("utf-8", "surrogateescape")) has each surrogate replaced by
U+FFFD first. The private Encoding._encode_bytes(bytes) encodes the valid
prefix, then runs BPE without the regex over the last piece plus everything
after the first invalid byte (its source says this "may not be correct"). glmtp
keeps the bytes instead: the regex runs on each maximal valid-UTF-8 stretch as
a string of its own, and each maximal run of invalid bytes is one BPE piece.
The expected ids for those cases are built from tiktoken's own pieces
(encode_ordinary on valid stretches, _encode_single_piece on invalid runs);
"ids_tiktoken_encode_bytes" records what _encode_bytes gives, for information.
"""

import argparse
import base64
import hashlib
import itertools
import json
import os
import platform
import random
import sys

import tiktoken

PAT_STR = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
           r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
            "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
            "<|begin_of_video|>", "<|end_of_video|>"]
CP_TEMPLATE = "x{c}1{c} {c}.{c}'{c}\n"  # C test: test_tokenizer.c codepoint_text()
CP_BLOCK = 4096
LONG_DOC_BYTES = 200_000
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def load_encoding(vocab):
    ranks = {}
    with open(vocab, "rb") as f:
        for line in f:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return tiktoken.Encoding(name="glm4", pat_str=PAT_STR, mergeable_ranks=ranks,
                             special_tokens={s: len(ranks) + i for i, s in enumerate(SPECIALS)})


def encode_bytes(enc, b):
    """glmtp's rule for arbitrary bytes, from tiktoken's own pieces."""
    s = b.decode("utf-8", "surrogateescape")
    ids = []
    for bad, grp in itertools.groupby(s, key=lambda ch: 0xDC80 <= ord(ch) <= 0xDCFF):
        g = "".join(grp)
        if bad:
            ids += enc._encode_single_piece(bytes(ord(ch) - 0xDC00 for ch in g))
        else:
            ids += enc.encode_ordinary(g)
    return ids


def fnv1a64(ids):
    h = 0xcbf29ce484222325
    for i in ids:
        for byte in int(i).to_bytes(4, "little"):
            h = ((h ^ byte) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


# ==== Corpus ====

ZH = [
    "我爱北京天安门，天安门上太阳升。",
    "人工智能是计算机科学的一个分支，它企图了解智能的实质，并生产出一种新的能以人类智能相似的方式做出反应的智能机器。",
    "今天天气很好，我们去公园散步吧！你觉得怎么样？",
    "学而时习之，不亦说乎？有朋自远方来，不亦乐乎？人不知而不愠，不亦君子乎？",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "大语言模型（LLM）通过在海量文本上进行预训练，学习到了丰富的语言知识和世界知识。",
    "请把下面这段话翻译成英文：“智谱AI发布了新一代基座模型GLM-4。”",
    "张量并行把每一层的权重矩阵按列或按行切分到多张显卡上，每张卡只计算一部分，然后通过全规约（all-reduce）合并结果。",
    "价格：￥1,299.00元（含税），库存：３２件，编号：ＡＢＣ－１２３。",
    "繁體中文：這是一個測試句子，用來檢查分詞器對繁體字的處理。",
]
EN = [
    "Hello, world! This is a test of the GLM-4 tokenizer.",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG.",
    "It's a dog's life; they're here, we've gone, I'm sure you'll see what he'd say.",
    "IT'S A DOG'S LIFE; THEY'RE HERE, WE'VE GONE, I'M SURE YOU'LL SEE WHAT HE'D SAY.",
    "She said 'hello' and he said \"goodbye\" -- then: silence... (mostly).",
    "Tensor parallelism splits each weight matrix across devices; an all-reduce combines the partial sums.",
    "e-mail: john.doe+test@example.com, url: https://example.org/path?q=1&r=two#frag",
]
CODE = [
    'def fib(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\nprint([fib(i) for i in range(10)])\n',
    '#include <stdio.h>\n\nint main(int argc, char **argv) {\n\tfor (int i = 0; i < argc; i++)\n\t\tprintf("%d: %s\\n", i, argv[i]);\n\treturn 0;\n}\n',
    'fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!("{:?}", v);\n}\n',
    'function debounce(fn, ms) {\n  let t;\n  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };\n}\n',
    'SELECT u.id, COUNT(*) AS n FROM users u JOIN orders o ON o.user_id = u.id WHERE o.total > 100.50 GROUP BY u.id HAVING n >= 3;\n',
    '{\n  "name": "glmtp",\n  "version": "0.1.0",\n  "tensor_parallel": 4,\n  "stop": [151329, 151336, 151338]\n}\n',
    '<html>\n  <body class="main">\n    <p>Hello &amp; welcome</p>\n  </body>\n</html>\n',
    'package main\n\nimport "fmt"\n\nfunc main() {\n\tch := make(chan int, 3)\n\tgo func() { ch <- 42 }()\n\tfmt.Println(<-ch)\n}\n',
    '#!/bin/bash\nset -euo pipefail\nfor f in *.txt; do\n  wc -l "$f" | awk \'{print $1}\'\ndone 2>/dev/null\n',
    'x = a**2 + b**2 != c**2 && y <<= 3 || z >>= 1; i++; j--; k += 1e-9;\n',
]
MIXED = [
    "العربية: مرحبا بالعالم! كيف حالك اليوم؟",
    "हिन्दी: नमस्ते दुनिया, आप कैसे हैं?",
    "ไทย: สวัสดีชาวโลก วันนี้อากาศดีมาก",
    "Русский: Привет, мир! Как дела? ЁЛКИ-ПАЛКИ.",
    "日本語：こんにちは世界。カタカナとひらがな、そして漢字。",
    "한국어: 안녕하세요 세계! 오늘 날씨가 좋네요.",
    "Ελληνικά: Γειά σου Κόσμε. עברית: שלום עולם. Tiếng Việt: Xin chào thế giới.",
    "Mixed: GLM-4模型在MMLU上得分74.7，在C-Eval上得分75.6；English和中文混排。",
]
EMOJI = [
    "I ❤️ tokenizers 😀😃😄😁 🎉🎉🎉",
    "Family: 👨‍👩‍👧‍👦 👩‍❤️‍💋‍👨 🏳️‍🌈 🏴‍☠️",
    "Skin tones: 👋🏻 👋🏼 👋🏽 👋🏾 👋🏿 🧑🏽‍💻",
    "Flags: 🇺🇸🇨🇳🇯🇵🇩🇪🇫🇷 🇬🇧",
    "Keycaps and variation: 1️⃣ #️⃣ ©️ ™ ☺︎ ☺️",
]
NUMBERS = [
    "1 12 123 1234 12345 123456 1234567 12345678901234567890",
    "3.14159265358979323846 -2.71828 6.02e23 0x1F 0b1010 1,000,000 1_000_000",
    "Year 2024, 08:30:59, +86 138-0013-8000, ISBN 978-3-16-148410-0",
    "٠١٢٣٤٥٦٧٨٩ ०१२३४५६७८९ ①②③ Ⅻ ½ ¾ ²³",
]
WHITESPACE = [
    " ", "  ", "    leading", "trailing   ", "a  b   c    d", "\t\tx", "a\tb\t\tc",
    "line1\nline2\n\nline4\n\n\n", "crlf\r\nline\r\n\r\nend", "lone\rcr\rhere", "mix \t \r\n \n\t x",
    "   \n   \n   ", "\n\n\n\n", "   ", "x   \n", "\u00a0nbsp\u00a0 \u3000ideo\u3000space\u2028ls\u2029ps",
    "nel\u0085x \u0085 y", "mvs\u180ex \u180e y", "sp\u180e \u180e  \u180e\n\u180e\u180e   \u180ey\t\u180e  z", "zw\u200bsp\u200czwnj\u200dzwj\ufeffbom",
    "       indented code\n\t\tTabs\n", "end with space ",
]
MATH = [
    "∀x∈ℝ: x² ≥ 0; ∑_{i=1}^{n} i = n(n+1)/2; ∫₀^∞ e^{-x²} dx = √π/2",
    "α β γ δ ε ∂ ∇ ∞ ≈ ≠ ≤ ≥ ⊂ ⊆ ∪ ∩ ∧ ∨ ¬ ⇒ ⇔ ℵ₀ 𝔽 𝕏 𝒜",
    "E = mc²; F = G·m₁·m₂/r²; ħω; λ = 0.5 μm; 25°C ± 0.1",
]
CONTRACTIONS = [
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D 'Ll 'rE",
    "don't DON'T won't I'LL you'RE they'Ve 'x 'sx 'ss ''s",
    "'\u017f 'K 'ſt 'ﬆ",  # long s folds to s; Kelvin sign; ligature
]
SPECIAL_TEXT = [
    "<|user|>",
    "[gMASK]<sop><|system|>\nYou are a helpful assistant.<|user|>\nHi!<|assistant|>\nHello!<|observation|>\n{}<|endoftext|>",
    "Please ignore <|endoftext|> and [MASK] [sMASK] <eop> <|begin_of_image|><|end_of_image|><|begin_of_video|><|end_of_video|>",
    "<|assistant|>",
]
EDGE = [
    "", "a", "!", "\n", "\x00", "\x00\x01\x02\x7f", "hello\x00world",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "=" * 300, "-" * 1000 + "\n", " " * 5000 + "x", "\n" * 300, "ab" * 400,
    "".join(chr(0x4e00 + (i * 37) % 20000) for i in range(500)),
    "".join(chr(c) for c in range(0x20, 0x7f)),
    "".join(chr(c) for c in range(0xa0, 0x250)),
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    "a" * 3000,
    "".join(random.Random(5).choice("abcdefghij") for _ in range(4000)),
    "\U0001F600" * 200, "\u00e9" * 1000,
]
INVALID = [
    ("invalid_ff", b"\xff"),
    ("invalid_mid", b"abc\x80def"),
    ("invalid_start", b"\x80abc"),
    ("truncated_zh_end", "hello 中文".encode()[:-2]),
    ("truncated_emoji_mid", b"ok \xf0\x9f\x98 then more text"),
    ("overlong_slash", b"a\xc0\xafb"),
    ("encoded_surrogate", b"x\xed\xa0\x80y"),
    ("beyond_10ffff", b"z\xf4\x90\x80\x80z"),
    ("latin1", "café naïve résumé".encode("latin-1")),
    ("invalid_in_spaces", b"  \xff  x \xfe\xfe   \xfd\n"),
    ("invalid_in_digits", b"12\xff345\x80678"),
    ("invalid_runs", b"\xc3\xc3\xc3 \xe4\xb8\xe4\xb8\xad \x80\x80\x80\x80\x80\x80"),
    ("invalid_only", bytes(range(0x80, 0x100))),
    ("invalid_zh_mix", "中文".encode() + b"\xa0\xa1" + "测试".encode() + b"\xe6"),
    ("invalid_long_word", b"word" * 50 + b"\xff" + b"tail" * 50),
    ("invalid_before_ws_lookahead", b"a   \xffb"),
]


def long_document(seed=20240601, nbytes=LONG_DOC_BYTES):
    """Deterministic ~nbytes document mixing every corpus kind plus generated
    numbers, identifiers, whitespace and paragraphs."""
    rng = random.Random(seed)
    pools = [ZH, EN, CODE, MIXED, EMOJI, NUMBERS, WHITESPACE, MATH, CONTRACTIONS, SPECIAL_TEXT]
    words = "the of and to in is that for it as with was on be by this are from or have not but".split()
    parts, size = [], 0
    while size < nbytes:
        k = rng.randrange(14)
        if k < 10:
            s = rng.choice(pools[k])
        elif k == 10:
            s = " ".join(str(rng.randrange(10 ** rng.randrange(1, 25))) for _ in range(rng.randrange(1, 8)))
        elif k == 11:
            s = "_".join(rng.choice(words) + str(rng.randrange(100)) for _ in range(rng.randrange(1, 5)))
        elif k == 12:
            s = rng.choice([" ", "\t", "\n", "\r\n", "  ", "\n\n"]) * rng.randrange(1, 6)
        else:
            s = " ".join(rng.choice(words) for _ in range(rng.randrange(5, 40))).capitalize() + ". "
        parts.append(s)
        parts.append(rng.choice(["", " ", "\n", "\n\n", ". ", "，"]))
        size += len(s.encode()) + 1
    return "".join(parts)


def chinese_document(seed=7, nbytes=LONG_DOC_BYTES):
    """Chinese-heavy text (for bench_tokenizer.py)."""
    rng = random.Random(seed)
    parts, size = [], 0
    while size < nbytes:
        s = rng.choice(ZH) if rng.random() < 0.9 else rng.choice(MIXED + NUMBERS)
        parts.append(s + ("\n" if rng.random() < 0.2 else ""))
        size += len(s.encode())
    return "".join(parts)


def codepoint_blocks(enc):
    out = []
    for first in range(0, 0x110000, CP_BLOCK):
        text = "".join(CP_TEMPLATE.format(c=chr(c)) for c in range(first, first + CP_BLOCK)
                       if not 0xD800 <= c <= 0xDFFF)
        ids = enc.encode_ordinary(text)
        out.append({"first": first, "n_ids": len(ids), "fnv1a64": "%016x" % fnv1a64(ids)})
    return out


def char_classes():
    """tiktoken's own character classes: with a pattern of just \\p{L} (etc.)
    and a single-byte vocabulary, encode_ordinary returns exactly the bytes
    of the characters the class matches."""
    allc = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    out = {}
    for name, pat in [("L", r"\p{L}"), ("N", r"\p{N}"), ("S", r"\s")]:
        e = tiktoken.Encoding(name="probe_" + name, pat_str=pat, special_tokens={},
                              mergeable_ranks={bytes([i]): i for i in range(256)})
        cps = sorted(set(map(ord, bytes(e.encode_ordinary(allc)).decode())))
        ranges = []
        for c in cps:
            if ranges and ranges[-1][1] == c - 1:
                ranges[-1][1] = c
            else:
                ranges.append([c, c])
        out[name] = ranges
    return out


def decode_cases(enc, n_regular):
    rng = random.Random(11)
    def tb(i):
        return enc.decode_single_token_bytes(i)
    ascii_ids = [i for i in range(n_regular) if tb(i).isascii()][:2000]
    bad_ids = [i for i in range(n_regular) if not _valid(tb(i))]
    cases = []
    for k in range(300):
        n = rng.randrange(1, 12)
        ids = [rng.choice(bad_ids) if rng.random() < 0.6 else
               (rng.randrange(256) if rng.random() < 0.5 else rng.choice(ascii_ids)) for _ in range(n)]
        if k % 10 == 0:
            ids.append(n_regular + rng.randrange(len(SPECIALS)))  # specials mid-sequence decode as text
            ids += [rng.choice(bad_ids)]
        cases.append(ids)
    # Hand-picked: lone bytes, truncated sequences, surrogates, overlongs.
    for b in [b"\x80", b"\xff", b"\xc3", b"\xe4\xb8", b"\xf0\x9f\x98", b"\xed\xa0\x80", b"\xc0\xaf",
              b"\xf4\x90\x80\x80", b"\xe0\x80\x80", b"\xf0\x80", b"\xe4\xb8\xe4\xb8\xad", b"a\xe4\xb8"]:
        cases.append(list(b))  # ids 0..255 are not the bytes themselves: map below
    out = []
    byte_id = {tb(i): i for i in range(n_regular) if len(tb(i)) == 1}
    for ids in cases[:300]:
        data = b"".join(enc.decode_single_token_bytes(i) for i in ids)
        out.append({"ids": ids, "text_b64": base64.b64encode(data.decode("utf-8", "replace").encode()).decode()})
    for raw in cases[300:]:
        ids = [byte_id[bytes([x])] for x in raw]
        out.append({"ids": ids, "text_b64": base64.b64encode(bytes(raw).decode("utf-8", "replace").encode()).decode()})
    return out


def text_case(name, text, ids):
    # cJSON strings end at a NUL, so text holding one travels as base64.
    if "\x00" in text:
        return {"name": name, "bytes_b64": base64.b64encode(text.encode()).decode(), "ids": ids}
    return {"name": name, "text": text, "ids": ids}


def _valid(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", default=os.path.join(ROOT, "tests/data/glm4-tokenizer/tokenizer.model"))
    ap.add_argument("--out", default=os.path.join(HERE, "golden.json"))
    a = ap.parse_args()
    enc = load_encoding(a.vocab)
    n_regular = enc.n_vocab - len(SPECIALS)
    with open(a.vocab, "rb") as f:
        vocab_sha = hashlib.sha256(f.read()).hexdigest()

    cases = []
    groups = [("zh", ZH), ("en", EN), ("code", CODE), ("mixed", MIXED), ("emoji", EMOJI),
              ("numbers", NUMBERS), ("ws", WHITESPACE), ("math", MATH), ("contraction", CONTRACTIONS),
              ("special_text", SPECIAL_TEXT), ("edge", EDGE)]
    for group, texts in groups:
        for i, t in enumerate(texts):
            cases.append(text_case(f"{group}_{i}", t, enc.encode_ordinary(t)))
    everything = "\n".join(t for _, texts in groups for t in texts)
    cases.append(text_case("all_of_the_above", everything, enc.encode_ordinary(everything)))
    for name, b in INVALID:
        ids = encode_bytes(enc, b)
        c = {"name": name, "bytes_b64": base64.b64encode(b).decode(), "ids": ids}
        c["ids_tiktoken_encode_bytes"] = enc._encode_bytes(b)
        assert b"".join(enc.decode_single_token_bytes(i) for i in ids) == b
        cases.append(c)
    doc = long_document()
    cases.append({"name": "long_document", "text": doc, "ids": enc.encode_ordinary(doc)})
    for c in cases:  # special-token text never comes out as a special id
        assert all(i < n_regular for i in c["ids"]), c["name"]

    golden = {
        "meta": {
            "generator": "tests/tokenizer/make_golden.py",
            "tiktoken_version": tiktoken.__version__,
            "python_version": platform.python_version(),
            "vocab_sha256": vocab_sha,
            "n_regular": n_regular,
            "pat_str": PAT_STR,
            "special_tokens": {s: n_regular + i for i, s in enumerate(SPECIALS)},
            "method": "tiktoken.Encoding(...).encode_ordinary(text); invalid UTF-8: see make_golden.py docstring",
        },
        "cases": cases,
        "codepoint_blocks": {"template": CP_TEMPLATE, "block": CP_BLOCK, "skip": "U+D800..U+DFFF",
                             "hash": "FNV-1a 64 over ids as uint32 little-endian", "blocks": codepoint_blocks(enc)},
        "classes": char_classes(),
        "decode_cases": decode_cases(enc, n_regular),
    }
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {a.out}: {len(cases)} cases, {os.path.getsize(a.out)} bytes, tiktoken {tiktoken.__version__}")


if __name__ == "__main__":
    sys.exit(main())
