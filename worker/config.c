/* config.json parsing for both GLM-4 checkpoint layouts (see config.h). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "util.h"

typedef struct {
    const cJSON *root;
    const char *path;
    char *err;
    size_t errlen;
    int failed;
} reader;

/* The field's value, or NULL when it is absent or null: as for HF, a null in
 * config.json means "not set" (published configs write "eos_token_id": null
 * and the like). */
static const cJSON *get_field(const reader *r, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r->root, name);
    return cJSON_IsNull(v) ? NULL : v;
}

static void fail(reader *r, const char *field, const char *what) {
    if (r->failed) return;
    r->failed = 1;
    snprintf(r->err, r->errlen, "%s: field '%s': %s", r->path, field, what);
}

/* Positive (or >= min) integer field; missing is an error unless def_ok. */
static int get_int(reader *r, const char *field, int min, int def, int def_ok) {
    const cJSON *v = get_field(r, field);
    if (!v) {
        if (!def_ok) fail(r, field, "missing");
        return def;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < min ||
        v->valuedouble > 2147483647.0) {
        char m[96];
        snprintf(m, sizeof m, "must be an integer >= %d", min);
        fail(r, field, m);
        return def;
    }
    return (int)v->valuedouble;
}

static double get_num(reader *r, const char *field, double def, int def_ok) {
    const cJSON *v = get_field(r, field);
    if (!v) {
        if (!def_ok) fail(r, field, "missing");
        return def;
    }
    if (!cJSON_IsNumber(v) || !(v->valuedouble > 0) || !isfinite(v->valuedouble)) {
        fail(r, field, "must be a positive number");
        return def;
    }
    return v->valuedouble;
}

/* A positive number used as a float (the norms' epsilon): it must stay
 * positive and finite as one (1e-50 would become 0 and divide by zero). */
static float get_float(reader *r, const char *field, double def, int def_ok) {
    double v = get_num(r, field, def, def_ok);
    if (v < FLT_MIN || v > FLT_MAX) {
        fail(r, field, "must be a positive number in float range (1.2e-38 to 3.4e38)");
        return (float)def;
    }
    return (float)v;
}

/* Boolean field that must have the value this engine implements. */
static void want_bool(reader *r, const char *field, int want, int def) {
    const cJSON *v = get_field(r, field);
    int got = def;
    if (v) {
        if (!cJSON_IsBool(v)) {
            fail(r, field, "must be true or false");
            return;
        }
        got = cJSON_IsTrue(v);
    }
    if (got != want) fail(r, field, want ? "must be true (the GLM-4 architecture)" : "must be false (the GLM-4 architecture)");
}

static int get_bool(reader *r, const char *field, int def) {
    const cJSON *v = get_field(r, field);
    if (!v) return def;
    if (!cJSON_IsBool(v)) {
        fail(r, field, "must be true or false");
        return def;
    }
    return cJSON_IsTrue(v);
}

/* Two names for one quantity: if both appear they must agree. */
static int get_int_alias(reader *r, const char *a, const char *b, int min) {
    int has_a = get_field(r, a) != NULL;
    int has_b = get_field(r, b) != NULL;
    if (!has_a && !has_b) {
        fail(r, a, "missing");
        return 0;
    }
    int va = has_a ? get_int(r, a, min, 0, 0) : 0, vb = has_b ? get_int(r, b, min, 0, 0) : 0;
    if (has_a && has_b && va != vb) {
        char m[160];
        snprintf(m, sizeof m, "is %d but '%s' is %d", va, b, vb);
        fail(r, a, m);
    }
    return has_a ? va : vb;
}

/* A token id: a whole number in [0, 2^31). */
static int is_id(const cJSON *v) {
    return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= 2147483647.0 &&
           v->valuedouble == floor(v->valuedouble);
}

static void get_eos(reader *r, glm_config *c) {
    const cJSON *v = get_field(r, "eos_token_id");
    c->n_eos = 0;
    if (!v) return;
    if (cJSON_IsNumber(v)) {
        if (!is_id(v)) {
            fail(r, "eos_token_id", "must be a non-negative integer");
            return;
        }
        c->eos_ids[c->n_eos++] = (int)v->valuedouble;
        return;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > GLM_MAX_EOS) {
        fail(r, "eos_token_id", "must be an integer or a list of at most 8 integers");
        return;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        if (!is_id(e)) {
            fail(r, "eos_token_id", "must hold non-negative integers");
            return;
        }
        c->eos_ids[c->n_eos++] = (int)e->valuedouble;
    }
}

static void parse_chatglm(reader *r, glm_config *c) {
    c->layout = LAYOUT_CHATGLM;
    c->n_layers = get_int_alias(r, "num_layers", "num_hidden_layers", 1);
    c->hidden = get_int(r, "hidden_size", 1, 0, 0);
    c->ffn = get_int(r, "ffn_hidden_size", 1, 0, 0);
    c->n_heads = get_int(r, "num_attention_heads", 1, 0, 0);
    c->head_dim = get_int(r, "kv_channels", 2, c->n_heads ? c->hidden / c->n_heads : 0, 1);
    int mqa = get_bool(r, "multi_query_attention", 0);
    c->n_kv = mqa ? get_int(r, "multi_query_group_num", 1, 0, 0) : c->n_heads;
    c->vocab = get_field(r, "padded_vocab_size")
                   ? get_int(r, "padded_vocab_size", 1, 0, 0)
                   : get_int(r, "vocab_size", 1, 0, 0);
    c->seq_len = get_int(r, "seq_length", 1, 0, 0);
    c->rope_base = 10000.0 * get_num(r, "rope_ratio", 1.0, 1);
    if (!isfinite(c->rope_base)) fail(r, "rope_ratio", "too large: the RoPE base 10000 x rope_ratio must be finite");
    c->rot_dim = c->head_dim / 2; /* RotaryEmbedding(kv_channels // 2) */
    c->eps = get_float(r, "layernorm_epsilon", 1e-5, 0);
    c->qkv_bias = get_bool(r, "add_qkv_bias", 0);
    want_bool(r, "rmsnorm", 1, 1);
    want_bool(r, "add_bias_linear", 0, 0);
    want_bool(r, "apply_residual_connection_post_layernorm", 0, 0);
    want_bool(r, "post_layer_norm", 1, 1);
    want_bool(r, "original_rope", 1, 1);
    want_bool(r, "tie_word_embeddings", 0, 0);
}

/* GLM-4V: "vision_config" and the image token ids (spec: glm4v-spec.md 1.2). */
static void parse_vision(reader *r, glm_config *c) {
    const cJSON *v = get_field(r, "vision_config");
    if (!v) return;
    if (!cJSON_IsObject(v)) {
        fail(r, "vision_config", "must be an object");
        return;
    }
    glm_vision_config *vc = &c->vision;
    reader vr = {v, r->path, r->err, r->errlen, r->failed};
    vc->present = 1;
    vc->hidden = get_int(&vr, "hidden_size", 1, 0, 0);
    vc->n_layers = get_int(&vr, "num_hidden_layers", 1, 0, 0);
    vc->n_heads = get_int(&vr, "num_heads", 1, 0, 0);
    vc->ffn = get_int(&vr, "intermediate_size", 1, 0, 0);
    vc->image = get_int(&vr, "image_size", 1, 0, 0);
    vc->patch = get_int(&vr, "patch_size", 1, 0, 0);
    vc->in_ch = get_int(&vr, "in_channels", 1, 3, 1);
    vc->n_pos = get_int(&vr, "num_positions", 1, 0, 0);
    vc->eps = get_float(&vr, "layer_norm_eps", 1e-6, 1);
    vc->glu_eps = 1e-5f;
    vc->scaling = get_num(&vr, "scaling_factor", 8.0, 1);
    const cJSON *act = get_field(&vr, "hidden_act");
    if (act && !(cJSON_IsString(act) && strcmp(act->valuestring, "gelu") == 0))
        fail(&vr, "hidden_act", "must be \"gelu\" (the exact GELU of GLM-4V's vision tower)");
    if (!vr.failed && vc->hidden % vc->n_heads)
        fail(&vr, "num_heads", "must divide vision_config.hidden_size");
    int grid = vc->patch ? vc->image / vc->patch : 0;
    if (!vr.failed && (vc->image % vc->patch || grid % 2))
        fail(&vr, "patch_size", "must divide image_size into an even number of patches a side");
    if (!vr.failed && vc->n_pos != grid * grid + 1) {
        char m[128];
        snprintf(m, sizeof m, "must be (image_size / patch_size)^2 + 1 = %d", grid * grid + 1);
        fail(&vr, "num_positions", m);
    }
    if (!vr.failed && ((int64_t)3 * vc->hidden > 2147483647 || (int64_t)grid * grid > 1 << 24))
        fail(&vr, "hidden_size", "vision tower too large");
    if (vr.failed) {
        r->failed = 1;
        return;
    }
    vc->boi_id = get_int(r, "boi_token_id", 0, 0, 0);
    vc->eoi_id = get_int(r, "eoi_token_id", 0, 0, 0);
}

static void parse_hf(reader *r, glm_config *c) {
    c->layout = LAYOUT_HF;
    c->n_layers = get_int(r, "num_hidden_layers", 1, 0, 0);
    c->hidden = get_int(r, "hidden_size", 1, 0, 0);
    c->ffn = get_int(r, "intermediate_size", 1, 0, 0);
    c->n_heads = get_int(r, "num_attention_heads", 1, 0, 0);
    c->head_dim = get_int(r, "head_dim", 2, c->n_heads ? c->hidden / c->n_heads : 0, 1);
    c->n_kv = get_int(r, "num_key_value_heads", 1, c->n_heads, 1);
    c->vocab = get_int(r, "vocab_size", 1, 0, 0);
    c->seq_len = get_int(r, "max_position_embeddings", 1, 0, 0);
    c->rope_base = get_num(r, "rope_theta", 10000.0, 1);
    double prf = get_num(r, "partial_rotary_factor", 0.5, 1);
    c->rot_dim = prf <= 1.0 ? (int)(c->head_dim * prf) : 0; /* no float -> int conversion out of range */
    if (prf > 1.0 || c->rot_dim % 2) fail(r, "partial_rotary_factor", "must give an even number of rotary dims <= head_dim");
    c->eps = get_float(r, "rms_norm_eps", 1e-5, 0);
    c->qkv_bias = get_bool(r, "attention_bias", 1);
    want_bool(r, "tie_word_embeddings", 0, 0);
    const cJSON *act = get_field(r, "hidden_act");
    if (act && !(cJSON_IsString(act) && strcmp(act->valuestring, "silu") == 0)) fail(r, "hidden_act", "must be \"silu\"");
}

int config_load(glm_config *cfg, const char *dir, char *err, size_t errlen) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    memset(cfg, 0, sizeof *cfg);
    struct stat st;
    if (stat(dir, &st) != 0) {
        snprintf(err, errlen, "%s: model directory not found: %s", dir, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s: not a directory (--model wants the checkpoint's directory)", dir);
        return -1;
    }
    size_t len = 0;
    char *text = util_read_file(path, &len, err, errlen);
    if (!text) return -1;
    int rc = config_parse(cfg, text, len, path, err, errlen);
    free(text);
    return rc;
}

int config_parse(glm_config *cfg, const char *text, size_t len, const char *path, char *err, size_t errlen) {
    memset(cfg, 0, sizeof *cfg);
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!root || !cJSON_IsObject(root)) {
        snprintf(err, errlen, "%s: not a JSON object", path);
        cJSON_Delete(root);
        return -1;
    }
    reader r = {root, path, err, errlen, 0};
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!cJSON_IsString(mt))
        fail(&r, "model_type", "missing (want \"chatglm\" or \"glm\")");
    else if (strcmp(mt->valuestring, "chatglm") == 0)
        parse_chatglm(&r, cfg);
    else if (strcmp(mt->valuestring, "glm") == 0)
        parse_hf(&r, cfg);
    else
        fail(&r, "model_type", "unknown (want \"chatglm\" or \"glm\"; GLM-4-0414 \"glm4\" is a different architecture)");
    get_eos(&r, cfg);
    if (cfg->layout == LAYOUT_CHATGLM) parse_vision(&r, cfg);
    cfg->pad_id = get_int(&r, "pad_token_id", 0, cfg->n_eos ? cfg->eos_ids[0] : 0, 1);
    if (!r.failed && cfg->n_heads % cfg->n_kv)
        fail(&r, "multi_query_group_num", "KV groups must divide num_attention_heads");
    const char *hd = cfg->layout == LAYOUT_HF ? "head_dim" : "kv_channels";
    if (!r.failed && (cfg->head_dim < 2 || cfg->head_dim % 2 || cfg->rot_dim % 2 || cfg->rot_dim > cfg->head_dim)) {
        char m[160];
        snprintf(m, sizeof m, "head dim %d (hidden size / heads when absent) must be even and at least 2",
                 cfg->head_dim);
        fail(&r, hd, m);
    }
    /* Weight dimensions are ints: the fused QKV rows and gate+up rows must fit. */
    if (!r.failed && (int64_t)(cfg->n_heads + 2 * (int64_t)cfg->n_kv) * cfg->head_dim > 2147483647)
        fail(&r, hd, "query and KV heads times head dim exceed 2^31");
    if (!r.failed && 2 * (int64_t)cfg->ffn > 2147483647)
        fail(&r, cfg->layout == LAYOUT_HF ? "intermediate_size" : "ffn_hidden_size", "must be below 2^30");
    cJSON_Delete(root);
    return r.failed ? -1 : 0;
}

int config_check_tp(const glm_config *c, int tp, char *err, size_t errlen) {
    const char *kv = c->layout == LAYOUT_HF ? "num_key_value_heads" : "multi_query_group_num";
    const char *ffn = c->layout == LAYOUT_HF ? "intermediate_size" : "ffn_hidden_size";
    const char *vocab = c->layout == LAYOUT_HF ? "vocab_size" : "padded_vocab_size";
    if (tp < 1 || c->n_heads % tp) {
        snprintf(err, errlen, "field 'num_attention_heads': %d heads cannot be split over %d ranks "
                 "(the tensor parallel size must divide them)", c->n_heads, tp);
        return -1;
    }
    if (c->n_kv % tp && tp % c->n_kv) {
        snprintf(err, errlen, "field '%s': %d KV groups cannot be split over %d ranks "
                 "(the tensor parallel size must divide them or be a multiple of them)", kv, c->n_kv, tp);
        return -1;
    }
    const glm_vision_config *v = &c->vision;
    if (v->present && (v->n_heads % tp || tp > v->ffn)) {
        snprintf(err, errlen, "field 'vision_config.%s': %d cannot be split over %d ranks (the tensor parallel size "
                 "must divide the vision heads)", v->n_heads % tp ? "num_heads" : "intermediate_size",
                 v->n_heads % tp ? v->n_heads : v->ffn, tp);
        return -1;
    }
    if (tp > c->ffn || tp > c->vocab) {
        snprintf(err, errlen, "field '%s': %d is less than the tensor parallel size %d", tp > c->ffn ? ffn : vocab,
                 tp > c->ffn ? c->ffn : c->vocab, tp);
        return -1;
    }
    return 0;
}

uint64_t config_hash(const glm_config *c) {
    /* Over the fields, not the struct's padding. */
    double vals[] = {c->layout, c->n_layers, c->hidden, c->ffn, c->n_heads, c->n_kv, c->head_dim,
                     c->rot_dim, c->vocab, c->seq_len, c->rope_base, c->eps, c->qkv_bias};
    uint64_t h = util_fnv(UTIL_FNV_INIT, vals, sizeof vals);
    const glm_vision_config *v = &c->vision;
    if (!v->present) return h; /* text models hash as before (KV snapshots name the hash) */
    double vv[] = {v->hidden, v->n_layers, v->n_heads, v->ffn, v->image, v->patch, v->in_ch, v->n_pos,
                   v->eps, v->glu_eps, v->scaling, v->boi_id, v->eoi_id};
    return util_fnv(h, vv, sizeof vv);
}

int config_image_tokens(const glm_config *c) {
    if (!c->vision.present) return 0;
    int g = c->vision.image / c->vision.patch / 2;
    return g * g + 2;
}
