/* Per-rank weight loading (see model.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "safetensors.h"
#include "util.h"
#include "vision.h"

typedef struct loader {
    const char *dir;
    st_set *st;
    glm_model *m;
    char *err;
    size_t errlen;
} loader;

/* Tensor names of the two layouts; role is one of the names below. */
static void tensor_name(char *out, size_t n, glm_layout layout, const char *role, int layer) {
    static const char *const roles[] = {"embed", "final_ln", "lm_head", "ln1", "qkv", "qkv_b", "q", "k", "v",
                                        "q_b", "k_b", "v_b", "dense", "ln2", "h4h", "down"};
    static const char *const chatglm[] = {
        "transformer.embedding.word_embeddings.weight",
        "transformer.encoder.final_layernorm.weight",
        "transformer.output_layer.weight",
        "transformer.encoder.layers.%d.input_layernorm.weight",
        "transformer.encoder.layers.%d.self_attention.query_key_value.weight",
        "transformer.encoder.layers.%d.self_attention.query_key_value.bias",
        NULL, NULL, NULL, NULL, NULL, NULL,
        "transformer.encoder.layers.%d.self_attention.dense.weight",
        "transformer.encoder.layers.%d.post_attention_layernorm.weight",
        "transformer.encoder.layers.%d.mlp.dense_h_to_4h.weight",
        "transformer.encoder.layers.%d.mlp.dense_4h_to_h.weight"};
    static const char *const hf[] = {"model.embed_tokens.weight",
                                     "model.norm.weight",
                                     "lm_head.weight",
                                     "model.layers.%d.input_layernorm.weight",
                                     NULL,
                                     NULL,
                                     "model.layers.%d.self_attn.q_proj.weight",
                                     "model.layers.%d.self_attn.k_proj.weight",
                                     "model.layers.%d.self_attn.v_proj.weight",
                                     "model.layers.%d.self_attn.q_proj.bias",
                                     "model.layers.%d.self_attn.k_proj.bias",
                                     "model.layers.%d.self_attn.v_proj.bias",
                                     "model.layers.%d.self_attn.o_proj.weight",
                                     "model.layers.%d.post_attention_layernorm.weight",
                                     "model.layers.%d.mlp.gate_up_proj.weight",
                                     "model.layers.%d.mlp.down_proj.weight"};
    for (size_t i = 0; i < sizeof roles / sizeof *roles; i++) {
        if (strcmp(roles[i], role) == 0) {
            const char *fmt = layout == LAYOUT_HF ? hf[i] : chatglm[i];
            snprintf(out, n, fmt ? fmt : "?", layer);
            return;
        }
    }
    snprintf(out, n, "?");
}

/* Finds a tensor and checks its shape: [rows, cols], or [cols] when rows == 0. */
static const st_tensor *get(loader *ld, const char *role, int layer, int rows, int cols) {
    char name[256];
    tensor_name(name, sizeof name, ld->m->cfg.layout, role, layer);
    const st_tensor *t = st_find(ld->st, name);
    if (!t) {
        snprintf(ld->err, ld->errlen, "%s: missing tensor '%s'", ld->dir, name);
        return NULL;
    }
    int ok = rows ? (t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols)
                  : (t->ndim == 1 && t->shape[0] == cols);
    if (!ok) {
        char got[96] = "[", want[64];
        for (int i = 0; i < t->ndim; i++) {
            size_t l = strlen(got);
            snprintf(got + l, sizeof got - l, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        }
        strncat(got, "]", sizeof got - strlen(got) - 1);
        if (rows)
            snprintf(want, sizeof want, "[%d, %d]", rows, cols);
        else
            snprintf(want, sizeof want, "[%d]", cols);
        snprintf(ld->err, ld->errlen, "%s: tensor '%s' has shape %s but config.json implies %s", t->file, name,
                 got, want);
        return NULL;
    }
    return t;
}

/* A host staging buffer that slices of tensors of one dtype are appended to. */
typedef struct stage {
    uint8_t *buf;
    size_t used;
    kdtype dtype;
    int rows;
} stage;

static int stage_rows(loader *ld, stage *s, const st_tensor *t, int r0, int nr) {
    if (s->rows == 0) s->dtype = t->dtype;
    if (t->dtype != s->dtype) {
        snprintf(ld->err, ld->errlen, "%s: tensor '%s' is %s but the tensors fused with it are %s", t->file,
                 t->name, kdtype_name(t->dtype), kdtype_name(s->dtype));
        return -1;
    }
    size_t row_bytes = (size_t)(t->ndim == 2 ? t->shape[1] : 1) * kdtype_size(t->dtype);
    memcpy(s->buf + s->used, t->data + (size_t)r0 * row_bytes, (size_t)nr * row_bytes);
    s->used += (size_t)nr * row_bytes;
    s->rows += nr;
    return 0;
}

static void stage_cols(stage *s, const st_tensor *t, int c0, int nc) {
    size_t es = kdtype_size(t->dtype), cols = (size_t)t->shape[1];
    s->dtype = t->dtype;
    for (int64_t r = 0; r < t->shape[0]; r++) {
        memcpy(s->buf + s->used, t->data + ((size_t)r * cols + (size_t)c0) * es, (size_t)nc * es);
        s->used += (size_t)nc * es;
    }
    s->rows = (int)t->shape[0];
}

static void upload(loader *ld, kweight *w, const void *host, kdtype dt, int rows, int cols, int sharded) {
    kbackend kb = ld->m->kb;
    kb.iface->weight_upload(kb.ctx, w, host, dt, rows, cols);
    size_t bytes = (size_t)rows * cols * kdtype_size(w->dtype);
    if (sharded)
        ld->m->bytes_sharded += bytes;
    else
        ld->m->bytes_replicated += bytes;
}

/* A whole tensor (replicated) or a contiguous row range of it, straight from the map. */
static int load_rows(loader *ld, kweight *w, const char *role, int layer, int rows, int cols, int r0, int nr,
                     int sharded) {
    const st_tensor *t = get(ld, role, layer, rows, cols);
    if (!t) return -1;
    size_t row_bytes = (size_t)cols * kdtype_size(t->dtype);
    upload(ld, w, t->data + (size_t)r0 * row_bytes, t->dtype, rows ? nr : 1, cols, sharded);
    return 0;
}

static int load_qkv(loader *ld, glm_layer *L, int l, uint8_t *scratch) {
    const glm_config *c = &ld->m->cfg;
    const glm_shard *s = &ld->m->shard;
    int d = c->head_dim, H = c->hidden, nq = c->n_heads * d, nk = c->n_kv * d;
    int rows = (s->nq + 2 * s->nkv) * d;
    for (int bias = 0; bias <= (c->qkv_bias ? 1 : 0); bias++) {
        int r = bias ? 0 : 1; /* get(): rows 0 means a vector */
        stage st = {scratch, 0, KDT_F32, 0};
        if (c->layout == LAYOUT_CHATGLM) {
            const st_tensor *t = get(ld, bias ? "qkv_b" : "qkv", l, r ? nq + 2 * nk : 0, bias ? nq + 2 * nk : H);
            if (!t || stage_rows(ld, &st, t, s->q0 * d, s->nq * d) ||
                stage_rows(ld, &st, t, nq + s->kv0 * d, s->nkv * d) ||
                stage_rows(ld, &st, t, nq + nk + s->kv0 * d, s->nkv * d))
                return -1;
        } else {
            const st_tensor *q = get(ld, bias ? "q_b" : "q", l, r ? nq : 0, bias ? nq : H);
            const st_tensor *k = q ? get(ld, bias ? "k_b" : "k", l, r ? nk : 0, bias ? nk : H) : NULL;
            const st_tensor *v = k ? get(ld, bias ? "v_b" : "v", l, r ? nk : 0, bias ? nk : H) : NULL;
            if (!v || stage_rows(ld, &st, q, s->q0 * d, s->nq * d) ||
                stage_rows(ld, &st, k, s->kv0 * d, s->nkv * d) || stage_rows(ld, &st, v, s->kv0 * d, s->nkv * d))
                return -1;
        }
        if (bias)
            upload(ld, &L->qkv_b, st.buf, st.dtype, 1, rows, 1);
        else
            upload(ld, &L->qkv, st.buf, st.dtype, rows, H, 1);
    }
    return 0;
}

/* Every tensor present with the shape config.json implies, in load order, before
 * anything is allocated from config sizes: a config that disagrees with the
 * checkpoint is named as such instead of failing an allocation it sized. */
static int check_shapes(loader *ld) {
    const glm_config *c = &ld->m->cfg;
    int H = c->hidden, F = c->ffn, V = c->vocab, nq = c->n_heads * c->head_dim, nk = c->n_kv * c->head_dim;
    if (!get(ld, "embed", 0, V, H) || !get(ld, "final_ln", 0, 0, H) || !get(ld, "lm_head", 0, V, H)) return -1;
    for (int l = 0; l < c->n_layers; l++) {
        if (!get(ld, "ln1", l, 0, H) || !get(ld, "ln2", l, 0, H)) return -1;
        if (c->layout == LAYOUT_CHATGLM) {
            if (!get(ld, "qkv", l, nq + 2 * nk, H) || (c->qkv_bias && !get(ld, "qkv_b", l, 0, nq + 2 * nk)))
                return -1;
        } else {
            if (!get(ld, "q", l, nq, H) || !get(ld, "k", l, nk, H) || !get(ld, "v", l, nk, H)) return -1;
            if (c->qkv_bias && (!get(ld, "q_b", l, 0, nq) || !get(ld, "k_b", l, 0, nk) || !get(ld, "v_b", l, 0, nk)))
                return -1;
        }
        if (!get(ld, "dense", l, H, nq) || !get(ld, "h4h", l, 2 * F, H) || !get(ld, "down", l, H, F)) return -1;
    }
    return 0;
}

static int load_layer(loader *ld, int l, uint8_t *scratch) {
    const glm_config *c = &ld->m->cfg;
    const glm_shard *s = &ld->m->shard;
    glm_layer *L = &ld->m->layers[l];
    int H = c->hidden, F = c->ffn, nf = s->f1 - s->f0, qw = c->n_heads * c->head_dim;
    if (load_rows(ld, &L->ln1, "ln1", l, 0, H, 0, 1, 0) || load_rows(ld, &L->ln2, "ln2", l, 0, H, 0, 1, 0) ||
        load_qkv(ld, L, l, scratch))
        return -1;

    const st_tensor *t = get(ld, "dense", l, H, qw);
    if (!t) return -1;
    stage st = {scratch, 0, KDT_F32, 0};
    stage_cols(&st, t, s->q0 * c->head_dim, s->nq * c->head_dim);
    upload(ld, &L->dense, st.buf, st.dtype, H, s->nq * c->head_dim, 1);

    if (!(t = get(ld, "h4h", l, 2 * F, H))) return -1;
    st = (stage){scratch, 0, KDT_F32, 0};
    if (stage_rows(ld, &st, t, s->f0, nf) || stage_rows(ld, &st, t, F + s->f0, nf)) return -1;
    upload(ld, &L->h4h, st.buf, st.dtype, 2 * nf, H, 1);

    if (!(t = get(ld, "down", l, H, F))) return -1;
    st = (stage){scratch, 0, KDT_F32, 0};
    stage_cols(&st, t, s->f0, nf);
    upload(ld, &L->down, st.buf, st.dtype, H, nf, 1);
    return 0;
}

/* Bytes this rank's weights take in a device backend's memory (matrices bf16,
 * vectors fp32: kernels.h), known before any is loaded; the vision tower's
 * from vision.c, which knows its slices. */
static double device_weight_bytes(const glm_config *c, const glm_shard *s) {
    double H = c->hidden, d = c->head_dim, qkv = (double)(s->nq + 2 * s->nkv) * d, nf = s->f1 - s->f0;
    double mat = (double)c->vocab * H + (double)(s->v1 - s->v0) * H;
    mat += c->n_layers * (qkv * H + H * s->nq * d + 2 * nf * H + H * nf);
    double vec = H + c->n_layers * (2 * H + qkv);
    return 2 * mat + 4 * vec + vision_device_bytes(c, s->tp, s->rank);
}

int model_load(glm_model **out, const char *dir, kbackend kb, comm *cm, char *err, size_t errlen) {
    glm_model *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    m->kb = kb;
    m->comm = cm;
    loader ld = {dir, NULL, m, err, errlen};
    uint8_t *scratch = NULL;
    if (config_load(&m->cfg, dir, err, errlen)) goto fail;
    char why[512];
    if (config_check_tp(&m->cfg, cm->size, why, sizeof why)) {
        snprintf(err, errlen, "%s/config.json: %s", dir, why);
        goto fail;
    }
    shard_plan(&m->shard, &m->cfg, cm->size, cm->rank);
    size_t free_b, total_b;
    if (kb.iface->mem_info(kb.ctx, &free_b, &total_b) == 0) {
        double need = device_weight_bytes(&m->cfg, &m->shard);
        if (need > (double)free_b) {
            snprintf(err, errlen,
                     "%s: this rank's share of the weights needs %.2f GiB of GPU memory but only %.2f of %.2f GiB "
                     "is free (use more ranks: --tp splits the weights)",
                     dir, need / 1073741824.0, free_b / 1073741824.0, total_b / 1073741824.0);
            goto fail;
        }
    }
    if (st_open_dir(&ld.st, dir, err, errlen) || check_shapes(&ld)) goto fail;
    uint64_t fp[2] = {config_hash(&m->cfg), st_fingerprint(ld.st)};
    m->fingerprint = util_fnv(UTIL_FNV_INIT, fp, sizeof fp);

    const glm_config *c = &m->cfg;
    const glm_shard *s = &m->shard;
    int H = c->hidden;
    /* Largest staged slice: the local h4h block, QKV block or a column slice. */
    size_t big = (size_t)2 * (s->f1 - s->f0) * H;
    size_t qkv = (size_t)(s->nq + 2 * s->nkv) * c->head_dim * H;
    if (qkv > big) big = qkv;
    scratch = malloc(big * 4);
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!scratch || !m->layers) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (load_rows(&ld, &m->embed, "embed", 0, c->vocab, H, 0, c->vocab, 0) ||
        load_rows(&ld, &m->final_ln, "final_ln", 0, 0, H, 0, 1, 0) ||
        load_rows(&ld, &m->lm_head, "lm_head", 0, c->vocab, H, s->v0, s->v1 - s->v0, 1))
        goto fail;
    for (int l = 0; l < c->n_layers; l++)
        if (load_layer(&ld, l, scratch)) goto fail;
    size_t vis_sharded = 0, vis_replicated = 0;
    if (c->vision.present &&
        vision_load(&m->vision, c, ld.st, dir, kb, cm, &vis_sharded, &vis_replicated, err, errlen))
        goto fail;
    m->bytes_vision = vis_sharded + vis_replicated;
    free(scratch);
    st_close(ld.st);
    *out = m;
    return 0;
fail:
    free(scratch);
    st_close(ld.st);
    model_free(m);
    return -1;
}

void model_free(glm_model *m) {
    if (!m) return;
    const kernels_iface *k = m->kb.iface;
    if (k) {
        k->weight_free(m->kb.ctx, &m->embed);
        k->weight_free(m->kb.ctx, &m->final_ln);
        k->weight_free(m->kb.ctx, &m->lm_head);
        for (int l = 0; m->layers && l < m->cfg.n_layers; l++) {
            glm_layer *L = &m->layers[l];
            kweight *ws[] = {&L->ln1, &L->qkv, &L->qkv_b, &L->dense, &L->ln2, &L->h4h, &L->down};
            for (size_t i = 0; i < sizeof ws / sizeof *ws; i++) k->weight_free(m->kb.ctx, ws[i]);
        }
    }
    vision_free(m->vision);
    free(m->layers);
    free(m);
}
