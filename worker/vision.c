/* GLM-4V's vision tower and adapter (see vision.h). Shapes: T = grid^2 + 1
 * tokens (cls first), Hv vision width, nl local heads of dh, fl local ViT MLP
 * columns; the adapter's N = (grid/2)^2 tokens of the LM width H, nf local
 * GLU columns. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shard.h"
#include "util.h"
#include "vision.h"

typedef struct vlayer {
    kweight ln_in_w, ln_in_b;     /* LayerNorm of the attention output [1, Hv] */
    kweight qkv, qkv_b;           /* [3 nl dh, Hv]: local Q rows, then K, then V */
    kweight dense, dense_b;       /* [Hv, nl dh]; bias on rank 0 only */
    kweight ln_post_w, ln_post_b; /* LayerNorm of the MLP output */
    kweight fc1, fc1_b;           /* [fl, Hv] */
    kweight fc2, fc2_b;           /* [Hv, fl]; bias on rank 0 only */
} vlayer;

struct glm_vision {
    glm_vision_config vc;
    int H, grid, T, nl, dh, fl, nf, nf_total; /* nf_total: the GLU's width (the LM's ffn_hidden_size) */
    kbackend kb;
    comm *comm;
    kweight patch_w, patch_b; /* [Hv, in_ch p p], [1, Hv] */
    kweight pos;              /* [T, Hv]: positions; row 0 = cls + position 0 - patch bias (see load) */
    vlayer *layers;
    kweight conv_w, conv_b;   /* [H, 4 Hv] in (kh, kw, channel) column order, [1, H] */
    kweight proj;             /* linear_proj [H, H] */
    kweight n1_w, n1_b;       /* [1, H] */
    kweight gu;               /* [2 nf, H]: gate rows, then up (dense_h_to_4h) rows */
    kweight down;             /* [H, nf], divided by the scaling factor */
    kweight ends;             /* [2, H]: boi, eoi, divided by the scaling factor */
    /* scratch (backend memory), allocated at the first encode */
    void *x, *o, *qkv, *att, *a, *cols, *g, *gu_tmp;
    int32_t *iota; /* [T]: 0, 1, ... (the embedding op's ids) */
    int *conv_rows; /* host [4 N]: rows of x the 2x2 convolution reads */
    float *host_cols; /* host im2col of the pixels */
    uint16_t *host_bf;
    int n_run;              /* layers vision_encode runs (vision_set_layers; else all) */
    double seconds, layer_seconds;
};

/* ------------------------------------------------------------------ sizes */

/* Elements of each scratch buffer of one rank (scratch() allocates them, and
 * vision_act_bytes counts them, from this one place). qw: local heads x head
 * dim; fl: local ViT MLP columns; nf: local GLU columns. */
typedef struct vscratch {
    size_t x, o, qkv, att, a, cols, g, gu_tmp; /* activations */
    size_t T, N, K;                            /* tokens, adapter tokens, im2col width */
} vscratch;

static vscratch scratch_plan(const glm_vision_config *vc, int H, int qw, int fl, int nf) {
    vscratch s;
    size_t grid = (size_t)(vc->image / vc->patch), Hv = (size_t)vc->hidden;
    s.T = (size_t)vc->n_pos;
    s.N = (grid / 2) * (grid / 2);
    s.K = (size_t)vc->in_ch * vc->patch * vc->patch;
    s.x = s.o = s.T * Hv > s.N * H ? s.T * Hv : s.N * H; /* the ViT's rows, then the adapter's */
    s.qkv = s.T * 3 * (size_t)qw;
    s.att = s.T * (size_t)qw;
    s.a = s.T * (size_t)fl > s.N * (size_t)nf ? s.T * (size_t)fl : s.N * (size_t)nf; /* fc1, then the GLU */
    s.cols = s.T * s.K;
    s.g = 4 * s.N * Hv;
    s.gu_tmp = s.N * 2 * (size_t)nf;
    return s;
}

/* Rank's local widths: heads x head dim, ViT MLP columns, GLU columns. */
static void local_widths(const glm_config *cfg, int tp, int rank, int *qw, int *fl, int *nf) {
    int lo, hi;
    *qw = cfg->vision.hidden / tp; /* n_heads / tp heads of hidden / n_heads */
    shard_range(cfg->vision.ffn, tp, rank, &lo, &hi);
    *fl = hi - lo;
    shard_range(cfg->ffn, tp, rank, &lo, &hi);
    *nf = hi - lo;
}

double vision_act_bytes(const glm_config *cfg, int tp, int rank, int act_bytes) {
    if (!cfg->vision.present) return 0;
    int qw, fl, nf;
    local_widths(cfg, tp, rank, &qw, &fl, &nf);
    vscratch s = scratch_plan(&cfg->vision, cfg->hidden, qw, fl, nf);
    double acts = (double)(s.x + s.o + s.qkv + s.att + s.a + s.cols + s.g + s.gu_tmp);
    double slot = (double)config_image_tokens(cfg) * cfg->hidden; /* forward_image's rows of the image */
    return (acts + slot) * act_bytes + 4.0 * (double)s.T /* iota */;
}

double vision_device_bytes(const glm_config *cfg, int tp, int rank) {
    const glm_vision_config *v = &cfg->vision;
    if (!v->present) return 0;
    int qwi, fli, nfi;
    local_widths(cfg, tp, rank, &qwi, &fli, &nfi);
    double H = cfg->hidden, Hv = v->hidden, qw = qwi, fl = fli, nf = nfi, grid = v->image / v->patch;
    double K = (double)v->in_ch * v->patch * v->patch;
    /* boi/eoi and positions are uploaded as matrices (bf16 on a device) */
    double mat = v->n_layers * (3 * qw * Hv + Hv * qw + 2 * fl * Hv) + Hv * K + (grid * grid + 1) * Hv;
    mat += H * 4 * Hv + H * H + 3 * nf * H + 2 * H;
    /* per layer: two LayerNorms (w, b), the dense and fc2 biases (rank 0's:
     * counted on every rank, the largest share), the QKV and fc1 bias slices;
     * the patch bias, the conv bias and norm1 (w, b) */
    double vec = v->n_layers * (6 * Hv + 3 * qw + fl) + Hv + 3 * H;
    return 2 * mat + 4 * vec;
}

double vision_flops(const glm_config *cfg, int layers) {
    const glm_vision_config *v = &cfg->vision;
    if (!v->present) return 0;
    vscratch s = scratch_plan(v, cfg->hidden, v->hidden, v->ffn, cfg->ffn); /* whole widths: all ranks */
    double T = (double)s.T, N = (double)s.N, Hv = v->hidden, H = cfg->hidden, F = v->ffn, Fg = cfg->ffn;
    double layer = 2 * T * Hv * 3 * Hv /* qkv */ + 4 * T * T * Hv /* QK^T and PV, every pair */ +
                   2 * T * Hv * Hv /* dense */ + 2 * 2 * T * Hv * F /* fc1, fc2 */;
    double patch = 2 * T * (double)s.K * Hv;
    double adapter = 2 * N * 4 * Hv * H /* 2x2 conv */ + 2 * N * H * H /* linear_proj */ +
                     2 * N * H * 3 * Fg /* gate, up, down */;
    return patch + layers * layer + adapter;
}

/* ------------------------------------------------------------------ loading */

typedef struct vloader {
    const st_set *st;
    const char *dir;
    glm_vision *v;
    size_t *sharded, *replicated;
    char *err;
    size_t errlen;
} vloader;

/* transformer.vision.<name> with shape dims[0..ndim), or NULL with err set. */
static const st_tensor *vget(vloader *ld, const char *name, int ndim, const int64_t *dims) {
    char full[256];
    snprintf(full, sizeof full, "transformer.vision.%s", name);
    const st_tensor *t = st_find(ld->st, full);
    if (!t) {
        snprintf(ld->err, ld->errlen, "%s: missing tensor '%s' (config.json has a vision_config)", ld->dir, full);
        return NULL;
    }
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == dims[i];
    if (!ok) {
        char got[96] = "", want[96] = "";
        for (int i = 0; i < t->ndim; i++) {
            size_t l = strlen(got);
            snprintf(got + l, sizeof got - l, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        }
        for (int i = 0; i < ndim; i++) {
            size_t l = strlen(want);
            snprintf(want + l, sizeof want - l, "%s%lld", i ? ", " : "", (long long)dims[i]);
        }
        snprintf(ld->err, ld->errlen, "%s: tensor '%s' has shape [%s] but config.json implies [%s]", t->file, full,
                 got, want);
        return NULL;
    }
    return t;
}

static const st_tensor *vget1(vloader *ld, const char *name, int64_t n) {
    int64_t d[1] = {n};
    return vget(ld, name, 1, d);
}

static const st_tensor *vget2(vloader *ld, const char *name, int64_t r, int64_t c) {
    int64_t d[2] = {r, c};
    return vget(ld, name, 2, d);
}

static float elem(const st_tensor *t, size_t i) {
    if (t->dtype == KDT_F32) {
        float f;
        memcpy(&f, t->data + 4 * i, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, t->data + 2 * i, 2);
    return t->dtype == KDT_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

static void vupload(vloader *ld, kweight *w, const void *host, kdtype dt, int rows, int cols, int sharded) {
    kbackend kb = ld->v->kb;
    kb.iface->weight_upload(kb.ctx, w, host, dt, rows, cols);
    size_t bytes = (size_t)rows * cols * kdtype_size(w->dtype);
    *(sharded ? ld->sharded : ld->replicated) += bytes;
}

/* Rows [r0, r0 + nr) of a 2-D (or 1-D: cols = n, rows = 1) tensor as it is stored. */
static void up_rows(vloader *ld, kweight *w, const st_tensor *t, int r0, int nr, int sharded) {
    size_t cols = t->ndim == 2 ? (size_t)t->shape[1] : (size_t)t->shape[0];
    size_t es = kdtype_size(t->dtype);
    if (t->ndim == 1) /* a vector slice [r0, r0 + nr) of its elements */
        vupload(ld, w, t->data + (size_t)r0 * es, t->dtype, 1, nr, sharded);
    else
        vupload(ld, w, t->data + (size_t)r0 * cols * es, t->dtype, nr, (int)cols, sharded);
}

/* Columns [c0, c0 + nc) of a 2-D tensor, times scale (1: as stored; else fp32). */
static int up_cols(vloader *ld, kweight *w, const st_tensor *t, int c0, int nc, double scale, int sharded) {
    size_t rows = (size_t)t->shape[0], cols = (size_t)t->shape[1], es = kdtype_size(t->dtype);
    int f32 = scale != 1.0;
    uint8_t *buf = malloc(rows * (size_t)nc * (f32 ? 4 : es));
    if (!buf) {
        snprintf(ld->err, ld->errlen, "out of memory loading '%s'", t->name);
        return -1;
    }
    for (size_t r = 0; r < rows; r++) {
        if (f32) {
            float *dst = (float *)buf + r * (size_t)nc;
            for (int j = 0; j < nc; j++) dst[j] = (float)(elem(t, r * cols + (size_t)(c0 + j)) / scale);
        } else {
            memcpy(buf + r * (size_t)nc * es, t->data + (r * cols + (size_t)c0) * es, (size_t)nc * es);
        }
    }
    vupload(ld, w, buf, f32 ? KDT_F32 : t->dtype, (int)rows, nc, sharded);
    free(buf);
    return 0;
}

/* Several row ranges of tensors of one dtype, stacked (QKV by heads, gate + up). */
static int up_stacked(vloader *ld, kweight *w, const st_tensor *const *ts, const int *r0, int nr, int n, int sharded) {
    size_t cols = ts[0]->ndim == 2 ? (size_t)ts[0]->shape[1] : 1, es = kdtype_size(ts[0]->dtype);
    for (int i = 1; i < n; i++)
        if (ts[i]->dtype != ts[0]->dtype) {
            snprintf(ld->err, ld->errlen, "%s: tensor '%s' is %s but '%s' is %s", ts[i]->file, ts[i]->name,
                     kdtype_name(ts[i]->dtype), ts[0]->name, kdtype_name(ts[0]->dtype));
            return -1;
        }
    uint8_t *buf = malloc((size_t)n * nr * cols * es);
    if (!buf) {
        snprintf(ld->err, ld->errlen, "out of memory loading '%s'", ts[0]->name);
        return -1;
    }
    for (int i = 0; i < n; i++)
        memcpy(buf + (size_t)i * nr * cols * es, ts[i]->data + (size_t)r0[i] * cols * es, (size_t)nr * cols * es);
    if (ts[0]->ndim == 1)
        vupload(ld, w, buf, ts[0]->dtype, 1, n * nr, sharded);
    else
        vupload(ld, w, buf, ts[0]->dtype, n * nr, (int)cols, sharded);
    free(buf);
    return 0;
}

static int load_layer(vloader *ld, int l) {
    glm_vision *v = ld->v;
    int Hv = v->vc.hidden, F = v->vc.ffn, q0 = v->comm->rank * v->nl * v->dh, qw = v->nl * v->dh, f0, f1;
    shard_range(F, v->comm->size, v->comm->rank, &f0, &f1);
    vlayer *L = &v->layers[l];
    char n[160];
#define NAME(s) (snprintf(n, sizeof n, "transformer.layers.%d.%s", l, s), n)
    const st_tensor *t;
    if (!(t = vget1(ld, NAME("input_layernorm.weight"), Hv))) return -1;
    up_rows(ld, &L->ln_in_w, t, 0, Hv, 0);
    if (!(t = vget1(ld, NAME("input_layernorm.bias"), Hv))) return -1;
    up_rows(ld, &L->ln_in_b, t, 0, Hv, 0);
    if (!(t = vget1(ld, NAME("post_attention_layernorm.weight"), Hv))) return -1;
    up_rows(ld, &L->ln_post_w, t, 0, Hv, 0);
    if (!(t = vget1(ld, NAME("post_attention_layernorm.bias"), Hv))) return -1;
    up_rows(ld, &L->ln_post_b, t, 0, Hv, 0);

    /* query_key_value: [Q Hv | K Hv | V Hv] blocks, heads contiguous in each */
    if (!(t = vget2(ld, NAME("attention.query_key_value.weight"), 3 * (int64_t)Hv, Hv))) return -1;
    const st_tensor *three[3] = {t, t, t};
    int r0[3] = {q0, Hv + q0, 2 * Hv + q0};
    if (up_stacked(ld, &L->qkv, three, r0, qw, 3, 1)) return -1;
    if (!(t = vget1(ld, NAME("attention.query_key_value.bias"), 3 * (int64_t)Hv))) return -1;
    three[0] = three[1] = three[2] = t;
    if (up_stacked(ld, &L->qkv_b, three, r0, qw, 3, 1)) return -1;
    if (!(t = vget2(ld, NAME("attention.dense.weight"), Hv, Hv)) || up_cols(ld, &L->dense, t, q0, qw, 1.0, 1))
        return -1;
    if (!(t = vget1(ld, NAME("attention.dense.bias"), Hv))) return -1;
    if (v->comm->rank == 0) up_rows(ld, &L->dense_b, t, 0, Hv, 0);

    if (!(t = vget2(ld, NAME("mlp.fc1.weight"), F, Hv))) return -1;
    up_rows(ld, &L->fc1, t, f0, f1 - f0, 1);
    if (!(t = vget1(ld, NAME("mlp.fc1.bias"), F))) return -1;
    up_rows(ld, &L->fc1_b, t, f0, f1 - f0, 1);
    if (!(t = vget2(ld, NAME("mlp.fc2.weight"), Hv, F)) || up_cols(ld, &L->fc2, t, f0, f1 - f0, 1.0, 1)) return -1;
    if (!(t = vget1(ld, NAME("mlp.fc2.bias"), Hv))) return -1;
    if (v->comm->rank == 0) up_rows(ld, &L->fc2_b, t, 0, Hv, 0);
#undef NAME
    return 0;
}

/* Patch embedding: the convolution as a matrix over (channel, kh, kw) columns,
 * and the table the embedding op adds: positions, with cls folded into row 0
 * (the matmul gives that row the bias alone: its im2col row is zero). */
static int load_embed(vloader *ld) {
    glm_vision *v = ld->v;
    const glm_vision_config *vc = &v->vc;
    int Hv = vc->hidden, p = vc->patch, K = vc->in_ch * p * p;
    int64_t pd[4] = {Hv, vc->in_ch, p, p};
    const st_tensor *w = vget(ld, "patch_embedding.proj.weight", 4, pd);
    const st_tensor *b = w ? vget1(ld, "patch_embedding.proj.bias", Hv) : NULL;
    const st_tensor *cls = b ? vget2(ld, "patch_embedding.cls_embedding", 1, Hv) : NULL;
    const st_tensor *pos = cls ? vget2(ld, "patch_embedding.position_embedding.weight", vc->n_pos, Hv) : NULL;
    if (!pos) return -1;
    vupload(ld, &v->patch_w, w->data, w->dtype, Hv, K, 0);
    up_rows(ld, &v->patch_b, b, 0, Hv, 0);
    float *tab = malloc((size_t)vc->n_pos * Hv * sizeof(float));
    if (!tab) {
        snprintf(ld->err, ld->errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < (size_t)vc->n_pos * Hv; i++) tab[i] = elem(pos, i);
    for (int j = 0; j < Hv; j++) tab[j] += elem(cls, (size_t)j) - elem(b, (size_t)j);
    vupload(ld, &v->pos, tab, KDT_F32, vc->n_pos, Hv, 0);
    free(tab);
    return 0;
}

/* The adapter: the 2x2 convolution with its columns reordered to (kh, kw,
 * channel), so that its im2col is four whole rows of the tower's output side
 * by side (a row gather); the GLU; boi and eoi. */
static int load_adapter(vloader *ld) {
    glm_vision *v = ld->v;
    int Hv = v->vc.hidden, H = v->H, f0, f1;
    int64_t cd[4] = {H, Hv, 2, 2};
    const st_tensor *cw = vget(ld, "conv.weight", 4, cd), *t;
    if (!cw) return -1;
    size_t es = kdtype_size(cw->dtype);
    uint8_t *buf = malloc((size_t)H * 4 * Hv * es);
    if (!buf) {
        snprintf(ld->err, ld->errlen, "out of memory");
        return -1;
    }
    for (size_t o = 0; o < (size_t)H; o++)
        for (size_t i = 0; i < (size_t)Hv; i++)
            for (size_t k = 0; k < 4; k++) /* k = kh * 2 + kw */
                memcpy(buf + ((o * 4 + k) * Hv + i) * es, cw->data + ((o * Hv + i) * 4 + k) * es, es);
    vupload(ld, &v->conv_w, buf, cw->dtype, H, 4 * Hv, 0);
    free(buf);
    if (!(t = vget1(ld, "conv.bias", H))) return -1;
    up_rows(ld, &v->conv_b, t, 0, H, 0);
    if (!(t = vget2(ld, "linear_proj.linear_proj.weight", H, H))) return -1;
    up_rows(ld, &v->proj, t, 0, H, 0);
    if (!(t = vget1(ld, "linear_proj.norm1.weight", H))) return -1;
    up_rows(ld, &v->n1_w, t, 0, H, 0);
    if (!(t = vget1(ld, "linear_proj.norm1.bias", H))) return -1;
    up_rows(ld, &v->n1_b, t, 0, H, 0);

    int Fg = v->nf_total;
    shard_range(Fg, v->comm->size, v->comm->rank, &f0, &f1);
    const st_tensor *gate = vget2(ld, "linear_proj.gate_proj.weight", Fg, H);
    const st_tensor *up = gate ? vget2(ld, "linear_proj.dense_h_to_4h.weight", Fg, H) : NULL;
    if (!up) return -1;
    const st_tensor *two[2] = {gate, up};
    int r0[2] = {f0, f0};
    if (up_stacked(ld, &v->gu, two, r0, f1 - f0, 2, 1)) return -1;
    if (!(t = vget2(ld, "linear_proj.dense_4h_to_h.weight", H, Fg)) ||
        up_cols(ld, &v->down, t, f0, f1 - f0, v->vc.scaling, 1))
        return -1;

    int64_t ed[3] = {1, 1, H};
    const st_tensor *boi = vget(ld, "boi", 3, ed), *eoi = boi ? vget(ld, "eoi", 3, ed) : NULL;
    if (!eoi) return -1;
    float *ends = malloc((size_t)2 * H * sizeof(float));
    if (!ends) {
        snprintf(ld->err, ld->errlen, "out of memory");
        return -1;
    }
    for (int j = 0; j < H; j++) {
        ends[j] = (float)(elem(boi, (size_t)j) / v->vc.scaling);
        ends[H + j] = (float)(elem(eoi, (size_t)j) / v->vc.scaling);
    }
    vupload(ld, &v->ends, ends, KDT_F32, 2, H, 0);
    free(ends);
    return 0;
}

int vision_load(glm_vision **out, const glm_config *cfg, const st_set *st, const char *dir, kbackend kb, comm *c,
                size_t *sharded, size_t *replicated, char *err, size_t errlen) {
    *out = NULL;
    glm_vision *v = calloc(1, sizeof *v);
    if (!v) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    v->vc = cfg->vision;
    v->kb = kb;
    v->comm = c;
    v->H = cfg->hidden;
    v->grid = v->vc.image / v->vc.patch;
    v->T = v->vc.n_pos;
    v->dh = v->vc.hidden / v->vc.n_heads;
    v->nl = v->vc.n_heads / c->size;
    int f0, f1;
    shard_range(v->vc.ffn, c->size, c->rank, &f0, &f1);
    v->fl = f1 - f0;
    v->nf_total = cfg->ffn;
    shard_range(cfg->ffn, c->size, c->rank, &f0, &f1);
    v->nf = f1 - f0;
    v->n_run = v->vc.n_layers;
    v->layers = calloc((size_t)v->vc.n_layers, sizeof *v->layers);
    vloader ld = {st, dir, v, sharded, replicated, err, errlen};
    if (!v->layers) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (load_embed(&ld)) goto fail;
    for (int l = 0; l < v->vc.n_layers; l++)
        if (load_layer(&ld, l)) goto fail;
    if (load_adapter(&ld)) goto fail;
    *out = v;
    return 0;
fail:
    vision_free(v);
    return -1;
}

void vision_free(glm_vision *v) {
    if (!v) return;
    const kernels_iface *k = v->kb.iface;
    void *ctx = v->kb.ctx;
    for (int l = 0; v->layers && l < v->vc.n_layers; l++) {
        vlayer *L = &v->layers[l];
        kweight *ws[] = {&L->ln_in_w, &L->ln_in_b, &L->qkv, &L->qkv_b, &L->dense, &L->dense_b,
                         &L->ln_post_w, &L->ln_post_b, &L->fc1, &L->fc1_b, &L->fc2, &L->fc2_b};
        for (size_t i = 0; i < sizeof ws / sizeof *ws; i++) k->weight_free(ctx, ws[i]);
    }
    kweight *ws[] = {&v->patch_w, &v->patch_b, &v->pos, &v->conv_w, &v->conv_b, &v->proj,
                     &v->n1_w, &v->n1_b, &v->gu, &v->down, &v->ends};
    for (size_t i = 0; i < sizeof ws / sizeof *ws; i++) k->weight_free(ctx, ws[i]);
    void *bufs[] = {v->x, v->o, v->qkv, v->att, v->a, v->cols, v->g, v->gu_tmp, v->iota};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) k->free(ctx, bufs[i]);
    free(v->layers);
    free(v->conv_rows);
    free(v->host_cols);
    free(v->host_bf);
    free(v);
}

/* ------------------------------------------------------------------ forward */

static void scratch(glm_vision *v) {
    if (v->x) return;
    const kernels_iface *k = v->kb.iface;
    void *ctx = v->kb.ctx;
    vscratch s = scratch_plan(&v->vc, v->H, v->nl * v->dh, v->fl, v->nf);
    size_t ab = k->act_bytes, T = s.T, N = s.N, K = s.K;
    v->x = k->alloc(ctx, s.x * ab);
    v->o = k->alloc(ctx, s.o * ab);
    v->qkv = k->alloc(ctx, s.qkv * ab);
    v->att = k->alloc(ctx, s.att * ab);
    v->a = k->alloc(ctx, s.a * ab);
    v->cols = k->alloc(ctx, s.cols * ab);
    v->g = k->alloc(ctx, s.g * ab);
    v->gu_tmp = k->alloc(ctx, s.gu_tmp * ab);
    v->iota = k->alloc(ctx, T * 4);
    int32_t *iota = malloc(T * 4);
    v->conv_rows = malloc(4 * N * sizeof(int));
    v->host_cols = malloc(T * K * sizeof(float));
    v->host_bf = ab == 2 ? malloc(T * K * 2) : NULL;
    if (!iota || !v->conv_rows || !v->host_cols || (ab == 2 && !v->host_bf)) abort();
    for (size_t t = 0; t < T; t++) iota[t] = (int32_t)t;
    k->to_device(ctx, v->iota, iota, T * 4);
    free(iota);
    /* Output token t = r * g + c of the (g = grid / 2)-wide grid reads patches
     * (2r + kh, 2c + kw), row 1 + patch of x (row 0 is cls). */
    int g = v->grid / 2;
    for (int t = 0; t < g * g; t++)
        for (int kh = 0; kh < 2; kh++)
            for (int kw = 0; kw < 2; kw++)
                v->conv_rows[4 * t + 2 * kh + kw] = 1 + (2 * (t / g) + kh) * v->grid + 2 * (t % g) + kw;
}

/* The pixels' patches as rows (channel, kh, kw) after a zero row for cls, in
 * the backend's activation type. */
static void im2col(glm_vision *v, const float *px) {
    int S = v->vc.image, p = v->vc.patch, C = v->vc.in_ch, K = C * p * p;
    float *cols = v->host_cols;
    memset(cols, 0, (size_t)K * sizeof(float));
    for (int r = 0; r < v->grid; r++)
        for (int s = 0; s < v->grid; s++) {
            float *row = cols + (size_t)(1 + r * v->grid + s) * K;
            for (int c = 0; c < C; c++)
                for (int kh = 0; kh < p; kh++)
                    memcpy(row + (c * p + kh) * p, px + ((size_t)c * S + (size_t)r * p + kh) * S + (size_t)s * p,
                           (size_t)p * sizeof(float));
        }
    const kernels_iface *k = v->kb.iface;
    size_t n = (size_t)v->T * K;
    if (k->act_bytes == 4) {
        k->to_device(v->kb.ctx, v->cols, cols, n * 4);
    } else {
        for (size_t i = 0; i < n; i++) v->host_bf[i] = f32_to_bf16(cols[i]);
        k->to_device(v->kb.ctx, v->cols, v->host_bf, n * 2);
    }
}

static void allreduce(glm_vision *v, void *buf, size_t n) {
    comm *c = v->comm;
    if (c->size == 1) return;
    c->iface->allreduce_sum(c->ctx, buf, n, v->kb.iface->act_bytes == 4 ? KDT_F32 : KDT_BF16);
}

/* Post-branch LayerNorm (glm4v-spec.md 5.2): x += LN(attn(x)); x += LN(mlp(x)). */
static void vit_layer(glm_vision *v, const vlayer *L) {
    const kernels_iface *k = v->kb.iface;
    void *ctx = v->kb.ctx;
    int T = v->T, Hv = v->vc.hidden, qw = v->nl * v->dh;
    size_t ab = k->act_bytes, n = (size_t)T * Hv;
    k->matmul(ctx, v->qkv, v->x, &L->qkv, &L->qkv_b, T);
    const char *q = v->qkv;
    k->attention_full(ctx, v->att, q, q + (size_t)qw * ab, q + (size_t)2 * qw * ab, 3 * qw, T, v->nl, v->dh,
                      1.0f / sqrtf((float)v->dh));
    k->matmul(ctx, v->o, v->att, &L->dense, L->dense_b.data ? &L->dense_b : NULL, T);
    allreduce(v, v->o, n);
    k->layernorm(ctx, v->o, v->o, &L->ln_in_w, &L->ln_in_b, T, v->vc.eps);
    k->add(ctx, v->x, v->o, n);

    k->matmul(ctx, v->a, v->x, &L->fc1, &L->fc1_b, T);
    k->gelu(ctx, v->a, (size_t)T * v->fl);
    k->matmul(ctx, v->o, v->a, &L->fc2, L->fc2_b.data ? &L->fc2_b : NULL, T);
    allreduce(v, v->o, n);
    k->layernorm(ctx, v->o, v->o, &L->ln_post_w, &L->ln_post_b, T, v->vc.eps);
    k->add(ctx, v->x, v->o, n);
}

void vision_encode(glm_vision *v, const float *pixels, void *out) {
    double t0 = util_now();
    scratch(v);
    const kernels_iface *k = v->kb.iface;
    void *ctx = v->kb.ctx;
    int T = v->T, Hv = v->vc.hidden, H = v->H, N = (v->grid / 2) * (v->grid / 2);
    size_t ab = k->act_bytes;

    im2col(v, pixels);
    k->matmul(ctx, v->x, v->cols, &v->patch_w, &v->patch_b, T);
    k->embedding(ctx, v->o, &v->pos, v->iota, T);
    k->add(ctx, v->x, v->o, (size_t)T * Hv);
    k->sync(ctx); /* the layers' own time (bench image scales it by the layers) */
    double t1 = util_now();
    for (int l = 0; l < v->n_run; l++) vit_layer(v, &v->layers[l]);
    k->sync(ctx);
    v->layer_seconds += util_now() - t1;

    /* adapter: 2x2 convolution (a row gather and a matmul), then the GLU */
    k->gather_rows(ctx, v->g, v->x, v->conv_rows, 4 * N, Hv);
    k->matmul(ctx, v->o, v->g, &v->conv_w, &v->conv_b, N);
    k->matmul(ctx, v->x, v->o, &v->proj, NULL, N);
    k->layernorm(ctx, v->x, v->x, &v->n1_w, &v->n1_b, N, v->vc.glu_eps);
    k->gelu(ctx, v->x, (size_t)N * H);
    k->matmul_swiglu(ctx, v->a, v->x, &v->gu, v->gu_tmp, N);
    char *rows = out;
    k->matmul(ctx, rows + (size_t)H * ab, v->a, &v->down, NULL, N);
    allreduce(v, rows + (size_t)H * ab, (size_t)N * H);
    k->embedding(ctx, v->o, &v->ends, v->iota, 2);
    int first = 0, second = 1;
    k->gather_rows(ctx, rows, v->o, &first, 1, H);
    k->gather_rows(ctx, rows + (size_t)(N + 1) * H * ab, v->o, &second, 1, H);
    k->sync(ctx);
    v->seconds += util_now() - t0;
}

double vision_seconds(const glm_vision *v) { return v ? v->seconds : 0; }

double vision_layer_seconds(const glm_vision *v) { return v ? v->layer_seconds : 0; }

void vision_set_layers(glm_vision *v, int n) {
    if (!v) return;
    v->n_run = n < 1 ? 1 : n > v->vc.n_layers ? v->vc.n_layers : n;
}
