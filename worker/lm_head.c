/* The vocab-parallel LM head's reductions (see lm_head.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/rng.h"
#include "lm_head.h"
#include "shard.h"

/* lm_gather of the listed rows of logits (rows NULL: all n, in order). */
static void gather_rows(const glm_model *m, const float *logits, const int *rows, int n, lm_host *h, float *out) {
    const glm_config *c = &m->cfg;
    comm *cm = m->comm;
    int vr = m->shard.v1 - m->shard.v0;
    size_t row = (size_t)vr * sizeof(float);
    if (rows)
        for (int i = 0; i < n; i++)
            m->kb.iface->to_host(m->kb.ctx, h->slice + (size_t)i * vr, logits + (size_t)rows[i] * vr, row);
    else
        m->kb.iface->to_host(m->kb.ctx, h->slice, logits, (size_t)n * row);
    size_t *bytes = malloc(sizeof(size_t) * (size_t)cm->size);
    if (!bytes) abort();
    for (int r = 0; r < cm->size; r++) {
        int lo, hi;
        shard_range(c->vocab, cm->size, r, &lo, &hi);
        bytes[r] = (size_t)n * (hi - lo) * sizeof(float);
    }
    cm->iface->gather(cm->ctx, h->slice, h->gathered, bytes);
    if (cm->rank == 0) {
        const float *src = h->gathered;
        for (int r = 0; r < cm->size; r++) {
            int lo, hi;
            shard_range(c->vocab, cm->size, r, &lo, &hi);
            for (int i = 0; i < n; i++)
                memcpy(out + (size_t)i * c->vocab + lo, src + (size_t)i * (hi - lo), sizeof(float) * (hi - lo));
            src += (size_t)n * (hi - lo);
        }
    }
    free(bytes);
}

void lm_gather(const glm_model *m, const float *logits, int n, lm_host *h, float *out) {
    gather_rows(m, logits, NULL, n, h, out);
}

/* Columns of this rank's slice that are ids below limit. */
static int local_cols(const glm_model *m, int limit) {
    int vr = m->shard.v1 - m->shard.v0, local = limit - m->shard.v0;
    return local > vr ? vr : local;
}

void lm_argmax(const glm_model *m, const float *logits, int n, int vocab_limit, int *ids) {
    const glm_shard *sh = &m->shard;
    comm *cm = m->comm;
    int vr = sh->v1 - sh->v0, local = local_cols(m, vocab_limit);
    int32_t *mine = malloc(8 * (size_t)n), *all = cm->rank == 0 ? malloc(8 * (size_t)n * cm->size) : NULL;
    size_t *bytes = malloc(sizeof(size_t) * (size_t)cm->size);
    if (!mine || !bytes || (cm->rank == 0 && !all)) abort();
    int *idx = (int *)mine;
    float *val = (float *)(mine + n);
    if (local > 0) {
        m->kb.iface->argmax(m->kb.ctx, idx, val, logits, n, local, vr);
        for (int i = 0; i < n; i++) idx[i] += sh->v0;
    } else { /* this rank's ids are all past the limit */
        for (int i = 0; i < n; i++) idx[i] = 0, val[i] = -INFINITY;
    }
    for (int r = 0; r < cm->size; r++) bytes[r] = 8 * (size_t)n;
    cm->iface->gather(cm->ctx, mine, all, bytes);
    if (cm->rank == 0)
        for (int i = 0; i < n; i++) {
            int best = all[i];
            float bv;
            memcpy(&bv, &all[n + i], 4);
            for (int r = 1; r < cm->size; r++) {
                const int32_t *p = all + (size_t)r * 2 * n;
                float v;
                memcpy(&v, &p[n + i], 4);
                if (v > bv) bv = v, best = p[i];
            }
            ids[i] = best;
        }
    free(mine);
    free(all);
    free(bytes);
}

/* This rank's message to rank 0: candidates [n, K] (ids of the whole vocab,
 * padded with id -1 past its own list), then normalisers [n] (double). */
static size_t cand_msg_bytes(int n, int K) { return sizeof(kcand) * (size_t)n * K + sizeof(double) * (size_t)n; }

static void local_candidates(const glm_model *m, const float *logits, const glm_step *s, char *msg) {
    int n = s->n_logits, K = s->cands, vr = m->shard.v1 - m->shard.v0, local = local_cols(m, s->vocab_limit);
    int kl = local < K ? local : K;
    kcand *cand = (kcand *)msg;
    double *sums = (double *)(msg + sizeof(kcand) * (size_t)n * K);
    for (size_t i = 0; i < (size_t)n * K; i++) cand[i] = (kcand){-INFINITY, -1};
    for (int i = 0; i < n; i++) sums[i] = 0.0;
    if (kl <= 0) return;
    kcand *part = malloc(sizeof(kcand) * (size_t)n * kl);
    if (!part) abort();
    m->kb.iface->top_k(m->kb.ctx, part, sums, logits, n, local, vr, kl, s->temps);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < kl; j++) {
            kcand c = part[(size_t)i * kl + j];
            cand[(size_t)i * K + j] = (kcand){c.v, c.id + m->shard.v0};
        }
    free(part);
}

/* Rank 0: merges the ranks' messages (all) row by row and picks; rows whose
 * pick needs more than the candidates go to full_row with their draws.
 * Returns how many. */
static int pick_from_candidates(const glm_step *s, const ksample_params *p, const char *all, int parts, int *ids,
                                int *full_row, double *draw) {
    int n = s->n_logits, K = s->cands, n_full = 0;
    size_t msg = cand_msg_bytes(n, K);
    kcand *merged = malloc(sizeof(kcand) * (size_t)K);
    const kcand **lists = malloc(sizeof(kcand *) * (size_t)parts);
    double *rsum = malloc(sizeof(double) * (size_t)parts);
    if (!merged || !lists || !rsum) abort();
    for (int i = 0; i < n; i++) {
        for (int r = 0; r < parts; r++) {
            const char *m = all + msg * (size_t)r;
            lists[r] = (const kcand *)m + (size_t)i * K;
            rsum[r] = ((const double *)(m + sizeof(kcand) * (size_t)n * K))[i];
        }
        double sum_all;
        int n_c = sampling_merge(merged, &sum_all, lists, rsum, parts, K);
        if (sampling_is_greedy(&p[i])) {
            ids[i] = merged[0].id;
            continue;
        }
        double u = rng_uniform(p[i].rng);
        ids[i] = sampling_pick(merged, n_c, s->vocab_limit, sum_all, &p[i], u);
        if (ids[i] < 0) full_row[n_full] = i, draw[n_full++] = u;
    }
    free(merged), free(lists), free(rsum);
    return n_full;
}

void lm_sample(const glm_model *m, const float *logits, const glm_step *s, const ksample_params *p, lm_host *h,
               int *ids) {
    comm *cm = m->comm;
    int n = s->n_logits, V = m->cfg.vocab, root = cm->rank == 0;
    size_t msg = cand_msg_bytes(n, s->cands);
    char *mine = malloc(msg), *all = root ? malloc(msg * (size_t)cm->size) : NULL;
    size_t *bytes = malloc(sizeof(size_t) * (size_t)cm->size);
    int *full_row = malloc(sizeof(int) * (size_t)n), n_full = 0;
    double *draw = malloc(sizeof(double) * (size_t)n);
    if (!mine || !bytes || !full_row || !draw || (root && !all)) abort();
    local_candidates(m, logits, s, mine);
    for (int r = 0; r < cm->size; r++) bytes[r] = msg;
    cm->iface->gather(cm->ctx, mine, all, bytes);
    if (root) n_full = pick_from_candidates(s, p, all, cm->size, ids, full_row, draw);
    cm->iface->bcast(cm->ctx, &n_full, sizeof n_full);
    if (n_full > 0) { /* those rows whole, sorted on rank 0, picked with the same draws */
        cm->iface->bcast(cm->ctx, full_row, sizeof(int) * (size_t)n_full);
        float *rows = root ? malloc(sizeof(float) * (size_t)n_full * V) : NULL;
        kcand *c = root ? malloc(sizeof(kcand) * (size_t)s->vocab_limit) : NULL;
        if (root && (!rows || !c)) abort();
        gather_rows(m, logits, full_row, n_full, h, rows);
        for (int j = 0; root && j < n_full; j++) {
            int i = full_row[j];
            double sum_all = sampling_sort_row(rows + (size_t)j * V, s->vocab_limit, p[i].temperature, c);
            ids[i] = sampling_pick(c, s->vocab_limit, s->vocab_limit, sum_all, &p[i], draw[j]);
        }
        free(rows);
        free(c);
    }
    free(mine), free(all), free(bytes), free(full_row), free(draw);
}
