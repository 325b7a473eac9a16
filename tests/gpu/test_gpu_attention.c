/* test_gpu_kernels, part 2: paged KV store and attention (decode, both
 * kernels), the tensor-core prefill attention, and the vision tower's
 * attention without a cache (attention_full). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gpu_check.h"

/* ------------------------------------------------------ kv_store + attention */

#define POISON 1000.0f /* cache slots nobody wrote: reading one ruins the result */

/* One step of kv_store + attention on both backends with tokens tk[0..T), the
 * caches given (GPU bf16, CPU fp32), and a fresh q/k/v per token. */
static const char *g_attn_kernel = ""; /* which attention kernel the cases below run through */
static int g_attn_nq;                  /* local q heads when fewer than n_kv * q_per_kv (tp > KV groups) */
static int g_attn_grouped;             /* GLMTP_GQA_ATTENTION is on for the cases below */

/* kernels/cuda/cuda_backend.cu's test hook: the kernel the last attention call
 * ran ("per_head", "grouped"). */
const char *kernels_cuda_attention_ran(kbackend kb);

static void attn_step(const char *what, const tok *tk, int T, const int32_t *tables, int n_seqs, int max_blocks,
                      int bs, int n_kv, int q_per_kv, int d, void *gk, void *gv, void *ck, void *cv, size_t cache_n) {
    /* q rows: unaligned for the per-head kernel's scalar loads (+1); the
     * grouped kernel needs 16-byte rows (+8) */
    int n_q = g_attn_nq ? g_attn_nq : n_kv * q_per_kv, qw = n_q * d, kvw = n_kv * d;
    int ld = qw + 2 * kvw + (g_attn_grouped ? 8 : 1);
    float *qkv = rand_bf16((size_t)T * ld, -1.5f, 1.5f);
    int32_t *pos = xmalloc((size_t)T * 4), *seq = xmalloc((size_t)T * 4), *slots = xmalloc((size_t)T * 4);
    int max_pos = 0;
    for (int t = 0; t < T; t++) {
        pos[t] = tk[t].p, seq[t] = tk[t].s;
        slots[t] = tables[tk[t].s * max_blocks + tk[t].p / bs] * bs + tk[t].p % bs;
        if (tk[t].p > max_pos) max_pos = tk[t].p;
    }
    void *gq = g_act(qkv, (size_t)T * ld), *cq = c_act(qkv, (size_t)T * ld);
    void *g_i[4] = {g_ints(pos, T), g_ints(seq, T), g_ints(slots, T), g_ints(tables, (size_t)n_seqs * max_blocks)};
    void *c_i[4] = {c_ints(pos, T), c_ints(seq, T), c_ints(slots, T), c_ints(tables, (size_t)n_seqs * max_blocks)};
    kattn_batch gb = {T, g_i[0], g_i[1], g_i[2], g_i[3], max_blocks, bs, max_pos, NULL, NULL, 0, 0, 0, 0};
    kattn_batch cb = {T, c_i[0], c_i[1], c_i[2], c_i[3], max_blocks, bs, max_pos, NULL, NULL, 0, 0, 0, 0};
    G.iface->kv_store(G.ctx, gk, gv, (uint16_t *)gq + qw, (uint16_t *)gq + qw + kvw, ld, kvw, &gb);
    C.iface->kv_store(C.ctx, ck, cv, (float *)cq + qw, (float *)cq + qw + kvw, ld, kvw, &cb);
    char name[160];
    snprintf(name, sizeof name, "kv_store %s n_kv=%d d=%d (paged, rest untouched)", what, n_kv, d);
    float *kgot = g_get(name, gk, cache_n), *vgot = g_get(name, gv, cache_n);
    int ok = 1;
    for (size_t i = 0; i < cache_n; i++) ok &= kgot[i] == ((float *)ck)[i] && vgot[i] == ((float *)cv)[i];
    expect(ok, "%s: K and V caches bit-exact", name);
    free(kgot), free(vgot);

    void *go = g_act(NULL, (size_t)T * qw), *co = c_act(NULL, (size_t)T * qw);
    float scale = 1.0f / sqrtf((float)d);
    G.iface->attention(G.ctx, go, gq, ld, gk, gv, &gb, n_q, n_kv, q_per_kv, d, scale);
    C.iface->attention(C.ctx, co, cq, ld, ck, cv, &cb, n_q, n_kv, q_per_kv, d, scale);
    snprintf(name, sizeof name, "attention%s %s n_kv=%d q/kv=%d d=%d T=%d", g_attn_kernel, what, n_kv, q_per_kv, d, T);
    float *got = g_get(name, go, (size_t)T * qw);
    /* The grouped kernel runs where it applies (q/kv 2..16, d 64 or 128), the
     * per-head one elsewhere. */
    int grouped = g_attn_grouped && q_per_kv >= 2 && q_per_kv <= 16 && (d == 64 || d == 128);
    const char *ran = kernels_cuda_attention_ran(G), *want = grouped ? "grouped" : "per_head";
    expect(ran && !strcmp(ran, want), "%s: the %s kernel ran (%s)", name, want, ran ? ran : "none");
    if (grouped) { /* tensor cores: P rounded to bf16 before P V (flash_tol) */
        float *tol = flash_tol(qkv, ld, tk, T, tables, max_blocks, bs, ck, cv, n_q, n_kv, q_per_kv, d, scale, co);
        check_tol(name, got, co, tol, (size_t)T * qw);
        free(tol);
    } else {
        /* Same bf16 q, k, v; fp32 scores and softmax in another order (online,
         * split) differ by ~1e-6; the output, an average of |v| <= 1.5, is
         * rounded once. */
        check(name, got, co, (size_t)T * qw, 1e-4, BF16_RTOL);
    }
    free(got), free(qkv), free(pos), free(seq), free(slots);
    G.iface->free(G.ctx, gq), G.iface->free(G.ctx, go), C.iface->free(C.ctx, cq), C.iface->free(C.ctx, co);
    for (int i = 0; i < 4; i++) G.iface->free(G.ctx, g_i[i]), C.iface->free(C.ctx, c_i[i]);
}

static void alloc_caches(size_t cache_n, void **gk, void **gv, void **ck, void **cv) {
    float *poison = xmalloc(cache_n * 4);
    for (size_t i = 0; i < cache_n; i++) poison[i] = POISON;
    *gk = g_act(poison, cache_n), *gv = g_act(poison, cache_n);
    *ck = c_act(poison, cache_n), *cv = c_act(poison, cache_n);
    free(poison);
}

static void free_caches(void *gk, void *gv, void *ck, void *cv) {
    G.iface->free(G.ctx, gk), G.iface->free(G.ctx, gv), C.iface->free(C.ctx, ck), C.iface->free(C.ctx, cv);
}

/* tests/test_kernels.c's paged case: four sequences, shuffled non-contiguous
 * blocks (unused entries point at a poison-only block), a multi-sequence
 * prefill, then a mixed step (decode tokens, a prefill chunk continuing a
 * sequence, a sequence's first token). */
static void test_attention_paged(int n_kv, int q_per_kv, int d) {
    enum { NSEQ = 4, BS = 4, MAXB = 4, NBLK = 16 };
    const int32_t tables[NSEQ * MAXB] = {7, 2, 9, 13, 4, 12, 13, 13, 0, 13, 13, 13, 15, 3, 11, 5};
    tok s1[23], s2[9];
    int T1 = 0, T2 = 0;
    for (int p = 0; p < 13; p++) s1[T1++] = (tok){3, p};
    for (int p = 0; p < 5; p++) s1[T1++] = (tok){0, p};
    for (int p = 0; p < 5; p++) s1[T1++] = (tok){1, p};
    s2[T2++] = (tok){1, 5};
    for (int p = 5; p < 11; p++) s2[T2++] = (tok){0, p};
    s2[T2++] = (tok){3, 13};
    s2[T2++] = (tok){2, 0};
    size_t cache_n = (size_t)NBLK * BS * n_kv * d;
    void *gk, *gv, *ck, *cv;
    alloc_caches(cache_n, &gk, &gv, &ck, &cv);
    attn_step("multi-seq prefill", s1, T1, tables, NSEQ, MAXB, BS, n_kv, q_per_kv, d, gk, gv, ck, cv, cache_n);
    attn_step("mixed decode+prefill", s2, T2, tables, NSEQ, MAXB, BS, n_kv, q_per_kv, d, gk, gv, ck, cv, cache_n);
    free_caches(gk, gv, ck, cv);
}

/* One long sequence (shuffled blocks of 16): a prefill of `ctx` tokens, then
 * two decode-like tokens at different depths, few enough (token, head) pairs
 * that the GPU splits the sequence (flash-decoding) and the shallower token has
 * empty splits. */
static void test_attention_long(int n_kv, int q_per_kv, int d, int ctx) {
    int bs = 16, nblk = (ctx + bs) / bs + 1, max_blocks = nblk;
    int32_t *tables = xmalloc((size_t)max_blocks * 4);
    for (int i = 0; i < nblk; i++) tables[i] = i;
    for (int i = nblk - 1; i > 0; i--) { /* shuffle */
        int j = (int)(rng_next(&g_rng) % (uint64_t)(i + 1)), t = tables[i];
        tables[i] = tables[j], tables[j] = t;
    }
    size_t cache_n = (size_t)nblk * bs * n_kv * d;
    void *gk, *gv, *ck, *cv;
    alloc_caches(cache_n, &gk, &gv, &ck, &cv);
    tok *pre = xmalloc(sizeof(tok) * (size_t)ctx);
    for (int p = 0; p < ctx; p++) pre[p] = (tok){0, p};
    char what[64];
    snprintf(what, sizeof what, "long prefill %d", ctx);
    attn_step(what, pre, ctx, tables, 1, max_blocks, bs, n_kv, q_per_kv, d, gk, gv, ck, cv, cache_n);
    tok dec[2] = {{0, ctx}, {0, ctx / 3}}; /* the second rewrites an earlier slot: fine for the check */
    snprintf(what, sizeof what, "decode at %d and %d (split)", ctx, ctx / 3);
    attn_step(what, dec, 2, tables, 1, max_blocks, bs, n_kv, q_per_kv, d, gk, gv, ck, cv, cache_n);
    free_caches(gk, gv, ck, cv);
    free(pre), free(tables);
}

/* More tokens in one step than CUDA's 65535 grid rows: the first tokens of
 * 70000 sequences (no run for the tensor-core kernel: all go to the general
 * kernels, launched in slices of grid rows). */
static void test_attention_many_rows(int n_kv, int q_per_kv, int d) {
    int T = 70000;
    int32_t *tables = xmalloc((size_t)T * 4);
    tok *tk = xmalloc(sizeof(tok) * (size_t)T);
    for (int t = 0; t < T; t++) tables[t] = t, tk[t] = (tok){t, 0};
    size_t cache_n = (size_t)T * n_kv * d;
    void *gk, *gv, *ck, *cv;
    alloc_caches(cache_n, &gk, &gv, &ck, &cv);
    attn_step("70000 first tokens (grid rows > 65535)", tk, T, tables, T, 1, 1, n_kv, q_per_kv, d, gk, gv, ck, cv,
              cache_n);
    free_caches(gk, gv, ck, cv);
    free(tk), free(tables);
}

static void test_attention_cases(void) {
    test_attention_paged(1, 2, 16);
    test_attention_paged(2, 4, 16);
    test_attention_paged(2, 16, 128); /* GLM-4-9B chat, tp 1 */
    test_attention_paged(4, 8, 128);  /* chat-1m */
    test_attention_paged(1, 1, 5);    /* odd head dim: scalar loads */
    test_attention_paged(2, 2, 64);   /* 2 dims per lane */
    test_attention_paged(1, 2, 256);  /* 8 dims per lane */
    test_attention_long(2, 16, 128, 2000);
    test_attention_long(1, 4, 64, 700);
    g_attn_nq = 4; /* tp = 8 of GLM-4-9B: 4 q heads on the one (replicated) KV head, ratio 16 */
    test_attention_long(1, 16, 128, 5000);
    g_attn_nq = 0;
    test_attention_many_rows(1, 2, 64);
}

/* Every case through the per-head kernel, then through the grouped one (q
 * heads sharing a KV head in one block; not for q/kv 1 or d 256, which keep
 * the per-head kernel), then back to what the environment chose. */
void test_attention(void) {
    int was = gpu_switch("GLMTP_GQA_ATTENTION", 0);
    g_attn_kernel = "";
    test_attention_cases();
    gpu_switch("GLMTP_GQA_ATTENTION", 1);
    g_attn_kernel = " (grouped)", g_attn_grouped = 1;
    test_attention_cases();
    gpu_switch("GLMTP_GQA_ATTENTION", was);
    g_attn_kernel = "", g_attn_grouped = 0;
}

/* ------------------------------------------- tensor-core prefill attention */

/* The CUDA backend sends runs of >= 16 consecutive positions of one sequence
 * (prefill chunks) through a tensor-core kernel when the step's host pos/seq
 * are given and d is 64 or 128 (kernels/cuda/attention_prefill.cu); the other
 * tokens, and every token when host_pos is NULL, take the general kernel. */

static uint64_t g_serial = 1000; /* kattn_batch.serial: a new one per step unless a case reuses one on purpose */

static int flash_disabled(void) {
    const char *e = getenv("GLMTP_NO_FLASH_PREFILL");
    return e && *e && strcmp(e, "0") != 0;
}

/* kernels/cuda/cuda_backend.cu's test hook (not in kernels.h): set 1 or 2
 * switches the tensor-core kernel (1: 64-row tiles, as GLMTP_FLASH_VARIANT=1
 * at creation; 2: 128-row tiles, the default), other values change nothing; returns the
 * variant the last attention call launched (0: none). The cases below run
 * every step through both, then leave the backend as the environment chose. */
int kernels_cuda_flash_variant(kbackend kb, int set);

static int env_flash_variant(void) {
    const char *e = getenv("GLMTP_FLASH_VARIANT");
    return e && !strcmp(e, "1") ? 1 : 2;
}

/* |got - want| <= tol[i] element-wise (NaN only where want is NaN). */
void check_tol(const char *name, const float *got, const float *want, const float *tol, size_t n) {
    double maxd = 0.0, maxr = 0.0;
    size_t n_bad = 0, first = 0;
    for (size_t i = 0; i < n; i++) {
        double g = got[i], w = want[i], d = (g == w) ? 0.0 : fabs(g - w);
        if (isnan(g) != isnan(w)) d = INFINITY;
        if (isnan(g) && isnan(w)) d = 0.0;
        if (!(d <= tol[i])) {
            if (!n_bad) first = i;
            n_bad++;
        }
        if (d > maxd || isnan(d)) maxd = d;
        if (d / tol[i] > maxr || isnan(d)) maxr = d / tol[i];
    }
    printf("%s  %-62s n=%-8zu max_abs_diff=%-10.3g (worst diff/tol %.2f)\n", n_bad ? "FAIL" : "PASS", name, n, maxd,
           maxr);
    if (n_bad)
        printf("      %zu bad; first at [%zu]: gpu %.9g cpu %.9g tol %.3g\n", n_bad, first, (double)got[first],
               (double)want[first], (double)tol[first]);
    tally(!n_bad);
}

/* Per-element tolerance for the tensor-core path. It rounds each softmax
 * weight's numerator p to bf16 before P V (relative error |e_p| <= 2^-9; the
 * sum l stays fp32), so output i is off by sum_p e_p w_p v_pi: terms bounded by
 * c_p = 2^-9 w_p |v_pi|, of either sign. Hoeffding: |sum| > 8 sqrt(sum c_p^2)
 * with probability < 2e-14 per element, far tighter than the worst case
 * 2^-9 sum w|v| (which a dropped or extra key can hide under at long context).
 * Plus the general kernel's own atol/rtol (fp32 order, one output rounding).
 * Weights from the same bf16 values (the CPU cache) in double. */
float *flash_tol(const float *qkv, int ld, const tok *tk, int T, const int32_t *tables, int max_blocks, int bs,
                 const float *K, const float *V, int n_q, int n_kv, int q_per_kv, int d, float scale,
                 const float *ref) {
    int max_pos = 0;
    for (int t = 0; t < T; t++)
        if (tk[t].p > max_pos) max_pos = tk[t].p;
    float *tol = xmalloc((size_t)T * n_q * d * 4);
    /* tokens in parallel (long prefills through the grouped kernel are
     * thousands of tokens x heads x context) */
#pragma omp parallel for schedule(dynamic, 8)
    for (int t = 0; t < T; t++) {
        double *w = xmalloc(((size_t)max_pos + 1) * 8), *var = xmalloc((size_t)d * 8);
        int s = tk[t].s, np = tk[t].p + 1;
        for (int h = 0; h < n_q; h++) {
            const float *q = qkv + (size_t)t * ld + (size_t)h * d;
            int g = h / q_per_kv;
            double mx = -INFINITY, sum = 0.0;
            for (int p = 0; p < np; p++) {
                size_t slot = (size_t)tables[s * max_blocks + p / bs] * bs + p % bs;
                const float *k = K + (slot * n_kv + g) * d;
                double dot = 0.0;
                for (int i = 0; i < d; i++) dot += (double)q[i] * k[i];
                w[p] = dot * scale;
                if (w[p] > mx) mx = w[p];
            }
            for (int p = 0; p < np; p++) sum += (w[p] = exp(w[p] - mx));
            for (int i = 0; i < d; i++) var[i] = 0.0;
            for (int p = 0; p < np; p++) {
                size_t slot = (size_t)tables[s * max_blocks + p / bs] * bs + p % bs;
                const float *v = V + (slot * n_kv + g) * d;
                double wp = w[p] / sum;
                for (int i = 0; i < d; i++) var[i] += wp * wp * v[i] * v[i];
            }
            size_t o = ((size_t)t * n_q + h) * d;
            for (int i = 0; i < d; i++)
                tol[o + i] = (float)(1e-4 + BF16_RTOL * fabs(ref[o + i]) + 8.0 * sqrt(var[i]) / 512.0);
        }
        free(w), free(var);
    }
    return tol;
}

/* Shuffled block tables for n_seqs sequences of max_blocks blocks each out of
 * a pool with two spare (poison-only) blocks: every sequence's blocks are
 * non-contiguous and interleaved with the others'. *n_blocks = pool size. */
static int32_t *interleaved_tables(int n_seqs, int max_blocks, int *n_blocks) {
    int n = n_seqs * max_blocks + 2;
    int32_t *ids = xmalloc((size_t)n * 4);
    for (int i = 0; i < n; i++) ids[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(rng_next(&g_rng) % (uint64_t)(i + 1)), t = ids[i];
        ids[i] = ids[j], ids[j] = t;
    }
    *n_blocks = n;
    return ids; /* the first n_seqs * max_blocks entries are the table */
}

typedef struct {
    int n_seqs, max_blocks, bs, n_kv, q_per_kv, d;
    int32_t *tables;
    size_t cache_n;
    void *gk, *gv, *ck, *cv;
} pf_setup;

static pf_setup pf_create(int n_seqs, int max_blocks, int bs, int n_kv, int q_per_kv, int d) {
    pf_setup u = {n_seqs, max_blocks, bs, n_kv, q_per_kv, d, NULL, 0, NULL, NULL, NULL, NULL};
    int nblk;
    u.tables = interleaved_tables(n_seqs, max_blocks, &nblk);
    u.cache_n = (size_t)nblk * bs * n_kv * d;
    alloc_caches(u.cache_n, &u.gk, &u.gv, &u.ck, &u.cv);
    return u;
}

static void pf_destroy(pf_setup *u) {
    free_caches(u->gk, u->gv, u->ck, u->cv);
    free(u->tables);
}

/* One step: kv_store on both backends, then attention on the CPU and three
 * times on the GPU: with host pos/seq (the tensor-core path where it applies),
 * again with the same serial (the cached plan: must be bit-identical), and
 * with host_pos NULL (the general kernel for every token). Outputs start as
 * NaN, so a row nobody wrote fails. ld_pad 1 makes q rows unaligned (the
 * tensor-core path must then stand aside). want_flash: some rows should take
 * the tensor-core path (its outputs then differ from the general kernel's
 * somewhere); else the two GPU results must be bit-identical. */
static void prefill_step(const char *what, pf_setup *u, const tok *tk, int T, uint64_t serial, int ld_pad,
                         int want_flash) {
    int n_kv = u->n_kv, q_per_kv = u->q_per_kv, d = u->d, bs = u->bs, max_blocks = u->max_blocks;
    int n_q = n_kv * q_per_kv, qw = n_q * d, kvw = n_kv * d, ld = qw + 2 * kvw + ld_pad;
    float *qkv = rand_bf16((size_t)T * ld, -1.5f, 1.5f);
    int32_t *pos = xmalloc((size_t)T * 4), *seq = xmalloc((size_t)T * 4), *slots = xmalloc((size_t)T * 4);
    int max_pos = 0;
    for (int t = 0; t < T; t++) {
        pos[t] = tk[t].p, seq[t] = tk[t].s;
        slots[t] = u->tables[tk[t].s * max_blocks + tk[t].p / bs] * bs + tk[t].p % bs;
        if (tk[t].p > max_pos) max_pos = tk[t].p;
    }
    size_t nt = (size_t)u->n_seqs * max_blocks;
    void *gq = g_act(qkv, (size_t)T * ld), *cq = c_act(qkv, (size_t)T * ld);
    void *g_i[4] = {g_ints(pos, T), g_ints(seq, T), g_ints(slots, T), g_ints(u->tables, nt)};
    void *c_i[4] = {c_ints(pos, T), c_ints(seq, T), c_ints(slots, T), c_ints(u->tables, nt)};
    kattn_batch gb_old = {T, g_i[0], g_i[1], g_i[2], g_i[3], max_blocks, bs, max_pos, NULL, NULL, 0, 0, 0, 0};
    kattn_batch gb = gb_old;
    gb.host_pos = pos, gb.host_seq = seq, gb.serial = serial;
    kattn_batch cb = {T, c_i[0], c_i[1], c_i[2], c_i[3], max_blocks, bs, max_pos, NULL, NULL, 0, 0, 0, 0};
    G.iface->kv_store(G.ctx, u->gk, u->gv, (uint16_t *)gq + qw, (uint16_t *)gq + qw + kvw, ld, kvw, &gb);
    C.iface->kv_store(C.ctx, u->ck, u->cv, (float *)cq + qw, (float *)cq + qw + kvw, ld, kvw, &cb);

    size_t no = (size_t)T * qw;
    float scale = 1.0f / sqrtf((float)d);
    /* go[2v - 2], go[2v - 1]: variant v (a new plan, then the cached one);
     * go[4]: host_pos NULL. The variant that ran last goes first, so the
     * plan a step finds cached has its tile size (a plan is also rebuilt when
     * that differs, which would hide a key that misses other tokens). */
    static int first_v = 1;
    void *co = c_act(NULL, no), *go[5];
    for (int k = 0; k < 5; k++) go[k] = g_act(NULL, no);
    C.iface->attention(C.ctx, co, cq, ld, u->ck, u->cv, &cb, n_q, n_kv, q_per_kv, d, scale);
    int ran[2];
    for (int i = 0; i < 2; i++) {
        int v = i ? 3 - first_v : first_v;
        kernels_cuda_flash_variant(G, v);
        G.iface->attention(G.ctx, go[2 * v - 2], gq, ld, u->gk, u->gv, &gb, n_q, n_kv, q_per_kv, d, scale);
        G.iface->attention(G.ctx, go[2 * v - 1], gq, ld, u->gk, u->gv, &gb, n_q, n_kv, q_per_kv, d, scale);
        ran[v - 1] = kernels_cuda_flash_variant(G, 0);
    }
    first_v = 3 - first_v;
    kernels_cuda_flash_variant(G, env_flash_variant());
    G.iface->attention(G.ctx, go[4], gq, ld, u->gk, u->gv, &gb_old, n_q, n_kv, q_per_kv, d, scale);
    const char *general = kernels_cuda_attention_ran(G);
    char name[200];
    snprintf(name, sizeof name, "prefill attention %s n_kv=%d q/kv=%d d=%d T=%d", what, n_kv, q_per_kv, d, T);
    expect(general && !strcmp(general, "per_head"), "%s [host_pos NULL]: the per-head kernel ran (%s)", name,
           general ? general : "none");
    float *got[5];
    for (int k = 0; k < 5; k++) got[k] = g_get(name, go[k], no);

    char nm[240];
    float *tol = flash_tol(qkv, ld, tk, T, u->tables, max_blocks, bs, u->ck, u->cv, n_kv * q_per_kv, n_kv, q_per_kv, d,
                           scale, co);
    snprintf(nm, sizeof nm, "%s [host_pos NULL]", name);
    check(nm, got[4], co, no, 1e-4, BF16_RTOL);
    for (int v = 1; v <= 2; v++) {
        const float *a = got[2 * v - 2], *b = got[2 * v - 1];
        snprintf(nm, sizeof nm, "%s [host pos/seq, variant %d]", name, v);
        check_tol(nm, a, co, tol, no);
        size_t n_diff_cached = 0, n_diff_old = 0;
        for (size_t i = 0; i < no; i++) {
            n_diff_cached += memcmp(&a[i], &b[i], 4) != 0;
            n_diff_old += memcmp(&a[i], &got[4][i], 4) != 0;
        }
        expect(n_diff_cached == 0, "%s: variant %d, same serial again (cached plan): bit-identical (%zu differ)", what,
               v, n_diff_cached);
        if (!want_flash)
            expect(n_diff_old == 0 && ran[v - 1] == 0,
                   "%s: variant %d: no run takes the tensor cores: same as host_pos NULL (%zu differ, ran %d)", what, v,
                   n_diff_old, ran[v - 1]);
        else if (!flash_disabled())
            expect(n_diff_old > 0 && ran[v - 1] == v,
                   "%s: variant %d ran (%d), on tensor cores (%zu of %zu outputs differ from the general kernel)", what,
                   v, ran[v - 1], n_diff_old, no);
    }
    free(tol), free(qkv), free(pos), free(seq), free(slots);
    for (int k = 0; k < 5; k++) free(got[k]), G.iface->free(G.ctx, go[k]);
    G.iface->free(G.ctx, gq), C.iface->free(C.ctx, cq), C.iface->free(C.ctx, co);
    for (int i = 0; i < 4; i++) G.iface->free(G.ctx, g_i[i]), C.iface->free(C.ctx, c_i[i]);
}

/* Appends tokens of sequence s at positions p0 .. p0 + n - 1. */
static int add_run(tok *tk, int T, int s, int p0, int n) {
    for (int i = 0; i < n; i++) tk[T + i] = (tok){s, p0 + i};
    return T + n;
}

static void prefill_attention_cases(void) {
    static tok tk[512];
    int T;
    /* (a) one 300-token prefill from position 0: 4 full query tiles and a partial one */
    {
        pf_setup u = pf_create(1, 20, 16, 2, 2, 128);
        T = add_run(tk, 0, 0, 0, 300);
        prefill_step("(a) 300 from pos 0", &u, tk, T, ++g_serial, 0, 1);
        pf_destroy(&u);
    }
    /* (b) a 200-token chunk at positions 150..349 (earlier ones cached by the
     * first step) between decode tokens of three other sequences */
    {
        pf_setup u = pf_create(4, 24, 16, 2, 2, 128);
        T = add_run(tk, 0, 0, 0, 150);
        T = add_run(tk, T, 1, 0, 40);
        T = add_run(tk, T, 2, 0, 70);
        T = add_run(tk, T, 3, 0, 5);
        prefill_step("(b) step 1: 150+40+70+5 from pos 0", &u, tk, T, ++g_serial, 0, 1);
        T = add_run(tk, 0, 1, 40, 1);
        T = add_run(tk, T, 0, 150, 200);
        T = add_run(tk, T, 2, 70, 1);
        T = add_run(tk, T, 3, 5, 1);
        prefill_step("(b) step 2: decode, 200 at pos 150, 2 decode", &u, tk, T, ++g_serial, 0, 1);
        pf_destroy(&u);
    }
    /* (c) run lengths at the threshold (17 and 16 tiled, 15 not), a 64-row
     * tile starting on a key-tile boundary, a 1-row last tile; the third step
     * reuses the second's serial and T with other tokens (the plan must be
     * rebuilt). q/kv 3, block size 8. */
    {
        pf_setup u = pf_create(3, 26, 8, 1, 3, 128);
        T = add_run(tk, 0, 0, 0, 17);
        T = add_run(tk, T, 1, 0, 15);
        T = add_run(tk, T, 2, 0, 128);
        prefill_step("(c) step 1: 17, 15, 128 from pos 0", &u, tk, T, ++g_serial, 0, 1);
        uint64_t s2 = ++g_serial;
        T = add_run(tk, 0, 2, 128, 64);
        T = add_run(tk, T, 0, 17, 17);
        T = add_run(tk, T, 1, 15, 1);
        prefill_step("(c) step 2: 64 at pos 128, 17 at 17, decode", &u, tk, T, s2, 0, 1);
        T = add_run(tk, 0, 1, 16, 16);
        T = add_run(tk, T, 0, 34, 65);
        T = add_run(tk, T, 2, 192, 1);
        prefill_step("(c) step 3, serial of step 2: 16 at 16, 65 at 34, decode", &u, tk, T, s2, 0, 1);
        pf_destroy(&u);
    }
    /* (d) d = 64, all q heads on one KV head, block size 32 */
    {
        pf_setup u = pf_create(2, 10, 32, 1, 4, 64);
        T = add_run(tk, 0, 0, 0, 200);
        T = add_run(tk, T, 1, 0, 33);
        prefill_step("(d) step 1: 200, 33 from pos 0", &u, tk, T, ++g_serial, 0, 1);
        T = add_run(tk, 0, 0, 200, 70);
        T = add_run(tk, T, 1, 33, 1);
        prefill_step("(d) step 2: 70 at pos 200, decode", &u, tk, T, ++g_serial, 0, 1);
        pf_destroy(&u);
    }
    /* (e) GLM-4-9B's heads at tp 1 (32 q on 2 KV), 130 tokens: 64 + 64 + 2
     * (128 + 2 for variant 2) */
    {
        pf_setup u = pf_create(1, 10, 16, 2, 16, 128);
        T = add_run(tk, 0, 0, 0, 130);
        prefill_step("(e) GLM-4 heads, 130 from pos 0", &u, tk, T, ++g_serial, 0, 1);
        pf_destroy(&u);
    }
    /* (g) variant 2's 128-row tiles: 129 = 128 + 1 (a one-row tile whose
     * padding warps do nothing), 100 (one partial tile), then chunks at an
     * offset: 200 at pos 100 (128 + 72, neither starting on a key tile) and
     * 129 at pos 129 (its one-row tile at pos 257) */
    {
        pf_setup u = pf_create(2, 20, 16, 2, 2, 128);
        T = add_run(tk, 0, 0, 0, 129);
        T = add_run(tk, T, 1, 0, 100);
        prefill_step("(g) step 1: 129, 100 from pos 0", &u, tk, T, ++g_serial, 0, 1);
        T = add_run(tk, 0, 1, 100, 200);
        T = add_run(tk, T, 0, 129, 129);
        prefill_step("(g) step 2: 200 at pos 100, 129 at pos 129", &u, tk, T, ++g_serial, 0, 1);
        pf_destroy(&u);
    }
    /* (h) the same for d = 64: 129 from pos 0, then 150 at pos 129 (128 + 22) */
    {
        pf_setup u = pf_create(1, 20, 16, 1, 2, 64);
        T = add_run(tk, 0, 0, 0, 129);
        prefill_step("(h) step 1: 129 from pos 0", &u, tk, T, ++g_serial, 0, 1);
        T = add_run(tk, 0, 0, 129, 150);
        prefill_step("(h) step 2: 150 at pos 129", &u, tk, T, ++g_serial, 0, 1);
        pf_destroy(&u);
    }
    /* (f) shapes the tensor cores must leave alone: unaligned q rows, d 16 */
    {
        pf_setup u = pf_create(1, 4, 16, 2, 2, 128);
        T = add_run(tk, 0, 0, 0, 40);
        prefill_step("(f) 40 from pos 0, q rows unaligned", &u, tk, T, ++g_serial, 1, 0);
        pf_destroy(&u);
        pf_setup v = pf_create(2, 4, 16, 2, 2, 16);
        T = add_run(tk, 0, 0, 0, 40);
        T = add_run(tk, T, 1, 0, 20);
        prefill_step("(f) 40, 20 from pos 0, d 16", &v, tk, T, ++g_serial, 0, 0);
        pf_destroy(&v);
    }
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* A GLM-4-9B-sized prefill (32 q heads on 2 KV heads, d 128) on the GPU alone:
 * the tensor-core path, both variants, against the general kernel (whose
 * error against the CPU the cases above bound), and all three timed. Their
 * difference is at most the tensor-core path's worst case 2^-9 max|v| (bf16
 * P) plus two roundings. */
static void prefill_attention_big(int T) {
    int n_kv = 2, q_per_kv = 16, d = 128, bs = 16, n_q = n_kv * q_per_kv;
    int max_blocks = (T + bs - 1) / bs, qw = n_q * d, kvw = n_kv * d, ld = qw + 2 * kvw;
    int32_t *tables = xmalloc((size_t)max_blocks * 4), *pos = xmalloc((size_t)T * 4), *seq = xmalloc((size_t)T * 4),
            *slots = xmalloc((size_t)T * 4);
    for (int i = 0; i < max_blocks; i++) tables[i] = max_blocks - 1 - i; /* reversed: never contiguous */
    for (int t = 0; t < T; t++) pos[t] = t, seq[t] = 0, slots[t] = tables[t / bs] * bs + t % bs;
    float *qkv = rand_bf16((size_t)T * ld, -1.5f, 1.5f);
    size_t cache_n = (size_t)max_blocks * bs * kvw, no = (size_t)T * qw;
    void *gq = g_act(qkv, (size_t)T * ld), *gk = g_act(NULL, cache_n), *gv = g_act(NULL, cache_n);
    void *g_i[4] = {g_ints(pos, T), g_ints(seq, T), g_ints(slots, T), g_ints(tables, max_blocks)};
    kattn_batch gb_old = {T, g_i[0], g_i[1], g_i[2], g_i[3], max_blocks, bs, T - 1, NULL, NULL, 0, 0, 0, 0};
    kattn_batch gb = gb_old;
    gb.host_pos = pos, gb.host_seq = seq, gb.serial = ++g_serial;
    G.iface->kv_store(G.ctx, gk, gv, (uint16_t *)gq + qw, (uint16_t *)gq + qw + kvw, ld, kvw, &gb);
    /* go[0], go[1]: the tensor-core path, variants 1 and 2; go[2]: host_pos NULL */
    void *go[3] = {g_act(NULL, no), g_act(NULL, no), g_act(NULL, no)};
    float scale = 1.0f / sqrtf((float)d);
    double best[3] = {1e30, 1e30, 1e30};
    int ran[2] = {0, 0};
    for (int k = 0; k < 3; k++) {
        if (k < 2) kernels_cuda_flash_variant(G, k + 1);
        for (int rep = 0; rep < 4; rep++) { /* the first is a warm-up (and builds the plan) */
            G.iface->sync(G.ctx);
            double t0 = now_s();
            G.iface->attention(G.ctx, go[k], gq, ld, gk, gv, k < 2 ? &gb : &gb_old, n_q, n_kv, q_per_kv, d, scale);
            G.iface->sync(G.ctx);
            double dt = now_s() - t0;
            if (rep > 0 && dt < best[k]) best[k] = dt;
        }
        if (k < 2) ran[k] = kernels_cuda_flash_variant(G, 0);
    }
    kernels_cuda_flash_variant(G, env_flash_variant());
    float *got[3];
    for (int k = 0; k < 3; k++) got[k] = g_get("prefill attention GLM-4 heads", go[k], no);
    for (int k = 0; k < 2; k++) {
        char name[160];
        snprintf(name, sizeof name, "prefill attention GLM-4 heads T=%d: variant %d vs host_pos NULL", T, k + 1);
        check(name, got[k], got[2], no, 1.5 / 512 + 2e-4, 2 * BF16_RTOL);
        if (!flash_disabled()) expect(ran[k] == k + 1, "GLM-4 heads T=%d: variant %d ran (%d)", T, k + 1, ran[k]);
    }
    double flop = 4.0 * n_q * d * ((double)T * (T + 1) / 2);
    printf("INFO  prefill attention T=%d n_q=%d n_kv=%d d=%d: variant 1 %.3f ms (%.1f TFLOP/s), variant 2 %.3f ms "
           "(%.1f TFLOP/s, %.2fx), host_pos NULL %.3f ms (%.1f TFLOP/s)%s\n",
           T, n_q, n_kv, d, best[0] * 1e3, flop / best[0] * 1e-12, best[1] * 1e3, flop / best[1] * 1e-12,
           best[0] / best[1], best[2] * 1e3, flop / best[2] * 1e-12,
           flash_disabled() ? " [GLMTP_NO_FLASH_PREFILL set]" : "");
    for (int k = 0; k < 3; k++) free(got[k]), G.iface->free(G.ctx, go[k]);
    free(qkv), free(tables), free(pos), free(seq), free(slots);
    G.iface->free(G.ctx, gq), G.iface->free(G.ctx, gk), G.iface->free(G.ctx, gv);
    for (int i = 0; i < 4; i++) G.iface->free(G.ctx, g_i[i]);
}

/* Both prefill tests hold the tensor-core rows to the general per-head kernel
 * (host_pos NULL), so the grouped decode kernel, the default where it applies
 * and tested in test_attention, is off while they run: GPU run 4 had it on
 * there and held its tensor-core rounding to the fp32 kernel's tolerance. */
void test_prefill_attention(void) {
    int was = gpu_switch("GLMTP_GQA_ATTENTION", 0);
    prefill_attention_cases();
    gpu_switch("GLMTP_GQA_ATTENTION", was);
}

void test_prefill_attention_big(int T) {
    int was = gpu_switch("GLMTP_GQA_ATTENTION", 0);
    prefill_attention_big(T);
    gpu_switch("GLMTP_GQA_ATTENTION", was);
}

/* ------------------------------------------- vision tower: attention_full */

/* attention_full on both backends: q, k, v the column blocks at 0, blk and
 * 2 blk of one [T, ld] buffer (blk = n_heads * d + gap, ld = 3 blk + tail). */
static void attention_full_case(int T, int n_heads, int d, int gap, int tail) {
    int qw = n_heads * d, blk = qw + gap, ld = 3 * blk + tail;
    size_t n = (size_t)T * ld, no = (size_t)T * qw;
    float *qkv = rand_bf16(n, -1.5f, 1.5f);
    void *gq = g_act(qkv, n), *cq = c_act(qkv, n), *go = g_act(NULL, no), *co = c_act(NULL, no);
    float scale = 1.0f / sqrtf((float)d);
    uint16_t *g16 = gq;
    float *c32 = cq;
    G.iface->attention_full(G.ctx, go, g16, g16 + blk, g16 + 2 * blk, ld, T, n_heads, d, scale);
    C.iface->attention_full(C.ctx, co, c32, c32 + blk, c32 + 2 * blk, ld, T, n_heads, d, scale);
    char name[128];
    snprintf(name, sizeof name, "attention_full T=%d n_heads=%d d=%d ld=%d", T, n_heads, d, ld);
    float *got = g_get(name, go, no);
    /* Same bf16 q, k, v; fp32 scores and online softmax (exp2 on the GPU, exp
     * on the CPU, key tiles alike) differ by ~1e-6; the output, an average of
     * |v| <= 1.5, is rounded to bf16 once: the per-head attention kernel's
     * tolerance. */
    check(name, got, co, no, 1e-4, BF16_RTOL);
    free(got), free(qkv);
    G.iface->free(G.ctx, gq), G.iface->free(G.ctx, go), C.iface->free(C.ctx, cq), C.iface->free(C.ctx, co);
}

/* The tower's shape at tp = 1 (T = 6401 patches and the boi/eoi tokens' row,
 * 16 heads of 112, q, k, v in one qkv buffer) on the GPU alone, timed. */
static void attention_full_timed(int T, int n_heads, int d) {
    int qw = n_heads * d, ld = 3 * qw;
    size_t n = (size_t)T * ld, no = (size_t)T * qw;
    float *qkv = rand_bf16(n, -1.5f, 1.5f);
    void *gq = g_act(qkv, n), *go = g_act(NULL, no);
    uint16_t *g16 = gq;
    float scale = 1.0f / sqrtf((float)d);
    double best = 1e30;
    for (int rep = 0; rep < 4; rep++) { /* the first is a warm-up */
        G.iface->sync(G.ctx);
        double t0 = now_s();
        G.iface->attention_full(G.ctx, go, g16, g16 + qw, g16 + 2 * qw, ld, T, n_heads, d, scale);
        G.iface->sync(G.ctx);
        double dt = now_s() - t0;
        if (rep > 0 && dt < best) best = dt;
    }
    float *got = g_get("attention_full timed", go, no);
    int finite = 1;
    for (size_t i = 0; i < no; i++) finite &= isfinite(got[i]) != 0;
    expect(finite, "attention_full T=%d n_heads=%d d=%d: every output finite", T, n_heads, d);
    double flop = 4.0 * n_heads * d * (double)T * T;
    printf("INFO  attention_full T=%d n_heads=%d d=%d: %.3f ms (%.1f TFLOP/s, fp32 FMA)\n", T, n_heads, d, best * 1e3,
           flop / best * 1e-12);
    free(got), free(qkv);
    G.iface->free(G.ctx, gq), G.iface->free(G.ctx, go);
}

void test_attention_full(void) {
    attention_full_case(17, 4, 14, 3, 5);  /* tiny: d 14 (one dim a thread, two threads idle), ld wider */
    attention_full_case(1, 2, 14, 0, 1);   /* one token: out = v */
    attention_full_case(65, 3, 80, 1, 0);  /* 5 dims a thread in the 7-wide kernel, tails of both tiles */
    attention_full_case(130, 2, 128, 0, 0);
    attention_full_case(100, 1, 256, 0, 3); /* the largest d: 219 KB of shared memory */
    attention_full_case(300, 2, 112, 0, 0);
    attention_full_case(6401, 2, 112, 0, 0); /* the tower's sequence, 2 of its heads */
    attention_full_timed(6401, 16, 112);
}
