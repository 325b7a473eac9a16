/* test_gpu_kernels, part 1: weight upload, embedding, norms, small ops,
 * matmul (every path), RoPE and the fused RoPE + KV write, and the vision
 * tower's LayerNorm and GELU. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_check.h"

/* ------------------------------------------------------------ weight upload */

void test_upload(void) {
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

void test_embedding(void) {
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

void test_small_ops(void) {
    /* H % 8 == 0 takes the 16-byte kernels: 1, 2 and 4 vectors a thread
     * (4096, 12288, 20480: 3 rounded up, the last partly empty), a partial
     * warp (104); other H and H / 8 > 4096 the element loop. */
    test_add_rmsnorm_case(3, 4096);
    test_add_rmsnorm_case(1, 4096);
    test_add_rmsnorm_case(2, 20480);
    test_add_rmsnorm_case(3, 104);
    test_add_rmsnorm_case(5, 100);
    test_rmsnorm_case(4, 4096, 1.0f, 0);
    test_rmsnorm_case(1, 4096, 1.0f, 0);
    test_rmsnorm_case(2, 12288, 1.0f, 0);
    test_rmsnorm_case(2, 20480, 1.0f, 1);
    test_rmsnorm_case(3, 104, 1.0f, 0);
    test_rmsnorm_case(2, 40000, 1.0f, 0);
    test_rmsnorm_case(3, 100, 30.0f, 0);
    test_rmsnorm_case(2, 4096, 0.01f, 1);

    /* SwiGLU: fp32 silu(g) * u with expf on both sides (<= 2 ulp apart), one rounding. */
    for (int k = 0; k < 3; k++) { /* F % 8 == 0: 8 outputs a thread; F = 37 one */
        int T = k == 1 ? 5 : 2, F = k == 0 ? 13696 : k == 1 ? 37 : 104;
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

/* ----------------------------------------- vision tower: layernorm, gelu */

/* Rows of bf16 values in [-xscale, xscale], row 1 shifted by +100 (a bf16 ulp
 * of 0.5 there: a mean far from 0 next to a spread of xscale) and row 2
 * constant (variance 0: out = b). w and b uploaded from wdt: vectors are fp32
 * on the GPU either way, the CPU keeps bf16 as given (same values). */
static void test_layernorm_case(int T, int N, float xscale, kdtype wdt, int alias) {
    size_t n = (size_t)T * N;
    float *x = rand_bf16(n, -xscale, xscale), *w = rand_bf16((size_t)N, -2.0f, 2.0f);
    float *b = rand_bf16((size_t)N, -1.0f, 1.0f);
    for (int i = 0; T > 1 && i < N; i++) x[(size_t)N + i] = bfr(x[(size_t)N + i] + 100.0f);
    for (int i = 0; T > 2 && i < N; i++) x[(size_t)2 * N + i] = 2.5f;
    uint16_t *w16 = xmalloc((size_t)N * 2), *b16 = xmalloc((size_t)N * 2);
    for (int i = 0; i < N; i++) w16[i] = f32_to_bf16(w[i]), b16[i] = f32_to_bf16(b[i]);
    kweight gw, cw, gb, cb;
    upload2(&gw, &cw, wdt == KDT_BF16 ? (const void *)w16 : (const void *)w, wdt, 1, N);
    upload2(&gb, &cb, wdt == KDT_BF16 ? (const void *)b16 : (const void *)b, wdt, 1, N);
    void *gx = g_act(x, n), *cx = c_act(x, n);
    void *go = alias ? gx : g_act(NULL, n), *co = alias ? cx : c_act(NULL, n);
    G.iface->layernorm(G.ctx, go, gx, &gw, &gb, T, 1e-6f);
    C.iface->layernorm(C.ctx, co, cx, &cw, &cb, T, 1e-6f);
    char name[128];
    snprintf(name, sizeof name, "layernorm T=%d N=%d |x|<=%g w,b %s%s", T, N, xscale, kdtype_name(wdt),
             alias ? " in place" : "");
    float *got = g_get(name, go, n);
    /* fp32 sums in another order (~1e-7 relative) and one bf16 rounding; atol
     * for outputs where z w and b cancel (|z w| <~ 8: 8 * 1e-6). */
    check(name, got, co, n, 2e-5, BF16_RTOL);
    free(got), free(x), free(w), free(b), free(w16), free(b16), free2(&gw, &cw), free2(&gb, &cb);
    G.iface->free(G.ctx, gx), C.iface->free(C.ctx, cx);
    if (!alias) G.iface->free(G.ctx, go), C.iface->free(C.ctx, co);
}

void test_vision_ops(void) {
    test_layernorm_case(6, 1792, 3.0f, KDT_F32, 0); /* the tower's width */
    test_layernorm_case(4, 1792, 3.0f, KDT_BF16, 1);
    test_layernorm_case(3, 100, 1.0f, KDT_F32, 0);  /* a partial warp of elements */
    test_layernorm_case(2, 5000, 0.1f, KDT_F32, 1); /* several elements a thread */

    /* GELU in place: 16-byte aligned (8-wide path + the tail) and offset by
     * one element (the element loop), values in [-9, 9] with the tails:
     * erfcf on both sides (a few ulp apart), then one bf16 rounding. */
    for (int off = 0; off < 2; off++) {
        size_t n = 4096 * 3 + 5;
        float *x = rand_bf16(n + 1, -9.0f, 9.0f);
        const float fixed[] = {0.0f, -0.0f, -10.0f, -5.5f, -40.0f, 40.0f, 1.0f, -1.0f, 1e-30f};
        for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) x[off + i] = bfr(fixed[i]);
        void *gx = g_act(x, n + 1), *cx = c_act(x, n + 1);
        G.iface->gelu(G.ctx, (uint16_t *)gx + off, n);
        C.iface->gelu(C.ctx, (float *)cx + off, n);
        char name[96];
        snprintf(name, sizeof name, "gelu n=%zu %s", n, off ? "offset (scalar path)" : "aligned (vector path)");
        float *got = g_get(name, gx, n + 1);
        check(name, got, cx, n + 1, 1e-7, BF16_RTOL);
        free(got), free(x);
        G.iface->free(G.ctx, gx), C.iface->free(C.ctx, cx);
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

void test_matmul(void) {
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
    test_matmul_case(1, 27392, 4096, 0, 0, KDT_BF16); /* gate/up: enough rows for one warp per row pair */
    /* The same GEMV with one warp per row pair everywhere (GLMTP_GEMV_SPLIT=0).
     * The cases above split K over 1 to 8 warps by their row counts against
     * the SM count (on a 132-SM H100/H200: 27392 rows 1, 6848 (the SwiGLU
     * case's 2F) 2, 4608, 4097 and 4096 4, the smaller ones 8). */
    int split = gpu_switch("GLMTP_GEMV_SPLIT", 0);
    g_matmul_path = " (no split)", g_matmul_want = "gemv";
    test_matmul_case(1, 4096, 13696, 0, 0, KDT_BF16);
    test_matmul_case(1, 333, 96, 1, 0, KDT_BF16);
    test_matmul_swiglu_case(1, 1001, 264);
    gpu_switch("GLMTP_GEMV_SPLIT", split);
    g_matmul_path = "", g_matmul_want = NULL;
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
 * both caches; and the cache against the CPU backend's within RoPE's tolerance.
 * Every cache starts with the same random rows, so the slots no token writes
 * must come out as they went in. */
void test_rope_kv_store(int T, int n_q, int n_kv, int d, int rot) {
    int ld = (n_q + 2 * n_kv) * d, kvw = n_kv * d, n_slots = 2 * T + 8;
    float *qkv = rand_bf16((size_t)T * ld, -2.0f, 2.0f);
    int32_t *pos = xmalloc((size_t)T * 4), *slots = xmalloc((size_t)T * 4), *seq = xmalloc((size_t)T * 4);
    for (int t = 0; t < T; t++) /* distinct slots, descending */
        pos[t] = 37 * t + 5, slots[t] = n_slots - 1 - 2 * t, seq[t] = 0;
    size_t cn = (size_t)n_slots * kvw, qn = (size_t)T * ld;
    float *k0 = rand_bf16(cn, -1.0f, 1.0f), *v0 = rand_bf16(cn, -1.0f, 1.0f);
    void *ga = g_act(qkv, qn), *gb = g_act(qkv, qn), *ca = c_act(qkv, qn);
    void *gka = g_act(k0, cn), *gva = g_act(v0, cn), *gkb = g_act(k0, cn), *gvb = g_act(v0, cn);
    void *cka = c_act(k0, cn), *cva = c_act(v0, cn);
    void *gp = g_ints(pos, T), *gs = g_ints(slots, T), *gq = g_ints(seq, T);
    int32_t *cpos = C.iface->alloc(C.ctx, (size_t)T * 4), *cslots = C.iface->alloc(C.ctx, (size_t)T * 4);
    C.iface->to_device(C.ctx, cpos, pos, (size_t)T * 4);
    C.iface->to_device(C.ctx, cslots, slots, (size_t)T * 4);
    kattn_batch bg = {T, gp, gq, gs, NULL, 0, 1, 0, NULL, NULL, 0, 0, 0, 0},
                bc = {T, cpos, NULL, cslots, NULL, 0, 1, 0, NULL, NULL, 0, 0, 0, 0};
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
    free(k0), free(v0);
    void *g[] = {ga, gb, gka, gva, gkb, gvb, gp, gs, gq}, *c[] = {ca, cka, cva, cpos, cslots};
    for (int i = 0; i < 9; i++) G.iface->free(G.ctx, g[i]);
    for (int i = 0; i < 5; i++) C.iface->free(C.ctx, c[i]);
}

/* -------------------------------------------------------------------- rope */

static void test_rope_case(int n_q, int n_kv, int d, int rot, float base) {
    const int32_t pos[] = {0, 1, 7, 4095, 32768, 100000, 524287, 1048575}; /* up to chat-1m's last position */
    int T = 8, ld = (n_q + 2 * n_kv) * d + 3;
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

void test_rope(void) {
    test_rope_case(4, 2, 128, 64, 5e6f);
    test_rope_case(32, 2, 128, 64, 1e8f);
    test_rope_case(3, 1, 16, 8, 1e4f);
    test_rope_case(2, 1, 16, 16, 1e4f);
}
