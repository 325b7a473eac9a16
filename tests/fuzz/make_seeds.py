#!/usr/bin/env python3
"""Writes the fuzz harnesses' seed corpora, tests/fuzz/corpus/<target>/.

Small valid (and a few just-invalid) inputs of each kind, so the fuzzer starts
from the real formats: the golden configs, tiny safetensors files, sharded
indexes, generation configs, JSONL request lines like the tests', chat
messages with tools, and serve frames (protobuf encoded here by hand: the
wire format is simple and no protobuf package is needed). Deterministic:
running it again rewrites the same bytes.

    python3 tests/fuzz/make_seeds.py        # from the repository root
"""
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def safetensors(tensors, meta=None, pad=0):
    """tensors: [(name, dtype, shape, nbytes)] laid out back to back."""
    hdr, off = {}, 0
    if meta is not None:
        hdr["__metadata__"] = meta
    for name, dtype, shape, nbytes in tensors:
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + nbytes]}
        off += nbytes
    h = json.dumps(hdr, separators=(",", ":")).encode() + b" " * pad
    return struct.pack("<Q", len(h)) + h + bytes(range(256)) * (off // 256) + bytes(off % 256)


def seeds_safetensors():
    put("safetensors", "one_f32", safetensors([("w", "F32", [2, 2], 16)]))
    put("safetensors", "mixed", safetensors([("a.weight", "BF16", [3, 2], 12), ("b.bias", "F16", [4], 8),
                                             ("c", "F32", [1, 1, 2, 1], 8)], meta={"format": "pt"}, pad=5))
    put("safetensors", "scalar_empty", safetensors([("s", "F32", [], 4), ("z", "BF16", [0, 3], 0)]))
    put("safetensors", "bad_dtype", safetensors([("w", "I8", [2], 2)]))
    put("safetensors", "empty_header", safetensors([]))
    # A real golden checkpoint's header (its data cut to keep the seed small: refused as truncated).
    with open(os.path.join(ROOT, "tests/golden/data/nkv2_r500/chatglm/model.safetensors"), "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0]
        put("safetensors", "golden_header_truncated", head + f.read(n) + bytes(64))


def seeds_st_index():
    # The harness's shards: a.safetensors holds a.w, a.b; b.safetensors holds b.w.
    put("st_index", "both", json.dumps({"metadata": {"total_size": 26}, "weight_map": {
        "a.w": "a.safetensors", "a.b": "a.safetensors", "b.w": "b.safetensors"}}, indent=2))
    put("st_index", "one", json.dumps({"weight_map": {"b.w": "b.safetensors"}}))
    put("st_index", "wrong_file", json.dumps({"weight_map": {"a.w": "b.safetensors"}}))
    put("st_index", "missing", json.dumps({"weight_map": {"x": "c.safetensors"}}))
    put("st_index", "slash", json.dumps({"weight_map": {"a.w": "../a.safetensors"}}))


def seeds_config():
    for case in sorted(os.listdir(os.path.join(ROOT, "tests/golden/data"))):
        for layout in ("chatglm", "hf"):
            p = os.path.join(ROOT, "tests/golden/data", case, layout, "config.json")
            if os.path.exists(p):
                with open(p, "rb") as f:
                    put("config", f"{case}_{layout}", f.read())
    put("config", "null_fields", json.dumps({"model_type": "glm", "num_hidden_layers": 2, "hidden_size": 64,
                                              "intermediate_size": 96, "num_attention_heads": 4,
                                              "num_key_value_heads": None, "vocab_size": 300,
                                              "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
                                              "eos_token_id": None, "head_dim": None}))


def seeds_genconfig():
    put("genconfig", "glm4_chat", json.dumps({"eos_token_id": [151329, 151336, 151338], "pad_token_id": 151329,
                                              "do_sample": True, "temperature": 0.8, "max_length": 128000,
                                              "top_p": 0.8, "transformers_version": "4.44.0"}, indent=2))
    put("genconfig", "greedy", json.dumps({"do_sample": False, "max_new_tokens": 64, "top_k": 5}))
    put("genconfig", "nulls", json.dumps({"do_sample": None, "temperature": None, "top_p": None, "top_k": None}))


def seeds_tokenizer():
    put("tokenizer", "english", "The capital of France is Paris. It's 2024!\n\n  indented\tcode()")
    put("tokenizer", "chinese", "你好，世界。我是 GLM-4 模型。")
    put("tokenizer", "mixed_bytes", b"ok \xff\xfe bad \xe4\xbd utf8 \xf0\x9f\x98\x80 emoji <|user|> [gMASK]")
    put("tokenizer", "ids_u32", struct.pack("<8I", 151331, 151333, 9703, 0, 255, 151336, 100, 1 << 31))
    put("tokenizer", "spaces_digits", "    12345678901234567890   \r\n\r\n x's 'll 've")


def chat(messages, tools=None):
    return json.dumps({"messages": messages, "tools": tools} if tools is not None else messages,
                      ensure_ascii=False)


WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                             "parameters": {"type": "object", "properties": {
                                                 "city": {"type": "string"}}, "required": ["city"]}}}]


def seeds_chat():
    put("chat", "user", chat([{"role": "user", "content": "hi"}]))
    put("chat", "history", chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": "你好"},
                                 {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "more"}]))
    put("chat", "tools", chat([{"role": "user", "content": "weather in Paris?"},
                               {"role": "assistant", "metadata": "get_weather", "content": "{\"city\": \"Paris\"}"},
                               {"role": "observation", "content": "{\"temp\": 21}"}], WEATHER))
    put("chat", "msg_tools", chat([{"role": "system", "content": "", "tools": WEATHER},
                                   {"role": "user", "content": "<|assistant|> inject"}]))
    put("chat", "bad_role", chat([{"role": "wizard", "content": "hi"}]))


def seeds_jsonl():
    lines = {
        "prompt": {"id": 1, "prompt": "The capital of France is", "max_tokens": 8},
        "messages": {"id": "c", "messages": [{"role": "system", "content": "be brief"},
                                             {"role": "user", "content": "hi"}], "tools": WEATHER},
        "ids": {"id": [1], "input_ids": [151331, 151333, 9703], "max_new_tokens": 4, "stop": ["\n", "."]},
        "sampling": {"id": None, "prompt": "x", "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 5,
                     "stop": "end"},
        "bad_temp": {"id": "temp", "prompt": "x", "temperature": -0.5},
        "unknown_key": {"id": 2, "prompt": "x", "max_new": 3},
        "too_long": {"id": "long", "prompt": "word " * 300, "max_new_tokens": 2000},
    }
    for name, obj in lines.items():
        put("jsonl", name, json.dumps(obj, ensure_ascii=False))
    put("jsonl", "not_json", "{\"id\": 1, \"prompt\": ")


# ---- protobuf wire format, enough for ClientMessage ----
def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(num, wire, payload):
    key = varint(num << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    if wire == 2:
        payload = payload.encode() if isinstance(payload, str) else payload
        return key + varint(len(payload)) + payload
    if wire == 5:
        return key + struct.pack("<f", payload)
    raise ValueError(wire)


def generate(req_id, body, **opt):
    b = field(1, 2, req_id) + body
    if "temperature" in opt:
        b += field(5, 5, opt["temperature"])
    if "top_p" in opt:
        b += field(6, 5, opt["top_p"])
    if "top_k" in opt:
        b += field(7, 0, opt["top_k"])
    if "seed" in opt:
        b += field(8, 0, opt["seed"])
    if "max_new" in opt:
        b += field(9, 0, opt["max_new"])
    for s in opt.get("stop", []):
        b += field(10, 2, s)
    for i in opt.get("stop_ids", []):
        b += field(11, 0, i)
    if opt.get("stream"):
        b += field(12, 0, 1)
    if "keep_prefix" in opt:
        b += field(13, 0, opt["keep_prefix"])
    return field(2, 2, b)


def message(role, content, metadata=None):
    b = field(1, 2, role) + field(2, 2, content)
    return b + (field(3, 2, metadata) if metadata else b"")


def seeds_serve():
    put("serve", "auth", field(1, 2, field(1, 2, "fuzz-token")))
    put("serve", "text", generate("r1", field(2, 2, "Hello"), max_new=8, stream=True))
    chat_msgs = field(1, 2, message("system", "be brief")) + field(1, 2, message("user", "你好"))
    put("serve", "chat", generate("r2", field(3, 2, chat_msgs), temperature=0.7, top_p=0.9, top_k=40, seed=3,
                                  stop=["\n"], stop_ids=[151336]))
    ids = b"".join(varint(i) for i in (151331, 151333, 9703))
    put("serve", "ids_packed", generate("r3", field(4, 2, field(1, 2, ids)), max_new=4))
    put("serve", "keep_prefix", generate("r6", field(2, 2, "a document"), keep_prefix=-1))
    put("serve", "ids_bad", generate("r4", field(4, 2, field(1, 0, (1 << 64) - 1)), stop_ids=[-1]))
    put("serve", "temp_nan", generate("r5", field(2, 2, "x"), temperature=float("nan")))
    put("serve", "cancel", field(3, 2, field(1, 2, "r1")))
    put("serve", "health", field(4, 2, b""))
    put("serve", "stats", field(5, 2, b""))


def seeds_image():
    """The smallest committed test images of each decoder path (tests/image/data, made by
    tests/image/make_image_golden.py) and a data URL."""
    src = os.path.join(ROOT, "tests", "image", "data")
    for name in ("gray2_33x17.png", "palette4_45x31.png", "gray16_40x30.png", "gray_alpha_45x31.png",
                 "s422_31x45.jpg", "progressive_97x61.jpg", "gray_61x45.jpg", "cmyk_64x48.jpg", "lossy_97x61.webp",
                 "palette4_45x31.png.dataurl"):
        with open(os.path.join(src, name), "rb") as f:
            put("image", name, f.read())
    put("image", "png_signature", bytes.fromhex("89504e470d0a1a0a"))  # the fuzzer grows chunks from it


if __name__ == "__main__":
    if os.path.isdir(CORPUS):
        shutil.rmtree(CORPUS)
    for f in (seeds_safetensors, seeds_st_index, seeds_config, seeds_genconfig, seeds_tokenizer, seeds_chat,
              seeds_jsonl, seeds_serve, seeds_image):
        f()
    for t in sorted(os.listdir(CORPUS)):
        print(f"{t}: {len(os.listdir(os.path.join(CORPUS, t)))} seeds")
