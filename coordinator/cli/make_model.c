/* glmtp make-model: writes a GLM-4 checkpoint with seeded random weights in the
 * real on-disk format (config.json + safetensors, either layout, optionally
 * sharded with an index), for tests, demos and benchmarks without real weights.
 *
 * Each logical tensor (named as in the original layout) draws from its own
 * generator seeded by (seed, name), so both layouts of one seed hold the same
 * numbers, and the HF layout's q/k/v_proj are row ranges of the fused QKV. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../../kernels/dtype.h"
#include "../../kernels/rng.h"
#include "../../worker/util.h"
#include "../base/args.h"
#include "../base/commands.h"
#include "../base/presets.h"

/* The stop ids of the GLM-4 chat models, written when the vocabulary has them. */
static const int glm4_eos[] = {151329, 151336, 151338};

typedef enum { INIT_NORMALISH, INIT_ONES_JITTER } init_kind;

/* One tensor as written: rows [r0, r0 + rows) of a logical tensor. */
typedef struct out_tensor {
    char name[160];
    char logical[160];
    int64_t rows, cols; /* cols 0 => 1-D of length rows */
    int64_t r0, logical_cols;
    float stddev;
    init_kind init;
    int file;
    uint64_t offset; /* in its file's data section */
    int nd;          /* > 0: the shape written is dims[0..nd) (same element count) */
    int64_t dims[4];
} out_tensor;

typedef struct plan {
    out_tensor *t;
    int n, cap;
} plan;

static void add(plan *p, const char *name, const char *logical, int64_t rows, int64_t cols, int64_t r0,
                float stddev, init_kind init) {
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 64;
        p->t = realloc(p->t, sizeof *p->t * (size_t)p->cap);
        if (!p->t) abort();
    }
    out_tensor *t = &p->t[p->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    snprintf(t->logical, sizeof t->logical, "%s", logical);
    t->rows = rows;
    t->cols = cols;
    t->r0 = r0;
    t->logical_cols = cols ? cols : 1;
    t->stddev = stddev;
    t->init = init;
}

static void build_plan(plan *p, const preset *s, int hf) {
    char n[160], lg[160];
    int64_t H = s->hidden, F = s->ffn, q = (int64_t)s->heads * s->head_dim, k = (int64_t)s->kv * s->head_dim;
    float lin_h = 1.5f / sqrtf((float)H), lin_q = 1.5f / sqrtf((float)q), lin_f = 1.5f / sqrtf((float)F);
    add(p, hf ? "model.embed_tokens.weight" : "transformer.embedding.word_embeddings.weight",
        "transformer.embedding.word_embeddings.weight", s->vocab, H, 0, 1.0f, INIT_NORMALISH);
    for (int l = 0; l < s->layers; l++) {
#define LG(suffix) (snprintf(lg, sizeof lg, "transformer.encoder.layers.%d.%s", l, suffix), lg)
#define HF(suffix) (snprintf(n, sizeof n, "model.layers.%d.%s", l, suffix), n)
        add(p, hf ? HF("input_layernorm.weight") : LG("input_layernorm.weight"), LG("input_layernorm.weight"), H, 0,
            0, 0.1f, INIT_ONES_JITTER);
        if (hf) {
            const char *names[3][2] = {{"self_attn.q_proj.weight", "self_attn.q_proj.bias"},
                                       {"self_attn.k_proj.weight", "self_attn.k_proj.bias"},
                                       {"self_attn.v_proj.weight", "self_attn.v_proj.bias"}};
            int64_t r0[3] = {0, q, q + k}, rows[3] = {q, k, k};
            for (int i = 0; i < 3; i++) {
                add(p, HF(names[i][0]), LG("self_attention.query_key_value.weight"), rows[i], H, r0[i], lin_h,
                    INIT_NORMALISH);
                add(p, HF(names[i][1]), LG("self_attention.query_key_value.bias"), rows[i], 0, r0[i], 0.3f,
                    INIT_NORMALISH);
            }
        } else {
            add(p, LG("self_attention.query_key_value.weight"), lg, q + 2 * k, H, 0, lin_h, INIT_NORMALISH);
            add(p, LG("self_attention.query_key_value.bias"), lg, q + 2 * k, 0, 0, 0.3f, INIT_NORMALISH);
        }
        add(p, hf ? HF("self_attn.o_proj.weight") : LG("self_attention.dense.weight"),
            LG("self_attention.dense.weight"), H, q, 0, lin_q, INIT_NORMALISH);
        add(p, hf ? HF("post_attention_layernorm.weight") : LG("post_attention_layernorm.weight"),
            LG("post_attention_layernorm.weight"), H, 0, 0, 0.1f, INIT_ONES_JITTER);
        add(p, hf ? HF("mlp.gate_up_proj.weight") : LG("mlp.dense_h_to_4h.weight"), LG("mlp.dense_h_to_4h.weight"),
            2 * F, H, 0, lin_h, INIT_NORMALISH);
        add(p, hf ? HF("mlp.down_proj.weight") : LG("mlp.dense_4h_to_h.weight"), LG("mlp.dense_4h_to_h.weight"), H,
            F, 0, lin_f, INIT_NORMALISH);
#undef LG
#undef HF
    }
    add(p, hf ? "model.norm.weight" : "transformer.encoder.final_layernorm.weight",
        "transformer.encoder.final_layernorm.weight", H, 0, 0, 0.1f, INIT_ONES_JITTER);
    add(p, hf ? "lm_head.weight" : "transformer.output_layer.weight", "transformer.output_layer.weight", s->vocab, H,
        0, 1.5f / sqrtf((float)H), INIT_NORMALISH);
}

/* GLM-4V's tower and adapter (glm4v-spec.md 9), original layout only. */
static void build_vision(plan *p, const preset *s) {
    char n[160];
    int64_t Hv = s->v_hidden, Fv = s->v_ffn, H = s->hidden, F = s->ffn, P = s->patch, g = s->image / s->patch;
    float lin_v = 1.5f / sqrtf((float)Hv), lin_fv = 1.5f / sqrtf((float)Fv), lin_h = 1.5f / sqrtf((float)H);
#define V(suffix) (snprintf(n, sizeof n, "transformer.vision.%s", suffix), n)
    add(p, V("patch_embedding.proj.weight"), n, Hv, 3 * P * P, 0, 1.5f / sqrtf(3.0f * P * P), INIT_NORMALISH);
    p->t[p->n - 1].nd = 4, p->t[p->n - 1].dims[0] = Hv, p->t[p->n - 1].dims[1] = 3, p->t[p->n - 1].dims[2] = P,
                                 p->t[p->n - 1].dims[3] = P;
    add(p, V("patch_embedding.proj.bias"), n, Hv, 0, 0, 0.1f, INIT_NORMALISH);
    add(p, V("patch_embedding.cls_embedding"), n, 1, Hv, 0, 0.5f, INIT_NORMALISH);
    add(p, V("patch_embedding.position_embedding.weight"), n, g * g + 1, Hv, 0, 0.5f, INIT_NORMALISH);
    for (int l = 0; l < s->v_layers; l++) {
        char lg[160];
#define VL(suffix) (snprintf(lg, sizeof lg, "transformer.vision.transformer.layers.%d.%s", l, suffix), lg)
        add(p, VL("input_layernorm.weight"), lg, Hv, 0, 0, 0.1f, INIT_ONES_JITTER);
        add(p, VL("input_layernorm.bias"), lg, Hv, 0, 0, 0.05f, INIT_NORMALISH);
        add(p, VL("attention.query_key_value.weight"), lg, 3 * Hv, Hv, 0, lin_v, INIT_NORMALISH);
        add(p, VL("attention.query_key_value.bias"), lg, 3 * Hv, 0, 0, 0.1f, INIT_NORMALISH);
        add(p, VL("attention.dense.weight"), lg, Hv, Hv, 0, lin_v, INIT_NORMALISH);
        add(p, VL("attention.dense.bias"), lg, Hv, 0, 0, 0.05f, INIT_NORMALISH);
        add(p, VL("mlp.fc1.weight"), lg, Fv, Hv, 0, lin_v, INIT_NORMALISH);
        add(p, VL("mlp.fc1.bias"), lg, Fv, 0, 0, 0.05f, INIT_NORMALISH);
        add(p, VL("mlp.fc2.weight"), lg, Hv, Fv, 0, lin_fv, INIT_NORMALISH);
        add(p, VL("mlp.fc2.bias"), lg, Hv, 0, 0, 0.05f, INIT_NORMALISH);
        add(p, VL("post_attention_layernorm.weight"), lg, Hv, 0, 0, 0.1f, INIT_ONES_JITTER);
        add(p, VL("post_attention_layernorm.bias"), lg, Hv, 0, 0, 0.05f, INIT_NORMALISH);
#undef VL
    }
    add(p, V("conv.weight"), n, H, Hv * 4, 0, 1.5f / sqrtf(4.0f * Hv), INIT_NORMALISH);
    p->t[p->n - 1].nd = 4, p->t[p->n - 1].dims[0] = H, p->t[p->n - 1].dims[1] = Hv, p->t[p->n - 1].dims[2] = 2,
                                 p->t[p->n - 1].dims[3] = 2;
    add(p, V("conv.bias"), n, H, 0, 0, 0.05f, INIT_NORMALISH);
    add(p, V("linear_proj.linear_proj.weight"), n, H, H, 0, lin_h, INIT_NORMALISH);
    add(p, V("linear_proj.norm1.weight"), n, H, 0, 0, 0.1f, INIT_ONES_JITTER);
    add(p, V("linear_proj.norm1.bias"), n, H, 0, 0, 0.05f, INIT_NORMALISH);
    add(p, V("linear_proj.gate_proj.weight"), n, F, H, 0, lin_h, INIT_NORMALISH);
    add(p, V("linear_proj.dense_h_to_4h.weight"), n, F, H, 0, lin_h, INIT_NORMALISH);
    add(p, V("linear_proj.dense_4h_to_h.weight"), n, H, F, 0, 1.5f / sqrtf((float)F), INIT_NORMALISH);
    const char *ends[2] = {"boi", "eoi"};
    for (int i = 0; i < 2; i++) {
        add(p, V(ends[i]), n, 1, H, 0, 1.0f, INIT_NORMALISH);
        p->t[p->n - 1].nd = 3, p->t[p->n - 1].dims[0] = 1, p->t[p->n - 1].dims[1] = 1, p->t[p->n - 1].dims[2] = H;
    }
#undef V
}

static int write_config(const char *dir, const preset *s, int hf, kdtype dt, char *err, size_t errlen) {
    cJSON *c = cJSON_CreateObject();
    int n_eos = s->vocab > glm4_eos[2] ? 3 : 1;
    int eos_small[1] = {0};
    const int *eos = n_eos == 3 ? glm4_eos : eos_small;
    const char *dtype = dt == KDT_BF16 ? "bfloat16" : "float32";
    if (hf) {
        cJSON_AddItemToObject(c, "architectures", cJSON_CreateStringArray((const char *[]){"GlmForCausalLM"}, 1));
        cJSON_AddStringToObject(c, "model_type", "glm");
        cJSON_AddNumberToObject(c, "num_hidden_layers", s->layers);
        cJSON_AddNumberToObject(c, "hidden_size", s->hidden);
        cJSON_AddNumberToObject(c, "intermediate_size", s->ffn);
        cJSON_AddNumberToObject(c, "num_attention_heads", s->heads);
        cJSON_AddNumberToObject(c, "head_dim", s->head_dim);
        cJSON_AddNumberToObject(c, "num_key_value_heads", s->kv);
        cJSON_AddNumberToObject(c, "vocab_size", s->vocab);
        cJSON_AddNumberToObject(c, "max_position_embeddings", s->seq_len);
        /* The original base, not the 10000 of the published -hf configs (spec 1.2). */
        cJSON_AddNumberToObject(c, "rope_theta", 10000.0 * s->rope_ratio);
        cJSON_AddNumberToObject(c, "partial_rotary_factor", 0.5);
        cJSON_AddNumberToObject(c, "rms_norm_eps", 1.5625e-07);
        cJSON_AddBoolToObject(c, "attention_bias", 1);
        cJSON_AddStringToObject(c, "hidden_act", "silu");
    } else {
        cJSON_AddItemToObject(c, "architectures", cJSON_CreateStringArray((const char *[]){"ChatGLMModel"}, 1));
        cJSON_AddStringToObject(c, "model_type", "chatglm");
        cJSON_AddNumberToObject(c, "num_layers", s->layers);
        cJSON_AddNumberToObject(c, "hidden_size", s->hidden);
        cJSON_AddNumberToObject(c, "ffn_hidden_size", s->ffn);
        cJSON_AddNumberToObject(c, "num_attention_heads", s->heads);
        cJSON_AddNumberToObject(c, "kv_channels", s->head_dim);
        cJSON_AddBoolToObject(c, "multi_query_attention", 1);
        cJSON_AddNumberToObject(c, "multi_query_group_num", s->kv);
        cJSON_AddNumberToObject(c, "padded_vocab_size", s->vocab);
        cJSON_AddNumberToObject(c, "seq_length", s->seq_len);
        cJSON_AddNumberToObject(c, "rope_ratio", s->rope_ratio);
        cJSON_AddNumberToObject(c, "layernorm_epsilon", 1.5625e-07);
        cJSON_AddBoolToObject(c, "rmsnorm", 1);
        cJSON_AddBoolToObject(c, "add_bias_linear", 0);
        cJSON_AddBoolToObject(c, "add_qkv_bias", 1);
        cJSON_AddBoolToObject(c, "apply_residual_connection_post_layernorm", 0);
        cJSON_AddBoolToObject(c, "post_layer_norm", 1);
        cJSON_AddBoolToObject(c, "original_rope", 1);
        if (s->v_layers) {
            cJSON *v = cJSON_AddObjectToObject(c, "vision_config");
            cJSON_AddNumberToObject(v, "hidden_size", s->v_hidden);
            cJSON_AddNumberToObject(v, "num_hidden_layers", s->v_layers);
            cJSON_AddNumberToObject(v, "num_heads", s->v_heads);
            cJSON_AddNumberToObject(v, "intermediate_size", s->v_ffn);
            cJSON_AddNumberToObject(v, "image_size", s->image);
            cJSON_AddNumberToObject(v, "patch_size", s->patch);
            cJSON_AddNumberToObject(v, "in_channels", 3);
            cJSON_AddNumberToObject(v, "num_positions", (s->image / s->patch) * (s->image / s->patch) + 1);
            cJSON_AddNumberToObject(v, "layer_norm_eps", 1e-6);
            cJSON_AddNumberToObject(v, "dropout_prob", 0.0);
            cJSON_AddStringToObject(v, "hidden_act", "gelu");
            cJSON_AddNumberToObject(v, "scaling_factor", 8);
            cJSON_AddNumberToObject(c, "boi_token_id", 151339);
            cJSON_AddNumberToObject(c, "eoi_token_id", 151340);
        }
    }
    cJSON_AddBoolToObject(c, "tie_word_embeddings", 0);
    cJSON_AddItemToObject(c, "eos_token_id", cJSON_CreateIntArray(eos, n_eos));
    cJSON_AddNumberToObject(c, "pad_token_id", eos[0]);
    cJSON_AddStringToObject(c, "torch_dtype", dtype);
    char *text = cJSON_Print(c);
    cJSON_Delete(c);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    int rc = -1;
    if (!f)
        snprintf(err, errlen, "%s: cannot create: %s", path, strerror(errno));
    else if (fprintf(f, "%s\n", text) < 0 || fclose(f) != 0)
        snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
    else
        rc = 0;
    free(text);
    return rc;
}

/* Streams tensor t's values (row-major, rows r0.. of its logical tensor). */
static int write_data(FILE *f, const out_tensor *t, kdtype dt, uint64_t seed) {
    uint64_t rng = util_fnv(seed * 0x9e3779b97f4a7c15ull + 1, t->logical, strlen(t->logical));
    /* Skip the logical tensor's rows before r0 so split parts line up. */
    for (int64_t i = 0; i < t->r0 * t->logical_cols; i++) rng_next(&rng);
    enum { CHUNK = 1 << 16 };
    static float vals[CHUNK];
    static uint16_t half[CHUNK];
    int64_t n = t->rows * (t->cols ? t->cols : 1);
    float a = t->stddev * 1.7320508f; /* uniform on [-a, a] has this stddev */
    for (int64_t done = 0; done < n;) {
        int m = n - done < CHUNK ? (int)(n - done) : CHUNK;
        for (int i = 0; i < m; i++) {
            float u = (float)(2.0 * rng_uniform(&rng) - 1.0) * a;
            vals[i] = t->init == INIT_ONES_JITTER ? 1.0f + u : u;
        }
        size_t wrote;
        if (dt == KDT_BF16) {
            for (int i = 0; i < m; i++) half[i] = f32_to_bf16(vals[i]);
            wrote = fwrite(half, 2, (size_t)m, f);
        } else {
            wrote = fwrite(vals, 4, (size_t)m, f);
        }
        if (wrote != (size_t)m) return -1;
        done += m;
    }
    return 0;
}

static int write_file(const char *path, plan *p, int file, kdtype dt, uint64_t seed, char *err, size_t errlen) {
    cJSON *h = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(h, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    cJSON_AddStringToObject(meta, "generator", "glmtp make-model");
    uint64_t off = 0;
    for (int i = 0; i < p->n; i++) {
        out_tensor *t = &p->t[i];
        if (t->file != file) continue;
        cJSON *e = cJSON_AddObjectToObject(h, t->name);
        cJSON_AddStringToObject(e, "dtype", kdtype_name(dt));
        cJSON *shape = cJSON_AddArrayToObject(e, "shape");
        if (t->nd) {
            for (int d = 0; d < t->nd; d++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->dims[d]));
        } else {
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->rows));
            if (t->cols) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->cols));
        }
        uint64_t bytes = (uint64_t)t->rows * (t->cols ? t->cols : 1) * kdtype_size(dt);
        cJSON *offs = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + bytes)));
        t->offset = off;
        off += bytes;
    }
    char *json = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    size_t len = strlen(json), padded = (len + 7) & ~(size_t)7; /* data section 8-byte aligned */
    FILE *f = fopen(path, "wb");
    int rc = -1;
    if (!f) {
        snprintf(err, errlen, "%s: cannot create: %s", path, strerror(errno));
        free(json);
        return -1;
    }
    unsigned char hl[8];
    for (int i = 0; i < 8; i++) hl[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int ok = fwrite(hl, 1, 8, f) == 8 && fwrite(json, 1, len, f) == len;
    for (size_t i = len; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
    for (int i = 0; ok && i < p->n; i++)
        if (p->t[i].file == file) ok = write_data(f, &p->t[i], dt, seed) == 0;
    if (fclose(f) != 0) ok = 0;
    if (ok)
        rc = 0;
    else
        snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
    free(json);
    return rc;
}

static int write_index(const char *dir, plan *p, int n_files, char *err, size_t errlen) {
    cJSON *root = cJSON_CreateObject();
    cJSON *map = cJSON_AddObjectToObject(root, "weight_map");
    char fname[128];
    for (int i = 0; i < p->n; i++) {
        snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", p->t[i].file + 1, n_files);
        cJSON_AddStringToObject(map, p->t[i].name, fname);
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    FILE *f = fopen(path, "w");
    int rc = 0;
    if (!f || fputs(text, f) == EOF || fclose(f) != 0) {
        snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
        rc = -1;
    }
    free(text);
    return rc;
}

/* Copies src to dir/name (the tokenizer vocabulary beside the weights). */
static int copy_file(const char *src, const char *dir, const char *name, char *err, size_t errlen) {
    size_t len;
    char *data = util_read_file(src, &len, err, errlen);
    if (!data) return -1;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    int rc = 0;
    if (!f || fwrite(data, 1, len, f) != len) rc = -1;
    if (f && fclose(f) != 0) rc = -1;
    if (rc) snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
    free(data);
    return rc;
}

/* The marker generate and chat look for (MAKE_MODEL_MARKER), saying why the
 * text is gibberish. */
static int write_marker(const char *dir, char *err, size_t errlen) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, MAKE_MODEL_MARKER);
    FILE *f = fopen(path, "w");
    int rc = f && fputs("Made by glmtp make-model: the weights are seeded random numbers, not a trained model.\n"
                        "Text generated from them is gibberish; the pipeline around them is the real one.\n", f) >= 0
                 ? 0 : -1;
    if (f && fclose(f) != 0) rc = -1;
    if (rc) snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
    return rc;
}

static const args_opt make_model_opts[] = {
    {"--out", "DIR", "where the checkpoint goes (created); required"},
    {"--preset", "NAME", "tiny (default), glm-4-9b, glm-4-9b-chat, glm-4-9b-chat-1m, glm-4v-9b, tiny-4v"},
    {"--vision-layers", "N", "override the preset's vision tower layers (glm-4v-9b, tiny-4v)"},
    {"--seed", "S", "seed of the random weights (default 0)"},
    {"--layout", "chatglm|hf", "tensor names of the THUDM repos (default) or of the -hf repos"},
    {"--dtype", "bf16|f32", "weight type (default bf16)"},
    {"--layers", "N", "override the preset's layer count"},
    {"--kv-groups", "N", "override the preset's KV groups (must divide the query heads)"},
    {"--vocab", "N", "override the preset's vocabulary size"},
    {"--shards", "N", "split the weights over N safetensors files with an index (default 1)"},
    {"--rope-ratio", "R", "override the preset's RoPE ratio"},
    {"--tokenizer", "FILE", "copy this tokenizer.model beside the weights (e.g. tests/data/glm4-tokenizer/tokenizer.model)"},
    {NULL, NULL, NULL},
};

const args_spec cmd_make_model_spec = {
    "glmtp make-model",
    "--out DIR [--preset tiny|glm-4-9b|glm-4-9b-chat|glm-4-9b-chat-1m|glm-4v-9b|tiny-4v] [--seed S] [options]",
    "A checkpoint with seeded random weights in the real format, for tests, demos and benchmarks.\n"
    "The weights are random: a model made this way writes fluent-looking gibberish.",
    {make_model_opts, args_log_opts, NULL},
    NULL,
};

int cmd_make_model(int argc, char **argv) {
    args a;
    args_init(&a, &cmd_make_model_spec, argc, argv);
    const char *pname = args_str(&a, "--preset", "tiny");
    const char *layout = args_str(&a, "--layout", "chatglm");
    const char *dtype = args_str(&a, "--dtype", "bf16");
    const char *out = args_str(&a, "--out", NULL);
    uint64_t seed = (uint64_t)args_int(&a, "--seed", 0, 0, 2147483647L);
    long layers = args_int(&a, "--layers", 0, 1, 1000);
    long v_layers = args_int(&a, "--vision-layers", 0, 1, 1000);
    long kv = args_int(&a, "--kv-groups", 0, 1, 1024);
    long vocab = args_int(&a, "--vocab", 0, 1, 1 << 24);
    long shards = args_int(&a, "--shards", 1, 1, 1000);
    double rope_ratio = args_num(&a, "--rope-ratio", 0, 1e-6, 1e12);
    const char *tok_src = args_str(&a, "--tokenizer", NULL);
    char err[1024];
    int rc = 1;
    plan p = {0};
    if (args_finish(&a)) {
        fprintf(stderr, "glmtp make-model: %s\n", a.err);
        goto done;
    }
    const preset *pre = preset_find(pname);
    int hf = strcmp(layout, "hf") == 0;
    kdtype dt = strcmp(dtype, "f32") == 0 ? KDT_F32 : KDT_BF16;
    if (!pre) {
        fprintf(stderr, "glmtp make-model: unknown preset '%s' (%s)\n", pname, preset_names());
        goto done;
    }
    if (!hf && strcmp(layout, "chatglm") != 0) {
        fprintf(stderr, "glmtp make-model: unknown layout '%s' (chatglm, hf)\n", layout);
        goto done;
    }
    if (strcmp(dtype, "f32") != 0 && strcmp(dtype, "bf16") != 0) {
        fprintf(stderr, "glmtp make-model: unknown dtype '%s' (bf16, f32)\n", dtype);
        goto done;
    }
    if (!out) {
        fprintf(stderr, "glmtp make-model: --out DIR is required\n");
        goto done;
    }
    preset s = *pre;
    if (layers) s.layers = (int)layers;
    if (v_layers && !s.v_layers) {
        fprintf(stderr, "glmtp make-model: --vision-layers: preset %s has no vision tower\n", s.name);
        goto done;
    }
    if (v_layers) s.v_layers = (int)v_layers;
    if (s.v_layers && hf) {
        fprintf(stderr, "glmtp make-model: preset %s: GLM-4V is published in the chatglm layout only\n", s.name);
        goto done;
    }
    if (kv) s.kv = (int)kv;
    if (vocab) s.vocab = (int)vocab;
    if (rope_ratio > 0) s.rope_ratio = rope_ratio;
    if (s.heads % s.kv) {
        fprintf(stderr, "glmtp make-model: --kv-groups %d does not divide the %d query heads\n", s.kv, s.heads);
        goto done;
    }
    struct stat st;
    int st_rc = tok_src ? stat(tok_src, &st) : 0;
    if (tok_src && (st_rc != 0 || !S_ISREG(st.st_mode))) { /* checked before anything is written */
        fprintf(stderr, "glmtp make-model: --tokenizer %s: %s\n", tok_src,
                st_rc != 0 ? strerror(errno) : "not a regular file");
        goto done;
    }
    if (mkdir(out, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "glmtp make-model: %s: cannot create: %s\n", out, strerror(errno));
        goto done;
    }
    build_plan(&p, &s, hf);
    if (s.v_layers) build_vision(&p, &s);
    if (shards > p.n) shards = p.n;
    for (int i = 0; i < p.n; i++) p.t[i].file = (int)((long)i * shards / p.n);
    if (write_config(out, &s, hf, dt, err, sizeof err)) {
        fprintf(stderr, "glmtp make-model: %s\n", err);
        goto done;
    }
    char path[4096];
    for (int f = 0; f < shards; f++) {
        if (shards == 1)
            snprintf(path, sizeof path, "%s/model.safetensors", out);
        else
            snprintf(path, sizeof path, "%s/model-%05d-of-%05ld.safetensors", out, f + 1, shards);
        if (write_file(path, &p, f, dt, seed, err, sizeof err)) {
            fprintf(stderr, "glmtp make-model: %s\n", err);
            goto done;
        }
    }
    if (shards > 1 && write_index(out, &p, (int)shards, err, sizeof err)) {
        fprintf(stderr, "glmtp make-model: %s\n", err);
        goto done;
    }
    if (tok_src && copy_file(tok_src, out, "tokenizer.model", err, sizeof err)) {
        fprintf(stderr, "glmtp make-model: %s\n", err);
        goto done;
    }
    if (write_marker(out, err, sizeof err)) {
        fprintf(stderr, "glmtp make-model: %s\n", err);
        goto done;
    }
    fprintf(stderr, "glmtp make-model: wrote %s (random weights: %s, %s layout, %s, %d layers, %d KV groups, vocab %d, seed %llu)\n",
            out, s.name, hf ? "hf" : "chatglm", kdtype_name(dt), s.layers, s.kv, s.vocab, (unsigned long long)seed);
    rc = 0;
done:
    free(p.t);
    args_free(&a);
    return rc;
}
