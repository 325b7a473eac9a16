/* The forward pass (see forward.h). Buffer shapes: T tokens, H hidden,
 * ld = (nq + 2 nkv) d local QKV width, nf local FFN width, vr local vocab rows. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/kernels.h"
#include "forward.h"
#include "util.h"

struct glm_forward {
    glm_model *m;
    kv_cache *kv;
    int cap_t, cap_seqb, cap_logits; /* capacities the buffers below hold */
    /* backend memory */
    void *x, *h, *qkv, *att, *o, *gu, *a; /* activations */
    float *logits_dev;                     /* [n_logits, vr] */
    int32_t *ids, *pos, *seq, *slots, *tables;
    /* host memory */
    float *logits_host; /* [n_logits, vr] this rank's slice */
    float *gathered;    /* rank 0: [tp][n_logits * vr_r] */
    double t_allreduce, t_total;
    uint64_t serial; /* steps run, for kattn_batch.serial */
};

glm_forward *forward_create(glm_model *m, kv_cache *kv) {
    glm_forward *f = calloc(1, sizeof *f);
    if (!f) abort();
    f->m = m;
    f->kv = kv;
    return f;
}

static void release(glm_forward *f) {
    const kernels_iface *k = f->m->kb.iface;
    void *ctx = f->m->kb.ctx;
    void *bufs[] = {f->x, f->h, f->qkv, f->att, f->o, f->gu, f->a, f->logits_dev,
                    f->ids, f->pos, f->seq, f->slots, f->tables};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) k->free(ctx, bufs[i]);
    free(f->logits_host);
    free(f->gathered);
}

void forward_free(glm_forward *f) {
    if (!f) return;
    release(f);
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
    f->seq = k->alloc(ctx, (size_t)T * 4);
    f->slots = k->alloc(ctx, (size_t)T * 4);
    f->tables = k->alloc(ctx, (size_t)seqb * 4);
    f->logits_host = malloc((size_t)nl * vr * sizeof(float));
    f->gathered = f->m->comm->rank == 0 ? malloc((size_t)nl * c->vocab * sizeof(float)) : NULL;
    if (!f->logits_host || (f->m->comm->rank == 0 && !f->gathered)) abort();
    f->cap_t = T;
    f->cap_seqb = seqb;
    f->cap_logits = nl;
}

static void *at(void *base, size_t elems, size_t elem_bytes) { return (char *)base + elems * elem_bytes; }

static void allreduce(glm_forward *f, void *buf, size_t n) {
    double t0 = util_now();
    comm *c = f->m->comm;
    c->iface->allreduce_sum(c->ctx, buf, n, f->m->kb.iface->act_bytes == 4 ? KDT_F32 : KDT_BF16);
    f->t_allreduce += util_now() - t0;
}

/* One GLMBlock: pre-norm attention and SwiGLU MLP, each closed by an all-reduce. */
static void block(glm_forward *f, int l, const kattn_batch *b, int T) {
    const glm_config *c = &f->m->cfg;
    const glm_shard *sh = &f->m->shard;
    const glm_layer *L = &f->m->layers[l];
    const kernels_iface *k = f->m->kb.iface;
    void *ctx = f->m->kb.ctx;
    size_t ab = k->act_bytes, d = (size_t)c->head_dim;
    int ld = (sh->nq + 2 * sh->nkv) * c->head_dim, nf = sh->f1 - sh->f0;
    size_t th = (size_t)T * c->hidden;

    k->rmsnorm(ctx, f->h, f->x, &L->ln1, T, c->eps);
    k->matmul(ctx, f->qkv, f->h, &L->qkv, L->qkv_b.data ? &L->qkv_b : NULL, T);
    k->rope(ctx, f->qkv, b->pos, T, ld, sh->nq + sh->nkv, c->head_dim, c->rot_dim, (float)c->rope_base);
    void *kk = at(f->qkv, sh->nq * d, ab), *vv = at(f->qkv, (sh->nq + sh->nkv) * d, ab);
    k->kv_store(ctx, f->kv->k[l], f->kv->v[l], kk, vv, ld, sh->nkv * c->head_dim, b);
    k->attention(ctx, f->att, f->qkv, ld, f->kv->k[l], f->kv->v[l], b, sh->nq, sh->nkv, c->n_heads / c->n_kv,
                 c->head_dim, 1.0f / sqrtf((float)c->head_dim));
    k->matmul(ctx, f->o, f->att, &L->dense, NULL, T);
    allreduce(f, f->o, th);
    k->add(ctx, f->x, f->o, th);

    k->rmsnorm(ctx, f->h, f->x, &L->ln2, T, c->eps);
    k->matmul(ctx, f->gu, f->h, &L->h4h, NULL, T);
    k->swiglu(ctx, f->a, f->gu, T, nf);
    k->matmul(ctx, f->o, f->a, &L->down, NULL, T);
    allreduce(f, f->o, th);
    k->add(ctx, f->x, f->o, th);
}

/* Vocab-parallel LM head: each rank's [n, vr] slice goes to rank 0, which
 * interleaves the slices into [n, vocab] rows. */
static void lm_head(glm_forward *f, int n, float *logits) {
    const glm_config *c = &f->m->cfg;
    const glm_shard *sh = &f->m->shard;
    const kernels_iface *k = f->m->kb.iface;
    comm *cm = f->m->comm;
    int vr = sh->v1 - sh->v0;
    k->matmul_f32(f->m->kb.ctx, f->logits_dev, f->h, &f->m->lm_head, n);
    k->to_host(f->m->kb.ctx, f->logits_host, f->logits_dev, (size_t)n * vr * sizeof(float));
    size_t *bytes = malloc(sizeof(size_t) * (size_t)cm->size);
    if (!bytes) abort();
    for (int r = 0; r < cm->size; r++) {
        int lo, hi;
        shard_range(c->vocab, cm->size, r, &lo, &hi);
        bytes[r] = (size_t)n * (hi - lo) * sizeof(float);
    }
    cm->iface->gather(cm->ctx, f->logits_host, f->gathered, bytes);
    if (cm->rank == 0) {
        const float *src = f->gathered;
        for (int r = 0; r < cm->size; r++) {
            int lo, hi;
            shard_range(c->vocab, cm->size, r, &lo, &hi);
            for (int i = 0; i < n; i++)
                memcpy(logits + (size_t)i * c->vocab + lo, src + (size_t)i * (hi - lo), sizeof(float) * (hi - lo));
            src += (size_t)n * (hi - lo);
        }
    }
    free(bytes);
}

void forward_run(glm_forward *f, const glm_step *s, float *logits, float *hidden) {
    double t0 = util_now();
    reserve(f, s);
    const glm_config *c = &f->m->cfg;
    const kernels_iface *k = f->m->kb.iface;
    void *ctx = f->m->kb.ctx;
    int T = s->n_tokens;
    k->to_device(ctx, f->ids, s->ids, (size_t)T * 4);
    k->to_device(ctx, f->pos, s->pos, (size_t)T * 4);
    k->to_device(ctx, f->seq, s->seq, (size_t)T * 4);
    k->to_device(ctx, f->slots, s->slots, (size_t)T * 4);
    k->to_device(ctx, f->tables, s->block_tables, (size_t)s->n_seqs * s->max_blocks * 4);
    int max_pos = 0;
    for (int t = 0; t < T; t++)
        if (s->pos[t] > max_pos) max_pos = s->pos[t];
    kattn_batch b = {T,         f->pos,         f->seq,  f->slots, f->tables, s->max_blocks, s->block_size,
                     max_pos,   s->pos,         s->seq,  ++f->serial};

    k->embedding(ctx, f->x, &f->m->embed, f->ids, T);
    for (int l = 0; l < c->n_layers; l++) block(f, l, &b, T);

    if (s->n_logits > 0) {
        k->gather_rows(ctx, f->h, f->x, s->logit_rows, s->n_logits, c->hidden);
        k->rmsnorm(ctx, f->h, f->h, &f->m->final_ln, s->n_logits, c->eps);
        if (hidden && f->m->comm->rank == 0) {
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
        lm_head(f, s->n_logits, logits);
    }
    k->sync(ctx);
    f->t_total += util_now() - t0;
}

void forward_times(const glm_forward *f, double *allreduce_s, double *total_s) {
    *allreduce_s = f->t_allreduce;
    *total_s = f->t_total;
}
