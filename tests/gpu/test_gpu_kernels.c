/* test_gpu_kernels: every op of the CUDA backend against the CPU backend (the
 * reference, itself checked against naive loops by tests/test_kernels.c), on
 * seeded random inputs, through the kernels_iface both implement.
 *
 * Inputs are rounded to bf16 first and both backends get the same values (the
 * CPU as fp32), so a difference is the CUDA kernel's own error: fp32
 * accumulation order, and the one rounding of its bf16 output. Each check is
 * |gpu - cpu| <= atol + rtol * |cpu| element-wise; rtol 2^-8 is one bf16 unit
 * in the last place at the bottom of a binade (a correctly rounded bf16 result
 * is within half of that), atol covers fp32 order differences where the value
 * cancels to near zero. Sentinels behind outputs catch writes past the end.
 *
 * Without a usable CUDA device it prints "skipped: no CUDA device" and exits 0,
 * so the CPU-only ctest run stays green. Last line: "N passed, M failed". */
#include <cuda_runtime.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../comm/comm.h"
#include "../../kernels/dtype.h"
#include "../../kernels/kernels.h"
#include "../../kernels/rng.h"
#ifdef GLMTP_HAVE_NCCL
#include "../../comm/comm_nccl.h"
#endif

#define BF16_RTOL (1.0 / 256.0)
#define SENTINEL 0x7fa5u /* a bf16 NaN pattern nothing computes */
#define PAD 64           /* sentinel elements behind each checked output */

static int n_pass, n_fail;
static kbackend G, C; /* CUDA under test, CPU reference */
static uint64_t g_rng = 0x6a09e667;

/* ---------------------------------------------------------------- helpers */

static void *xmalloc(size_t n) {
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of host memory\n");
        exit(2);
    }
    return p;
}

static void tally(int ok) {
    if (ok)
        n_pass++;
    else
        n_fail++;
}

static void check(const char *name, const float *got, const float *want, size_t n, double atol, double rtol) {
    double maxd = 0.0;
    size_t n_bad = 0, first = 0;
    for (size_t i = 0; i < n; i++) {
        double g = got[i], w = want[i], d = (g == w) ? 0.0 : fabs(g - w);
        if (isnan(g) != isnan(w)) d = INFINITY;
        if (isnan(g) && isnan(w)) d = 0.0;
        if (!(d <= atol + rtol * fabs(w))) {
            if (!n_bad) first = i;
            n_bad++;
        }
        if (d > maxd || isnan(d)) maxd = d;
    }
    printf("%s  %-62s n=%-8zu max_abs_diff=%-10.3g (atol=%.2g rtol=%.2g)\n", n_bad ? "FAIL" : "PASS", name, n, maxd,
           atol, rtol);
    if (n_bad)
        printf("      %zu bad; first at [%zu]: gpu %.9g cpu %.9g\n", n_bad, first, (double)got[first],
               (double)want[first]);
    tally(!n_bad);
}

static void expect(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s  ", ok ? "PASS" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    tally(ok);
}

static float bfr(float x) { return bf16_to_f32(f32_to_bf16(x)); } /* round to a bf16 value */

static float *rand_bf16(size_t n, float lo, float hi) {
    float *x = xmalloc(n * 4);
    for (size_t i = 0; i < n; i++) x[i] = bfr(lo + (hi - lo) * (float)rng_uniform(&g_rng));
    return x;
}

/* GPU activation buffer of n bf16 values (+PAD sentinels) holding x. */
static void *g_act(const float *x, size_t n) {
    uint16_t *h = xmalloc((n + PAD) * 2);
    for (size_t i = 0; i < n; i++) h[i] = x ? f32_to_bf16(x[i]) : (uint16_t)SENTINEL;
    for (size_t i = n; i < n + PAD; i++) h[i] = SENTINEL;
    void *d = G.iface->alloc(G.ctx, (n + PAD) * 2);
    G.iface->to_device(G.ctx, d, h, (n + PAD) * 2);
    free(h);
    return d;
}

/* n bf16 values of a GPU buffer as fp32; checks the PAD sentinels behind them. */
static float *g_get(const char *name, const void *d, size_t n) {
    uint16_t *h = xmalloc((n + PAD) * 2);
    G.iface->to_host(G.ctx, h, d, (n + PAD) * 2);
    float *f = xmalloc(n * 4);
    for (size_t i = 0; i < n; i++) f[i] = bf16_to_f32(h[i]);
    int ok = 1;
    for (size_t i = n; i < n + PAD; i++) ok &= h[i] == SENTINEL;
    if (!ok) expect(0, "%s: wrote past the end of its output", name);
    free(h);
    return f;
}

/* CPU activation buffer (fp32) holding x. */
static void *c_act(const float *x, size_t n) {
    void *d = C.iface->alloc(C.ctx, n * 4 + 4);
    if (x) C.iface->to_device(C.ctx, d, x, n * 4);
    return d;
}

static void *g_ints(const int32_t *x, size_t n) {
    void *d = G.iface->alloc(G.ctx, n * 4 + 4);
    G.iface->to_device(G.ctx, d, x, n * 4);
    return d;
}

static void *c_ints(const int32_t *x, size_t n) {
    void *d = C.iface->alloc(C.ctx, n * 4 + 4);
    C.iface->to_device(C.ctx, d, x, n * 4);
    return d;
}

/* The same host weight uploaded to both backends. */
static void upload2(kweight *g, kweight *c, const void *host, kdtype dt, int rows, int cols) {
    G.iface->weight_upload(G.ctx, g, host, dt, rows, cols);
    C.iface->weight_upload(C.ctx, c, host, dt, rows, cols);
}

static void free2(kweight *g, kweight *c) {
    G.iface->weight_free(G.ctx, g);
    C.iface->weight_free(C.ctx, c);
}

/* ------------------------------------------------------------ weight upload */

static void test_upload(void) {
    int rows = 37, cols = 70;
    size_t n = (size_t)rows * cols;
    float *f = xmalloc(n * 4);
    uint16_t *h16 = xmalloc(n * 2), *b16 = xmalloc(n * 2), *back = xmalloc(n * 2);
    for (size_t i = 0; i < n; i++) {
        f[i] = 3.0f * rng_normal(&g_rng);
        b16[i] = f32_to_bf16(f[i]);
        uint32_t u; /* an f16 bit pattern of a normal number: exponent 1..30 */
        u = (uint32_t)(rng_next(&g_rng) & 0x83ffu) | ((uint32_t)(1 + rng_next(&g_rng) % 30) << 10);
        h16[i] = (uint16_t)u;
    }
    const struct { kdtype dt; const void *src; const char *name; } cases[] = {
        {KDT_F32, f, "f32"}, {KDT_BF16, b16, "bf16"}, {KDT_F16, h16, "f16"}};
    for (int k = 0; k < 3; k++) {
        kweight w;
        G.iface->weight_upload(G.ctx, &w, cases[k].src, cases[k].dt, rows, cols);
        G.iface->to_host(G.ctx, back, w.data, n * 2);
        int ok = w.dtype == KDT_BF16 && w.rows == rows && w.cols == cols;
        for (size_t i = 0; ok && i < n; i++) {
            float v = cases[k].dt == KDT_F32 ? f[i] : cases[k].dt == KDT_BF16 ? bf16_to_f32(b16[i]) : f16_to_f32(h16[i]);
            ok = back[i] == f32_to_bf16(v); /* matrices: bf16, rounded to nearest even on the host */
        }
        expect(ok, "upload %s matrix [%d, %d] -> bf16, bit-exact rounding", cases[k].name, rows, cols);
        G.iface->weight_free(G.ctx, &w);
        /* vectors (rows = 1) are kept fp32: exact for every source type */
        G.iface->weight_upload(G.ctx, &w, cases[k].src, cases[k].dt, 1, cols);
        float *vb = xmalloc((size_t)cols * 4);
        G.iface->to_host(G.ctx, vb, w.data, (size_t)cols * 4);
        ok = w.dtype == KDT_F32;
        for (int i = 0; ok && i < cols; i++) {
            float v = cases[k].dt == KDT_F32 ? f[i] : cases[k].dt == KDT_BF16 ? bf16_to_f32(b16[i]) : f16_to_f32(h16[i]);
            ok = vb[i] == v;
        }
        expect(ok, "upload %s vector [1, %d] -> f32, exact", cases[k].name, cols);
        G.iface->weight_free(G.ctx, &w);
        free(vb);
    }
    free(f), free(h16), free(b16), free(back);
}

/* ---------------------------------------------- embedding, norm, small ops */

static void test_embedding(void) {
    int V = 300, H = 96, T = 9;
    float *E = rand_bf16((size_t)V * H, -2, 2);
    int32_t ids[] = {0, 299, 5, 5, 17, 150, 298, 1, 0};
    kweight ge, ce;
    upload2(&ge, &ce, E, KDT_F32, V, H);
    void *gi = g_ints(ids, T), *ci = c_ints(ids, T), *go = g_act(NULL, (size_t)T * H), *co = c_act(NULL, (size_t)T * H);
    G.iface->embedding(G.ctx, go, &ge, gi, T);
    C.iface->embedding(C.ctx, co, &ce, ci, T);
    float *got = g_get("embedding", go, (size_t)T * H);
    check("embedding V=300 H=96 T=9 (a copy: exact)", got, co, (size_t)T * H, 0.0, 0.0);
    free(got), free(E), free2(&ge, &ce);
    G.iface->free(G.ctx, gi), G.iface->free(G.ctx, go), C.iface->free(C.ctx, ci), C.iface->free(C.ctx, co);
}

static void test_rmsnorm_case(int T, int H, float xscale, int alias) {
    float *x = rand_bf16((size_t)T * H, -xscale, xscale), *w = rand_bf16((size_t)H, 0.5f, 1.5f);
    kweight gw, cw;
    upload2(&gw, &cw, w, KDT_F32, 1, H);
    void *gx = g_act(x, (size_t)T * H), *cx = c_act(x, (size_t)T * H);
    void *go = alias ? gx : g_act(NULL, (size_t)T * H), *co = alias ? cx : c_act(NULL, (size_t)T * H);
    G.iface->rmsnorm(G.ctx, go, gx, &gw, T, 1.5625e-07f);
    C.iface->rmsnorm(C.ctx, co, cx, &cw, T, 1.5625e-07f);
    char name[128];
    snprintf(name, sizeof name, "rmsnorm T=%d H=%d |x|<=%g%s", T, H, xscale, alias ? " in place" : "");
    float *got = g_get(name, go, (size_t)T * H);
    /* fp32 sum of squares in another order (~1e-7 relative), then one bf16 rounding */
    check(name, got, co, (size_t)T * H, 1e-6, BF16_RTOL);
    free(got), free(x), free(w), free2(&gw, &cw);
    G.iface->free(G.ctx, gx), C.iface->free(C.ctx, cx);
    if (!alias) G.iface->free(G.ctx, go), C.iface->free(C.ctx, co);
}

/* The fused residual add + RMSNorm (GLMTP_FUSED_ADD_NORM, set by main for this
 * run) against the same backend's add then rmsnorm: bitwise equal, x and out
 * both; and against the CPU within the rmsnorm tolerance. */
static void test_add_rmsnorm_case(int T, int H) {
    float *x = rand_bf16((size_t)T * H, -3.0f, 3.0f), *y = rand_bf16((size_t)T * H, -3.0f, 3.0f);
    float *w = rand_bf16((size_t)H, 0.5f, 1.5f);
    kweight gw, cw;
    upload2(&gw, &cw, w, KDT_F32, 1, H);
    size_t n = (size_t)T * H;
    void *gx = g_act(x, n), *gx2 = g_act(x, n), *gy = g_act(y, n), *go = g_act(NULL, n), *go2 = g_act(NULL, n);
    void *cx = c_act(x, n), *cy = c_act(y, n), *co = c_act(NULL, n);
    G.iface->add_rmsnorm(G.ctx, gx, gy, go, &gw, T, 1.5625e-07f);
    G.iface->add(G.ctx, gx2, gy, n);
    G.iface->rmsnorm(G.ctx, go2, gx2, &gw, T, 1.5625e-07f);
    C.iface->add_rmsnorm(C.ctx, cx, cy, co, &cw, T, 1.5625e-07f);
    char name[128];
    snprintf(name, sizeof name, "add_rmsnorm T=%d H=%d", T, H);
    float *a = g_get(name, gx, n), *a2 = g_get(name, gx2, n), *o = g_get(name, go, n), *o2 = g_get(name, go2, n);
    expect(!memcmp(a, a2, n * 4) && !memcmp(o, o2, n * 4), "%s: bitwise equal to add then rmsnorm", name);
    check(name, o, co, n, 1e-6, 2 * BF16_RTOL); /* the GPU rounds the sum too: two bf16 roundings */
    free(a), free(a2), free(o), free(o2), free(x), free(y), free(w), free2(&gw, &cw);
    void *gb[] = {gx, gx2, gy, go, go2}, *cb[] = {cx, cy, co};
    for (int i = 0; i < 5; i++) G.iface->free(G.ctx, gb[i]);
    for (int i = 0; i < 3; i++) C.iface->free(C.ctx, cb[i]);
}

static void test_small_ops(void) {
    test_add_rmsnorm_case(3, 4096);
    test_add_rmsnorm_case(5, 100);
    test_rmsnorm_case(4, 4096, 1.0f, 0);
    test_rmsnorm_case(3, 100, 30.0f, 0);
    test_rmsnorm_case(2, 4096, 0.01f, 1);

    /* SwiGLU: fp32 silu(g) * u with expf on both sides (<= 2 ulp apart), one rounding. */
    for (int k = 0; k < 2; k++) {
        int T = k ? 5 : 2, F = k ? 37 : 13696;
        float *gu = rand_bf16((size_t)T * 2 * F, -6, 6);
        void *gg = g_act(gu, (size_t)T * 2 * F), *cg = c_act(gu, (size_t)T * 2 * F);
        void *go = g_act(NULL, (size_t)T * F), *co = c_act(NULL, (size_t)T * F);
        G.iface->swiglu(G.ctx, go, gg, T, F);
        C.iface->swiglu(C.ctx, co, cg, T, F);
        char name[96];
        snprintf(name, sizeof name, "swiglu T=%d F=%d", T, F);
        float *got = g_get(name, go, (size_t)T * F);
        check(name, got, co, (size_t)T * F, 1e-6, BF16_RTOL);
        free(got), free(gu);
        G.iface->free(G.ctx, gg), G.iface->free(G.ctx, go), C.iface->free(C.ctx, cg), C.iface->free(C.ctx, co);
    }

    /* Residual add: aligned (8-wide path + tail) and offset by one element (scalar path). */
    for (int off = 0; off < 2; off++) {
        size_t n = 4096 * 3 + 5;
        float *x = rand_bf16(n + 1, -4, 4), *y = rand_bf16(n + 1, -4, 4);
        void *gx = g_act(x, n + 1), *gy = g_act(y, n + 1), *cx = c_act(x, n + 1), *cy = c_act(y, n + 1);
        G.iface->add(G.ctx, (uint16_t *)gx + off, (uint16_t *)gy + off, n);
        C.iface->add(C.ctx, (float *)cx + off, (float *)cy + off, n);
        char name[96];
        snprintf(name, sizeof name, "add n=%zu %s", n, off ? "offset (scalar path)" : "aligned (vector path)");
        float *got = g_get(name, gx, n + 1);
        check(name, got, cx, n + 1, 0.0, BF16_RTOL); /* the fp32 sum is exact; one rounding */
        free(got), free(x), free(y);
        G.iface->free(G.ctx, gx), G.iface->free(G.ctx, gy), C.iface->free(C.ctx, cx), C.iface->free(C.ctx, cy);
    }

    /* Row gather: a copy; rows from the host. Also in place with rows[i] >= i
     * (compaction), where reading all rows first equals the CPU's row-by-row memmove. */
    {
        int width = 96, nx = 6;
        float *x = rand_bf16((size_t)nx * width, -1, 1);
        const int rows[] = {5, 0, 5, 3}, rows_in_place[] = {1, 3, 4};
        void *gx = g_act(x, (size_t)nx * width), *cx = c_act(x, (size_t)nx * width);
        void *go = g_act(NULL, 4 * (size_t)width), *co = c_act(NULL, 4 * (size_t)width);
        G.iface->gather_rows(G.ctx, go, gx, rows, 4, width);
        C.iface->gather_rows(C.ctx, co, cx, rows, 4, width);
        float *got = g_get("gather_rows", go, 4 * (size_t)width);
        check("gather_rows rows {5,0,5,3} (a copy: exact)", got, co, 4 * (size_t)width, 0.0, 0.0);
        free(got);
        G.iface->gather_rows(G.ctx, gx, gx, rows_in_place, 3, width);
        C.iface->gather_rows(C.ctx, cx, cx, rows_in_place, 3, width);
        got = g_get("gather_rows in place", gx, (size_t)nx * width);
        check("gather_rows in place rows {1,3,4} (exact)", got, cx, (size_t)nx * width, 0.0, 0.0);
        free(got), free(x);
        G.iface->free(G.ctx, gx), G.iface->free(G.ctx, go), C.iface->free(C.ctx, cx), C.iface->free(C.ctx, co);
    }
}

/* ------------------------------------------------------------------ matmul */

static const char *g_matmul_path = ""; /* which matmul path a switch chose for the cases below */
static const char *g_matmul_want;       /* the path (kernels_cuda_matmul_ran's name) they must take, or NULL */

/* kernels/cuda/cuda_backend.cu's test hook: the path the last matmul took. */
const char *kernels_cuda_matmul_ran(kbackend kb);

/* A switch whose path did not run would pass its cases on another path. The
 * skinny kernel's conditions are ours: not taking it fails. cuBLASLt may
 * refuse its bias epilogue (an fp32 bias beside bf16 output is not in its
 * documented list): a NOTE line, which device-check.sh records. */
static void check_matmul_path(const char *name) {
    const char *ran = kernels_cuda_matmul_ran(G);
    if (!g_matmul_want) return;
    if (ran && !strcmp(ran, g_matmul_want)) return;
    if (!strcmp(g_matmul_want, "cublaslt_bias_epilogue"))
        printf("NOTE  %s: cuBLASLt refused the bias epilogue; %s ran\n", name, ran ? ran : "nothing");
    else
        expect(0, "%s: the %s path ran, not %s", name, ran ? ran : "no", g_matmul_want);
}

static void test_matmul_case(int T, int N, int K, int with_bias, int f32_out, kdtype wdt) {
    float *x = rand_bf16((size_t)T * K, -1, 1), *w = xmalloc((size_t)N * K * 4);
    float ws = 1.5f / sqrtf((float)K);
    for (size_t i = 0; i < (size_t)N * K; i++) w[i] = bfr(ws * (2.0f * (float)rng_uniform(&g_rng) - 1.0f));
    float *b = rand_bf16((size_t)N, -0.5f, 0.5f);
    kweight gw, cw, gb, cb;
    upload2(&gw, &cw, w, wdt == KDT_BF16 ? KDT_F32 : wdt, N, K); /* f32 host data of bf16 values */
    upload2(&gb, &cb, b, KDT_F32, 1, N);
    void *gx = g_act(x, (size_t)T * K), *cx = c_act(x, (size_t)T * K);
    size_t no = (size_t)T * N;
    void *co = c_act(NULL, no), *go;
    float *got;
    char name[128];
    snprintf(name, sizeof name, "matmul%s%s T=%d N=%d K=%d%s%s", f32_out ? "_f32" : "", g_matmul_path, T, N, K,
             with_bias ? " +bias" : "", N == 1 ? " (f32 vector weight)" : "");
    if (f32_out) {
        float *h = xmalloc((no + PAD) * 4);
        for (size_t i = 0; i < no + PAD; i++) h[i] = -12345.0f;
        go = G.iface->alloc(G.ctx, (no + PAD) * 4);
        G.iface->to_device(G.ctx, go, h, (no + PAD) * 4);
        G.iface->matmul_f32(G.ctx, go, gx, &gw, T);
        check_matmul_path(name);
        C.iface->matmul_f32(C.ctx, co, cx, &cw, T);
        G.iface->to_host(G.ctx, h, go, (no + PAD) * 4);
        int ok = 1;
        for (size_t i = no; i < no + PAD; i++) ok &= h[i] == -12345.0f;
        if (!ok) expect(0, "%s: wrote past the end of its output", name);
        got = h;
    } else {
        go = g_act(NULL, no);
        G.iface->matmul(G.ctx, go, gx, &gw, with_bias ? &gb : NULL, T);
        check_matmul_path(name);
        C.iface->matmul(C.ctx, co, cx, &cw, with_bias ? &cb : NULL, T);
        got = g_get(name, go, no);
    }
    /* Both sum the same K exact products in fp32, in different orders: |diff|
     * <~ sqrt(K) * 2^-24 * sum|x w| ~ 1e-6 * sqrt(K) here (|out| ~ 1), so atol
     * 1e-5 * sqrt(K) is ~10x that; bf16 output adds one rounding (rtol). */
    check(name, got, co, no, 1e-5 * sqrt((double)K), f32_out ? 1e-5 : BF16_RTOL);
    free(got), free(x), free(w), free(b), free2(&gw, &cw), free2(&gb, &cb);
    G.iface->free(G.ctx, gx), G.iface->free(G.ctx, go), C.iface->free(C.ctx, cx), C.iface->free(C.ctx, co);
}

/* The MLP's gate/up GEMV with SwiGLU in its epilogue (GLMTP_FUSED_SWIGLU, set
 * by main; T = 1 fused, T = 3 the two ops) against the same backend's matmul
 * then swiglu: bitwise; and against the CPU within two bf16 roundings. */
static void test_matmul_swiglu_case(int T, int F, int K) {
    float *x = rand_bf16((size_t)T * K, -1, 1), *w = xmalloc((size_t)2 * F * K * 4);
    float ws = 1.5f / sqrtf((float)K);
    for (size_t i = 0; i < (size_t)2 * F * K; i++) w[i] = bfr(ws * (2.0f * (float)rng_uniform(&g_rng) - 1.0f));
    for (int r = 3; r < F; r += 7) /* gate rows of zeros: silu(+0) * u is -0 for u < 0, and must stay so */
        memset(w + (size_t)r * K, 0, (size_t)K * 4);
    kweight gw, cw;
    upload2(&gw, &cw, w, KDT_F32, 2 * F, K);
    size_t n = (size_t)T * F;
    void *gx = g_act(x, (size_t)T * K), *cx = c_act(x, (size_t)T * K);
    void *gu = g_act(NULL, 2 * n), *gu2 = g_act(NULL, 2 * n), *cu = c_act(NULL, 2 * n);
    void *ga = g_act(NULL, n), *ga2 = g_act(NULL, n), *ca = c_act(NULL, n);
    G.iface->matmul_swiglu(G.ctx, ga, gx, &gw, gu, T);
    G.iface->matmul(G.ctx, gu2, gx, &gw, NULL, T);
    G.iface->swiglu(G.ctx, ga2, gu2, T, F);
    C.iface->matmul_swiglu(C.ctx, ca, cx, &cw, cu, T);
    char name[128];
    snprintf(name, sizeof name, "matmul_swiglu T=%d F=%d K=%d", T, F, K);
    float *a = g_get(name, ga, n), *a2 = g_get(name, ga2, n);
    expect(!memcmp(a, a2, n * 4), "%s: bitwise equal to matmul then swiglu", name);
    check(name, a, ca, n, 1e-4 * sqrt((double)K), 3 * BF16_RTOL); /* g, u and the product each rounded */
    free(a), free(a2), free(x), free(w), free2(&gw, &cw);
    void *gb[] = {gx, gu, gu2, ga, ga2}, *cb[] = {cx, cu, ca};
    for (int i = 0; i < 5; i++) G.iface->free(G.ctx, gb[i]);
    for (int i = 0; i < 3; i++) C.iface->free(C.ctx, cb[i]);
}

/* kernels/cuda/cuda_backend.cu's test hook: set 0 or 1 turns the switch of
 * that environment variable (GLMTP_LT_BIAS, GLMTP_SKINNY, ...) off or on;
 * returns the setting before (-1: no such switch). */
int kernels_cuda_switch(kbackend kb, const char *env, int set);

/* The hook, failing loudly on a name the backend does not know (the cases
 * would otherwise run the default path under another path's name). */
static int gpu_switch(const char *env, int set) {
    int was = kernels_cuda_switch(G, env, set);
    if (was < 0) expect(0, "test hook: the CUDA backend has no switch %s", env);
    return was;
}

static void test_matmul(void) {
    test_matmul_swiglu_case(1, 13696, 4096); /* GLM-4-9B gate/up, decode, tp = 1 */
    test_matmul_swiglu_case(1, 3424, 4096);  /* tp = 4 */
    test_matmul_swiglu_case(1, 1001, 264);   /* a warp's rows past F; K not a multiple of 256 */
    test_matmul_swiglu_case(3, 1000, 256);   /* T > 1: the two ops */
    test_matmul_case(1, 4608, 4096, 1, 0, KDT_BF16); /* GLM-4-9B QKV, decode */
    test_matmul_case(1, 4096, 13696, 0, 0, KDT_BF16); /* dense_4h_to_h, decode */
    test_matmul_case(7, 300, 128, 0, 0, KDT_BF16);
    test_matmul_case(33, 96, 128, 1, 0, KDT_BF16);
    test_matmul_case(130, 1000, 256, 1, 0, KDT_BF16); /* prefill-sized */
    test_matmul_case(5, 37, 5, 1, 0, KDT_BF16);       /* odd K: maybe no cuBLASLt algorithm */
    test_matmul_case(3, 1, 64, 1, 0, KDT_BF16);       /* one row: stored f32, warp kernel */
    test_matmul_case(2, 20000, 4096, 0, 1, KDT_BF16); /* LM head slice, fp32 out */
    test_matmul_case(17, 333, 96, 0, 1, KDT_BF16);
    test_matmul_case(4, 1, 32, 0, 1, KDT_BF16);
    /* The T = 1 GEMV (K % 8 == 0): odd row counts (a warp's second row past
     * N), bias, fp32 out, a K not a multiple of 256; T 3..8 go to cuBLASLt. */
    test_matmul_case(1, 333, 96, 1, 0, KDT_BF16);
    test_matmul_case(1, 4097, 4096, 1, 0, KDT_BF16);
    test_matmul_case(1, 2049, 13696, 0, 1, KDT_BF16);
    test_matmul_case(3, 333, 96, 1, 0, KDT_BF16);
    test_matmul_case(8, 4097, 4096, 1, 0, KDT_BF16);
    test_matmul_case(6, 2049, 13696, 0, 1, KDT_BF16);
    test_matmul_case(1, 151, 1000, 0, 1, KDT_BF16);
    /* The bias in cuBLASLt's epilogue (GLMTP_LT_BIAS's path), then back to
     * the fp32 GEMM + rounding kernel: both within the same tolerance. */
    int was = gpu_switch("GLMTP_LT_BIAS", 1);
    g_matmul_path = " (bias epilogue)", g_matmul_want = "cublaslt_bias_epilogue";
    test_matmul_case(3, 333, 96, 1, 0, KDT_BF16);
    test_matmul_case(8, 4097, 4096, 1, 0, KDT_BF16);
    test_matmul_case(512, 4608, 4096, 1, 0, KDT_BF16); /* GLM-4-9B QKV, a prefill chunk */
    gpu_switch("GLMTP_LT_BIAS", was);
    /* T = 2..8 on the small-batch tensor-core kernel (GLMTP_SKINNY's path):
     * bias, a partial last block of rows, GLM-4-9B's shapes, fp32 out; K not
     * a multiple of 32 keeps cuBLASLt. */
    was = gpu_switch("GLMTP_SKINNY", 1);
    g_matmul_path = " (skinny)", g_matmul_want = "skinny";
    test_matmul_case(2, 4608, 4096, 1, 0, KDT_BF16);
    test_matmul_case(8, 4097, 4096, 1, 0, KDT_BF16);
    test_matmul_case(5, 4096, 13696, 0, 0, KDT_BF16);
    test_matmul_case(7, 27392, 4096, 0, 0, KDT_BF16);
    test_matmul_case(3, 1500, 1024, 0, 1, KDT_BF16);
    test_matmul_case(4, 333, 96, 1, 0, KDT_BF16);
    gpu_switch("GLMTP_SKINNY", was);
    g_matmul_path = "", g_matmul_want = NULL;
}

/* ----------------------------------------------------------- rope_kv_store */

/* rope_kv_store (fused: GLMTP_FUSED_ROPE_KV, set by main for this run) against
 * the same backend's rope then kv_store on a copy: bitwise equal, QKV rows and
 * both caches; and the cache against the CPU backend's within RoPE's tolerance. */
static void test_rope_kv_store(int T, int n_q, int n_kv, int d, int rot) {
    int ld = (n_q + 2 * n_kv) * d, kvw = n_kv * d, n_slots = 2 * T + 8;
    float *qkv = rand_bf16((size_t)T * ld, -2.0f, 2.0f);
    int32_t *pos = xmalloc((size_t)T * 4), *slots = xmalloc((size_t)T * 4), *seq = xmalloc((size_t)T * 4);
    for (int t = 0; t < T; t++) pos[t] = 37 * t + 5, slots[t] = (7 * t + 3) % n_slots, seq[t] = 0; /* distinct slots */
    size_t cn = (size_t)n_slots * kvw, qn = (size_t)T * ld;
    void *ga = g_act(qkv, qn), *gb = g_act(qkv, qn), *ca = c_act(qkv, qn);
    void *gka = g_act(NULL, cn), *gva = g_act(NULL, cn), *gkb = g_act(NULL, cn), *gvb = g_act(NULL, cn);
    void *cka = c_act(NULL, cn), *cva = c_act(NULL, cn);
    void *gp = g_ints(pos, T), *gs = g_ints(slots, T), *gq = g_ints(seq, T);
    int32_t *cpos = C.iface->alloc(C.ctx, (size_t)T * 4), *cslots = C.iface->alloc(C.ctx, (size_t)T * 4);
    C.iface->to_device(C.ctx, cpos, pos, (size_t)T * 4);
    C.iface->to_device(C.ctx, cslots, slots, (size_t)T * 4);
    kattn_batch bg = {T, gp, gq, gs, NULL, 0, 1, 0, NULL, NULL, 0}, bc = {T, cpos, NULL, cslots, NULL, 0, 1, 0, NULL,
                                                                         NULL, 0};
    float base = 10000.0f * 500.0f;
    G.iface->rope_kv_store(G.ctx, ga, gka, gva, T, ld, n_q, n_kv, d, rot, base, &bg);
    G.iface->rope(G.ctx, gb, gp, T, ld, n_q + n_kv, d, rot, base);
    G.iface->kv_store(G.ctx, gkb, gvb, (uint16_t *)gb + (size_t)n_q * d, (uint16_t *)gb + (size_t)(n_q + n_kv) * d, ld,
                      kvw, &bg);
    C.iface->rope_kv_store(C.ctx, ca, cka, cva, T, ld, n_q, n_kv, d, rot, base, &bc);
    char name[128];
    snprintf(name, sizeof name, "rope_kv_store T=%d n_q=%d n_kv=%d d=%d rot=%d", T, n_q, n_kv, d, rot);
    float *a = g_get(name, ga, qn), *b = g_get(name, gb, qn), *ka = g_get(name, gka, cn), *kb2 = g_get(name, gkb, cn);
    float *va = g_get(name, gva, cn), *vb = g_get(name, gvb, cn);
    expect(!memcmp(a, b, qn * 4) && !memcmp(ka, kb2, cn * 4) && !memcmp(va, vb, cn * 4),
           "%s: bitwise equal to rope then kv_store", name);
    /* rotated K: the rope test's tolerance (same fp32 angles, one bf16 rounding) */
    check(name, ka, cka, cn, 1e-5, BF16_RTOL);
    check(name, va, cva, cn, 0.0, 0.0); /* V: a copy */
    free(a), free(b), free(ka), free(kb2), free(va), free(vb), free(qkv), free(pos), free(slots), free(seq);
    void *g[] = {ga, gb, gka, gva, gkb, gvb, gp, gs, gq}, *c[] = {ca, cka, cva, cpos, cslots};
    for (int i = 0; i < 9; i++) G.iface->free(G.ctx, g[i]);
    for (int i = 0; i < 5; i++) C.iface->free(C.ctx, c[i]);
}

/* -------------------------------------------------------------------- rope */

static void test_rope_case(int n_q, int n_kv, int d, int rot, float base) {
    const int32_t pos[] = {0, 1, 7, 4095, 32768, 100000};
    int T = 6, ld = (n_q + 2 * n_kv) * d + 3;
    float *x = rand_bf16((size_t)T * ld, -2, 2);
    void *gx = g_act(x, (size_t)T * ld), *cx = c_act(x, (size_t)T * ld), *gp = g_ints(pos, T), *cp = c_ints(pos, T);
    G.iface->rope(G.ctx, gx, gp, T, ld, n_q + n_kv, d, rot, base);
    C.iface->rope(C.ctx, cx, cp, T, ld, n_q + n_kv, d, rot, base);
    char name[128];
    snprintf(name, sizeof name, "rope n_q=%d n_kv=%d d=%d rot=%d base=%g (+V, padding untouched)", n_q, n_kv, d, rot,
             base);
    float *got = g_get(name, gx, (size_t)T * ld);
    /* same fp32 angles (inv from the same host expression); device sincosf vs host
     * cosf/sinf <= 2 ulp; then one rounding. Columns not rotated must be exact. */
    check(name, got, cx, (size_t)T * ld, 1e-5, BF16_RTOL);
    int exact = 1;
    for (int t = 0; t < T; t++)
        for (int c = 0; c < ld; c++) {
            int rotated = c < (n_q + n_kv) * d && c % d < rot;
            if (!rotated) exact &= got[(size_t)t * ld + c] == x[(size_t)t * ld + c];
        }
    expect(exact, "rope d=%d rot=%d: dims past rot_dim, V heads and padding untouched", d, rot);
    free(got), free(x);
    G.iface->free(G.ctx, gx), G.iface->free(G.ctx, gp), C.iface->free(C.ctx, cx), C.iface->free(C.ctx, cp);
}

static void test_rope(void) {
    test_rope_case(4, 2, 128, 64, 5e6f);
    test_rope_case(32, 2, 128, 64, 1e8f);
    test_rope_case(3, 1, 16, 8, 1e4f);
    test_rope_case(2, 1, 16, 16, 1e4f);
}

/* ------------------------------------------------------ kv_store + attention */

#define POISON 1000.0f /* cache slots nobody wrote: reading one ruins the result */

typedef struct {
    int s, p;
} tok;

/* One step of kv_store + attention on both backends with tokens tk[0..T), the
 * caches given (GPU bf16, CPU fp32), and a fresh q/k/v per token. */
static const char *g_attn_kernel = ""; /* which attention kernel the cases below run through */
static int g_attn_nq;                  /* local q heads when fewer than n_kv * q_per_kv (tp > KV groups) */

static void attn_step(const char *what, const tok *tk, int T, const int32_t *tables, int n_seqs, int max_blocks,
                      int bs, int n_kv, int q_per_kv, int d, void *gk, void *gv, void *ck, void *cv, size_t cache_n) {
    int n_q = g_attn_nq ? g_attn_nq : n_kv * q_per_kv, qw = n_q * d, kvw = n_kv * d, ld = qw + 2 * kvw + 1;
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
    kattn_batch gb = {T, g_i[0], g_i[1], g_i[2], g_i[3], max_blocks, bs, max_pos, NULL, NULL, 0};
    kattn_batch cb = {T, c_i[0], c_i[1], c_i[2], c_i[3], max_blocks, bs, max_pos, NULL, NULL, 0};
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
    /* Same bf16 q, k, v; fp32 scores and softmax in another order (online, split)
     * differ by ~1e-6; the output, an average of |v| <= 1.5, is rounded once. */
    check(name, got, co, (size_t)T * qw, 1e-4, BF16_RTOL);
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
}

/* Every case through the per-head kernel, then through the grouped one (q
 * heads sharing a KV head in one block; not for q/kv 1 or d 256, which keep
 * the per-head kernel), then back to what the environment chose. */
static void test_attention(void) {
    int was = gpu_switch("GLMTP_GQA_ATTENTION", 0);
    g_attn_kernel = "";
    test_attention_cases();
    gpu_switch("GLMTP_GQA_ATTENTION", 1);
    g_attn_kernel = " (grouped)";
    test_attention_cases();
    gpu_switch("GLMTP_GQA_ATTENTION", was);
    g_attn_kernel = "";
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
static void check_tol(const char *name, const float *got, const float *want, const float *tol, size_t n) {
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
static float *flash_tol(const float *qkv, int ld, const tok *tk, int T, const int32_t *tables, int max_blocks, int bs,
                        const float *K, const float *V, int n_kv, int q_per_kv, int d, float scale, const float *ref) {
    int n_q = n_kv * q_per_kv, max_pos = 0;
    for (int t = 0; t < T; t++)
        if (tk[t].p > max_pos) max_pos = tk[t].p;
    float *tol = xmalloc((size_t)T * n_q * d * 4);
    double *w = xmalloc(((size_t)max_pos + 1) * 8), *var = xmalloc((size_t)d * 8);
    for (int t = 0; t < T; t++) {
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
    }
    free(w), free(var);
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
    kattn_batch gb_old = {T, g_i[0], g_i[1], g_i[2], g_i[3], max_blocks, bs, max_pos, NULL, NULL, 0};
    kattn_batch gb = gb_old;
    gb.host_pos = pos, gb.host_seq = seq, gb.serial = serial;
    kattn_batch cb = {T, c_i[0], c_i[1], c_i[2], c_i[3], max_blocks, bs, max_pos, NULL, NULL, 0};
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
    char name[200];
    snprintf(name, sizeof name, "prefill attention %s n_kv=%d q/kv=%d d=%d T=%d", what, n_kv, q_per_kv, d, T);
    float *got[5];
    for (int k = 0; k < 5; k++) got[k] = g_get(name, go[k], no);

    char nm[240];
    float *tol = flash_tol(qkv, ld, tk, T, u->tables, max_blocks, bs, u->ck, u->cv, n_kv, q_per_kv, d, scale, co);
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

static void test_prefill_attention(void) {
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
static void test_prefill_attention_big(int T) {
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
    kattn_batch gb_old = {T, g_i[0], g_i[1], g_i[2], g_i[3], max_blocks, bs, T - 1, NULL, NULL, 0};
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

/* ------------------------------------------------------------------ sample */

/* The sampling candidates (top_k op; the kernel, as main sets GLMTP_GPU_TOPK)
 * against the CPU backend: the same candidates in the same order, bit for
 * bit, and normalisers within V double epsilons (sums in another order). Rows of a
 * tp=2 vocab slice's width and a short one, with ties, -inf, NaN, signed
 * zeros and a row stride; k up to the op's limit. */
static void test_top_k(void) {
    const int Vs[] = {75776, 1000};
    for (int vi = 0; vi < 2; vi++) {
        enum { N = 6 };
        int V = Vs[vi], ld = V + 5;
        float *l = xmalloc(sizeof(float) * N * ld);
        for (int i = 0; i < N * ld; i++) l[i] = 2.0f * rng_normal(&g_rng);
        for (int i = 0; i < V; i += 13) l[0 * ld + i] = 9.0f;              /* ties at the top */
        for (int i = 0; i < V; i++) l[1 * ld + i] = -INFINITY;
        l[1 * ld + 777 % V] = -3.0f;                                        /* one finite logit */
        for (int i = 0; i < V; i += 3) l[2 * ld + i] = NAN;
        for (int i = 0; i < V; i++) l[3 * ld + i] = (i % 2) ? 0.0f : -0.0f; /* all zero: ids decide */
        l[4 * ld + V - 1] = 60.0f;                                          /* the last column */
        for (int i = 0; i < V; i++) l[5 * ld + i] = bfr(l[5 * ld + i]);     /* bf16-rounded: many equal values */
        const float temp[N] = {1.0f, 0.7f, 1.3f, 2.0f, 0.25f, 1.0f};
        void *gl = G.iface->alloc(G.ctx, sizeof(float) * N * ld);
        G.iface->to_device(G.ctx, gl, l, sizeof(float) * N * ld);
        const int ks[] = {1, 2, 40, 1000, KERNELS_TOPK_MAX};
        for (int ki = 0; ki < 5; ki++) {
            int k = ks[ki] < V ? ks[ki] : V;
            kcand *cg = xmalloc(sizeof(kcand) * N * k), *cc = xmalloc(sizeof(kcand) * N * k);
            double sg[N], sc[N], worst = 0.0;
            G.iface->top_k(G.ctx, cg, sg, gl, N, V, ld, k, temp);
            C.iface->top_k(C.ctx, cc, sc, l, N, V, ld, k, temp);
            int same = 1, first = -1;
            for (int i = 0; i < N * k; i++)
                if (cg[i].id != cc[i].id || memcmp(&cg[i].v, &cc[i].v, 4) != 0) {
                    if (same) first = i;
                    same = 0;
                }
            for (int r = 0; r < N; r++) {
                double e = sc[r] > 0 ? fabs(sg[r] - sc[r]) / sc[r] : fabs(sg[r]);
                if (e > worst) worst = e;
            }
            expect(same, "top_k V=%d k=%d: candidates equal the CPU's (first difference at %d)", V, k, first);
            /* V positive terms summed in two orders: each sum is within (V-1) units of
             * 2^-53 of the exact one; exp may differ by an ulp */
            double tol = (V + 2) * DBL_EPSILON;
            expect(worst <= tol, "top_k V=%d k=%d: normalisers within %.2g of the CPU's (worst %.2g)", V, k, tol,
                   worst);
            free(cg), free(cc);
        }
        G.iface->free(G.ctx, gl);
        free(l);
    }
}

/* argmax with values, a row stride and a column limit (the vocab-parallel
 * greedy LM head): the same ids and values as the CPU backend. */
static void test_argmax(void) {
    enum { N = 4, V = 1000 };
    float *l = xmalloc(sizeof(float) * N * V);
    for (int i = 0; i < N * V; i++) l[i] = 2.0f * rng_normal(&g_rng);
    l[0 * V + 10] = l[0 * V + 500] = 50.0f;    /* tie: the lower id wins */
    for (int i = 0; i < V; i++) l[1 * V + i] = -INFINITY;
    l[1 * V + 777] = -3.0f;                     /* one finite logit among -inf */
    l[2 * V + V - 1] = 60.0f;                   /* last id */
    void *gl = G.iface->alloc(G.ctx, sizeof(float) * N * V);
    /* l[3]: a NaN first and a maximum past the limit that must not win */
    l[3 * V + 0] = NAN;
    l[3 * V + V - 2] = 99.0f;
    G.iface->to_device(G.ctx, gl, l, sizeof(float) * N * V);
    for (int lim = V - 3; lim <= V; lim += 3) {
        int ig[N], ic[N];
        float vg[N], vc[N];
        G.iface->argmax(G.ctx, ig, vg, gl, N, lim, V);
        C.iface->argmax(C.ctx, ic, vc, l, N, lim, V);
        int ok = 1;
        for (int i = 0; i < N; i++) ok &= ig[i] == ic[i] && vg[i] == vc[i];
        expect(ok, "argmax limit %d: ids %d %d %d %d (cpu %d %d %d %d)", lim, ig[0], ig[1], ig[2], ig[3], ic[0], ic[1],
               ic[2], ic[3]);
        expect(ig[0] == 10 && ig[1] == 777 && (lim == V ? ig[2] == V - 1 && ig[3] == V - 2 : ig[3] != V - 2),
               "argmax limit %d: tie, -inf row, last id, NaN and the limit", lim);
    }
    G.iface->free(G.ctx, gl);
    free(l);
}

/* ------------------------------------------------------------ NCCL, 1 rank */

#ifdef GLMTP_HAVE_NCCL
/* The NCCL communicator on one rank: setup through the base comm, all-reduces
 * queued on the backend's stream (a sum over one rank leaves the data as it
 * is), more of them than the watchdog's ring holds, and teardown. */
static void test_nccl_single(int *argc, char ***argv) {
    char err[512];
    comm *base = comm_create(argc, argv, 60, err, sizeof err);
    if (!base || base->size != 1) {
        expect(0, "nccl: a one-rank base comm (%s)", base ? "more than one rank" : err);
        comm_destroy(base);
        return;
    }
    comm *nc = comm_nccl_create(base, kernels_cuda_stream(G), err, sizeof err);
    expect(nc != NULL, "nccl: comm_nccl_create on one rank%s%s", nc ? "" : ": ", nc ? "" : err);
    if (nc) {
        size_t n = 4096 * 5;
        float *x = rand_bf16(n, -3, 3);
        void *d = g_act(x, n);
        for (int i = 0; i < 300; i++) nc->iface->allreduce_sum(nc->ctx, d, n, KDT_BF16);
        float *got = g_get("nccl all-reduce", d, n);
        check("nccl all-reduce bf16 x300 on one rank (identity)", got, x, n, 0.0, 0.0);
        void *f = G.iface->alloc(G.ctx, n * 4);
        G.iface->to_device(G.ctx, f, x, n * 4);
        nc->iface->allreduce_sum(nc->ctx, f, n, KDT_F32);
        G.iface->to_host(G.ctx, got, f, n * 4);
        check("nccl all-reduce f32 on one rank (identity)", got, x, n, 0.0, 0.0);
        /* watched work (as after a graph launch), more marks than the ring
         * holds: the watchdog retires them (a wait for the ring would hang or
         * time out otherwise), and the work is what it was */
        float *z = xmalloc(n * sizeof(float));
        memset(z, 0, n * sizeof(float));
        void *zero = g_act(z, n);
        free(z);
        for (int i = 0; i < 300; i++) {
            G.iface->add(G.ctx, d, zero, n);
            nc->iface->watch_queued(nc->ctx);
        }
        float *kept = g_get("nccl watch_queued", d, n);
        check("nccl: 300 watched marks behind queued adds of zero (identity)", kept, x, n, 0.0, 0.0);
        free(kept);
        G.iface->free(G.ctx, zero);
        G.iface->free(G.ctx, f), G.iface->free(G.ctx, d);
        free(got), free(x);
        comm_nccl_destroy(nc);
    }
    comm_destroy(base);
}
#endif

/* -------------------------------------------------------------------- main */

int main(int argc, char **argv) {
    int n_dev = 0;
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess || n_dev == 0) {
        printf("skipped: no CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "none visible");
        return 0;
    }
    char err[512];
    setenv("GLMTP_FUSED_ADD_NORM", "1", 0); /* test the fused kernels unless told otherwise */
    setenv("GLMTP_FUSED_ROPE_KV", "1", 0);
    setenv("GLMTP_GPU_TOPK", "1", 0);
    setenv("GLMTP_FUSED_SWIGLU", "1", 0);
    G = kernels_cuda_create(0, err, sizeof err);
    if (!G.iface) {
        printf("skipped: no CUDA device (%s)\n", err);
        return 0;
    }
    C = kernels_cpu_create(0);
    /* GLMTP_GPU_TEST_ONLY=prefill: only the small prefill attention cases
     * (short enough to run under compute-sanitizer); =prefill-big: only the
     * timed GLM-4-sized one. */
    const char *only = getenv("GLMTP_GPU_TEST_ONLY");
    if (only && (!strcmp(only, "prefill") || !strcmp(only, "prefill-big"))) {
        if (!strcmp(only, "prefill"))
            test_prefill_attention();
        else
            test_prefill_attention_big(4096);
        G.iface->sync(G.ctx);
        G.iface->destroy(G.ctx);
        C.iface->destroy(C.ctx);
        printf("%d passed, %d failed\n", n_pass, n_fail);
        return n_fail ? 1 : 0;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    printf("backends: %s (act_bytes %zu) vs %s\n", G.iface->name, G.iface->act_bytes, C.iface->name);
    test_upload();
    test_embedding();
    test_small_ops();
    test_matmul();
    test_rope();
    test_rope_kv_store(1, 32, 2, 128, 64); /* GLM-4-9B decode */
    test_rope_kv_store(5, 4, 2, 16, 8);
    test_rope_kv_store(3, 8, 4, 64, 32);
    test_attention();
    test_prefill_attention();
    test_prefill_attention_big(4096);
    test_top_k();
    test_argmax();
#ifdef GLMTP_HAVE_NCCL
    test_nccl_single(&argc, &argv);
#else
    (void)argc, (void)argv;
    printf("(built without NCCL: no communicator test)\n");
#endif
    G.iface->sync(G.ctx);
    G.iface->destroy(G.ctx);
    C.iface->destroy(C.ctx);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("time %.2f s\n", (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec));
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
