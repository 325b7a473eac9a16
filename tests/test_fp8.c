/* test_fp8.c: the fp8 KV cache on the CPU backend (kernels.h KV_DTYPE_FP8).
 *
 * 1. The e4m3 reference quantiser (kernels/fp8.c) against a table of values
 *    (normals, subnormals, ties to even, saturation at 448, infinities, NaN),
 *    every byte's round trip, and 200,000 random floats against a brute-force
 *    nearest-value search over the 253 finite non-negative codes.
 * 2. fp8_quantise_row: scale = max|x| / 448, the row's largest element at
 *    code 0x7E, a zero row, and the per-element error bound
 *    |x - x^| <= 2^-4 |x| + 2^-10 scale (half an ulp of 3 mantissa bits, or
 *    half the subnormal step 2^-9 of the scaled value).
 * 3. kv_store + attention through an fp8 cache (paged, shuffled blocks, four
 *    sequences, contexts past the kernel's 64-key tiles): the stored bytes and
 *    scales equal fp8_quantise_row's; the output equals exact attention over
 *    the dequantised K/V to fp32 rounding; and it is within the bound derived
 *    below of exact attention over the original fp32 K/V. */
#include <math.h>
#include <string.h>

#include "../kernels/fp8.h"
#include "unit.h"

/* ------------------------------------------------------------ quantiser */

typedef struct e4m3_case {
    float x;
    uint8_t want;
    const char *what;
} e4m3_case;

static void test_e4m3_table(void) {
    const e4m3_case cases[] = {
        {0.0f, 0x00, "zero"},
        {-0.0f, 0x80, "negative zero"},
        {1.0f, 0x38, "one: exponent 7 (bias 7), mantissa 0"},
        {-3.5f, 0xC6, "-1.75 * 2^1"},
        {0.1f, 0x1D, "0.1 -> 1.625 * 2^-4 = 0.1015625"},
        {240.0f, 0x77, "1.875 * 2^7"},
        {448.0f, 0x7E, "largest finite"},
        {-448.0f, 0xFE, "negative largest finite"},
        {460.0f, 0x7E, "between 448 and 464: rounds to 448"},
        {464.0f, 0x7E, "448 + half an ulp: tie to even (448)"},
        {465.0f, 0x7E, "past the tie: saturates (no 480 in e4m3fn)"},
        {1e6f, 0x7E, "large: saturates"},
        {INFINITY, 0x7E, "+inf saturates (SATFINITE)"},
        {-INFINITY, 0xFE, "-inf saturates"},
        {NAN, 0x7F, "NaN"},
        {-NAN, 0x7F, "negative NaN: canonical 0x7F, as cuda_fp8.h"},
        {0x1p-6f, 0x08, "smallest normal 2^-6"},
        {0x1p-9f, 0x01, "smallest subnormal 2^-9"},
        {7 * 0x1p-9f, 0x07, "largest subnormal 7 * 2^-9"},
        {7.5f * 0x1p-9f, 0x08, "tie between the largest subnormal and 2^-6: even (2^-6)"},
        {0x1p-10f, 0x00, "half the smallest subnormal: tie to even (0)"},
        {1.5f * 0x1p-10f, 0x01, "three quarters of the smallest subnormal: up"},
        {3 * 0x1p-10f, 0x02, "1.5 * 2^-9: tie to even (2 * 2^-9)"},
        {-5 * 0x1p-10f, 0x82, "-2.5 * 2^-9: tie to even (-2 * 2^-9)"},
        {0x1p-11f, 0x00, "below half the smallest subnormal: zero"},
        {-0x1p-11f, 0x80, "tiny negative: -0"},
        {1.0625f, 0x38, "1 + 1/16: tie between 1 and 1.125, even (1)"},
        {1.1875f, 0x3A, "1.1875: tie between 1.125 and 1.25, even (1.25)"},
        {1.0626f, 0x39, "just past the tie: up"},
        {15.5f, 0x58, "15.5: tie between 15 and 16, even (16 = 2^4: carries into the exponent)"},
    };
    int n = (int)(sizeof cases / sizeof cases[0]), bad = 0;
    for (int i = 0; i < n; i++) {
        uint8_t got = fp8_e4m3_from_float(cases[i].x);
        if (got != cases[i].want) {
            printf("      e4m3(%a) = 0x%02X, want 0x%02X (%s)\n", cases[i].x, got, cases[i].want, cases[i].what);
            bad++;
        }
    }
    expect(bad == 0, "e4m3 quantiser: %d table values (ties to even, subnormals, saturation at 448, inf, NaN)", n);

    /* Decoding and round trips. */
    int rt_bad = 0;
    for (int b = 0; b < 256; b++) {
        float v = fp8_e4m3_to_float((uint8_t)b);
        int is_nan = (b & 0x7F) == 0x7F;
        if (is_nan ? !isnan(v) : (isnan(v) || fp8_e4m3_from_float(v) != b)) rt_bad++;
    }
    expect(rt_bad == 0 && fp8_e4m3_to_float(0x7E) == 448.0f && fp8_e4m3_to_float(0x01) == 0x1p-9f &&
               fp8_e4m3_to_float(0x08) == 0x1p-6f && signbit(fp8_e4m3_to_float(0x80)),
           "e4m3 decode: 0x7E = 448, 0x01 = 2^-9, 0x08 = 2^-6, 0x80 = -0, NaN at 0x7F/0xFF, every byte round-trips");

    /* Brute force: the nearest of the 127 non-negative finite codes (0x00..0x7E),
     * ties to the even code (even mantissa), saturating above 448. */
    float vals[127];
    for (int c = 0; c < 127; c++) vals[c] = fp8_e4m3_to_float((uint8_t)c);
    int bf_bad = 0;
    for (int i = 0; i < 200000; i++) {
        float x = ldexpf(urand(1.0f, 2.0f), (int)urand(-14.0f, 10.0f)) * (i & 1 ? -1.0f : 1.0f);
        if (i % 7 == 0) { /* exact midpoints too */
            int c = (int)urand(0.0f, 125.99f);
            x = 0.5f * (vals[c] + vals[c + 1]);
        }
        float a = fabsf(x);
        int best = 0;
        for (int c = 1; c < 127; c++) {
            float dc = fabsf(vals[c] - a), db = fabsf(vals[best] - a);
            if (dc < db || (dc == db && (c & 1) == 0)) best = c;
        }
        if (a > 448.0f) best = 0x7E;
        uint8_t want = (uint8_t)(best | (signbit(x) ? 0x80 : 0));
        if (fp8_e4m3_from_float(x) != want) {
            if (bf_bad < 5) printf("      e4m3(%a) = 0x%02X, brute force 0x%02X\n", x, fp8_e4m3_from_float(x), want);
            bf_bad++;
        }
    }
    expect(bf_bad == 0, "e4m3 quantiser equals a brute-force nearest-even search on 200000 values (%d differ)", bf_bad);
}

static void test_quantise_row(void) {
    enum { N = 128 };
    float x[N], s;
    uint8_t q[N];
    int bad = 0, worst_at = 0;
    double worst = 0.0;
    for (int rep = 0; rep < 200; rep++) {
        fill_normal(x, N, rep % 2 ? 3.0f : 0.01f);
        if (rep % 5 == 0) x[rep % N] *= 50.0f; /* an outlier: the rest of the row goes coarse */
        fp8_quantise_row(q, &s, x, N);
        float amax = 0.0f;
        for (int i = 0; i < N; i++) amax = fmaxf(amax, fabsf(x[i]));
        if (s != amax / 448.0f) bad++;
        for (int i = 0; i < N; i++) {
            double xh = (double)fp8_e4m3_to_float(q[i]) * s, err = fabs(xh - x[i]);
            double bound = 0x1p-4 * fabs(x[i]) + 0x1p-10 * s;
            if (fabsf(x[i]) == amax && q[i] != 0x7E && q[i] != 0xFE) bad++;
            if (err > bound) bad++;
            if (err / (bound > 0 ? bound : 1) > worst) worst = err / bound, worst_at = rep;
        }
    }
    float z[N] = {0};
    fp8_quantise_row(q, &s, z, N);
    int zero_ok = s == 0.0f;
    for (int i = 0; i < N; i++) zero_ok &= q[i] == 0;
    expect(bad == 0 && zero_ok,
           "fp8_quantise_row: scale = amax/448, amax at 0x7E, |err| <= 2^-4|x| + 2^-10 s (worst %.3f of the bound, "
           "row %d), zero row stays zero",
           worst, worst_at);
}

/* ------------------------------------------------- kv_store + attention */

/* One fp8 K or V pool of n_slots slots of n_kv heads of d: bytes, then scales
 * at a 16-byte aligned offset (as worker/kvcache.c lays it out). */
static size_t scale_off_of(size_t n_slots, int kvw) { return (n_slots * (size_t)kvw + 15) / 16 * 16; }

/* Exact (double) causal attention of one token over keys 0..p of K, V
 * ([p + 1, n_kv * d] rows of its sequence), head h: out [d]. */
static void ref_attention(double *out, const float *q, const double *K, const double *V, int p, int g, int kvw, int d,
                          double scale) {
    double *sc = xmalloc(sizeof(double) * (size_t)(p + 1)), mx = -INFINITY, sum = 0.0;
    for (int u = 0; u <= p; u++) {
        double dot = 0.0;
        for (int i = 0; i < d; i++) dot += (double)q[i] * K[(size_t)u * kvw + (size_t)g * d + i];
        sc[u] = dot * scale;
        if (sc[u] > mx) mx = sc[u];
    }
    for (int u = 0; u <= p; u++) sum += (sc[u] = exp(sc[u] - mx));
    for (int i = 0; i < d; i++) {
        double o = 0.0;
        for (int u = 0; u <= p; u++) o += sc[u] / sum * V[(size_t)u * kvw + (size_t)g * d + i];
        out[i] = o;
    }
    free(sc);
}

/* The a-priori bound on |attn(q, K, V) - attn(q, K^, V^)| for one output row,
 * from the quantiser's per-element bound e(x) = 2^-4 |x| + 2^-10 s (s = the
 * row's amax / 448) alone:
 *   every score moves by at most delta = scale * max_u sum_i |q_i| e(k_ui), so
 *   each softmax weight by a factor in [e^-2delta, e^2delta] and
 *   |sum_u (p^_u - p_u) v^_u| <= (e^2delta - 1) max_u |v^_u|;
 *   the values move by at most max_u e(v_ui), and the weights sum to 1.
 * bound = (e^2delta - 1) max|v^| + max_u e(v_ui), taken over all dims i. */
static double fp8_bound(const float *q, const float *Kx, const float *Vx, int p, int g, int kvw, int d, double scale) {
    double delta = 0.0, vmax = 0.0, ev = 0.0;
    for (int u = 0; u <= p; u++) {
        const float *k = Kx + (size_t)u * kvw + (size_t)g * d, *v = Vx + (size_t)u * kvw + (size_t)g * d;
        double ka = 0.0, va = 0.0, dk = 0.0;
        for (int i = 0; i < d; i++) ka = fmax(ka, fabs(k[i])), va = fmax(va, fabs(v[i]));
        for (int i = 0; i < d; i++) {
            dk += fabs(q[i]) * (0x1p-4 * fabs(k[i]) + 0x1p-10 * ka / 448.0);
            ev = fmax(ev, 0x1p-4 * fabs(v[i]) + 0x1p-10 * va / 448.0);
        }
        delta = fmax(delta, scale * dk);
        vmax = fmax(vmax, va * (1.0 + 0x1p-4));
    }
    return (exp(2.0 * delta) - 1.0) * vmax + ev;
}

/* n_seq sequences of lens[s] positions, stored in one step (a prefill of all),
 * then attention for the last `tail` positions of each (queries of a chunk and
 * decode rows at once); d, n_kv, q_per_kv the head shapes. */
static void test_fp8_attention_case(int n_kv, int q_per_kv, int d, const int *lens, int n_seq, int tail) {
    enum { BS = 16 };
    int n_q = n_kv * q_per_kv, kvw = n_kv * d, qw = n_q * d, ld = qw + 2 * kvw;
    int max_len = 0, T = 0, Tq = 0;
    for (int s = 0; s < n_seq; s++) {
        max_len = lens[s] > max_len ? lens[s] : max_len;
        T += lens[s];
        Tq += lens[s] < tail ? lens[s] : tail;
    }
    int max_blocks = (max_len + BS - 1) / BS, n_blocks = n_seq * max_blocks + 3;
    /* Shuffled block tables: sequence s, block j -> a permutation of the pool. */
    int32_t *tables = xmalloc(sizeof(int32_t) * (size_t)n_seq * max_blocks), *perm = xmalloc(sizeof(int32_t) * n_blocks);
    for (int i = 0; i < n_blocks; i++) perm[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        int j = (int)urand(0.0f, (float)i + 0.999f), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    for (int i = 0; i < n_seq * max_blocks; i++) tables[i] = perm[i];
    size_t n_slots = (size_t)n_blocks * BS, off = scale_off_of(n_slots, kvw);
    size_t pool = off + n_slots * n_kv * sizeof(float);

    /* Inputs per (sequence, position): q, k, v rows. */
    float *qkv = xmalloc(sizeof(float) * (size_t)T * ld);
    fill_normal(qkv, (size_t)T * ld, 1.0f);
    for (int t = 0; t < T; t++) /* peaky softmax: q larger; a K outlier head now and then */
        for (int i = 0; i < qw; i++) qkv[(size_t)t * ld + i] *= 1.5f;
    for (int t = 0; t < T; t += 7) qkv[(size_t)t * ld + qw + (t % kvw)] *= 8.0f;
    int32_t *pos = xmalloc(4 * (size_t)T), *seq = xmalloc(4 * (size_t)T), *slots = xmalloc(4 * (size_t)T);
    for (int s = 0, t = 0; s < n_seq; s++)
        for (int p = 0; p < lens[s]; p++, t++) {
            pos[t] = p, seq[t] = s;
            slots[t] = tables[s * max_blocks + p / BS] * BS + p % BS;
        }
    void *dtab = dev_copy(tables, sizeof(int32_t) * (size_t)n_seq * max_blocks);
    void *dqkv = dev_copy(qkv, sizeof(float) * (size_t)T * ld), *dpos = dev_copy(pos, 4 * (size_t)T),
         *dseq = dev_copy(seq, 4 * (size_t)T), *dslots = dev_copy(slots, 4 * (size_t)T);
    void *kc = K_->alloc(kb.ctx, pool), *vc = K_->alloc(kb.ctx, pool);
    kattn_batch b = {T, dpos, dseq, dslots, dtab, max_blocks, BS, max_len - 1, NULL, NULL, 0, KV_DTYPE_FP8, d, off};
    K_->kv_store(kb.ctx, kc, vc, (float *)dqkv + qw, (float *)dqkv + qw + kvw, ld, kvw, &b);

    /* 1. The stored rows are fp8_quantise_row's, bit for bit. */
    uint8_t *hk = xmalloc(pool), *hv = xmalloc(pool), qrow[512];
    K_->to_host(kb.ctx, hk, kc, pool);
    K_->to_host(kb.ctx, hv, vc, pool);
    int store_bad = 0;
    for (int t = 0; t < T; t++)
        for (int g = 0; g < n_kv; g++)
            for (int w = 0; w < 2; w++) {
                float s;
                const uint8_t *h = w ? hv : hk;
                fp8_quantise_row(qrow, &s, qkv + (size_t)t * ld + qw + (size_t)w * kvw + (size_t)g * d, d);
                size_t row = (size_t)slots[t] * n_kv + g;
                float got_s;
                memcpy(&got_s, h + off + row * 4, 4);
                if (memcmp(qrow, h + row * d, (size_t)d) || got_s != s) store_bad++;
            }
    char name[160];
    snprintf(name, sizeof name, "fp8 kv_store n_kv=%d d=%d: %d rows equal fp8_quantise_row's (bytes, scales)", n_kv,
             d, T * n_kv * 2);
    expect(store_bad == 0, "%s", name);

    /* 2 and 3: attention of the last `tail` positions of each sequence. */
    int32_t *qpos = xmalloc(4 * (size_t)Tq), *qseq = xmalloc(4 * (size_t)Tq);
    float *q = xmalloc(sizeof(float) * (size_t)Tq * ld);
    int *qt = xmalloc(sizeof(int) * (size_t)Tq);
    for (int s = 0, t = 0, i = 0; s < n_seq; s++)
        for (int p = 0; p < lens[s]; p++, t++)
            if (p >= lens[s] - tail) {
                qpos[i] = p, qseq[i] = s, qt[i] = t;
                memcpy(q + (size_t)i * ld, qkv + (size_t)t * ld, sizeof(float) * (size_t)ld);
                i++;
            }
    void *dq = dev_copy(q, sizeof(float) * (size_t)Tq * ld), *dqp = dev_copy(qpos, 4 * (size_t)Tq),
         *dqs = dev_copy(qseq, 4 * (size_t)Tq), *dout = K_->alloc(kb.ctx, sizeof(float) * (size_t)Tq * qw);
    kattn_batch bq = {Tq, dqp, dqs, dslots, dtab, max_blocks, BS, max_len - 1, NULL, NULL, 0, KV_DTYPE_FP8, d, off};
    double scale = 1.0 / sqrt((double)d);
    K_->attention(kb.ctx, dout, dq, ld, kc, vc, &bq, n_q, n_kv, q_per_kv, d, (float)scale);
    float *got = xmalloc(sizeof(float) * (size_t)Tq * qw);
    K_->to_host(kb.ctx, got, dout, sizeof(float) * (size_t)Tq * qw);

    double *want_deq = xmalloc(sizeof(double) * (size_t)Tq * qw), *want_f32 = xmalloc(sizeof(double) * (size_t)Tq * qw);
    double worst_ratio = 0.0, worst_err = 0.0, worst_bound = 0.0;
    int bound_bad = 0;
    for (int i = 0; i < Tq; i++) {
        int s = qseq[i], p = qpos[i], t0 = qt[i] - p; /* the sequence's first token */
        double *Kd = xmalloc(sizeof(double) * (size_t)(p + 1) * kvw), *Vd = xmalloc(sizeof(double) * (size_t)(p + 1) * kvw);
        double *Kf = xmalloc(sizeof(double) * (size_t)(p + 1) * kvw), *Vf = xmalloc(sizeof(double) * (size_t)(p + 1) * kvw);
        float *Kx = xmalloc(sizeof(float) * (size_t)(p + 1) * kvw), *Vx = xmalloc(sizeof(float) * (size_t)(p + 1) * kvw);
        for (int u = 0; u <= p; u++) {
            int32_t sl = tables[s * max_blocks + u / BS] * BS + u % BS;
            for (int c = 0; c < kvw; c++) {
                size_t row = (size_t)sl * n_kv + c / d;
                float sk, sv;
                memcpy(&sk, hk + off + row * 4, 4);
                memcpy(&sv, hv + off + row * 4, 4);
                Kd[(size_t)u * kvw + c] = (double)(fp8_e4m3_to_float(hk[row * d + c % d]) * sk);
                Vd[(size_t)u * kvw + c] = (double)(fp8_e4m3_to_float(hv[row * d + c % d]) * sv);
                Kx[(size_t)u * kvw + c] = qkv[(size_t)(t0 + u) * ld + qw + c];
                Vx[(size_t)u * kvw + c] = qkv[(size_t)(t0 + u) * ld + qw + kvw + c];
                Kf[(size_t)u * kvw + c] = Kx[(size_t)u * kvw + c];
                Vf[(size_t)u * kvw + c] = Vx[(size_t)u * kvw + c];
            }
        }
        for (int h = 0; h < n_q; h++) {
            int g = h / q_per_kv;
            const float *qh = q + (size_t)i * ld + (size_t)h * d;
            size_t o = (size_t)i * qw + (size_t)h * d;
            ref_attention(want_deq + o, qh, Kd, Vd, p, g, kvw, d, scale);
            ref_attention(want_f32 + o, qh, Kf, Vf, p, g, kvw, d, scale);
            double bound = fp8_bound(qh, Kx, Vx, p, g, kvw, d, scale), err = 0.0;
            for (int e = 0; e < d; e++) err = fmax(err, fabs(got[o + e] - want_f32[o + e]));
            if (err > bound) bound_bad++;
            if (err / bound > worst_ratio) worst_ratio = err / bound;
            worst_err = fmax(worst_err, err);
            worst_bound = fmax(worst_bound, bound);
        }
        free(Kd), free(Vd), free(Kf), free(Vf), free(Kx), free(Vx);
    }
    /* Exact attention over the dequantised cache: only fp32 rounding apart
     * (as test_kernels.c's attention cases: atol 2e-5, rtol 1e-4). */
    snprintf(name, sizeof name, "fp8 attention = exact over dequantised K/V, n_kv=%d q/kv=%d d=%d ctx<=%d", n_kv,
             q_per_kv, d, max_len);
    check(name, got, want_deq, (size_t)Tq * qw, 2e-5, 1e-4);
    expect(bound_bad == 0,
           "fp8 attention vs fp32 K/V, n_kv=%d q/kv=%d d=%d ctx<=%d: max |err| %.3g, derived bound up to %.3g "
           "(worst row at %.2f of its bound)",
           n_kv, q_per_kv, d, max_len, worst_err, worst_bound, worst_ratio);

    K_->free(kb.ctx, kc), K_->free(kb.ctx, vc), K_->free(kb.ctx, dtab), K_->free(kb.ctx, dqkv);
    K_->free(kb.ctx, dpos), K_->free(kb.ctx, dseq), K_->free(kb.ctx, dslots), K_->free(kb.ctx, dq);
    K_->free(kb.ctx, dqp), K_->free(kb.ctx, dqs), K_->free(kb.ctx, dout);
    free(tables), free(perm), free(qkv), free(pos), free(seq), free(slots), free(hk), free(hv), free(qpos);
    free(qseq), free(q), free(qt), free(got), free(want_deq), free(want_f32);
}

static void test_fp8_attention(void) {
    const int short_lens[] = {1, 5, 17, 30};
    test_fp8_attention_case(2, 2, 16, short_lens, 4, 30); /* every position of short sequences */
    const int long_lens[] = {300, 129, 64};
    test_fp8_attention_case(2, 16, 128, long_lens, 3, 20); /* GLM-4-9B heads, past several 64-key tiles */
    test_fp8_attention_case(1, 4, 64, long_lens, 3, 3);
}

int main(void) {
    kb = kernels_cpu_create(0);
    test_e4m3_table();
    test_quantise_row();
    test_fp8_attention();
    K_->destroy(kb.ctx);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
