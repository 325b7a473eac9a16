/* Attention on the CPU: causal GQA over the paged KV cache, and the vision
 * tower's bidirectional attention without a cache (attention_full, at the end:
 * the same tiles and online softmax). Causal GQA has one code path for
 * prefill and decode: every token reads its sequence's K/V through the block
 * table, so a prefill token and a decode token differ only in how many positions
 * they see. Cache elements are fp32, or with b->kv_dtype KV_DTYPE_FP8 e4m3
 * bytes and a scale per (token, KV head) row (kernels.h), quantised by
 * fp8_quantise_row on store and widened to fp32 as tiles are gathered. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../fp8.h"
#include "cpu.h"

static inline size_t slot_of(const kattn_batch *b, int s, int p) {
    int blk = b->block_tables[(size_t)s * b->max_blocks + p / b->block_size];
    return (size_t)blk * b->block_size + p % b->block_size;
}

/* The fp32 scales of an fp8 K or V buffer [n_slots, n_kv] (kernels.h). */
static inline float *kv_scales(const void *cache, const kattn_batch *b) {
    return (float *)((const char *)cache + b->kv_scale_off);
}

/* fp8 store: each d-wide head of the kv_width = n_kv * d row gets its own scale. */
static void kv_store_fp8(void *kcache, void *vcache, const void *k, const void *v, int ld, int kv_width,
                         const kattn_batch *b) {
    int d = b->kv_head_dim;
    if (d <= 0 || kv_width % d) {
        fprintf(stderr, "glmtp: cpu kv_store: fp8 rows of %d values need kv_head_dim dividing them (got %d)\n",
                kv_width, d);
        abort();
    }
    int n_kv = kv_width / d;
    float *ks = kv_scales(kcache, b), *vs = kv_scales(vcache, b);
    for (int t = 0; t < b->n_tokens; t++) {
        size_t slot = (size_t)b->slots[t];
        for (int g = 0; g < n_kv; g++) {
            size_t row = slot * n_kv + g, src = (size_t)t * ld + (size_t)g * d;
            fp8_quantise_row((uint8_t *)kcache + row * d, &ks[row], (const float *)k + src, d);
            fp8_quantise_row((uint8_t *)vcache + row * d, &vs[row], (const float *)v + src, d);
        }
    }
}

void cpu_kv_store(void *ctx, void *kcache, void *vcache, const void *k, const void *v, int ld, int kv_width,
                  const kattn_batch *b) {
    (void)ctx;
    if (b->kv_dtype == KV_DTYPE_FP8) {
        kv_store_fp8(kcache, vcache, k, v, ld, kv_width, b);
        return;
    }
    for (int t = 0; t < b->n_tokens; t++) {
        size_t slot = (size_t)b->slots[t];
        memcpy((float *)kcache + slot * kv_width, (const float *)k + (size_t)t * ld, sizeof(float) * kv_width);
        memcpy((float *)vcache + slot * kv_width, (const float *)v + (size_t)t * ld, sizeof(float) * kv_width);
    }
}

/* Attention in tiles, flash style: a tile is up to ROWS query rows (consecutive
 * tokens of one sequence x the q_per_kv heads of one KV group) against TK keys
 * at a time, with an online softmax, so each K/V row is read once per tile
 * instead of once per query head and token, and the inner loops run over
 * contiguous keys (scores) or head dims (values), which the compiler
 * vectorises. Causality is per row: a token sees positions <= its own. */
enum { TK = 64, ROWS = 64 };

/* x[j] = e^(x[j] - mx) for j < n (x[j] <= mx), returning their sum, in a form
 * the compiler vectorises (expf is a library call it cannot): y = k ln2 + r
 * with |r| <= ln2/2 (ln2 in two parts, Cody-Waite), e^r by its degree-6 Taylor
 * polynomial (truncation < 2e-9 relative), times 2^k through the exponent
 * bits. Within 2 ulp of expf; below -87 it gives 0 where expf gives a
 * denormal, which no softmax weight can tell apart. n <= TK. */
static float exp_shifted(float *x, int n, float mx) {
    int32_t bits[TK];
    float two_k[TK], sum = 0.0f;
#pragma omp simd
    for (int j = 0; j < n; j++) {
        float y = x[j] - mx;
        y = y < -87.0f ? -87.0f : y;
        float k = (y * 1.44269504f + 12582912.0f) - 12582912.0f; /* round to nearest: 1.5 * 2^23 */
        float r = (y - k * 0.693145752f) - k * 1.42860677e-6f;
        x[j] = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
        bits[j] = y <= -87.0f ? 0 : ((int32_t)k + 127) << 23; /* 2^k, or 0 */
    }
    memcpy(two_k, bits, sizeof(float) * (size_t)n);
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < n; j++) {
        x[j] *= two_k[j];
        sum += x[j];
    }
    return sum;
}

/* orow[0, d) += sum_j p[j] vt[j, 0, d) for j < lim. Inlined with a constant d
 * (16, 64, 128) the row stays in registers across the keys; a local copy, so
 * that the compiler need not assume vt's loads alias orow's stores. */
static inline __attribute__((always_inline)) void pv_row(float *orow, const float *p, const float *vt, int lim,
                                                         int d) {
    enum { DMAX = 128 };
    if (d > DMAX) {
        for (int j = 0; j < lim; j++)
            for (int i = 0; i < d; i++) orow[i] += p[j] * vt[(size_t)j * d + i];
        return;
    }
    float o[DMAX];
    memcpy(o, orow, sizeof(float) * (size_t)d);
    for (int j = 0; j < lim; j++) {
        float pj = p[j];
        const float *vr = vt + (size_t)j * d;
#pragma omp simd
        for (int i = 0; i < d; i++) o[i] += pj * vr[i];
    }
    memcpy(orow, o, sizeof(float) * (size_t)d);
}

typedef struct attn_tile {
    int t0, nt, g; /* tokens [t0, t0 + nt) of one sequence, KV group g */
} attn_tile;

/* Splits the step's tokens into runs of one sequence, each run into tiles of
 * at most ROWS / hp tokens (at least one), times every KV group.
 * Returns the count; *out is malloc'ed (caller frees). */
static int plan_tiles(const kattn_batch *b, int n_kv, int hp, attn_tile **out) {
    int T = b->n_tokens, per = ROWS / hp > 0 ? ROWS / hp : 1, n = 0, cap = 0;
    attn_tile *tl = NULL;
    for (int t = 0; t < T;) {
        int e = t + 1;
        while (e < T && e - t < per && b->seq[e] == b->seq[t]) e++;
        for (int g = 0; g < n_kv; g++) {
            if (n == cap) {
                cap = cap ? 2 * cap : 64;
                tl = realloc(tl, sizeof *tl * (size_t)cap);
                if (!tl) abort();
            }
            tl[n++] = (attn_tile){t, e - t, g};
        }
        t = e;
    }
    *out = tl;
    return n;
}

typedef struct attn_scratch {
    float *q;     /* [rows, d] scaled queries */
    float *kt;    /* [d, TK] keys, transposed */
    float *vt;    /* [TK, d] values */
    float *o;     /* [rows, d] unnormalised output */
    float *m, *l; /* [rows] running max and sum */
} attn_scratch;

/* hp: heads per KV group on this rank, min(q_per_kv, n_q): with KV heads
 * replicated (tp above the KV groups) a rank holds fewer q heads than a group
 * has, all of them on its one KV head. Group g's heads are g * q_per_kv + i. */
/* The cache as the tiles read it: fp32 rows, or fp8 rows with their scales
 * and the e4m3 values of the 256 bytes. */
typedef struct kv_view {
    const float *K, *V;           /* fp32 cache, or NULL */
    const uint8_t *K8, *V8;       /* fp8 cache */
    const float *ks, *vs, *lut;   /* [n_slots, n_kv] scales; lut[256] */
} kv_view;

/* Key row `row` (element offset, a multiple of d) of the view into kt's
 * column j (transposed) and vt's row j, as fp32. */
static inline void gather_kv(attn_scratch *w, const kv_view *c, size_t row, int j, int d) {
    if (c->K) {
        for (int i = 0; i < d; i++) w->kt[(size_t)i * TK + j] = c->K[row + i];
        memcpy(w->vt + (size_t)j * d, c->V + row, sizeof(float) * d);
        return;
    }
    float sk = c->ks[row / d], sv = c->vs[row / d];
    float *vr = w->vt + (size_t)j * d;
    for (int i = 0; i < d; i++) w->kt[(size_t)i * TK + j] = c->lut[c->K8[row + i]] * sk;
    for (int i = 0; i < d; i++) vr[i] = c->lut[c->V8[row + i]] * sv;
}

static void tile_run(const attn_tile *tile, attn_scratch *w, float *out, const float *q, int ld_q, const kv_view *c,
                     const kattn_batch *b, int n_q, int n_kv, int q_per_kv, int hp, int d, float scale) {
    int R = tile->nt * hp, s_id = b->seq[tile->t0], maxp = 0;
    for (int r = 0; r < R; r++) {
        int t = tile->t0 + r / hp, h = tile->g * q_per_kv + r % hp;
        const float *qv = q + (size_t)t * ld_q + (size_t)h * d;
        for (int i = 0; i < d; i++) w->q[(size_t)r * d + i] = qv[i] * scale;
        for (int i = 0; i < d; i++) w->o[(size_t)r * d + i] = 0.0f;
        w->m[r] = -INFINITY, w->l[r] = 0.0f;
        if (b->pos[t] > maxp) maxp = b->pos[t];
    }
    for (int k0 = 0; k0 <= maxp; k0 += TK) {
        int nk = maxp + 1 - k0 < TK ? maxp + 1 - k0 : TK;
        for (int j = 0; j < nk; j++) gather_kv(w, c, (slot_of(b, s_id, k0 + j) * n_kv + tile->g) * d, j, d);
        for (int i = 0; nk < TK && i < d; i++) memset(w->kt + (size_t)i * TK + nk, 0, sizeof(float) * (TK - nk));
        for (int r = 0; r < R; r++) {
            int lim = b->pos[tile->t0 + r / hp] - k0 + 1;
            if (lim <= 0) continue; /* this row's keys are all behind it */
            if (lim > nk) lim = nk;
            float *qr = w->q + (size_t)r * d, *orow = w->o + (size_t)r * d;
            /* all TK columns, so the sums stay in registers; those past lim are ignored */
            float acc[TK];
            for (int j = 0; j < TK; j++) acc[j] = 0.0f;
            for (int i = 0; i < d; i++) {
                float qi = qr[i];
                const float *kr = w->kt + (size_t)i * TK;
                for (int j = 0; j < TK; j++) acc[j] += qi * kr[j];
            }
            float mx = w->m[r];
            for (int j = 0; j < lim; j++) mx = acc[j] > mx ? acc[j] : mx;
            float corr = expf(w->m[r] - mx), sum = exp_shifted(acc, lim, mx);
            w->l[r] = w->l[r] * corr + sum, w->m[r] = mx;
            for (int i = 0; i < d; i++) orow[i] *= corr;
            switch (d) { /* the common head sizes with the row in registers */
            case 16: pv_row(orow, acc, w->vt, lim, 16); break;
            case 64: pv_row(orow, acc, w->vt, lim, 64); break;
            case 128: pv_row(orow, acc, w->vt, lim, 128); break;
            default: pv_row(orow, acc, w->vt, lim, d);
            }
        }
    }
    for (int r = 0; r < R; r++) {
        int t = tile->t0 + r / hp, h = tile->g * q_per_kv + r % hp;
        float *o = out + (size_t)t * n_q * d + (size_t)h * d, inv = 1.0f / w->l[r];
        for (int i = 0; i < d; i++) o[i] = w->o[(size_t)r * d + i] * inv;
    }
}

void cpu_attention(void *ctx, void *out, const void *q, int ld_q, const void *kcache, const void *vcache,
                   const kattn_batch *b, int n_q, int n_kv, int q_per_kv, int d, float scale) {
    (void)ctx;
    attn_tile *tiles;
    int hp = q_per_kv < n_q ? q_per_kv : n_q;
    int n_tiles = plan_tiles(b, n_kv, hp, &tiles);
    int rows = ROWS > hp ? ROWS : hp; /* a tile holds at least one token */
    float lut[256];
    kv_view c = {kcache, vcache, NULL, NULL, NULL, NULL, lut};
    if (b->kv_dtype == KV_DTYPE_FP8) {
        fp8_e4m3_table(lut);
        c.K = c.V = NULL;
        c.K8 = kcache, c.V8 = vcache;
        c.ks = kv_scales(kcache, b), c.vs = kv_scales(vcache, b);
    }
#pragma omp parallel if (n_tiles > 1)
    {
        attn_scratch w;
        size_t n = (size_t)rows * d * 2 + (size_t)d * TK * 2 + 2 * (size_t)rows;
        float *mem = malloc(sizeof(float) * n);
        if (!mem) abort();
        w.q = mem, w.o = w.q + (size_t)rows * d, w.kt = w.o + (size_t)rows * d, w.vt = w.kt + (size_t)d * TK;
        w.m = w.vt + (size_t)d * TK, w.l = w.m + rows;
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < n_tiles; i++)
            tile_run(&tiles[i], &w, out, q, ld_q, &c, b, n_q, n_kv, q_per_kv, hp, d, scale);
        free(mem);
    }
    free(tiles);
}

/* ------------------------------------------------------------------------
 * Full (bidirectional) attention without a cache, for the vision tower: the
 * same tiles as above with every row seeing every key, so a tile is up to
 * ROWS tokens of one head against TK keys at a time, with an online softmax.
 * Nothing of size T x T exists: scratch is per thread, O(ROWS * d + TK * d). */

typedef struct full_args {
    float *out;
    const float *q, *k, *v;
    int ld, T, n_heads, d;
    float scale;
} full_args;

/* Tokens [t0, t0 + nt) of head h. */
static void full_tile_run(const full_args *a, attn_scratch *w, int h, int t0, int nt) {
    int d = a->d, T = a->T;
    size_t col = (size_t)h * d;
    for (int r = 0; r < nt; r++) {
        const float *qv = a->q + (size_t)(t0 + r) * a->ld + col;
        for (int i = 0; i < d; i++) w->q[(size_t)r * d + i] = qv[i] * a->scale;
        for (int i = 0; i < d; i++) w->o[(size_t)r * d + i] = 0.0f;
        w->m[r] = -INFINITY, w->l[r] = 0.0f;
    }
    for (int k0 = 0; k0 < T; k0 += TK) {
        int nk = T - k0 < TK ? T - k0 : TK;
        for (int j = 0; j < nk; j++) {
            const float *kr = a->k + (size_t)(k0 + j) * a->ld + col;
            for (int i = 0; i < d; i++) w->kt[(size_t)i * TK + j] = kr[i];
            memcpy(w->vt + (size_t)j * d, a->v + (size_t)(k0 + j) * a->ld + col, sizeof(float) * d);
        }
        for (int i = 0; nk < TK && i < d; i++) memset(w->kt + (size_t)i * TK + nk, 0, sizeof(float) * (TK - nk));
        for (int r = 0; r < nt; r++) {
            float *qr = w->q + (size_t)r * d, *orow = w->o + (size_t)r * d;
            float acc[TK]; /* all TK columns, so the sums stay in registers; those past nk are ignored */
            for (int j = 0; j < TK; j++) acc[j] = 0.0f;
            for (int i = 0; i < d; i++) {
                float qi = qr[i];
                const float *kr = w->kt + (size_t)i * TK;
                for (int j = 0; j < TK; j++) acc[j] += qi * kr[j];
            }
            float mx = w->m[r];
            for (int j = 0; j < nk; j++) mx = acc[j] > mx ? acc[j] : mx;
            float corr = expf(w->m[r] - mx), sum = exp_shifted(acc, nk, mx);
            w->l[r] = w->l[r] * corr + sum, w->m[r] = mx;
            for (int i = 0; i < d; i++) orow[i] *= corr;
            switch (d) { /* the vision tower's head size and the chat model's, the row in registers */
            case 112: pv_row(orow, acc, w->vt, nk, 112); break;
            case 128: pv_row(orow, acc, w->vt, nk, 128); break;
            default: pv_row(orow, acc, w->vt, nk, d);
            }
        }
    }
    for (int r = 0; r < nt; r++) {
        float *o = a->out + (size_t)(t0 + r) * a->n_heads * d + col, inv = 1.0f / w->l[r];
        for (int i = 0; i < d; i++) o[i] = w->o[(size_t)r * d + i] * inv;
    }
}

/* OpenMP over (head, query tile), heads outermost, so threads that run
 * neighbouring tiles read the same head's K/V columns. */
void cpu_attention_full(void *ctx, void *out, const void *q, const void *k, const void *v, int ld, int T, int n_heads,
                        int d, float scale) {
    (void)ctx;
    if (T <= 0 || n_heads <= 0) return;
    full_args a = {out, q, k, v, ld, T, n_heads, d, scale};
    int per_head = (T + ROWS - 1) / ROWS, n_tiles = n_heads * per_head;
#pragma omp parallel if (n_tiles > 1)
    {
        attn_scratch w;
        size_t n = (size_t)ROWS * d * 2 + (size_t)d * TK * 2 + 2 * (size_t)ROWS;
        float *mem = malloc(sizeof(float) * n);
        if (!mem) abort();
        w.q = mem, w.o = w.q + (size_t)ROWS * d, w.kt = w.o + (size_t)ROWS * d, w.vt = w.kt + (size_t)d * TK;
        w.m = w.vt + (size_t)d * TK, w.l = w.m + ROWS;
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < n_tiles; i++) {
            int h = i / per_head, t0 = (i % per_head) * ROWS;
            full_tile_run(&a, &w, h, t0, T - t0 < ROWS ? T - t0 : ROWS);
        }
        free(mem);
    }
}

/* On the CPU the two passes touch rows already in cache: no fused kernel. */
void cpu_rope_kv_store(void *ctx, void *qkv, void *kcache, void *vcache, int T, int ld, int n_q, int n_kv, int d,
                       int rot_dim, float base, const kattn_batch *b) {
    cpu_rope(ctx, qkv, b->pos, T, ld, n_q + n_kv, d, rot_dim, base);
    float *k = (float *)qkv + (size_t)n_q * d, *v = k + (size_t)n_kv * d;
    cpu_kv_store(ctx, kcache, vcache, k, v, ld, n_kv * d, b);
}
