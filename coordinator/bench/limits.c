/* Machine limits for the bench (see limits.h). */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cpu/cpu.h"
#include "../../kernels/rng.h"
#include "../../worker/util.h"
#include "limits.h"
#ifdef GLMTP_HAVE_BLAS
#include <cblas.h>
#endif

void limits_host_bandwidth(size_t bytes, int reps, double *copy_gbs, double *read_gbs) {
    size_t n = bytes / sizeof(float);
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    if (!a || !b) abort();
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = (float)(i & 1023), b[i] = 0.0f;
    double best_c = 1e30, best_r = 1e30, sink = 0.0;
    for (int r = 0; r < reps; r++) {
        double t0 = util_now();
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) b[i] = a[i];
        double t1 = util_now();
        /* Four independent accumulators so the adds are not latency-bound. */
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp parallel for simd schedule(static) reduction(+ : s0, s1, s2, s3)
        for (size_t i = 0; i < n; i += 4) {
            s0 += b[i];
            s1 += b[i + 1];
            s2 += b[i + 2];
            s3 += b[i + 3];
        }
        double t2 = util_now();
        sink += s0 + s1 + s2 + s3;
        if (t1 - t0 < best_c) best_c = t1 - t0;
        if (t2 - t1 < best_r) best_r = t2 - t1;
    }
    *copy_gbs = 2.0 * (double)bytes / best_c / 1e9;
    *read_gbs = (double)bytes / best_r / 1e9 + (sink == 12345.0 ? 1e-9 : 0.0); /* keep the sum alive */
    free(a);
    free(b);
}

double limits_backend_bandwidth(const engine *e, size_t bytes, int reps) {
    const kernels_iface *k = e->kb.iface;
    size_t n = bytes / k->act_bytes;
    void *x = k->alloc(e->kb.ctx, bytes), *y = k->alloc(e->kb.ctx, bytes);
    double best = 1e30;
    k->add(e->kb.ctx, x, y, n); /* warm-up */
    k->sync(e->kb.ctx);
    for (int r = 0; r < reps; r++) {
        double t0 = util_now();
        k->add(e->kb.ctx, x, y, n);
        k->sync(e->kb.ctx);
        if (util_now() - t0 < best) best = util_now() - t0;
    }
    k->free(e->kb.ctx, x);
    k->free(e->kb.ctx, y);
    return 3.0 * (double)bytes / best / 1e9;
}

/* The four GEMMs of one block on this rank: [N, K] per weight. */
static void layer_shapes(const engine *e, int N[4], int K[4]) {
    const glm_layer *L = &e->m->layers[0];
    const kweight *w[4] = {&L->qkv, &L->dense, &L->h4h, &L->down};
    for (int i = 0; i < 4; i++) N[i] = w[i]->rows, K[i] = w[i]->cols;
}

/* FLOPs of the four GEMMs at T tokens, and the largest weight, activation and
 * output of them (elements). */
static double layer_sizes(int T, const int N[4], const int K[4], size_t *max_w, size_t *max_x, size_t *max_o) {
    double flops = 0;
    *max_w = *max_x = *max_o = 0;
    for (int i = 0; i < 4; i++) {
        flops += 2.0 * T * N[i] * K[i];
        if ((size_t)N[i] * K[i] > *max_w) *max_w = (size_t)N[i] * K[i];
        if ((size_t)T * K[i] > *max_x) *max_x = (size_t)T * K[i];
        if ((size_t)T * N[i] > *max_o) *max_o = (size_t)T * N[i];
    }
    return flops;
}

#ifdef GLMTP_HAVE_BLAS
/* Best of 3 runs of the four GEMMs with fp32 operands. */
static double blas_layer(int T, const int N[4], const int K[4], size_t max_w, size_t max_x, size_t max_o) {
    float *w = malloc(max_w * 4), *x = malloc(max_x * 4), *o = malloc(max_o * 4);
    if (!w || !x || !o) abort();
    uint64_t rng = 7;
    for (size_t i = 0; i < max_w; i++) w[i] = (float)rng_uniform(&rng) - 0.5f;
    for (size_t i = 0; i < max_x; i++) x[i] = (float)rng_uniform(&rng) - 0.5f;
    openblas_set_num_threads(omp_get_max_threads());
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        double t0 = util_now();
        for (int i = 0; i < 4; i++) /* o [T, N] = x [T, K] w [N, K]^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N[i], K[i], 1.0f, x, K[i], w, K[i], 0.0f, o,
                        N[i]);
        double dt = util_now() - t0;
        if (dt < best) best = dt;
    }
    free(w);
    free(x);
    free(o);
    return best;
}
#endif

void *limits_random_acts(const engine *e, size_t n, uint64_t seed) {
    const kernels_iface *k = e->kb.iface;
    unsigned char *h = malloc(n * k->act_bytes);
    if (!h) abort();
    for (size_t i = 0; i < n; i++) {
        float v = (float)((int)(rng_next(&seed) % 2001) - 1000) / 1000.0f;
        if (k->act_bytes == 4) {
            memcpy(h + 4 * i, &v, 4);
        } else {
            uint16_t b = f32_to_bf16(v);
            memcpy(h + 2 * i, &b, 2);
        }
    }
    void *d = k->alloc(e->kb.ctx, n * k->act_bytes);
    k->to_device(e->kb.ctx, d, h, n * k->act_bytes);
    free(h);
    return d;
}

double limits_gemm_layer(const engine *e, int T, double *gflops, const char **what) {
    int N[4], K[4];
    layer_shapes(e, N, K);
    size_t max_w, max_x, max_o;
    double flops = layer_sizes(T, N, K, &max_w, &max_x, &max_o);
    double best = 1e30;
#ifdef GLMTP_HAVE_BLAS
    if (strcmp(e->kb.iface->name, "cpu") == 0) {
        *what = "OpenBLAS sgemm (fp32)";
        best = blas_layer(T, N, K, max_w, max_x, max_o);
        *gflops = flops / best / 1e9;
        return best;
    }
#endif
    /* On a GPU the backend's matmul is the plain cuBLASLt GEMM. */
    *what = strcmp(e->kb.iface->name, "cpu") == 0 ? "backend matmul (no BLAS in this build)" : "backend matmul";
    const kernels_iface *k = e->kb.iface;
    void *x = limits_random_acts(e, max_x, 29), *o = k->alloc(e->kb.ctx, max_o * k->act_bytes);
    const glm_layer *L = &e->m->layers[0];
    const kweight *w[4] = {&L->qkv, &L->dense, &L->h4h, &L->down};
    for (int r = 0; r < 3; r++) {
        k->sync(e->kb.ctx);
        double t0 = util_now();
        for (int i = 0; i < 4; i++) k->matmul(e->kb.ctx, o, x, w[i], NULL, T);
        k->sync(e->kb.ctx);
        double dt = util_now() - t0;
        if (dt < best) best = dt;
    }
    k->free(e->kb.ctx, x);
    k->free(e->kb.ctx, o);
    *gflops = flops / best / 1e9;
    return best;
}

/* One GEMM shape (bench image: the vision tower's widest, fc1): fp32 sgemm
 * with BLAS on the CPU, else the backend's matmul over a random bf16 weight. */
double limits_gemm_shape(const engine *e, int T, int N, int K, double *gflops, const char **what) {
    double flops = 2.0 * T * N * K, best = 1e30;
#ifdef GLMTP_HAVE_BLAS
    if (strcmp(e->kb.iface->name, "cpu") == 0) {
        float *w = malloc((size_t)N * K * 4), *x = malloc((size_t)T * K * 4), *o = malloc((size_t)T * N * 4);
        if (!w || !x || !o) abort();
        uint64_t rng = 31;
        for (size_t i = 0; i < (size_t)N * K; i++) w[i] = (float)rng_uniform(&rng) - 0.5f;
        for (size_t i = 0; i < (size_t)T * K; i++) x[i] = (float)rng_uniform(&rng) - 0.5f;
        openblas_set_num_threads(omp_get_max_threads());
        for (int r = 0; r < 3; r++) {
            double t0 = util_now();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0f, x, K, w, K, 0.0f, o, N);
            double dt = util_now() - t0;
            if (dt < best) best = dt;
        }
        free(w);
        free(x);
        free(o);
        *what = "OpenBLAS sgemm (fp32)";
        *gflops = flops / best / 1e9;
        return best;
    }
#endif
    *what = strcmp(e->kb.iface->name, "cpu") == 0 ? "backend matmul (no BLAS in this build)" : "backend matmul";
    const kernels_iface *k = e->kb.iface;
    uint16_t *hw = malloc((size_t)N * K * sizeof *hw);
    if (!hw) abort();
    uint64_t rng = 31;
    for (size_t i = 0; i < (size_t)N * K; i++) hw[i] = f32_to_bf16((float)rng_uniform(&rng) - 0.5f);
    kweight w = {0};
    k->weight_upload(e->kb.ctx, &w, hw, KDT_BF16, N, K);
    free(hw);
    void *x = limits_random_acts(e, (size_t)T * K, 37), *o = k->alloc(e->kb.ctx, (size_t)T * N * k->act_bytes);
    k->matmul(e->kb.ctx, o, x, &w, NULL, T); /* warm-up: library plans */
    for (int r = 0; r < 3; r++) {
        k->sync(e->kb.ctx);
        double t0 = util_now();
        k->matmul(e->kb.ctx, o, x, &w, NULL, T);
        k->sync(e->kb.ctx);
        double dt = util_now() - t0;
        if (dt < best) best = dt;
    }
    k->weight_free(e->kb.ctx, &w);
    k->free(e->kb.ctx, x);
    k->free(e->kb.ctx, o);
    *gflops = flops / best / 1e9;
    return best;
}

/* n bf16 values uniform in [-0.5, 0.5) (seeded). */
static uint16_t *random_bf16(size_t n, uint64_t seed) {
    uint16_t *v = malloc(n * sizeof *v);
    if (!v) abort();
    for (size_t i = 0; i < n; i++) v[i] = f32_to_bf16((float)rng_uniform(&seed) - 0.5f);
    return v;
}

double limits_gemm_bf16_layer(const engine *e, int T, double *gflops, const char **what, char *what_buf,
                              size_t what_len) {
    if (strcmp(e->kb.iface->name, "cpu") != 0) return 0;
    cpu_gemm_lib *g = cpu_gemm_lib_create();
    if (!g) return 0;
    int N[4], K[4];
    layer_shapes(e, N, K);
    size_t max_w, max_x, max_o;
    double flops = layer_sizes(T, N, K, &max_w, &max_x, &max_o);
    uint16_t *w = random_bf16(max_w, 7), *x = random_bf16(max_x, 11);
    float *o = malloc(max_o * sizeof *o);
    if (!o) abort();
    double best = 1e30;
    int failed = 0;
    for (int r = 0; r < 4 && !failed; r++) { /* r = 0 makes the primitives */
        double t0 = util_now();
        for (int i = 0; i < 4; i++) {
            kweight W = {.data = w, .dtype = KDT_BF16, .rows = N[i], .cols = K[i]};
            failed |= cpu_gemm_lib_matmul_bf16(g, o, x, &W, T) != 0;
        }
        double dt = util_now() - t0;
        if (r > 0 && dt < best) best = dt;
    }
    snprintf(what_buf, what_len, "%s, bf16 x bf16 -> fp32", cpu_gemm_lib_name(g));
    cpu_gemm_lib_destroy(g);
    free(w);
    free(x);
    free(o);
    if (failed) return 0;
    *what = what_buf;
    *gflops = flops / best / 1e9;
    return best;
}
