/* test_kernels: every CPU kernel against a naive reference loop written here
 * in double precision from the spec (docs: kernels/kernels.h, /work/shared/
 * glm4-spec.md §2), on seeded random inputs with odd sizes that reach the
 * edge paths (GEMV vs GEMM, panel/token tails, paged KV blocks, ...).
 *
 * Sampling has its own file (test_sampling.c). Checks as in unit.h; the last
 * line is "N passed, M failed", the exit status 1 on any failure.
 *
 * The references deliberately do not call the code under test: bf16/f16 bits
 * are decoded here with ldexp from their fields, not with dtype.h. rng.h is
 * only used to make inputs. */
#include <string.h>
#include <time.h>

#include "../kernels/dtype.h"
#include "unit.h"

/* bf16: 1 sign, 8 exponent (bias 127), 7 mantissa bits. Decoded from the fields. */
static double ref_bf16(uint16_t h) {
    int sign = h >> 15, e = (h >> 7) & 0xff, m = h & 0x7f;
    double v;
    if (e == 0xff)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp((double)m, -126 - 7);
    else
        v = ldexp(1.0 + m / 128.0, e - 127);
    return sign ? -v : v;
}

/* IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits. */
static double ref_f16(uint16_t h) {
    int sign = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v;
    if (e == 0x1f)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp((double)m, -14 - 10);
    else
        v = ldexp(1.0 + m / 1024.0, e - 15);
    return sign ? -v : v;
}

/* Random bf16 values: the top 16 bits of a random float (any bf16 will do). */
static void fill_bf16(uint16_t *w, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) {
        float f = urand(lo, hi);
        uint32_t u;
        memcpy(&u, &f, 4);
        w[i] = (uint16_t)(u >> 16);
    }
}

/* Host weight in a given dtype with its exact values as doubles. */
typedef struct {
    void *host;
    double *val;
    kdtype dt;
} hweight;

static hweight make_weight(kdtype dt, size_t n, float lo, float hi) {
    hweight w = {NULL, xmalloc(n * sizeof(double)), dt};
    if (dt == KDT_F32) {
        float *f = xmalloc(n * 4);
        fill_uniform(f, n, lo, hi);
        for (size_t i = 0; i < n; i++) w.val[i] = f[i];
        w.host = f;
    } else if (dt == KDT_BF16) {
        uint16_t *b = xmalloc(n * 2);
        fill_bf16(b, n, lo, hi);
        for (size_t i = 0; i < n; i++) w.val[i] = ref_bf16(b[i]);
        w.host = b;
    } else { /* f16: bits of a uniform value in [lo, hi], |lo|,|hi| <= 1, built by hand */
        uint16_t *b = xmalloc(n * 2);
        for (size_t i = 0; i < n; i++) {
            float f = urand(lo, hi);
            int sign = f < 0;
            double a = fabs(f);
            uint16_t bits = 0;
            if (a >= ldexp(1.0, -14)) {
                int e;
                double fr = frexp(a, &e); /* a = fr * 2^e, fr in [0.5, 1) */
                int m = (int)((fr * 2.0 - 1.0) * 1024.0);
                bits = (uint16_t)(((e - 1 + 15) << 10) | m);
            } else {
                bits = (uint16_t)(a * ldexp(1.0, 24)); /* subnormal */
            }
            b[i] = (uint16_t)(bits | (sign << 15));
            w.val[i] = ref_f16(b[i]);
        }
        w.host = b;
    }
    return w;
}

static void free_hweight(hweight *w) {
    free(w->host);
    free(w->val);
}

static kweight upload(const hweight *w, int rows, int cols) {
    kweight kw;
    K_->weight_upload(kb.ctx, &kw, w->host, w->dt, rows, cols);
    return kw;
}

/* ------------------------------------------------------------ dtype / upload */

static void test_dtype_and_upload(void) {
    /* f16 known values: 1.0, -2.5, 65504 (max finite), 2^-24 (smallest subnormal),
     * 1023*2^-24 (largest subnormal), 2^-14 (smallest normal), -0, +inf, -inf,
     * 0x3555 = 0.333251953125. Widening to f32 is exact, so atol = rtol = 0. */
    const uint16_t h[] = {0x3C00, 0xC100, 0x7BFF, 0x0001, 0x03FF, 0x0400, 0x8000, 0x7C00, 0xFC00, 0x3555};
    const double want[] = {1.0,      -2.5,      65504.0,  ldexp(1.0, -24), 1023.0 * ldexp(1.0, -24),
                           ldexp(1.0, -14), -0.0, INFINITY, -INFINITY, 0.333251953125};
    enum { NV = sizeof h / sizeof h[0] };
    kweight w;
    K_->weight_upload(kb.ctx, &w, h, KDT_F16, 2, 5);
    expect(w.dtype == KDT_F32 && w.rows == 2 && w.cols == 5, "weight_upload f16 -> dtype F32, rows 2, cols 5 (got %s %dx%d)",
           kdtype_name(w.dtype), w.rows, w.cols);
    float got[NV];
    K_->to_host(kb.ctx, got, w.data, sizeof got);
    check("weight_upload f16 widened to f32 (known values)", got, want, NV, 0.0, 0.0);
    expect(signbit(got[6]) != 0, "weight_upload f16 -0 keeps its sign");
    K_->weight_free(kb.ctx, &w);

    /* Same values through the dtype.h scalar conversion (used by every backend). */
    float got2[NV];
    for (int i = 0; i < NV; i++) got2[i] = f16_to_f32(h[i]);
    check("f16_to_f32 (known values)", got2, want, NV, 0.0, 0.0);
    uint16_t hnan = 0x7E01;
    expect(isnan(f16_to_f32(hnan)), "f16_to_f32 NaN stays NaN");

    /* f16 random: every finite pattern's value against the field decoder (exact). */
    {
        float *g = xmalloc(65536 * 4);
        double *r = xmalloc(65536 * sizeof(double));
        uint16_t *all = xmalloc(65536 * 2);
        for (int i = 0; i < 65536; i++) all[i] = (uint16_t)i;
        K_->weight_upload(kb.ctx, &w, all, KDT_F16, 256, 256);
        K_->to_host(kb.ctx, g, w.data, 65536 * 4);
        for (int i = 0; i < 65536; i++) r[i] = ref_f16((uint16_t)i);
        check("weight_upload f16 all 65536 bit patterns", g, r, 65536, 0.0, 0.0);
        K_->weight_free(kb.ctx, &w);
        free(g), free(r), free(all);
    }

    /* bf16 and f32 are kept as given (kernels.h), bit for bit. */
    uint16_t hb[7] = {0x3F80, 0xC020, 0x0001, 0x7F7F, 0x8000, 0x4049, 0x3EAB};
    K_->weight_upload(kb.ctx, &w, hb, KDT_BF16, 1, 7);
    uint16_t back[7];
    K_->to_host(kb.ctx, back, w.data, sizeof back);
    expect(w.dtype == KDT_BF16 && memcmp(back, hb, sizeof hb) == 0, "weight_upload bf16 kept as bf16, bit-exact");
    K_->weight_free(kb.ctx, &w);
    float hf[5] = {1.5f, -0.0f, 3.4e38f, 1e-45f, -7.25f};
    K_->weight_upload(kb.ctx, &w, hf, KDT_F32, 5, 1);
    float backf[5];
    K_->to_host(kb.ctx, backf, w.data, sizeof backf);
    expect(w.dtype == KDT_F32 && w.rows == 5 && w.cols == 1 && memcmp(backf, hf, sizeof hf) == 0,
           "weight_upload f32 kept as f32, bit-exact");
    K_->weight_free(kb.ctx, &w);

    /* bf16 -> f32 (exact) on known patterns, and f32 -> bf16 round to nearest even. */
    float gb[7];
    double wb[7];
    for (int i = 0; i < 7; i++) gb[i] = bf16_to_f32(hb[i]), wb[i] = ref_bf16(hb[i]);
    check("bf16_to_f32 (known values)", gb, wb, 7, 0.0, 0.0);
    /* 1 + 2^-8 is exactly halfway between bf16 1.0 (even) and 1+2^-7: ties to 1.0;
     * 1 + 3*2^-8 is halfway between 1+2^-7 (odd) and 1+2^-6 (even): ties up;
     * 1 + 2^-8 + 2^-20 is above halfway: rounds up. */
    const float rin[] = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-8f + 0x1p-20f, -2.5f, 0.0f};
    const uint16_t rwant[] = {0x3F80, 0x3F82, 0x3F81, 0xC020, 0x0000};
    int ok = 1;
    for (int i = 0; i < 5; i++) ok &= f32_to_bf16(rin[i]) == rwant[i];
    expect(ok, "f32_to_bf16 round-to-nearest-even on halfway cases");
    expect(isnan(bf16_to_f32(f32_to_bf16(NAN))), "f32_to_bf16 NaN stays NaN");
}

/* ------------------------------------------------------------------ matmul */

/* out[t,n] = sum_k x[t,k] W[n,k] (+ b[n]) in double over the exact weight values. */
static void ref_matmul(double *out, const float *x, const double *W, const double *b, int T, int N, int K) {
    for (int t = 0; t < T; t++)
        for (int n = 0; n < N; n++) {
            double s = 0.0;
            for (int k = 0; k < K; k++) s += (double)x[(size_t)t * K + k] * W[(size_t)n * K + k];
            out[(size_t)t * N + n] = s + (b ? b[n] : 0.0);
        }
}

/* The backend under test multiplies bf16 weights by bf16-rounded activations
 * (kernels/cpu/cpu.h: the library's GEMM from LIB_MIN_T tokens on, and the
 * GEMV below it, so that both agree); 0: never (no library, or
 * GLMTP_CPU_OWN_GEMM=1). */
#define LIB_MIN_T 16
static int lib_rounds_bf16;

static void test_matmul_case(kdtype wdt, int T, int N, int K, int with_bias, int f32_entry) {
    float *x = xmalloc((size_t)T * K * 4);
    fill_uniform(x, (size_t)T * K, -1.0f, 1.0f);
    hweight hw = make_weight(wdt, (size_t)N * K, -1.0f, 1.0f);
    hweight hb = make_weight(wdt, (size_t)N, -2.0f, 2.0f);
    kweight W = upload(&hw, N, K), B = upload(&hb, 1, N);
    double *want = xmalloc((size_t)T * N * sizeof(double));
    /* Where the product is bf16 x bf16, the reference takes the rounded
     * activations: what is left to check is fp32 accumulation, as elsewhere. */
    int rounds = lib_rounds_bf16 && wdt == KDT_BF16;
    float *xr = xmalloc((size_t)T * K * 4);
    for (size_t i = 0; i < (size_t)T * K; i++) xr[i] = rounds ? bf16_to_f32(f32_to_bf16(x[i])) : x[i];
    ref_matmul(want, xr, hw.val, with_bias ? hb.val : NULL, T, N, K);

    void *dx = dev_copy(x, (size_t)T * K * 4);
    float *garbage = xmalloc((size_t)T * N * 4);
    for (size_t i = 0; i < (size_t)T * N; i++) garbage[i] = NAN; /* every output must be written */
    void *dout = dev_copy(garbage, (size_t)T * N * 4);
    if (f32_entry)
        K_->matmul_f32(kb.ctx, dout, dx, &W, T);
    else
        K_->matmul(kb.ctx, dout, dx, &W, with_bias ? &B : NULL, T);
    float *got = xmalloc((size_t)T * N * 4);
    K_->to_host(kb.ctx, got, dout, (size_t)T * N * 4);

    /* fp32 accumulation of K products of magnitude <= 1 (x, W in [-1,1]):
     * worst-case bound ~ K * 2^-24 * sum|x w| ~ 129 * 6e-8 * 65 = 5e-4, the
     * typical error is ~sqrt(K) smaller; 1e-4 absolute (+1e-5 relative for the
     * bias, |b| <= 2) is ~20x the observed error and ~1000x smaller than any
     * dropped/duplicated product (~|x w| ~ 0.25). */
    char name[128];
    snprintf(name, sizeof name, "%s %s T=%d N=%d K=%d%s%s", f32_entry ? "matmul_f32" : "matmul", kdtype_name(wdt), T,
             N, K, with_bias ? " +bias" : "", rounds ? " (bf16 x)" : "");
    check(name, got, want, (size_t)T * N, 1e-4, 1e-5);

    K_->free(kb.ctx, dx);
    K_->free(kb.ctx, dout);
    K_->weight_free(kb.ctx, &W);
    K_->weight_free(kb.ctx, &B);
    free_hweight(&hw), free_hweight(&hb);
    free(x), free(xr), free(want), free(got), free(garbage);
}

static void test_matmul(void) {
    const int Ts[] = {1, 2, 3, 4, 5, 7, 33}; /* 1..3 GEMV path, >= 4 GEMM with token tails */
    for (int wi = 0; wi < 2; wi++) {
        kdtype dt = wi ? KDT_BF16 : KDT_F32;
        for (size_t i = 0; i < sizeof Ts / sizeof Ts[0]; i++) {
            test_matmul_case(dt, Ts[i], 37, 129, 0, 0); /* N % 4 = 1 (panel tail), K odd */
            test_matmul_case(dt, Ts[i], 37, 129, 1, 0);
        }
        /* Other shapes. GEMM: N = 1, 3 (only a partial panel), N multiple of 4,
         * K = 1. GEMV (4-row groups + tail rows): N = 2, 3 (tail only), N
         * multiple of 4 (no tail), N = 4 (one group), K = 1. */
        test_matmul_case(dt, 9, 1, 17, 1, 0);
        test_matmul_case(dt, 6, 3, 1, 1, 0);
        test_matmul_case(dt, 8, 40, 64, 1, 0);
        test_matmul_case(dt, 2, 2, 255, 1, 0);
        test_matmul_case(dt, 1, 3, 129, 1, 0);
        test_matmul_case(dt, 3, 40, 63, 1, 0);
        test_matmul_case(dt, 1, 4, 7, 1, 0);
        test_matmul_case(dt, 2, 43, 1, 1, 0);
        /* matmul_f32 (LM head entry), both paths. */
        test_matmul_case(dt, 1, 37, 129, 0, 1);
        test_matmul_case(dt, 3, 41, 33, 0, 1);
        test_matmul_case(dt, 33, 37, 129, 0, 1);
        test_matmul_case(dt, 12, 64, 96, 0, 1);
    }
    /* f16 weights are widened on upload and then multiply like f32. */
    test_matmul_case(KDT_F16, 2, 37, 129, 1, 0);
    test_matmul_case(KDT_F16, 7, 37, 129, 1, 0);
    test_matmul_case(KDT_F16, 20, 37, 129, 1, 0);
    /* The prefill path: its first token count, odd shapes, a step size seen
     * again (a kept primitive), and more shapes than the library keeps. */
    for (int wi = 0; wi < 2; wi++) {
        kdtype dt = wi ? KDT_BF16 : KDT_F32;
        test_matmul_case(dt, LIB_MIN_T - 1, 37, 129, 1, 0);
        test_matmul_case(dt, LIB_MIN_T, 37, 129, 1, 0);
        test_matmul_case(dt, 100, 67, 300, 1, 0);
        test_matmul_case(dt, 100, 67, 300, 0, 1);
        test_matmul_case(dt, 17, 1, 5, 1, 0);
        for (int T = 16; T < 16 + 40; T++) test_matmul_case(dt, T, 8, 16, 0, 0);
        test_matmul_case(dt, 100, 67, 300, 1, 0);
    }
}

/* ----------------------------------------------------------------- rmsnorm */

static void ref_rmsnorm(double *out, const float *x, const double *w, int T, int H, double eps) {
    for (int t = 0; t < T; t++) {
        double ss = 0.0;
        for (int i = 0; i < H; i++) ss += (double)x[(size_t)t * H + i] * x[(size_t)t * H + i];
        double r = 1.0 / sqrt(ss / H + eps);
        for (int i = 0; i < H; i++) out[(size_t)t * H + i] = w[i] * x[(size_t)t * H + i] * r;
    }
}

static void test_rmsnorm_case(kdtype wdt, int T, int H, float xscale, float eps, int alias) {
    size_t n = (size_t)T * H;
    float *x = xmalloc(n * 4);
    fill_normal(x, n, xscale);
    if (T > 2) memset(x + (size_t)2 * H, 0, (size_t)H * 4); /* an all-zero row: output 0, not NaN */
    hweight hw = make_weight(wdt, (size_t)H, -2.0f, 2.0f);
    kweight w = upload(&hw, 1, H);
    double *want = xmalloc(n * sizeof(double));
    ref_rmsnorm(want, x, hw.val, T, H, eps);

    void *dx = dev_copy(x, n * 4);
    void *dout = alias ? dx : K_->alloc(kb.ctx, n * 4);
    K_->rmsnorm(kb.ctx, dout, dx, &w, T, eps);
    float *got = xmalloc(n * 4);
    K_->to_host(kb.ctx, got, dout, n * 4);
    /* fp32 sum of H squares (relative error <= H*2^-24 ~ 1e-5 for H = 129 worst
     * case, ~1e-6 typical), a sqrt and two products: rtol 2e-6 on |w x r|
     * (which is <= ~8) plus atol 1e-6 for outputs near zero. A misplaced eps,
     * mean vs sum or a missing weight is off by far more (the small-x cases make
     * eps matter: mean(x^2) ~ eps there). */
    char name[128];
    snprintf(name, sizeof name, "rmsnorm %s T=%d H=%d xscale=%g eps=%g%s", kdtype_name(wdt), T, H, xscale, eps,
             alias ? " (out == x)" : "");
    check(name, got, want, n, 1e-6, 2e-6);
    if (!alias) K_->free(kb.ctx, dout);
    K_->free(kb.ctx, dx);
    K_->weight_free(kb.ctx, &w);
    free_hweight(&hw);
    free(x), free(want), free(got);
}

static void test_rmsnorm(void) {
    test_rmsnorm_case(KDT_F32, 5, 129, 1.0f, 1.5625e-7f, 0);
    test_rmsnorm_case(KDT_BF16, 5, 129, 1.0f, 1.5625e-7f, 0);
    test_rmsnorm_case(KDT_BF16, 3, 129, 1.0f, 1.5625e-7f, 1);
    test_rmsnorm_case(KDT_F32, 4, 37, 3.0f, 1.5625e-7f, 1);
    test_rmsnorm_case(KDT_BF16, 1, 1, 1.0f, 1.5625e-7f, 0);
    test_rmsnorm_case(KDT_BF16, 7, 4096, 1.0f, 1.5625e-7f, 0);
    test_rmsnorm_case(KDT_F32, 3, 33, 1e-3f, 1e-6f, 0); /* eps comparable to mean(x^2) */
    test_rmsnorm_case(KDT_BF16, 3, 33, 1e-3f, 1e-6f, 1);
}

/* --------------------------------------------------------------- embedding */

static void test_embedding_case(kdtype dt, int V, int H, int T) {
    hweight hE = make_weight(dt, (size_t)V * H, -1.0f, 1.0f);
    kweight E = upload(&hE, V, H);
    int32_t *ids = xmalloc((size_t)T * 4);
    for (int t = 0; t < T; t++) ids[t] = (int32_t)(rng_next(&g_rng) % (uint64_t)V);
    ids[0] = V - 1; /* last row */
    if (T > 1) ids[1] = 0;
    if (T > 2) ids[2] = ids[1]; /* repeated id */
    double *want = xmalloc((size_t)T * H * sizeof(double));
    for (int t = 0; t < T; t++)
        for (int i = 0; i < H; i++) want[(size_t)t * H + i] = hE.val[(size_t)ids[t] * H + i];
    void *dids = dev_copy(ids, (size_t)T * 4);
    void *dout = K_->alloc(kb.ctx, (size_t)T * H * 4);
    K_->embedding(kb.ctx, dout, &E, dids, T);
    float *got = xmalloc((size_t)T * H * 4);
    K_->to_host(kb.ctx, got, dout, (size_t)T * H * 4);
    char name[128];
    snprintf(name, sizeof name, "embedding %s V=%d H=%d T=%d", kdtype_name(dt), V, H, T);
    check(name, got, want, (size_t)T * H, 0.0, 0.0); /* a copy (bf16->f32 exact): bit-exact */
    K_->free(kb.ctx, dids), K_->free(kb.ctx, dout);
    K_->weight_free(kb.ctx, &E);
    free_hweight(&hE);
    free(ids), free(want), free(got);
}

static void test_embedding(void) {
    test_embedding_case(KDT_BF16, 101, 37, 9);
    test_embedding_case(KDT_F32, 101, 37, 9);
    test_embedding_case(KDT_F16, 13, 5, 4);
    test_embedding_case(KDT_BF16, 3, 129, 1);
}

/* ------------------------------------------------------ swiglu, add, gather */

static void test_swiglu(void) {
    const int cases[][2] = {{1, 1}, {3, 37}, {5, 129}, {2, 13696 / 8}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int T = cases[c][0], F = cases[c][1];
        size_t n = (size_t)T * F;
        float *gu = xmalloc(2 * n * 4);
        fill_normal(gu, 2 * n, 3.0f);
        if (F > 8) { /* extremes of the gate: exp over/underflow in fp32 */
            gu[0] = -200.0f, gu[1] = 200.0f, gu[2] = -88.0f, gu[3] = 89.0f, gu[4] = 0.0f, gu[5] = -1e-30f;
        }
        double *want = xmalloc(n * sizeof(double));
        for (int t = 0; t < T; t++)
            for (int i = 0; i < F; i++) {
                double g = gu[(size_t)t * 2 * F + i], u = gu[(size_t)t * 2 * F + F + i];
                want[(size_t)t * F + i] = g / (1.0 + exp(-g)) * u; /* silu(gate) * up, gate = first half */
            }
        void *dgu = dev_copy(gu, 2 * n * 4);
        void *dout = K_->alloc(kb.ctx, n * 4);
        K_->swiglu(kb.ctx, dout, dgu, T, F);
        float *got = xmalloc(n * 4);
        K_->to_host(kb.ctx, got, dout, n * 4);
        /* expf (<= 1-2 ulp) + 3 fp32 ops: rtol 1e-6; atol 1e-6 for outputs near
         * 0. Swapping the halves or dropping the sigmoid is O(1) wrong. */
        char name[96];
        snprintf(name, sizeof name, "swiglu T=%d F=%d", T, F);
        check(name, got, want, n, 1e-6, 1e-6);
        K_->free(kb.ctx, dgu), K_->free(kb.ctx, dout);
        free(gu), free(want), free(got);
    }
}

static void test_add(void) {
    const size_t ns[] = {1, 7, 1001, 4096 * 3 + 5};
    for (size_t c = 0; c < sizeof ns / sizeof ns[0]; c++) {
        size_t n = ns[c];
        float *x = xmalloc(n * 4), *y = xmalloc((n + 1) * 4);
        fill_normal(x, n, 10.0f);
        fill_normal(y, n + 1, 1.0f);
        double *want = xmalloc(n * sizeof(double));
        for (size_t i = 0; i < n; i++) want[i] = (double)x[i] + y[i];
        void *dx = dev_copy(x, n * 4), *dy = dev_copy(y, (n + 1) * 4);
        K_->add(kb.ctx, dx, dy, n);
        float *got = xmalloc((n + 1) * 4);
        K_->to_host(kb.ctx, got, dx, n * 4);
        /* One fp32 rounding of the sum: <= 0.5 ulp = 2^-24 relative. */
        char name[64];
        snprintf(name, sizeof name, "add n=%zu", n);
        check(name, got, want, n, 0.0, 0x1p-24);
        K_->free(kb.ctx, dx), K_->free(kb.ctx, dy);
        free(x), free(y), free(want), free(got);
    }
}

/* add_rmsnorm: x += y then out = rmsnorm(x), against the double-precision
 * formula, and x itself against x + y. */
/* matmul_swiglu: the same numbers as matmul into gu then swiglu (bitwise),
 * checked against the double-precision formula too. */
static void test_matmul_swiglu(void) {
    const int T = 3, F = 40, K = 24;
    float *x = xmalloc((size_t)T * K * 4), *w = xmalloc((size_t)2 * F * K * 4);
    fill_normal(x, (size_t)T * K, 1.0f);
    fill_normal(w, (size_t)2 * F * K, 0.3f);
    double *want = xmalloc((size_t)T * F * sizeof(double));
    for (int t = 0; t < T; t++)
        for (int j = 0; j < F; j++) {
            double g = 0, u = 0;
            for (int k = 0; k < K; k++) {
                g += (double)x[t * K + k] * w[(size_t)j * K + k];
                u += (double)x[t * K + k] * w[(size_t)(F + j) * K + k];
            }
            want[t * F + j] = g / (1.0 + exp(-g)) * u;
        }
    kweight kw;
    K_->weight_upload(kb.ctx, &kw, w, KDT_F32, 2 * F, K);
    void *dx = dev_copy(x, (size_t)T * K * 4), *dgu = K_->alloc(kb.ctx, (size_t)T * 2 * F * 4);
    void *dgu2 = K_->alloc(kb.ctx, (size_t)T * 2 * F * 4);
    void *da = K_->alloc(kb.ctx, (size_t)T * F * 4), *da2 = K_->alloc(kb.ctx, (size_t)T * F * 4);
    K_->matmul_swiglu(kb.ctx, da, dx, &kw, dgu, T);
    K_->matmul(kb.ctx, dgu2, dx, &kw, NULL, T);
    K_->swiglu(kb.ctx, da2, dgu2, T, F);
    float *got = xmalloc((size_t)T * F * 4), *got2 = xmalloc((size_t)T * F * 4);
    K_->to_host(kb.ctx, got, da, (size_t)T * F * 4);
    K_->to_host(kb.ctx, got2, da2, (size_t)T * F * 4);
    expect(!memcmp(got, got2, (size_t)T * F * 4), "matmul_swiglu: bitwise equal to matmul then swiglu");
    check("matmul_swiglu: silu(x Wg^T) * (x Wu^T)", got, want, (size_t)T * F, 1e-5, 1e-5);
    void *bufs[] = {dx, dgu, dgu2, da, da2};
    for (int i = 0; i < 5; i++) K_->free(kb.ctx, bufs[i]);
    K_->weight_free(kb.ctx, &kw);
    free(x), free(w), free(want), free(got), free(got2);
}

static void test_add_rmsnorm(void) {
    const int T = 3, H = 64;
    float *x = xmalloc((size_t)T * H * 4), *y = xmalloc((size_t)T * H * 4), *w = xmalloc((size_t)H * 4);
    fill_normal(x, (size_t)T * H, 2.0f);
    fill_normal(y, (size_t)T * H, 2.0f);
    for (int i = 0; i < H; i++) w[i] = 0.5f + (float)i / H;
    double *want_x = xmalloc((size_t)T * H * sizeof(double)), *want_o = xmalloc((size_t)T * H * sizeof(double));
    for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int i = 0; i < H; i++) {
            want_x[t * H + i] = (double)x[t * H + i] + y[t * H + i];
            ss += want_x[t * H + i] * want_x[t * H + i];
        }
        double r = 1.0 / sqrt(ss / H + 1e-5);
        for (int i = 0; i < H; i++) want_o[t * H + i] = w[i] * want_x[t * H + i] * r;
    }
    kweight kw;
    K_->weight_upload(kb.ctx, &kw, w, KDT_F32, 1, H);
    void *dx = dev_copy(x, (size_t)T * H * 4), *dy = dev_copy(y, (size_t)T * H * 4);
    void *dout = K_->alloc(kb.ctx, (size_t)T * H * 4);
    K_->add_rmsnorm(kb.ctx, dx, dy, dout, &kw, T, 1e-5f);
    float *gx = xmalloc((size_t)T * H * 4), *go = xmalloc((size_t)T * H * 4);
    K_->to_host(kb.ctx, gx, dx, (size_t)T * H * 4);
    K_->to_host(kb.ctx, go, dout, (size_t)T * H * 4);
    check("add_rmsnorm: x + y", gx, want_x, (size_t)T * H, 1e-6, 1e-6);
    check("add_rmsnorm: rmsnorm of the sum", go, want_o, (size_t)T * H, 1e-6, 2e-6);
    K_->free(kb.ctx, dx), K_->free(kb.ctx, dy), K_->free(kb.ctx, dout);
    K_->weight_free(kb.ctx, &kw);
    free(x), free(y), free(w), free(want_x), free(want_o), free(gx), free(go);
}

/* argmax: first maximum among columns [0, V) of rows [n, ld], with its value;
 * against a double loop written here, plus the rules by name. */
static void test_argmax(void) {
    const int n = 5, ld = 50;
    float *l = xmalloc((size_t)n * ld * 4);
    fill_normal(l, (size_t)n * ld, 1.0f);
    l[0 * ld + 3] = l[0 * ld + 30] = 9.0f; /* tie: the lower id */
    l[1 * ld + 0] = NAN;                   /* NaN never wins, even first */
    for (int i = 0; i < ld; i++) l[2 * ld + i] = NAN; /* no number: id 0, -inf */
    l[3 * ld + 45] = 20.0f;                /* past the limit of 40 */
    for (int i = 0; i < ld; i++) l[4 * ld + i] = i ? -INFINITY : NAN; /* -inf is a number: id 1 */
    for (int V = 40; V <= ld; V += 10) {
        int idx[5];
        float val[5];
        void *dl = dev_copy(l, (size_t)n * ld * 4);
        K_->argmax(kb.ctx, idx, val, dl, n, V, ld);
        K_->free(kb.ctx, dl);
        float got[10];
        double want[10];
        for (int r = 0; r < n; r++) {
            int bi = -1;
            double bv = -INFINITY;
            for (int i = 0; i < V; i++) {
                float x = l[(size_t)r * ld + i];
                if (!isnan(x) && (bi < 0 || x > bv)) bv = x, bi = i;
            }
            want[r] = bi < 0 ? 0 : bi, want[n + r] = bv;
            got[r] = (float)idx[r], got[n + r] = val[r];
        }
        char name[64];
        snprintf(name, sizeof name, "argmax V=%d ld=%d (ids, then values)", V, ld);
        check(name, got, want, 2 * n, 0.0, 0.0);
        check("argmax tie to the lower id", &got[0], (double[]){3}, 1, 0.0, 0.0);
        check("argmax row without numbers: id 0", &got[2], (double[]){0}, 1, 0.0, 0.0);
        check("argmax -inf beats an earlier NaN", &got[4], (double[]){1}, 1, 0.0, 0.0);
        if (V == 40) check("argmax ignores ids past the limit", &got[n + 3], (double[]){want[n + 3]}, 1, 0.0, 0.0);
    }
    free(l);
}

static void test_gather_rows(void) {
    /* kernels.h does not say out may alias x, so only out != x is tested. */
    const int R = 11, W = 37;
    float *x = xmalloc((size_t)R * W * 4);
    fill_normal(x, (size_t)R * W, 1.0f);
    const int rows_sets[][9] = {{10, 0, 5, 5, 3, 10, 1, 9, 2}, {4}, {0, 1, 2, 3, 4, 5, 6, 7, 8}};
    const int ns[] = {9, 1, 9};
    const int widths[] = {W, W, 1};
    void *dx = dev_copy(x, (size_t)R * W * 4);
    for (int c = 0; c < 3; c++) {
        int n = ns[c], w = widths[c];
        double *want = xmalloc((size_t)n * w * sizeof(double));
        for (int i = 0; i < n; i++)
            for (int j = 0; j < w; j++) want[(size_t)i * w + j] = x[(size_t)rows_sets[c][i] * w + j];
        void *dout = K_->alloc(kb.ctx, (size_t)n * w * 4);
        K_->gather_rows(kb.ctx, dout, dx, rows_sets[c], n, w);
        float *got = xmalloc((size_t)n * w * 4);
        K_->to_host(kb.ctx, got, dout, (size_t)n * w * 4);
        char name[64];
        snprintf(name, sizeof name, "gather_rows n=%d width=%d", n, w);
        check(name, got, want, (size_t)n * w, 0.0, 0.0); /* a copy: bit-exact */
        K_->free(kb.ctx, dout);
        free(want), free(got);
    }
    K_->free(kb.ctx, dx);
    free(x);
}

/* -------------------------------------------------------------------- rope */

/* GPT-J adjacent pairs on dims [0, rot_dim) of each of n_heads heads starting
 * at column col0 of every row: angle = pos * base^(-2j/rot_dim),
 * (x0, x1) -> (x0 c - x1 s, x1 c + x0 s). In place on the double copy. */
static void ref_rope(double *v, const int32_t *pos, int T, int ld, int col0, int n_heads, int d, int rot_dim,
                     double base) {
    for (int t = 0; t < T; t++)
        for (int h = 0; h < n_heads; h++)
            for (int j = 0; j < rot_dim / 2; j++) {
                double a = pos[t] * pow(base, -2.0 * j / rot_dim), c = cos(a), s = sin(a);
                size_t o = (size_t)t * ld + col0 + (size_t)h * d + 2 * j;
                double x0 = v[o], x1 = v[o + 1];
                v[o] = x0 * c - x1 * s;
                v[o + 1] = x1 * c + x0 * s;
            }
}

static void test_rope_case(int n_q, int n_kv, int d, int rot_dim, float base) {
    /* Rows laid out like the fused qkv: [q heads | k heads | v heads | 3 spare],
     * rope applied to q (n_q heads at offset 0) and to k (n_kv heads at offset
     * n_q*d); v and the spare columns must stay as they are. */
    static const int32_t pos[] = {0, 1, 2, 7, 100, /* small */ 4095, 32768, 65535, 99999, 100000 /* large */};
    const int T = 10, T_small = 5;
    int ld = (n_q + 2 * n_kv) * d + 3;
    size_t n = (size_t)T * ld;
    float *x = xmalloc(n * 4);
    fill_uniform(x, n, -1.0f, 1.0f);
    double *want = xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) want[i] = x[i];
    ref_rope(want, pos, T, ld, 0, n_q, d, rot_dim, base);
    ref_rope(want, pos, T, ld, n_q * d, n_kv, d, rot_dim, base);

    void *dx = dev_copy(x, n * 4), *dpos = dev_copy(pos, sizeof pos);
    K_->rope(kb.ctx, dx, dpos, T, ld, n_q, d, rot_dim, base);
    K_->rope(kb.ctx, (float *)dx + (size_t)n_q * d, dpos, T, ld, n_kv, d, rot_dim, base);
    float *got = xmalloc(n * 4);
    K_->to_host(kb.ctx, got, dx, n * 4);

    /* Split the elements: rotated dims (by position group) vs untouched ones. */
    size_t cap = n;
    float *gs = xmalloc(cap * 4), *gl = xmalloc(cap * 4), *gu = xmalloc(cap * 4);
    double *ws = xmalloc(cap * sizeof(double)), *wl = xmalloc(cap * sizeof(double)), *wu = xmalloc(cap * sizeof(double));
    size_t ns = 0, nl = 0, nu = 0;
    for (int t = 0; t < T; t++)
        for (int c = 0; c < ld; c++) {
            size_t i = (size_t)t * ld + c;
            int rotated = c < (n_q + n_kv) * d && c % d < rot_dim;
            if (!rotated)
                gu[nu] = got[i], wu[nu++] = want[i];
            else if (t < T_small)
                gs[ns] = got[i], ws[ns++] = want[i];
            else
                gl[nl] = got[i], wl[nl++] = want[i];
        }
    /* Tolerance: the kernel's angle is fp32 (pos as float times an fp32 inverse
     * frequency from powf and a division), so the angle carries a relative error
     * of a few ulp: |da| <= ~4 * 2^-24 * pos. A rotation error da moves each
     * output by at most |da| * |(x0, x1)| <= |da| * sqrt(2) (inputs in [-1, 1]).
     * Hence atol = 1e-6 (fp32 sin/cos and the 2 products) + 4*2^-24*sqrt(2)*pos_max:
     * 3.5e-5 for pos <= 100, 3.4e-2 for pos <= 100000. The large-position
     * bound is loose on purpose: a float32 angle of 1e5 rad has an ulp of
     * 0.0078, which is the spec's own precision (angles in fp32). Wrong pairs,
     * sign, base or rot_dim show up at small positions, where the bound is tight. */
    double tol_small = 1e-6 + 4.0 * 0x1p-24 * sqrt(2.0) * 100.0;
    double tol_large = 1e-6 + 4.0 * 0x1p-24 * sqrt(2.0) * 100000.0;
    char name[128];
    snprintf(name, sizeof name, "rope d=%d rot=%d base=%g nq=%d nkv=%d pos<=100", d, rot_dim, base, n_q, n_kv);
    check(name, gs, ws, ns, tol_small, 0.0);
    snprintf(name, sizeof name, "rope d=%d rot=%d base=%g nq=%d nkv=%d pos<=100000", d, rot_dim, base, n_q, n_kv);
    check(name, gl, wl, nl, tol_large, 0.0);
    snprintf(name, sizeof name, "rope d=%d rot=%d base=%g untouched dims (>= rot_dim, v, pad)", d, rot_dim, base);
    check(name, gu, wu, nu, 0.0, 0.0);

    K_->free(kb.ctx, dx), K_->free(kb.ctx, dpos);
    free(x), free(want), free(got);
    free(gs), free(gl), free(gu), free(ws), free(wl), free(wu);
}

static void test_rope(void) {
    const float bases[] = {1e4f, 5e6f};
    for (int b = 0; b < 2; b++) {
        test_rope_case(3, 1, 16, 8, bases[b]);
        test_rope_case(4, 2, 128, 64, bases[b]);
    }
    test_rope_case(2, 1, 16, 16, 1e4f); /* rot_dim == d: whole head rotated */
}

/* ------------------------------------------------------ kv_store + attention */

#define NSEQ 4
#define BS 4
#define MAXB 4
#define NBLK 16
#define POISON 1000.0f /* cache contents nobody wrote: any read of them ruins the result */

typedef struct {
    int s, p;
} tok;

static void test_attention_case(int n_kv, int q_per_kv, int d) {
    int n_q = n_kv * q_per_kv;
    /* Block tables: non-contiguous, shuffled; unused entries point at block 13,
     * which only holds poison. Sequence lengths after the two steps: 11, 6, 1, 14. */
    const int32_t tables[NSEQ][MAXB] = {{7, 2, 9, 13}, {4, 12, 13, 13}, {0, 13, 13, 13}, {15, 3, 11, 5}};
    /* Step 1: prefill history of three sequences in one batch (seq 3 first).
     * Step 2: mixed batch: a decode token of seq 1, a prefill chunk of seq 0
     * (positions 5..10, which must see positions 0..4 from step 1 and their
     * predecessors within the chunk), decode of seq 3, first token of seq 2. */
    tok step1[5 + 5 + 13], step2[9];
    int T1 = 0, T2 = 0;
    for (int p = 0; p < 13; p++) step1[T1++] = (tok){3, p};
    for (int p = 0; p < 5; p++) step1[T1++] = (tok){0, p};
    for (int p = 0; p < 5; p++) step1[T1++] = (tok){1, p};
    step2[T2++] = (tok){1, 5};
    for (int p = 5; p < 11; p++) step2[T2++] = (tok){0, p};
    step2[T2++] = (tok){3, 13};
    step2[T2++] = (tok){2, 0};

    int kvw = n_kv * d, qw = n_q * d, ld = qw + 2 * kvw + 3;
    /* Per (sequence, position) q/k/v, contiguous for the reference. */
    float *Q = xmalloc((size_t)NSEQ * 16 * qw * 4), *Kx = xmalloc((size_t)NSEQ * 16 * kvw * 4),
          *Vx = xmalloc((size_t)NSEQ * 16 * kvw * 4);
    fill_normal(Q, (size_t)NSEQ * 16 * qw, 1.5f); /* peaky enough softmax */
    fill_normal(Kx, (size_t)NSEQ * 16 * kvw, 1.0f);
    fill_normal(Vx, (size_t)NSEQ * 16 * kvw, 1.0f);
#define QAT(s, p) (Q + ((size_t)(s) * 16 + (p)) * qw)
#define KAT(s, p) (Kx + ((size_t)(s) * 16 + (p)) * kvw)
#define VAT(s, p) (Vx + ((size_t)(s) * 16 + (p)) * kvw)

    size_t cache_n = (size_t)NBLK * BS * kvw;
    float *poison = xmalloc(cache_n * 4);
    for (size_t i = 0; i < cache_n; i++) poison[i] = POISON;
    void *kc = dev_copy(poison, cache_n * 4), *vc = dev_copy(poison, cache_n * 4);
    double *kc_want = xmalloc(cache_n * sizeof(double)), *vc_want = xmalloc(cache_n * sizeof(double));
    for (size_t i = 0; i < cache_n; i++) kc_want[i] = vc_want[i] = POISON;
    void *dtables = dev_copy(tables, sizeof tables);

    for (int step = 0; step < 2; step++) {
        const tok *tk = step ? step2 : step1;
        int T = step ? T2 : T1;
        float *qkv = xmalloc((size_t)T * ld * 4);
        int32_t pos[32], seq[32], slots[32];
        int max_pos = 0;
        for (int t = 0; t < T; t++) {
            int s = tk[t].s, p = tk[t].p;
            memcpy(qkv + (size_t)t * ld, QAT(s, p), (size_t)qw * 4);
            memcpy(qkv + (size_t)t * ld + qw, KAT(s, p), (size_t)kvw * 4);
            memcpy(qkv + (size_t)t * ld + qw + kvw, VAT(s, p), (size_t)kvw * 4);
            for (int c = qw + 2 * kvw; c < ld; c++) qkv[(size_t)t * ld + c] = -POISON;
            pos[t] = p, seq[t] = s;
            slots[t] = tables[s][p / BS] * BS + p % BS;
            if (p > max_pos) max_pos = p;
            for (int i = 0; i < kvw; i++) {
                kc_want[(size_t)slots[t] * kvw + i] = KAT(s, p)[i];
                vc_want[(size_t)slots[t] * kvw + i] = VAT(s, p)[i];
            }
        }
        void *dqkv = dev_copy(qkv, (size_t)T * ld * 4), *dpos = dev_copy(pos, (size_t)T * 4),
             *dseq = dev_copy(seq, (size_t)T * 4), *dslots = dev_copy(slots, (size_t)T * 4);
        kattn_batch b = {T, dpos, dseq, dslots, dtables, MAXB, BS, max_pos, NULL, NULL, 0, 0, 0, 0};
        K_->kv_store(kb.ctx, kc, vc, (float *)dqkv + qw, (float *)dqkv + qw + kvw, ld, kvw, &b);

        char name[128];
        float *cache = xmalloc(cache_n * 4);
        K_->to_host(kb.ctx, cache, kc, cache_n * 4);
        snprintf(name, sizeof name, "kv_store K step %d n_kv=%d d=%d (paged, rest untouched)", step + 1, n_kv, d);
        check(name, cache, kc_want, cache_n, 0.0, 0.0); /* a copy: bit-exact */
        K_->to_host(kb.ctx, cache, vc, cache_n * 4);
        snprintf(name, sizeof name, "kv_store V step %d n_kv=%d d=%d (paged, rest untouched)", step + 1, n_kv, d);
        check(name, cache, vc_want, cache_n, 0.0, 0.0);
        free(cache);

        /* Reference: naive causal softmax attention on the contiguous arrays. */
        double scale = 1.0 / sqrt((double)d);
        double *want = xmalloc((size_t)T * qw * sizeof(double)), sc[16];
        for (int t = 0; t < T; t++) {
            int s = tk[t].s, p = tk[t].p;
            for (int h = 0; h < n_q; h++) {
                int g = h / q_per_kv;
                const float *qv = QAT(s, p) + (size_t)h * d;
                double mx = -INFINITY, sum = 0.0;
                for (int u = 0; u <= p; u++) {
                    double dot = 0.0;
                    for (int i = 0; i < d; i++) dot += (double)qv[i] * KAT(s, u)[(size_t)g * d + i];
                    sc[u] = dot * scale;
                    if (sc[u] > mx) mx = sc[u];
                }
                for (int u = 0; u <= p; u++) sum += (sc[u] = exp(sc[u] - mx));
                for (int i = 0; i < d; i++) {
                    double o = 0.0;
                    for (int u = 0; u <= p; u++) o += sc[u] / sum * VAT(s, u)[(size_t)g * d + i];
                    want[(size_t)t * qw + (size_t)h * d + i] = o;
                }
            }
        }
        float *nanbuf = xmalloc((size_t)T * qw * 4);
        for (size_t i = 0; i < (size_t)T * qw; i++) nanbuf[i] = NAN;
        void *dout = dev_copy(nanbuf, (size_t)T * qw * 4);
        K_->attention(kb.ctx, dout, dqkv, ld, kc, vc, &b, n_q, n_kv, q_per_kv, d, (float)scale);
        float *got = xmalloc((size_t)T * qw * 4);
        K_->to_host(kb.ctx, got, dout, (size_t)T * qw * 4);
        /* fp32 dot products of d terms (|q k| ~ 1.5 * sqrt(d) scaled), expf and a
         * weighted sum of <= 14 values of |v| <~ 4: errors ~1e-6. atol 2e-5 +
         * rtol 1e-4 is ~10x that; reading one poisoned or wrong-sequence key/value,
         * an off-by-one in the causal limit or the wrong KV group is O(0.1..1000). */
        snprintf(name, sizeof name, "attention step %d (%s) n_kv=%d q_per_kv=%d d=%d T=%d", step + 1,
                 step ? "mixed decode+prefill" : "multi-seq prefill", n_kv, q_per_kv, d, T);
        check(name, got, want, (size_t)T * qw, 2e-5, 1e-4);

        K_->free(kb.ctx, dqkv), K_->free(kb.ctx, dpos), K_->free(kb.ctx, dseq), K_->free(kb.ctx, dslots);
        K_->free(kb.ctx, dout);
        free(qkv), free(want), free(got), free(nanbuf);
    }
    K_->free(kb.ctx, kc), K_->free(kb.ctx, vc), K_->free(kb.ctx, dtables);
    free(Q), free(Kx), free(Vx), free(poison), free(kc_want), free(vc_want);
#undef QAT
#undef KAT
#undef VAT
}

/* Long contexts: keys past one tile of the tiled CPU kernel (64), query tiles of
 * many tokens, a chunk whose rows end at different keys, and a decode token
 * over history stored in an earlier step. Block size 16, blocks in reverse
 * order. Step 1: seq 1 positions 0..149. Step 2: seq 1 decodes position 150,
 * then seq 0 prefills positions 0..199 in one chunk. */
static void test_attention_long(int n_q, int n_kv, int q_per_kv, int d) {
    enum { LBS = 16, LMAXB = 13, L0 = 200, L1 = 151 };
    int kvw = n_kv * d, qw = n_q * d, ld = qw + 2 * kvw;
    int32_t tables[2 * LMAXB];
    for (int i = 0; i < 2 * LMAXB; i++) tables[i] = 2 * LMAXB - 1 - i;
    int lens[2] = {L0, L1};
    float *Q[2], *Kx[2], *Vx[2];
    for (int s = 0; s < 2; s++) {
        Q[s] = xmalloc((size_t)lens[s] * qw * 4), Kx[s] = xmalloc((size_t)lens[s] * kvw * 4);
        Vx[s] = xmalloc((size_t)lens[s] * kvw * 4);
        fill_normal(Q[s], (size_t)lens[s] * qw, 1.5f);
        fill_normal(Kx[s], (size_t)lens[s] * kvw, 1.0f);
        fill_normal(Vx[s], (size_t)lens[s] * kvw, 1.0f);
    }
    size_t cache_n = (size_t)2 * LMAXB * LBS * kvw;
    float *zero = xmalloc(cache_n * 4);
    for (size_t i = 0; i < cache_n; i++) zero[i] = POISON;
    void *kc = dev_copy(zero, cache_n * 4), *vc = dev_copy(zero, cache_n * 4), *dt = dev_copy(tables, sizeof tables);
    tok steps[2][L0 + 1];
    int n_steps[2] = {0, 0};
    for (int p = 0; p < L1 - 1; p++) steps[0][n_steps[0]++] = (tok){1, p};
    steps[1][n_steps[1]++] = (tok){1, L1 - 1};
    for (int p = 0; p < L0; p++) steps[1][n_steps[1]++] = (tok){0, p};
    for (int step = 0; step < 2; step++) {
        int T = n_steps[step], max_pos = 0;
        const tok *tk = steps[step];
        float *qkv = xmalloc((size_t)T * ld * 4);
        int32_t *pos = xmalloc((size_t)T * 4), *seq = xmalloc((size_t)T * 4), *slots = xmalloc((size_t)T * 4);
        for (int t = 0; t < T; t++) {
            int s = tk[t].s, p = tk[t].p;
            memcpy(qkv + (size_t)t * ld, Q[s] + (size_t)p * qw, (size_t)qw * 4);
            memcpy(qkv + (size_t)t * ld + qw, Kx[s] + (size_t)p * kvw, (size_t)kvw * 4);
            memcpy(qkv + (size_t)t * ld + qw + kvw, Vx[s] + (size_t)p * kvw, (size_t)kvw * 4);
            pos[t] = p, seq[t] = s, slots[t] = tables[s * LMAXB + p / LBS] * LBS + p % LBS;
            if (p > max_pos) max_pos = p;
        }
        void *dqkv = dev_copy(qkv, (size_t)T * ld * 4), *dpos = dev_copy(pos, (size_t)T * 4),
             *dseq = dev_copy(seq, (size_t)T * 4), *dslots = dev_copy(slots, (size_t)T * 4);
        kattn_batch b = {T, dpos, dseq, dslots, dt, LMAXB, LBS, max_pos, NULL, NULL, 0, 0, 0, 0};
        K_->kv_store(kb.ctx, kc, vc, (float *)dqkv + qw, (float *)dqkv + qw + kvw, ld, kvw, &b);
        double scale = 1.0 / sqrt((double)d), *want = xmalloc((size_t)T * qw * sizeof(double));
        double *sc = xmalloc(sizeof(double) * L0);
        for (int t = 0; t < T; t++) {
            int s = tk[t].s, p = tk[t].p;
            for (int h = 0; h < n_q; h++) {
                int g = h / q_per_kv;
                const float *qv = Q[s] + (size_t)p * qw + (size_t)h * d;
                double mx = -INFINITY, sum = 0.0;
                for (int u = 0; u <= p; u++) {
                    double dot = 0.0;
                    for (int i = 0; i < d; i++) dot += (double)qv[i] * Kx[s][(size_t)u * kvw + (size_t)g * d + i];
                    sc[u] = dot * scale;
                    if (sc[u] > mx) mx = sc[u];
                }
                for (int u = 0; u <= p; u++) sum += (sc[u] = exp(sc[u] - mx));
                for (int i = 0; i < d; i++) {
                    double o = 0.0;
                    for (int u = 0; u <= p; u++) o += sc[u] / sum * Vx[s][(size_t)u * kvw + (size_t)g * d + i];
                    want[(size_t)t * qw + (size_t)h * d + i] = o;
                }
            }
        }
        void *dout = K_->alloc(kb.ctx, (size_t)T * qw * 4);
        K_->attention(kb.ctx, dout, dqkv, ld, kc, vc, &b, n_q, n_kv, q_per_kv, d, (float)scale);
        float *got = xmalloc((size_t)T * qw * 4);
        K_->to_host(kb.ctx, got, dout, (size_t)T * qw * 4);
        char name[128];
        snprintf(name, sizeof name, "attention long step %d n_q=%d n_kv=%d q_per_kv=%d d=%d T=%d max_pos=%d",
                 step + 1, n_q, n_kv, q_per_kv, d, T, max_pos);
        check(name, got, want, (size_t)T * qw, 2e-5, 1e-4);
        K_->free(kb.ctx, dqkv), K_->free(kb.ctx, dpos), K_->free(kb.ctx, dseq), K_->free(kb.ctx, dslots);
        K_->free(kb.ctx, dout);
        free(qkv), free(pos), free(seq), free(slots), free(want), free(sc), free(got);
    }
    K_->free(kb.ctx, kc), K_->free(kb.ctx, vc), K_->free(kb.ctx, dt);
    for (int s = 0; s < 2; s++) free(Q[s]), free(Kx[s]), free(Vx[s]);
    free(zero);
}

static void test_attention(void) {
    test_attention_case(1, 2, 16);
    test_attention_case(2, 4, 16);
    test_attention_case(1, 4, 16);
    test_attention_case(2, 2, 16);
    test_attention_case(2, 16, 128); /* GLM-4-9B chat shapes, tp = 1 */
    test_attention_case(1, 1, 5);    /* MHA, odd head dim */
    test_attention_long(4, 2, 2, 16);    /* 32-token query tiles */
    test_attention_long(32, 2, 16, 128); /* 4-token query tiles, GLM-4-9B head shapes */
    test_attention_long(96, 1, 96, 8);   /* more heads per group than a tile's rows */
    test_attention_long(2, 1, 4, 16);    /* tp above the KV groups: 2 of a group's 4 heads on the rank */
}

/* ------------------------------------------------- vision tower: layernorm */

static void ref_layernorm(double *out, const float *x, const double *w, const double *b, int T, int N, double eps) {
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * N;
        double mean = 0.0, var = 0.0;
        for (int i = 0; i < N; i++) mean += xt[i];
        mean /= N;
        for (int i = 0; i < N; i++) var += (xt[i] - mean) * (xt[i] - mean);
        double r = 1.0 / sqrt(var / N + eps);
        for (int i = 0; i < N; i++) out[(size_t)t * N + i] = (xt[i] - mean) * r * w[i] + b[i];
    }
}

/* Rows: N(0, xscale) noise, then row 1 shifted by +1000 and row 2 by -300
 * (a large mean next to a unit spread: a one-pass E[x^2] - E[x]^2 in fp32
 * loses every digit there), row 3 constant (variance 0: out = b exactly up
 * to eps). */
static void test_layernorm_case(kdtype wdt, int T, int N, float xscale, float eps, int alias) {
    size_t n = (size_t)T * N;
    float *x = xmalloc(n * 4);
    fill_normal(x, n, xscale);
    if (T > 1)
        for (int i = 0; i < N; i++) x[(size_t)N + i] += 1000.0f;
    if (T > 2)
        for (int i = 0; i < N; i++) x[(size_t)2 * N + i] -= 300.0f;
    if (T > 3)
        for (int i = 0; i < N; i++) x[(size_t)3 * N + i] = 2.5f;
    hweight hw = make_weight(wdt, (size_t)N, -2.0f, 2.0f), hb = make_weight(wdt, (size_t)N, -1.0f, 1.0f);
    kweight w = upload(&hw, 1, N), b = upload(&hb, 1, N);
    double *want = xmalloc(n * sizeof(double));
    ref_layernorm(want, x, hw.val, hb.val, T, N, eps);

    void *dx = dev_copy(x, n * 4);
    void *dout = alias ? dx : K_->alloc(kb.ctx, n * 4);
    K_->layernorm(kb.ctx, dout, dx, &w, &b, T, eps);
    float *got = xmalloc(n * 4);
    K_->to_host(kb.ctx, got, dout, n * 4);
    /* fp32 sums of N terms of |x - x0| <~ 4 xscale for the mean and of
     * (x - mean)^2 for the variance: relative errors ~sqrt(N) 2^-24 typical;
     * the output |w z + b| <~ 10. atol 1e-5 + rtol 1e-5 is ~10x the observed
     * error at N = 1792; a one-pass variance or a mean off by a rounding of
     * 1000 (6e-5 in x, 6e-5 / xscale in z) fails it, as does a missing bias,
     * an unbiased variance (N = 1792: 3e-4 relative) or a misplaced eps. */
    char name[128];
    snprintf(name, sizeof name, "layernorm %s T=%d N=%d xscale=%g eps=%g%s", kdtype_name(wdt), T, N, xscale, eps,
             alias ? " (out == x)" : "");
    check(name, got, want, n, 1e-5, 1e-5);
    if (!alias) K_->free(kb.ctx, dout);
    K_->free(kb.ctx, dx);
    K_->weight_free(kb.ctx, &w), K_->weight_free(kb.ctx, &b);
    free_hweight(&hw), free_hweight(&hb);
    free(x), free(want), free(got);
}

static void test_layernorm(void) {
    test_layernorm_case(KDT_F32, 5, 129, 1.0f, 1e-5f, 0);
    test_layernorm_case(KDT_BF16, 5, 129, 1.0f, 1e-5f, 0);
    test_layernorm_case(KDT_BF16, 6, 1792, 1.0f, 1e-6f, 1); /* the tower's width */
    test_layernorm_case(KDT_F32, 4, 37, 0.01f, 1e-4f, 1);   /* eps comparable to the variance */
    test_layernorm_case(KDT_F32, 1, 1, 1.0f, 1e-5f, 0);     /* one element: out = b */
}

/* ------------------------------------------------------ vision tower: gelu */

static void test_gelu(void) {
    const size_t ns[] = {1, 7, 1001, 4096 * 3 + 5};
    for (size_t c = 0; c < sizeof ns / sizeof ns[0]; c++) {
        size_t n = ns[c];
        float *x = xmalloc(n * 4);
        fill_normal(x, n, 3.0f);
        /* fixed points: 0, tiny, the tails (-10: 1 + erf cancels to ~1e-23;
         * -40: 0 after underflow; 40: x), values around +-1 */
        const float fixed[] = {0.0f, -0.0f, 1e-30f, -1e-30f, -10.0f, -5.5f, -40.0f, 40.0f, 10.0f, 1.0f, -1.0f, 0.5f};
        for (size_t i = 0; i < n && i < sizeof fixed / sizeof fixed[0]; i++) x[i] = fixed[i];
        for (size_t i = 12; i < n && i < 40; i++) x[i] = urand(-12.0f, 12.0f);
        double *want = xmalloc(n * sizeof(double));
        for (size_t i = 0; i < n; i++) want[i] = 0.5 * x[i] * erfc(-(double)x[i] / sqrt(2.0));
        void *dx = dev_copy(x, n * 4);
        K_->gelu(kb.ctx, dx, n);
        float *got = xmalloc(n * 4);
        K_->to_host(kb.ctx, got, dx, n * 4);
        /* erfcf (a few ulp) of x / sqrt 2 rounded once: the argument's rounding
         * is amplified by |d ln erfc(z) / dz| ~ 2|z| in the left tail, so 2e-6
         * relative at x = -5, 1e-5 at x = -10; atol 1e-12 for the underflowed
         * tail. tanh GELU differs by up to 5e-4, and 1 + erf (cancelling)
         * is ~10% off at x = -5: both fail. */
        char name[64];
        snprintf(name, sizeof name, "gelu n=%zu", n);
        check(name, got, want, n, 1e-12, 2e-5);
        K_->free(kb.ctx, dx);
        free(x), free(want), free(got);
    }
}

/* ---------------------------------------------- vision tower: attention_full */

/* Bidirectional attention of n_heads heads of d over T tokens, q, k and v the
 * column blocks at 0, n_heads*d + gap and 2*(n_heads*d + gap) of one [T, ld]
 * buffer (ld = 3*(n_heads*d + gap) + tail: wider than the three blocks), the
 * reference in double over all T keys at once. */
static void test_attention_full_case(int T, int n_heads, int d, int gap, int tail) {
    int qw = n_heads * d, blk = qw + gap, ld = 3 * blk + tail;
    size_t n = (size_t)T * ld;
    float *qkv = xmalloc(n * 4);
    fill_normal(qkv, n, 1.0f);
    for (size_t i = 0; i < (size_t)T * ld; i += ld) /* a few large scores: the online max must move */
        qkv[i] *= 4.0f;
    for (int t = 0; t < T; t++) /* columns outside the blocks: NaN, never read */
        for (int c = 0; c < ld; c++)
            if (c % blk >= qw || c >= 3 * blk) qkv[(size_t)t * ld + c] = NAN;
    const float *Q = qkv, *Kx = qkv + blk, *Vx = qkv + 2 * blk;
    double scale = 1.0 / sqrt((double)d), *want = xmalloc((size_t)T * qw * sizeof(double));
    double *sc = xmalloc((size_t)T * sizeof(double));
    for (int t = 0; t < T; t++)
        for (int h = 0; h < n_heads; h++) {
            const float *qv = Q + (size_t)t * ld + (size_t)h * d;
            double mx = -INFINITY, sum = 0.0;
            for (int u = 0; u < T; u++) {
                double dot = 0.0;
                for (int i = 0; i < d; i++) dot += (double)qv[i] * Kx[(size_t)u * ld + (size_t)h * d + i];
                sc[u] = dot * scale;
                if (sc[u] > mx) mx = sc[u];
            }
            for (int u = 0; u < T; u++) sum += (sc[u] = exp(sc[u] - mx));
            for (int i = 0; i < d; i++) {
                double o = 0.0;
                for (int u = 0; u < T; u++) o += sc[u] * Vx[(size_t)u * ld + (size_t)h * d + i];
                want[(size_t)t * qw + (size_t)h * d + i] = o / sum;
            }
        }
    float *dqkv = dev_copy(qkv, n * 4);
    float *nanbuf = xmalloc((size_t)T * qw * 4);
    for (size_t i = 0; i < (size_t)T * qw; i++) nanbuf[i] = NAN; /* every output must be written */
    void *dout = dev_copy(nanbuf, (size_t)T * qw * 4);
    K_->attention_full(kb.ctx, dout, dqkv, dqkv + blk, dqkv + 2 * blk, ld, T, n_heads, d, (float)scale);
    float *got = xmalloc((size_t)T * qw * 4);
    K_->to_host(kb.ctx, got, dout, (size_t)T * qw * 4);
    /* fp32 dot products of d terms (scaled scores |s| <~ 5), an exp within 2
     * ulp, fp32 sums of T weights and a weighted mean of |v| <~ 4: observed
     * errors ~1e-7..1e-6. atol 1e-5 + rtol 1e-5; a causal mask, a missed key
     * tile, the wrong head or column block, or the scale applied twice is
     * O(0.01..1) off. */
    char name[128];
    snprintf(name, sizeof name, "attention_full T=%d n_heads=%d d=%d ld=%d", T, n_heads, d, ld);
    check(name, got, want, (size_t)T * qw, 1e-5, 1e-5);
    K_->free(kb.ctx, dqkv), K_->free(kb.ctx, dout);
    free(qkv), free(want), free(sc), free(nanbuf), free(got);
}

static void test_attention_full(void) {
    test_attention_full_case(17, 4, 14, 3, 5);   /* tiny, d not a power of two, ld > 3 * n_heads * d */
    test_attention_full_case(1, 2, 14, 0, 0);    /* one token: out = v */
    test_attention_full_case(300, 2, 112, 0, 0); /* the tower's head size, key and query tiles with tails */
    test_attention_full_case(65, 3, 7, 1, 2);    /* one row past a tile */
}

/* -------------------------------------------------------------------- main */

int main(void) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    kb = kernels_cpu_create(0);
    printf("backend %s, act_bytes %zu\n", K_->name, K_->act_bytes);
    if (K_->act_bytes != 4) {
        printf("these references assume fp32 activations\n");
        return 1;
    }
    test_dtype_and_upload();
#ifdef GLMTP_HAVE_DNNL
    lib_rounds_bf16 = 1;
#endif
    test_matmul();
    /* The own prefill kernel, as GLMTP_CPU_OWN_GEMM=1 gives it. */
    kbackend lib = kb;
    if (setenv("GLMTP_CPU_OWN_GEMM", "1", 1) != 0) {
        printf("setenv failed\n");
        return 1;
    }
    kb = kernels_cpu_create(0);
    lib_rounds_bf16 = 0;
    test_matmul();
    K_->destroy(kb.ctx);
    kb = lib;
    unsetenv("GLMTP_CPU_OWN_GEMM");
    test_rmsnorm();
    test_embedding();
    test_swiglu();
    test_add();
    test_gather_rows();
    test_argmax();
    test_add_rmsnorm();
    test_matmul_swiglu();
    test_rope();
    test_attention();
    test_layernorm();
    test_gelu();
    test_attention_full();
    K_->sync(kb.ctx);
    K_->destroy(kb.ctx);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("time %.2f s\n", (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec));
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
