#!/usr/bin/env python3
"""Malformed checkpoints and options: glmtp must fail fast with one clear line per rank.

usage: bad_input.py GLMTP [--mpirun "mpiexec --oversubscribe"] [--only SUBSTR] [-j JOBS] [--keep] [-v]

Makes small valid models with `glmtp make-model` (tiny preset, vocab 300: f32,
bf16, HF layout, 3 shards, 4 KV groups), then for every case a corrupted copy,
and runs `glmtp score --model DIR --ids 1,2,3` on 1 rank and, when --mpirun is
not empty, on 2 and 4 ranks (`MPIRUN -np N glmtp ...`). Each run must:
  - exit non-zero (and not by a signal) within 20 s;
  - print one clear error line: `glmtp: ...` alone when every rank failed the
    same way (one rank, or N ranks that agree: rank 0 speaks for all), else
    exactly one line per rank, `glmtp: rank R: ...` for each R (the load
    summary line `glmtp: rank R/N: weights ...` is not an error line);
  - name what is wrong: every expected substring (the file's path, the tensor
    or config field) in every rank's line;
  - show no sanitizer report (AddressSanitizer, LeakSanitizer, UBSan
    "runtime error") and no crash.
Prints `ok`/`FAIL`/`skip` and the case name per case, then `N passed, M failed`;
exits 1 if any case failed. Python standard library only.
"""
import argparse
import concurrent.futures
import json
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

TIMEOUT_S = 20.0
SLOWEST = [0.0]  # longest single run, for the summary
VOCAB = 300

# Tensor names of the original (chatglm) layout.
EMB = "transformer.embedding.word_embeddings.weight"
OUT = "transformer.output_layer.weight"
FINAL_LN = "transformer.encoder.final_layernorm.weight"


def L(i, rest):
    return "transformer.encoder.layers.%d.%s" % (i, rest)


LN1_0 = L(0, "input_layernorm.weight")
LN2_0 = L(0, "post_attention_layernorm.weight")
QKV_0 = L(0, "self_attention.query_key_value.weight")
QKVB_0 = L(0, "self_attention.query_key_value.bias")
DENSE_0 = L(0, "self_attention.dense.weight")
H4H_0 = L(0, "mlp.dense_h_to_4h.weight")
DOWN_1 = L(1, "mlp.dense_4h_to_h.weight")
HF_K_0 = "model.layers.0.self_attn.k_proj.weight"
HF_V_1 = "model.layers.1.self_attn.v_proj.weight"

ST = "model.safetensors"
INDEX = "model.safetensors.index.json"
SANITIZER = re.compile(r"AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:")
CRASH = re.compile(r"exited on signal|Segmentation fault|Aborted|core dumped|signal \d+ \(|MPI_ABORT")
SUMMARY = re.compile(r"^glmtp: rank \d+/\d+: ")


# --- safetensors --------------------------------------------------------------

def st_read(path):
    """(header dict in file order, data bytes, header length)."""
    with open(path, "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8:8 + n].decode("utf-8")), b[8 + n:], n


def st_write_raw(path, header_text, data, hlen=None):
    """Writes a header given as text (padded with spaces to 8 bytes), and data."""
    h = header_text.encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h) if hlen is None else hlen))
        f.write(h)
        f.write(data)


def st_write(path, header, data):
    st_write_raw(path, json.dumps(header, separators=(",", ":")), data)


def st_edit(path, fn):
    """Rewrites path's header through fn(header) (in place edit), data unchanged."""
    h, d, _ = st_read(path)
    fn(h)
    st_write(path, h, d)


def st_repack(path, drop=()):
    """Removes the tensors in drop (header and bytes), packing the rest."""
    h, d, _ = st_read(path)
    out_h, out_d = {}, bytearray()
    for name, e in h.items():
        if name == "__metadata__":
            out_h[name] = e
            continue
        if name in drop:
            continue
        b, en = e["data_offsets"]
        out_h[name] = dict(e, data_offsets=[len(out_d), len(out_d) + en - b])
        out_d += d[b:en]
    st_write(path, out_h, bytes(out_d))


# --- editing helpers ----------------------------------------------------------

def cfg_edit(d, fn):
    p = os.path.join(d, "config.json")
    with open(p) as f:
        c = json.load(f)
    fn(c)
    with open(p, "w") as f:
        json.dump(c, f, indent=1)


def cfg_set(**kv):
    return lambda d: cfg_edit(d, lambda c: c.update(kv))


def cfg_del(*keys):
    def fn(c):
        for k in keys:
            del c[k]
    return lambda d: cfg_edit(d, fn)


def index_edit(d, fn):
    p = os.path.join(d, INDEX)
    with open(p) as f:
        c = json.load(f)
    fn(c)
    with open(p, "w") as f:
        json.dump(c, f, indent=1)


def shard_of(d, name):
    with open(os.path.join(d, INDEX)) as f:
        return json.load(f)["weight_map"][name]


def write_file(name, text):
    def fn(d):
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    return fn


def truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def set_entry(name, **kv):
    """Edits one header entry of DIR/model.safetensors."""
    def fn(d):
        st_edit(os.path.join(d, ST), lambda h: h[name].update(kv))
    return fn


def offsets(d, name):
    h, _, _ = st_read(os.path.join(d, ST))
    return h[name]["data_offsets"]


# --- cases ------------------------------------------------------------------------

class Case:
    def __init__(self, name, model, mutate=None, expect=(), args=None, nps=(1, 2, 4), model_dir=None, launch=None):
        self.name = name
        self.model = model      # key of the base model copied for the case
        self.mutate = mutate    # fn(case_dir) -> optional extra expected substrings
        self.expect = expect    # substrings, or fn(case_dir, np) -> substrings; "{d}" = case dir
        self.args = args        # score arguments after --model DIR (default --ids 1,2,3)
        self.nps = nps
        self.model_dir = model_dir  # fn(case_dir) -> the --model value (default case_dir)
        self.launch = launch    # fn(case_dir, np, mpirun, glmtp_argv) -> command (default: mpirun -np N)


def cases():
    C = []
    P = "{d}/" + ST

    # Truncated safetensors: in the data section, inside the header, before the length.
    def cut_data(d):
        p = os.path.join(d, ST)
        h, data, n = st_read(p)
        keep = len(data) // 2
        truncate(p, 8 + n + keep)
        # the first tensor in header order that the cut reaches is named
        return [next(k for k, v in h.items() if k != "__metadata__" and v["data_offsets"][1] > keep)]

    C.append(Case("truncated_in_data", "f32", cut_data, [P, "truncated"]))

    def cut_header(d):
        p = os.path.join(d, ST)
        _, _, n = st_read(p)
        truncate(p, 8 + n // 2)

    C.append(Case("truncated_in_header", "f32", cut_header, [P, "header length"]))
    C.append(Case("truncated_before_header", "f32", lambda d: truncate(os.path.join(d, ST), 5), [P, "truncated"]))
    C.append(Case("empty_file", "f32", lambda d: truncate(os.path.join(d, ST), 0), [P, "truncated"]))

    def not_json(d):
        p = os.path.join(d, ST)
        _, data, n = st_read(p)
        st_write_raw(p, ("this is not JSON " * n)[:n], data)

    C.append(Case("header_not_json", "f32", not_json, [P, "header", "JSON"]))

    def json_array(d):
        p = os.path.join(d, ST)
        _, data, n = st_read(p)
        st_write_raw(p, "[1, 2, 3]", data)

    C.append(Case("header_json_not_object", "f32", json_array, [P, "header", "JSON object"]))

    def hlen_past_eof(d):
        p = os.path.join(d, ST)
        h, data, n = st_read(p)
        st_write_raw(p, json.dumps(h), data, hlen=os.path.getsize(p) - 7)

    C.append(Case("header_length_past_eof", "f32", hlen_past_eof, [P, "header length"]))

    def hlen_into_data(d):
        # The JSON parses, but the header would take 16 bytes of the data section.
        p = os.path.join(d, ST)
        h, data, n = st_read(p)
        st_write_raw(p, json.dumps(h), data, hlen=len(json.dumps(h)) + 16)

    C.append(Case("header_length_into_data", "f32", hlen_into_data, [P, "header length"]))

    def hlen_zero(d):
        p = os.path.join(d, ST)
        h, data, n = st_read(p)
        st_write_raw(p, json.dumps(h), data, hlen=0)

    C.append(Case("header_length_zero", "f32", hlen_zero, [P, "header", "JSON"]))

    def hlen_huge(d):
        p = os.path.join(d, ST)
        h, data, n = st_read(p)
        st_write_raw(p, json.dumps(h), data, hlen=(1 << 64) - 1)

    C.append(Case("header_length_2^64-1", "f32", hlen_huge, [P, "header length"]))

    def offsets_past_end(d):
        p = os.path.join(d, ST)
        _, data, _ = st_read(p)
        b, e = offsets(d, DOWN_1)
        set_entry(DOWN_1, data_offsets=[len(data) + 64, len(data) + 64 + e - b])(d)

    C.append(Case("data_offsets_outside_file", "f32", offsets_past_end, [P, DOWN_1, "data_offsets"]))

    def offsets_reversed(d):
        b, e = offsets(d, DENSE_0)
        set_entry(DENSE_0, data_offsets=[e, b])(d)

    C.append(Case("data_offsets_begin_gt_end", "f32", offsets_reversed, [P, DENSE_0, "data_offsets"]))
    C.append(Case("data_offsets_not_numbers", "f32", set_entry(QKVB_0, data_offsets=["0", "768"]),
                  [P, QKVB_0, "data_offsets"]))
    C.append(Case("data_offsets_fractional", "f32",
                  lambda d: set_entry(QKVB_0, data_offsets=[offsets(d, QKVB_0)[0] + 0.5, offsets(d, QKVB_0)[1]])(d),
                  [P, QKVB_0, "data_offsets"]))
    C.append(Case("data_offsets_three", "f32",
                  lambda d: set_entry(QKVB_0, data_offsets=offsets(d, QKVB_0) + [0])(d),
                  [P, QKVB_0, "data_offsets"]))
    C.append(Case("byte_size_not_shape_x_dtype", "f32", set_entry(H4H_0, shape=[600, 127]),
                  [P, H4H_0, "bytes"]))
    C.append(Case("byte_size_wrong_dtype", "f32", set_entry(LN2_0, dtype="BF16"), [P, LN2_0, "BF16", "bytes"]))
    C.append(Case("unknown_dtype", "f32", set_entry(QKV_0, dtype="Q4"), [P, QKV_0, "Q4"]))
    C.append(Case("unsupported_dtype_i8", "bf16", set_entry(EMB, dtype="I8", shape=[300, 256]), [P, EMB, "I8"]))
    C.append(Case("negative_dim", "f32", set_entry(LN1_0, shape=[-128]), [P, LN1_0, "shape"]))
    C.append(Case("too_many_dims", "f32", set_entry(LN1_0, shape=[1, 1, 1, 1, 128]), [P, LN1_0, "dimensions"]))

    def huge_shape(d):
        # 2^32 x 2^32 elements wrap a 64-bit count to 0: must be refused, not taken as 0 bytes.
        p = os.path.join(d, ST)
        h, data, _ = st_read(p)
        h["extra.huge"] = {"dtype": "F32", "shape": [1 << 32, 1 << 32], "data_offsets": [len(data), len(data)]}
        st_write(p, h, data)

    C.append(Case("shape_overflow", "f32", huge_shape, [P, "extra.huge", "shape"]))
    C.append(Case("entry_not_object", "f32",
                  lambda d: st_edit(os.path.join(d, ST), lambda h: h.update({"extra.bad": 5})),
                  [P, "extra.bad"]))
    C.append(Case("entry_missing_dtype", "f32",
                  lambda d: st_edit(os.path.join(d, ST), lambda h: h[FINAL_LN].pop("dtype")),
                  [P, FINAL_LN, "dtype"]))

    def overlap(d):
        # LN2_0 (512 bytes) moved to start half-way into LN1_0 (also 512 bytes).
        b, e = offsets(d, LN1_0)
        half = (e - b) // 2
        set_entry(LN2_0, data_offsets=[b + half, e + half])(d)

    C.append(Case("overlapping_tensors", "f32", overlap, [P, LN1_0, LN2_0, "overlap"]))

    def duplicate(d):
        p = os.path.join(d, ST)
        h, data, _ = st_read(p)
        text = json.dumps(h)
        # a second entry of the same name (JSON allows it textually), not overlapping anything
        extra = ', "%s": {"dtype": "F32", "shape": [2], "data_offsets": [%d, %d]}' % (
            FINAL_LN, len(data), len(data) + 8)
        st_write_raw(p, text[:-1] + extra + "}", data + bytes(8))

    C.append(Case("duplicate_tensor_name", "f32", duplicate, [P, FINAL_LN, "twice"]))

    # Missing tensors.
    C.append(Case("missing_tensor", "f32", lambda d: st_repack(os.path.join(d, ST), drop={DOWN_1}),
                  ["{d}", DOWN_1, "missing"]))
    C.append(Case("missing_tensor_bias", "f32", lambda d: st_repack(os.path.join(d, ST), drop={QKVB_0}),
                  ["{d}", QKVB_0, "missing"]))
    C.append(Case("missing_tensor_hf", "hf", lambda d: st_repack(os.path.join(d, ST), drop={HF_V_1}),
                  ["{d}", HF_V_1, "missing"]))

    def missing_in_shard(d):
        shard = shard_of(d, DOWN_1)
        st_repack(os.path.join(d, shard), drop={DOWN_1})
        index_edit(d, lambda c: c["weight_map"].pop(DOWN_1))

    C.append(Case("missing_tensor_sharded", "sharded", missing_in_shard, ["{d}", DOWN_1, "missing"]))

    def missing_but_indexed(d):
        shard = shard_of(d, DOWN_1)
        st_repack(os.path.join(d, shard), drop={DOWN_1})
        return [shard]

    C.append(Case("index_lists_absent_tensor", "sharded", missing_but_indexed, ["{d}/" + INDEX, DOWN_1]))

    def wrong_shard(d):
        other = shard_of(d, EMB)
        assert other != shard_of(d, DOWN_1)
        index_edit(d, lambda c: c["weight_map"].update({DOWN_1: other}))
        return [other]

    C.append(Case("index_names_wrong_shard", "sharded", wrong_shard, ["{d}/" + INDEX, DOWN_1]))

    # Shapes that disagree with config.json.
    C.append(Case("config_ffn_disagrees", "f32", cfg_set(ffn_hidden_size=256), [P, H4H_0, "config.json"]))
    C.append(Case("config_hidden_disagrees", "f32", cfg_set(hidden_size=64, kv_channels=8), [P, EMB, "config.json"]))
    C.append(Case("config_vocab_disagrees", "f32", cfg_set(padded_vocab_size=320), [P, EMB, "config.json"]))
    C.append(Case("transposed_tensor", "f32", set_entry(DOWN_1, shape=[300, 128]), [P, DOWN_1, "[300, 128]"]))
    C.append(Case("config_more_layers_sharded", "sharded", cfg_set(num_layers=3),
                  ["{d}", L(2, "input_layernorm.weight"), "missing"]))

    def mixed_dtype(d):
        # HF layout: q/k/v_proj are fused per rank, so one F16 among BF16 ones is refused.
        set_entry(HF_K_0, dtype="F16")(d)

    C.append(Case("fused_dtype_mismatch", "hf", mixed_dtype, [P, HF_K_0, "F16", "BF16"]))

    # config.json fields.
    CJ = "{d}/config.json"
    C.append(Case("config_missing_num_layers", "f32", cfg_del("num_layers"), [CJ, "num_layers", "missing"]))
    C.append(Case("config_hidden_not_integer", "f32", cfg_set(hidden_size=128.5), [CJ, "hidden_size", "integer"]))
    C.append(Case("config_hidden_string", "f32", cfg_set(hidden_size="128"), [CJ, "hidden_size", "integer"]))
    C.append(Case("config_layers_contradict", "f32", cfg_set(num_hidden_layers=3),
                  [CJ, "num_layers", "num_hidden_layers"]))
    C.append(Case("config_unknown_model_type", "f32", cfg_set(model_type="llama"), [CJ, "model_type"]))
    C.append(Case("config_missing_model_type", "f32", cfg_del("model_type"), [CJ, "model_type"]))
    C.append(Case("config_zero_heads", "f32", cfg_set(num_attention_heads=0), [CJ, "num_attention_heads"]))
    C.append(Case("config_groups_not_dividing_heads", "f32", cfg_set(multi_query_group_num=3),
                  [CJ, "multi_query_group_num"]))
    C.append(Case("config_odd_head_dim", "f32", cfg_set(kv_channels=15), [CJ, "kv_channels"]))
    C.append(Case("config_bad_epsilon", "f32", cfg_set(layernorm_epsilon=-1), [CJ, "layernorm_epsilon"]))
    C.append(Case("config_bool_not_bool", "f32", cfg_set(rmsnorm="yes"), [CJ, "rmsnorm"]))
    C.append(Case("config_hf_missing_layers", "hf", cfg_del("num_hidden_layers"), [CJ, "num_hidden_layers"]))
    C.append(Case("config_hf_bad_act", "hf", cfg_set(hidden_act="gelu"), [CJ, "hidden_act"]))
    C.append(Case("config_hf_rotary_factor_huge", "hf", cfg_set(partial_rotary_factor=1e300),
                  [CJ, "partial_rotary_factor"]))
    C.append(Case("config_eos_huge", "f32", cfg_set(eos_token_id=1e30), [CJ, "eos_token_id"]))
    C.append(Case("config_eos_list_fraction", "f32", cfg_set(eos_token_id=[2, 2.5]), [CJ, "eos_token_id"]))
    C.append(Case("config_head_dim_zero", "f32",
                  lambda d: cfg_edit(d, lambda c: (c.pop("kv_channels"), c.update(hidden_size=4))),
                  [CJ, "kv_channels"]))
    C.append(Case("config_head_product_overflow", "f32", cfg_set(num_attention_heads=65536, kv_channels=65536),
                  [CJ, "kv_channels"]))
    # Sizes that would make glmtp allocate huge buffers unless it checks the tensors first.
    C.append(Case("config_layers_huge", "f32", cfg_set(num_layers=1000000000),
                  ["{d}", L(2, "input_layernorm.weight"), "missing"]))
    C.append(Case("config_ffn_huge", "f32", cfg_set(ffn_hidden_size=1 << 29), [P, H4H_0, "config.json"]))

    C.append(Case("config_not_json", "f32", write_file("config.json", '{"model_type": "chatglm", num_layers: 2'),
                  [CJ, "JSON"]))
    C.append(Case("config_empty", "f32", write_file("config.json", ""), [CJ, "JSON"]))
    C.append(Case("config_missing", "f32", lambda d: os.remove(os.path.join(d, "config.json")), [CJ]))

    # Tensor parallelism the model cannot be split into.
    C.append(Case("tp3_heads", "f32", None, [CJ, "num_attention_heads", "3 ranks"], nps=(3,)))
    C.append(Case("tp3_kv_groups4", "kv4", None, [CJ, "num_attention_heads", "3 ranks"], nps=(3,)))

    def tp_kv(d, np):
        if np == 1:  # splits fine; the tensors then disagree with the edited config
            return [P, QKV_0, "config.json"]
        return [CJ, "multi_query_group_num", "%d ranks" % np]

    C.append(Case("tp_kv_groups_3", "f32", cfg_set(num_attention_heads=12, multi_query_group_num=3), tp_kv))

    # Directory layout.
    C.append(Case("missing_model_dir", "f32", None, ["{d}/nonexistent"], model_dir=lambda d: d + "/nonexistent"))
    C.append(Case("model_dir_is_file", "f32", None, ["{d}/config.json"], model_dir=lambda d: d + "/config.json"))
    C.append(Case("no_safetensors", "f32", lambda d: os.remove(os.path.join(d, ST)), ["{d}", ST]))

    def st_is_dir(d):
        os.remove(os.path.join(d, ST))
        os.mkdir(os.path.join(d, ST))

    C.append(Case("safetensors_is_directory", "f32", st_is_dir, [P]))

    def index_missing_shard(d):
        index_edit(d, lambda c: c["weight_map"].update({DOWN_1: "model-00009-of-00003.safetensors"}))

    C.append(Case("index_missing_shard", "sharded", index_missing_shard,
                  ["{d}/model-00009-of-00003.safetensors", DOWN_1]))

    def shard_deleted(d):
        shard = shard_of(d, OUT)
        os.remove(os.path.join(d, shard))
        with open(os.path.join(d, INDEX)) as f:  # the index's first tensor in that shard is named
            first = next(k for k, v in json.load(f)["weight_map"].items() if v == shard)
        return ["{d}/" + shard, first]

    C.append(Case("shard_file_deleted", "sharded", shard_deleted, ["{d}/" + INDEX]))
    C.append(Case("index_not_json", "sharded", write_file(INDEX, "{nope"), ["{d}/" + INDEX, "weight_map"]))
    C.append(Case("index_shard_with_slash", "sharded",
                  lambda d: index_edit(d, lambda c: c["weight_map"].update({EMB: "../x.safetensors"})),
                  ["{d}/" + INDEX, EMB]))

    def shard_truncated(d):
        shard = shard_of(d, OUT)
        p = os.path.join(d, shard)
        truncate(p, os.path.getsize(p) - 4)
        return ["{d}/" + shard, OUT, "truncated"]

    C.append(Case("shard_truncated", "sharded", shard_truncated, []))

    # Only the last rank's copy is corrupt (MPMD launch; each rank's cwd has its own "model"
    # link): the ranks that loaded fine must still say what is wrong, not only that rank R failed.
    def one_rank_bad(d):
        shutil.copytree(d, os.path.join(d, "bad"))
        set_entry(QKV_0, dtype="Q4")(os.path.join(d, "bad"))
        for sub, target in (("cwd-good", d), ("cwd-bad", os.path.join(d, "bad"))):
            os.mkdir(os.path.join(d, sub))
            os.symlink(target, os.path.join(d, sub, "model"))

    def one_rank_launch(d, np, mpirun, argv):
        return (mpirun + ["-np", str(np - 1), "--wdir", os.path.join(d, "cwd-good")] + argv + [":"] +
                ["-np", "1", "--wdir", os.path.join(d, "cwd-bad")] + argv)

    C.append(Case("only_last_rank_corrupt", "f32", one_rank_bad, ["model/" + ST, QKV_0, "Q4"], nps=(2, 4),
                  model_dir=lambda d: "model", launch=one_rank_launch))

    # Options.
    C.append(Case("unknown_option", "f32", None, ["--bogus"], args=["--ids", "1,2,3", "--bogus"]))
    C.append(Case("ids_junk", "f32", None, ["--ids", "1,x,3"], args=["--ids", "1,x,3"]))
    C.append(Case("ids_negative", "f32", None, ["--ids", "-1"], args=["--ids", "1,-1"]))
    C.append(Case("ids_empty", "f32", None, ["--ids", "empty"], args=["--ids", ""]))
    C.append(Case("ids_overflow", "f32", None, ["--ids", "99999999999"], args=["--ids", "1,99999999999"]))
    C.append(Case("id_outside_vocab", "f32", None, ["--ids", str(VOCAB), "vocabulary"],
                  args=["--ids", "1,2,%d" % VOCAB]))
    C.append(Case("ids_exceed_context", "f32", cfg_set(seq_length=2), ["--ids", "context length", "config.json"]))
    C.append(Case("option_without_value", "f32", None, ["--ids", "value"], args=["--ids"]))
    C.append(Case("missing_ids", "f32", None, ["--ids", "required"], args=[]))
    C.append(Case("threads_junk", "f32", None, ["--threads", "many"], args=["--ids", "1,2,3", "--threads", "many"]))
    C.append(Case("dump_junk", "f32", None, ["--dump", "all"], args=["--ids", "1,2,3", "--dump", "all"]))
    return C


# --- running ------------------------------------------------------------------------

def kill_session(sid):
    """Kills every process of session sid: mpirun starts the ranks in process groups
    of their own, but they stay in the session that start_new_session made."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % pid) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[3]) == sid:  # after "pid (comm)": state ppid pgrp session
                    os.kill(int(pid), sig)
            except (OSError, ValueError, IndexError):
                pass
        if sig == signal.SIGTERM:
            time.sleep(1.0)
    try:  # without /proc: at least the launcher's own group
        os.killpg(sid, signal.SIGKILL)
    except OSError:
        pass


def run(cmd, env):
    """(returncode or None on timeout, stdout, stderr, seconds). Kills the whole group on timeout."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        out, err = p.communicate(timeout=TIMEOUT_S)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        kill_session(p.pid)
        out, err = p.communicate()
        rc = None
    return rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), time.monotonic() - t0


def check(rc, err, np, expect, d):
    """List of problems with one run's outcome. Substrings other than paths are
    looked for with the case directory d blanked out (its name is the case's)."""
    bad = []
    if rc is None:
        return ["no exit within %.0f s (hang)" % TIMEOUT_S]
    if rc == 0:
        bad.append("exit status 0")
    elif rc < 0:
        bad.append("killed by signal %d" % -rc)
    if SANITIZER.search(err):
        bad.append("sanitizer report")
    if CRASH.search(err):
        bad.append("crash")
    lines = [l for l in err.splitlines() if l.startswith("glmtp: ") and not SUMMARY.match(l)]
    if np == 1:
        per_rank = {0: lines}
        stray = [l for l in lines if re.match(r"glmtp: rank \d+: ", l)]
        if stray:
            bad.append("single-rank line with a rank prefix: %r" % stray[0])
    elif lines and not any(re.match(r"glmtp: rank \d+: ", l) for l in lines):
        per_rank = {0: lines}  # every rank failed alike: rank 0 alone speaks
    else:
        per_rank = {r: [l for l in lines if l.startswith("glmtp: rank %d: " % r)] for r in range(np)}
        stray = [l for l in lines if not re.match(r"glmtp: rank \d+: ", l)]
        if stray:
            bad.append("line without a rank prefix: %r" % stray[0])
    for r, ls in per_rank.items():
        who = "rank %d" % r if np > 1 else "glmtp"
        if len(ls) != 1:
            bad.append("%s printed %d error lines (want 1)" % (who, len(ls)))
            continue
        blanked = ls[0].replace(d, "DIR")
        missing = [s for s in expect if s not in (ls[0] if d in s else blanked)]
        if missing:
            bad.append("%s's message lacks %s: %r" % (who, ", ".join(repr(s) for s in missing), ls[0]))
    return bad


def run_case(*args):
    """Runs one case on every rank count; ("ok" | "FAIL" | "skip", report lines)."""
    try:
        return run_case_(*args)
    except Exception as e:  # a broken case is a failure, not the end of the run
        return "FAIL", ["FAIL %s (the test itself failed: %r)" % (args[-1].name, e)]


def run_case_(a, glmtp, mpirun, env, tmp, base, i, c):
    nps = [n for n in c.nps if n == 1 or mpirun]
    if not nps:
        return "skip", ["skip %s (needs --mpirun)" % c.name]
    d = os.path.join(tmp, "%02d-%s" % (i, c.name))
    shutil.copytree(base[c.model], d)
    extra = c.mutate(d) if c.mutate else None
    extra = extra if isinstance(extra, list) else []
    problems = []
    t_case = time.monotonic()
    for np in nps:
        model = c.model_dir(d) if c.model_dir else d
        args = ["--ids", "1,2,3"] if c.args is None else c.args
        cmd = [glmtp, "score", "--model", model] + args
        if c.launch:
            cmd = c.launch(d, np, mpirun, cmd)
        elif np > 1:
            cmd = mpirun + ["-np", str(np)] + cmd
        rc, out, err, secs = run(cmd, env)
        SLOWEST[0] = max(SLOWEST[0], secs)
        if c.name.startswith("valid_"):
            bad = []
            if rc != 0 or out.count('"pos":') != 3 or SANITIZER.search(err):
                bad = ["valid model failed (status %s): %s" % (rc, err.strip()[-500:])]
        else:
            exp = c.expect(d, np) if callable(c.expect) else list(c.expect)
            exp = [s.replace("{d}", d) for s in exp + extra]
            bad = check(rc, err, np, exp, d)
        if a.verbose or bad:
            shown = [l for l in err.splitlines() if l.startswith("glmtp: ")] or err.splitlines()[-5:]
            problems.append((np, secs, bad, shown))
    tag = "np %s, %.1f s" % (",".join(map(str, nps)), time.monotonic() - t_case)
    status = "FAIL" if any(p[2] for p in problems) else "ok"
    lines = ["%-4s %s (%s)" % (status, c.name, tag)]
    for np, secs, bad, shown in problems:
        lines += ["     np %d: %s" % (np, b) for b in bad]
        lines += ["     np %d | %s" % (np, l) for l in shown[: 2 * np + 4]]
    return status, lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("glmtp")
    ap.add_argument("--mpirun", default="", help='launcher prefix, e.g. "mpiexec --oversubscribe"; empty: 1 rank only')
    ap.add_argument("--only", default=None, help="run only cases whose name contains this")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    # mpirun takes ~1 s, mostly idle, to wind down a job whose ranks failed: run cases side by side.
    ap.add_argument("-j", "--jobs", type=int, default=8, help="cases run at once (default 8)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every run's error lines")
    a = ap.parse_args()

    glmtp = os.path.abspath(a.glmtp)
    mpirun = shlex.split(a.mpirun)
    env = dict(os.environ)
    for k, v in (("OMP_NUM_THREADS", "1"), ("OMP_WAIT_POLICY", "passive"), ("OMPI_ALLOW_RUN_AS_ROOT", "1"),
                 ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"), ("OMPI_MCA_rmaps_base_oversubscribe", "1")):
        env.setdefault(k, v)
    t_start = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="glmtp-bad-input-")
    passed = failed = 0
    try:
        base = {}
        makes = {
            "f32": ["--dtype", "f32"],
            "bf16": ["--dtype", "bf16"],
            "hf": ["--dtype", "bf16", "--layout", "hf"],
            "sharded": ["--dtype", "f32", "--shards", "3"],
            "kv4": ["--dtype", "f32", "--kv-groups", "4"],
        }
        for key, extra in makes.items():
            d = os.path.join(tmp, "base-" + key)
            cmd = [glmtp, "make-model", "--preset", "tiny", "--vocab", str(VOCAB), "--seed", "1", "--out", d] + extra
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=60)
            if r.returncode != 0 or SANITIZER.search(r.stderr.decode("utf-8", "replace")):
                print("FAIL make-model %s: %s" % (key, r.stderr.decode("utf-8", "replace").strip()))
                print("0 passed, 1 failed")
                return 1
            base[key] = d
        # The base models themselves must load and score on every rank count used.
        sanity = [Case("valid_" + k, k, None, []) for k in makes]

        all_cases = [(i, c) for i, c in enumerate(sanity + cases()) if not a.only or a.only in c.name]
        with concurrent.futures.ThreadPoolExecutor(max_workers=a.jobs) as pool:
            futures = [pool.submit(run_case, a, glmtp, mpirun, env, tmp, base, i, c) for i, c in all_cases]
            for f in futures:  # reported in case order
                status, lines = f.result()
                passed += status == "ok"
                failed += status == "FAIL"
                print("\n".join(lines))
                sys.stdout.flush()
    finally:
        if a.keep:
            print("kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("(%.1f s in all; slowest run %.1f s, limit %.0f s)" % (time.monotonic() - t_start, SLOWEST[0], TIMEOUT_S))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
