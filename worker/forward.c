/* The forward pass (see forward.h). Buffer shapes: T tokens, H hidden,
 * ld = (nq + 2 nkv) d local QKV width, nf local FFN width, vr local vocab rows.
 *
 * Decode steps (one token per sequence, logits for each) on a backend with
 * graphs run as a recorded graph: the step is padded to a bucket of tokens and
 * its block tables to a power-of-two width, so that one graph per (tokens,
 * width) serves every later step of that shape; the padding tokens write their
 * K/V into the cache's spare block. The device work is recorded once, after an
 * eager run of the same padded step that sizes every scratch buffer. A backend
 * without graphs (the CPU) finds out at its first decode step, which it runs
 * padded: the same results, and CI's coverage of the padding. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/kernels.h"
#include "forward.h"
#include "lm_head.h"
#include "util.h"
#include "vision.h"

#define GRAPH_MAX_TOKENS 256 /* largest decode batch run as a graph (buckets 1, 2, 4, ...) */
#define GRAPH_SLOTS 64       /* graphs kept; when full, all are dropped and recorded again */

typedef struct graph_slot {
    int tokens, max_blocks;
    void *graph;
} graph_slot;

struct glm_forward {
    glm_model *m;
    kv_cache *kv;
    int cap_t, cap_seqb, cap_logits; /* capacities the buffers below hold */
    /* backend memory */
    void *x, *h, *qkv, *att, *o, *gu, *a; /* activations */
    float *logits_dev;                     /* [n_logits, vr] */
    int32_t *ids, *pos, *seq, *slots, *tables;
    int32_t *rpos;                         /* RoPE positions (the step's rope_pos, or pos) */
    lm_host lm;                            /* host staging of the logits path */
    double t_allreduce, t_total;
    uint64_t serial; /* steps run, for kattn_batch.serial */
    /* graphs */
    int graphs_off;      /* backend or communicator cannot, or GLMTP_NO_CUDA_GRAPHS on any rank */
    int record_failed;   /* a recording failed here: decode steps still run padded, without graphs */
    int capturing;       /* recording: all-reduce time is not real time */
    graph_slot graphs[GRAPH_SLOTS];
    int n_graphs;
    int32_t *pad;        /* host: the padded step's arrays */
    size_t pad_cap;      /* int32 elements in pad */
    /* images (GLM-4V): slot i's embeddings [config_image_tokens, H] in backend memory */
    void **img;
    int n_img_slots;
    int *img_rows;       /* host scratch: rows of a splice */
    int img_rows_cap;
};

glm_forward *forward_create(glm_model *m, kv_cache *kv) {
    glm_forward *f = calloc(1, sizeof *f);
    if (!f) abort();
    f->m = m;
    f->kv = kv;
    const char *off = getenv("GLMTP_NO_CUDA_GRAPHS");
    f->graphs_off = (off && *off && strcmp(off, "0") != 0) || !m->comm->iface->allreduce_capturable(m->comm->ctx);
    /* A graph step pads its batch, and so its all-reduces: every rank takes the
     * same path (the variable may reach only some nodes). Collective. */
    f->graphs_off = comm_first_failed(m->comm, f->graphs_off) >= 0;
    return f;
}

static void drop_graphs(glm_forward *f) {
    for (int i = 0; i < f->n_graphs; i++) f->m->kb.iface->graph_destroy(f->m->kb.ctx, f->graphs[i].graph);
    f->n_graphs = 0;
}

/* Graphs keep the buffers' addresses: they go first. */
static void release(glm_forward *f) {
    drop_graphs(f);
    const kernels_iface *k = f->m->kb.iface;
    void *ctx = f->m->kb.ctx;
    void *bufs[] = {f->x, f->h, f->qkv, f->att, f->o, f->gu, f->a, f->logits_dev,
                    f->ids, f->pos, f->seq, f->slots, f->tables, f->rpos};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) k->free(ctx, bufs[i]);
    free(f->lm.slice);
    free(f->lm.gathered);
}

void forward_free(glm_forward *f) {
    if (!f) return;
    release(f);
    for (int i = 0; i < f->n_img_slots; i++) f->m->kb.iface->free(f->m->kb.ctx, f->img[i]);
    free(f->img);
    free(f->img_rows);
    free(f->pad);
    free(f);
}

/* Grows the scratch to fit step s (all buffers at once, rarely). */
static void reserve(glm_forward *f, const glm_step *s) {
    int seqb = s->n_seqs * s->max_blocks;
    if (s->n_tokens <= f->cap_t && seqb <= f->cap_seqb && s->n_logits <= f->cap_logits) return;
    release(f);
    const glm_config *c = &f->m->cfg;
    const glm_shard *sh = &f->m->shard;
    const kernels_iface *k = f->m->kb.iface;
    void *ctx = f->m->kb.ctx;
    int T = s->n_tokens > f->cap_t ? s->n_tokens : f->cap_t;
    int nl = s->n_logits > f->cap_logits ? s->n_logits : f->cap_logits;
    if (seqb < f->cap_seqb) seqb = f->cap_seqb;
    size_t ab = k->act_bytes, H = (size_t)c->hidden, d = (size_t)c->head_dim;
    size_t ld = (size_t)(sh->nq + 2 * sh->nkv) * d, nf = (size_t)(sh->f1 - sh->f0), vr = (size_t)(sh->v1 - sh->v0);
    f->x = k->alloc(ctx, T * H * ab);
    f->h = k->alloc(ctx, T * H * ab);
    f->o = k->alloc(ctx, T * H * ab);
    f->qkv = k->alloc(ctx, T * ld * ab);
    f->att = k->alloc(ctx, T * sh->nq * d * ab);
    f->gu = k->alloc(ctx, T * 2 * nf * ab);
    f->a = k->alloc(ctx, T * nf * ab);
    f->logits_dev = k->alloc(ctx, (size_t)nl * vr * sizeof(float));
    f->ids = k->alloc(ctx, (size_t)T * 4);
    f->pos = k->alloc(ctx, (size_t)T * 4);
    f->rpos = k->alloc(ctx, (size_t)T * 4);
    f->seq = k->alloc(ctx, (size_t)T * 4);
    f->slots = k->alloc(ctx, (size_t)T * 4);
    f->tables = k->alloc(ctx, (size_t)seqb * 4);
    f->lm.slice = malloc((size_t)nl * vr * sizeof(float));
    f->lm.gathered = f->m->comm->rank == 0 ? malloc((size_t)nl * c->vocab * sizeof(float)) : NULL;
    if (!f->lm.slice || (f->m->comm->rank == 0 && !f->lm.gathered)) abort();
    f->cap_t = T;
    f->cap_seqb = seqb;
    f->cap_logits = nl;
}

static void allreduce(glm_forward *f, void *buf, size_t n) {
    double t0 = util_now();
    comm *c = f->m->comm;
    c->iface->allreduce_sum(c->ctx, buf, n, f->m->kb.iface->act_bytes == 4 ? KDT_F32 : KDT_BF16);
    if (!f->capturing) f->t_allreduce += util_now() - t0;
}

/* One GLMBlock: pre-norm attention and SwiGLU MLP, each closed by an all-reduce.
 * Each residual add is fused with the norm that follows it: the block's own
 * post-attention norm, and the next block's input norm (so f->h already holds
 * it when a block other than the first starts). */
static void block(glm_forward *f, int l, const kattn_batch *b, int T) {
    const glm_config *c = &f->m->cfg;
    const glm_shard *sh = &f->m->shard;
    const glm_layer *L = &f->m->layers[l];
    const kernels_iface *k = f->m->kb.iface;
    void *ctx = f->m->kb.ctx;
    int ld = (sh->nq + 2 * sh->nkv) * c->head_dim;
    size_t th = (size_t)T * c->hidden;

    if (l == 0) k->rmsnorm(ctx, f->h, f->x, &L->ln1, T, c->eps);
    k->matmul(ctx, f->qkv, f->h, &L->qkv, L->qkv_b.data ? &L->qkv_b : NULL, T);
    kattn_batch rb = *b; /* RoPE angles from the RoPE positions; slots as the batch's */
    rb.pos = f->rpos;
    rb.host_pos = NULL;
    k->rope_kv_store(ctx, f->qkv, f->kv->k[l], f->kv->v[l], T, ld, sh->nq, sh->nkv, c->head_dim, c->rot_dim,
                     (float)c->rope_base, &rb);
    k->attention(ctx, f->att, f->qkv, ld, f->kv->k[l], f->kv->v[l], b, sh->nq, sh->nkv, c->n_heads / c->n_kv,
                 c->head_dim, 1.0f / sqrtf((float)c->head_dim));
    k->matmul(ctx, f->o, f->att, &L->dense, NULL, T);
    allreduce(f, f->o, th);
    k->add_rmsnorm(ctx, f->x, f->o, f->h, &L->ln2, T, c->eps);

    k->matmul_swiglu(ctx, f->a, f->h, &L->h4h, f->gu, T);
    k->matmul(ctx, f->o, f->a, &L->down, NULL, T);
    allreduce(f, f->o, th);
    if (l + 1 < c->n_layers)
        k->add_rmsnorm(ctx, f->x, f->o, f->h, &f->m->layers[l + 1].ln1, T, c->eps);
    else
        k->add(ctx, f->x, f->o, th);
}

/* Image embeddings over the word embeddings of the step's image spans. */
static void splice_images(glm_forward *f, const glm_step *s) {
    const kernels_iface *k = f->m->kb.iface;
    void *ctx = f->m->kb.ctx;
    int H = f->m->cfg.hidden, per = config_image_tokens(&f->m->cfg);
    for (int i = 0; i < s->n_img; i++) {
        const int32_t *sp = s->img + 4 * i;
        int t0 = sp[0], n = sp[1], slot = sp[2], r0 = sp[3];
        if (slot < 0 || slot >= f->n_img_slots || !f->img[slot] || t0 < 0 || n < 0 || t0 + n > s->n_tokens ||
            r0 < 0 || r0 + n > per) {
            fprintf(stderr, "glmtp: rank %d: a step names image slot %d rows %d+%d at token %d that it cannot have\n",
                    f->m->comm->rank, slot, r0, n, t0);
            abort(); /* rank 0 plans spans only over images it encoded: a bug, not an input */
        }
        if (n > f->img_rows_cap) {
            free(f->img_rows);
            f->img_rows = malloc((size_t)n * sizeof(int));
            if (!f->img_rows) abort();
            f->img_rows_cap = n;
        }
        for (int j = 0; j < n; j++) f->img_rows[j] = r0 + j;
        k->gather_rows(ctx, (char *)f->x + (size_t)t0 * H * k->act_bytes, f->img[slot], f->img_rows, n, H);
    }
}

/* The device part of a step: embedding (and images: s, NULL for none), the
 * blocks, then for the n logit rows (rows[i] of the step; rows NULL: rows
 * 0..n-1) the final RMSNorm into f->h and this rank's vocab slice of their
 * logits into f->logits_dev [n, vr]. */
static void device_pass(glm_forward *f, const kattn_batch *b, int T, const int *rows, int n, const glm_step *s) {
    const glm_config *c = &f->m->cfg;
    const kernels_iface *k = f->m->kb.iface;
    void *ctx = f->m->kb.ctx;
    k->embedding(ctx, f->x, &f->m->embed, f->ids, T);
    if (s && s->n_img > 0) splice_images(f, s);
    for (int l = 0; l < c->n_layers; l++) block(f, l, b, T);
    if (n <= 0) return;
    const void *src = f->x;
    if (rows) {
        k->gather_rows(ctx, f->h, f->x, rows, n, c->hidden);
        src = f->h;
    }
    k->rmsnorm(ctx, f->h, src, &f->m->final_ln, n, c->eps);
    k->matmul_f32(ctx, f->logits_dev, f->h, &f->m->lm_head, n);
}

/* The step's arrays into backend memory. */
static void upload(glm_forward *f, const glm_step *s) {
    const kernels_iface *k = f->m->kb.iface;
    void *ctx = f->m->kb.ctx;
    size_t T = (size_t)s->n_tokens;
    k->to_device(ctx, f->ids, s->ids, T * 4);
    k->to_device(ctx, f->pos, s->pos, T * 4);
    k->to_device(ctx, f->rpos, s->rope_sep ? s->rope_pos : s->pos, T * 4);
    k->to_device(ctx, f->seq, s->seq, T * 4);
    k->to_device(ctx, f->slots, s->slots, T * 4);
    k->to_device(ctx, f->tables, s->block_tables, (size_t)s->n_seqs * s->max_blocks * 4);
}

/* One token per sequence and the logits of each, in step order. */
static int is_decode(const glm_step *s) {
    if (s->n_tokens != s->n_seqs || s->n_logits != s->n_tokens) return 0;
    for (int i = 0; i < s->n_logits; i++)
        if (s->logit_rows[i] != i) return 0;
    return 1;
}

static int pow2_at_least(int x) {
    int p = 1;
    while (p < x) p *= 2;
    return p;
}

/* s padded to B tokens and block tables of width MB, in f->pad: padding token
 * t (>= T) is sequence t at position 0 of the spare block. */
static glm_step pad_step(glm_forward *f, const glm_step *s, int B, int MB) {
    size_t need = (size_t)B * (6 + (size_t)MB);
    if (need > f->pad_cap) {
        free(f->pad);
        f->pad = malloc(need * sizeof *f->pad);
        if (!f->pad) abort();
        f->pad_cap = need;
    }
    glm_step p = {.n_tokens = B, .n_seqs = B, .max_blocks = MB, .n_logits = B, .block_size = s->block_size};
    p.ids = f->pad, p.pos = p.ids + B, p.seq = p.pos + B, p.slots = p.seq + B, p.logit_rows = p.slots + B;
    p.rope_pos = p.logit_rows + B;
    p.rope_sep = 1;
    p.block_tables = p.rope_pos + B;
    int T = s->n_tokens, spare = f->kv->spare_block;
    for (int t = 0; t < B; t++) {
        int real = t < T;
        p.ids[t] = real ? s->ids[t] : 0;
        p.pos[t] = real ? s->pos[t] : 0;
        p.rope_pos[t] = real ? (s->rope_sep ? s->rope_pos[t] : s->pos[t]) : 0;
        p.seq[t] = real ? s->seq[t] : t;
        p.slots[t] = real ? s->slots[t] : spare * s->block_size;
        p.logit_rows[t] = t;
        int32_t *row = p.block_tables + (size_t)t * MB;
        for (int j = 0; j < MB; j++) row[j] = -1;
        if (real)
            memcpy(row, s->block_tables + (size_t)t * s->max_blocks, sizeof(int32_t) * (size_t)s->max_blocks);
        else
            row[0] = spare;
    }
    return p;
}

/* Runs decode step s through a graph when it can: returns 1 when it did (its
 * logits in f->logits_dev), 0 when the step must run the usual way. */
static int graph_step(glm_forward *f, const glm_step *s) {
    int T = s->n_tokens;
    if (f->graphs_off || T > GRAPH_MAX_TOKENS || !is_decode(s) || s->n_img > 0) return 0;
    const kernels_iface *k = f->m->kb.iface;
    void *ctx = f->m->kb.ctx;
    int B = pow2_at_least(T), MB = pow2_at_least(s->max_blocks);
    glm_step p = pad_step(f, s, B, MB);
    reserve(f, &p); /* may drop every graph: they keep the old buffers */
    upload(f, &p);
    /* max_pos from the table width, not the step: kernels that size their work
     * by it (attention's sequence splits) then record the same launch shapes
     * for every step this graph serves. */
    kattn_batch b = {B, f->pos, f->seq, f->slots, f->tables, MB, s->block_size, MB * s->block_size - 1,
                     NULL, NULL, ++f->serial, f->kv->dtype, f->kv->head_dim, f->kv->scale_off};
    graph_slot *g = NULL;
    for (int i = 0; i < f->n_graphs; i++)
        if (f->graphs[i].tokens == B && f->graphs[i].max_blocks == MB) g = &f->graphs[i];
    if (g && !f->record_failed && k->graph_launch(ctx, g->graph) == 0) {
        f->m->comm->iface->watch_queued(f->m->comm->ctx); /* its all-reduces were recorded, not issued */
        return 1;
    }
    if (g) { /* stale: record it again */
        k->graph_destroy(ctx, g->graph);
        *g = f->graphs[--f->n_graphs];
    }
    device_pass(f, &b, B, NULL, B, NULL); /* this step's results; sizes the scratch the graph will use */
    if (f->record_failed) return 1; /* padded as on the ranks that replay graphs */
    if (f->n_graphs == GRAPH_SLOTS) drop_graphs(f);
    if (k->capture_begin(ctx) == 0) {
        f->capturing = 1;
        device_pass(f, &b, B, NULL, B, NULL);
        f->capturing = 0;
        void *graph = k->capture_end(ctx);
        if (graph) {
            f->graphs[f->n_graphs++] = (graph_slot){B, MB, graph};
        } else {
            fprintf(stderr, "glmtp: rank %d: recording a decode graph failed; running steps without graphs\n",
                    f->m->comm->rank);
            f->record_failed = 1;
        }
    } else {
        f->graphs_off = 1; /* this backend has no graphs (so on every rank: --device is agreed) */
    }
    return 1;
}

/* Runs s up to the logits of its rows in f->logits_dev (hidden: rank 0's
 * final-norm outputs copied to the host as well). */
static void device_step(glm_forward *f, const glm_step *s, float *hidden) {
    const glm_config *c = &f->m->cfg;
    const kernels_iface *k = f->m->kb.iface;
    void *ctx = f->m->kb.ctx;
    /* Every rank takes the same path whatever its hidden: the final-norm rows
     * are in f->h either way (a graph step's logit rows are its first rows). */
    if (!graph_step(f, s)) {
        reserve(f, s);
        upload(f, s);
        int T = s->n_tokens, max_pos = 0;
        for (int t = 0; t < T; t++)
            if (s->pos[t] > max_pos) max_pos = s->pos[t];
        kattn_batch b = {T, f->pos, f->seq, f->slots, f->tables, s->max_blocks, s->block_size, max_pos, s->pos,
                         s->seq, ++f->serial, f->kv->dtype, f->kv->head_dim, f->kv->scale_off};
        /* Logit rows 0..n-1 need no gather. */
        int identity = s->n_logits == T;
        for (int i = 0; identity && i < T; i++) identity = s->logit_rows[i] == i;
        device_pass(f, &b, T, identity ? NULL : s->logit_rows, s->n_logits, s);
    }
    if (s->n_logits > 0 && hidden && f->m->comm->rank == 0) {
        if (k->act_bytes == 4) {
            k->to_host(ctx, hidden, f->h, (size_t)s->n_logits * c->hidden * 4);
        } else { /* bf16 activations */
            size_t n = (size_t)s->n_logits * c->hidden;
            uint16_t *tmp = malloc(n * 2);
            if (!tmp) abort();
            k->to_host(ctx, tmp, f->h, n * 2);
            for (size_t i = 0; i < n; i++) hidden[i] = bf16_to_f32(tmp[i]);
            free(tmp);
        }
    }
}

void forward_run(glm_forward *f, const glm_step *s, float *logits, float *hidden) {
    double t0 = util_now();
    device_step(f, s, hidden);
    if (s->n_logits > 0) lm_gather(f->m, f->logits_dev, s->n_logits, &f->lm, logits);
    f->m->kb.iface->sync(f->m->kb.ctx);
    f->t_total += util_now() - t0;
}

void forward_run_argmax(glm_forward *f, const glm_step *s, int *ids) {
    double t0 = util_now();
    device_step(f, s, NULL);
    if (s->n_logits > 0) lm_argmax(f->m, f->logits_dev, s->n_logits, s->vocab_limit, ids);
    f->m->kb.iface->sync(f->m->kb.ctx);
    f->t_total += util_now() - t0;
}

void forward_run_sample(glm_forward *f, const glm_step *s, const ksample_params *p, int *ids) {
    double t0 = util_now();
    device_step(f, s, NULL);
    if (s->n_logits > 0) lm_sample(f->m, f->logits_dev, s, p, &f->lm, ids);
    f->m->kb.iface->sync(f->m->kb.ctx);
    f->t_total += util_now() - t0;
}

void forward_image(glm_forward *f, int slot, const float *pixels) {
    const kernels_iface *k = f->m->kb.iface;
    if (slot >= f->n_img_slots) {
        int n = slot + 1;
        void **img = realloc(f->img, (size_t)n * sizeof *img);
        if (!img) abort();
        for (int i = f->n_img_slots; i < n; i++) img[i] = NULL;
        f->img = img;
        f->n_img_slots = n;
    }
    if (!f->img[slot])
        f->img[slot] = k->alloc(f->m->kb.ctx, (size_t)config_image_tokens(&f->m->cfg) * f->m->cfg.hidden * k->act_bytes);
    vision_encode(f->m->vision, pixels, f->img[slot]);
}

void forward_image_rows(glm_forward *f, int slot, float *out) {
    const kernels_iface *k = f->m->kb.iface;
    size_t n = (size_t)config_image_tokens(&f->m->cfg) * f->m->cfg.hidden;
    if (k->act_bytes == 4) {
        k->to_host(f->m->kb.ctx, out, f->img[slot], n * 4);
        return;
    }
    uint16_t *tmp = malloc(n * 2);
    if (!tmp) abort();
    k->to_host(f->m->kb.ctx, tmp, f->img[slot], n * 2);
    for (size_t i = 0; i < n; i++) out[i] = bf16_to_f32(tmp[i]);
    free(tmp);
}

void forward_image_drop(glm_forward *f, int slot) {
    if (slot < 0 || slot >= f->n_img_slots) return;
    f->m->kb.iface->free(f->m->kb.ctx, f->img[slot]);
    f->img[slot] = NULL;
}

void forward_times(const glm_forward *f, double *allreduce_s, double *total_s) {
    *allreduce_s = f->t_allreduce;
    *total_s = f->t_total;
}
