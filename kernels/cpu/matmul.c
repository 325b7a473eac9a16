/* GEMM on the CPU: out [T, N] = x [T, K] W^T (+ bias), W [N, K] in bf16 or f32.
 * Paths:
 *  - few tokens (decode, T < GEMV_MAX_T): a GEMV per weight row in fp32 math;
 *    the step is bound by reading W once, so each row is streamed once and
 *    dotted with every token. With the library and bf16 W, the activations
 *    are rounded to bf16 first, as the library's path rounds them.
 *  - many tokens (prefill): for bf16 W the library's GEMM (gemm_lib.c, cpu.h:
 *    bf16 products of bf16-rounded activations) when the backend has one;
 *    for f32 W, or without it, or with GLMTP_CPU_OWN_GEMM=1, our own: a panel
 *    of PANEL_ROWS rows of W is widened to fp32 once into thread-local
 *    scratch, then reused by every token in register blocks of TOK_BLOCK
 *    tokens x PANEL_ROWS rows. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "cpu.h"

#define GEMV_MAX_T 16
#define PANEL_ROWS 4
#define TOK_BLOCK 4

static inline float dot_f32(const float *x, const float *w, int K) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int k = 0; k < K; k++) s += x[k] * w[k];
    return s;
}

static inline float dot_bf16(const float *x, const uint16_t *w, int K) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int k = 0; k < K; k++) s += x[k] * bf16_to_f32(w[k]);
    return s;
}

static void widen_row(float *dst, const kweight *W, int n) {
    size_t K = (size_t)W->cols;
    if (W->dtype == KDT_F32) {
        const float *s = (const float *)W->data + (size_t)n * K;
        for (size_t k = 0; k < K; k++) dst[k] = s[k];
    } else {
        const uint16_t *s = (const uint16_t *)W->data + (size_t)n * K;
#pragma omp simd
        for (size_t k = 0; k < K; k++) dst[k] = bf16_to_f32(s[k]);
    }
}

/* Four rows against one token: x is loaded once per four weights, and the four
 * accumulators are independent chains, so the loop streams W at memory speed. */
static void dot4(float *o, const float *x, const kweight *W, int n0, int K) {
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
    if (W->dtype == KDT_F32) {
        const float *w0 = (const float *)W->data + (size_t)n0 * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
        for (int k = 0; k < K; k++) {
            float v = x[k];
            a0 += v * w0[k]; a1 += v * w1[k]; a2 += v * w2[k]; a3 += v * w3[k];
        }
    } else {
        const uint16_t *w0 = (const uint16_t *)W->data + (size_t)n0 * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
        for (int k = 0; k < K; k++) {
            float v = x[k];
            a0 += v * bf16_to_f32(w0[k]); a1 += v * bf16_to_f32(w1[k]);
            a2 += v * bf16_to_f32(w2[k]); a3 += v * bf16_to_f32(w3[k]);
        }
    }
    o[0] = a0; o[1] = a1; o[2] = a2; o[3] = a3;
}

/* Four rows against two tokens: each weight is widened once for both tokens. */
static void dot4x2(float *o0, float *o1, const float *x0, const float *x1, const kweight *W, int n0, int K) {
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f, b0 = 0.0f, b1 = 0.0f, b2 = 0.0f, b3 = 0.0f;
    if (W->dtype == KDT_F32) {
        const float *w0 = (const float *)W->data + (size_t)n0 * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
#pragma omp simd reduction(+ : a0, a1, a2, a3, b0, b1, b2, b3)
        for (int k = 0; k < K; k++) {
            float u = x0[k], v = x1[k], c0 = w0[k], c1 = w1[k], c2 = w2[k], c3 = w3[k];
            a0 += u * c0; a1 += u * c1; a2 += u * c2; a3 += u * c3;
            b0 += v * c0; b1 += v * c1; b2 += v * c2; b3 += v * c3;
        }
    } else {
        const uint16_t *w0 = (const uint16_t *)W->data + (size_t)n0 * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
#pragma omp simd reduction(+ : a0, a1, a2, a3, b0, b1, b2, b3)
        for (int k = 0; k < K; k++) {
            float u = x0[k], v = x1[k];
            float c0 = bf16_to_f32(w0[k]), c1 = bf16_to_f32(w1[k]), c2 = bf16_to_f32(w2[k]), c3 = bf16_to_f32(w3[k]);
            a0 += u * c0; a1 += u * c1; a2 += u * c2; a3 += u * c3;
            b0 += v * c0; b1 += v * c1; b2 += v * c2; b3 += v * c3;
        }
    }
    o0[0] = a0; o0[1] = a1; o0[2] = a2; o0[3] = a3;
    o1[0] = b0; o1[1] = b1; o1[2] = b2; o1[3] = b3;
}

static void gemv(float *out, const float *x, const kweight *W, int T) {
    int N = W->rows, K = W->cols, quads = N / 4;
#pragma omp parallel for schedule(static)
    for (int q = 0; q < quads; q++) {
        int t = 0;
        for (; t + 2 <= T; t += 2) {
            float o0[4], o1[4];
            dot4x2(o0, o1, x + (size_t)t * K, x + (size_t)(t + 1) * K, W, 4 * q, K);
            for (int r = 0; r < 4; r++) {
                out[(size_t)t * N + 4 * q + r] = o0[r];
                out[(size_t)(t + 1) * N + 4 * q + r] = o1[r];
            }
        }
        for (; t < T; t++) {
            float o[4];
            dot4(o, x + (size_t)t * K, W, 4 * q, K);
            for (int r = 0; r < 4; r++) out[(size_t)t * N + 4 * q + r] = o[r];
        }
    }
    for (int n = 4 * quads; n < N; n++) /* tail rows */
        for (int t = 0; t < T; t++) {
            const float *xt = x + (size_t)t * K;
            out[(size_t)t * N + n] = W->dtype == KDT_F32
                                         ? dot_f32(xt, (const float *)W->data + (size_t)n * K, K)
                                         : dot_bf16(xt, (const uint16_t *)W->data + (size_t)n * K, K);
        }
}

/* 4 tokens x 4 rows of dot products over K, accumulators kept in registers. */
static void block_4x4(float *out, int N, const float *x, int K, const float *panel, int t0, int n0) {
    const float *x0 = x + (size_t)t0 * K, *x1 = x0 + K, *x2 = x1 + K, *x3 = x2 + K;
    const float *w0 = panel, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
    float a00 = 0, a01 = 0, a02 = 0, a03 = 0, a10 = 0, a11 = 0, a12 = 0, a13 = 0;
    float a20 = 0, a21 = 0, a22 = 0, a23 = 0, a30 = 0, a31 = 0, a32 = 0, a33 = 0;
#pragma omp simd reduction(+ : a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33)
    for (int k = 0; k < K; k++) {
        float v0 = x0[k], v1 = x1[k], v2 = x2[k], v3 = x3[k];
        float u0 = w0[k], u1 = w1[k], u2 = w2[k], u3 = w3[k];
        a00 += v0 * u0; a01 += v0 * u1; a02 += v0 * u2; a03 += v0 * u3;
        a10 += v1 * u0; a11 += v1 * u1; a12 += v1 * u2; a13 += v1 * u3;
        a20 += v2 * u0; a21 += v2 * u1; a22 += v2 * u2; a23 += v2 * u3;
        a30 += v3 * u0; a31 += v3 * u1; a32 += v3 * u2; a33 += v3 * u3;
    }
    float *o = out + (size_t)t0 * N + n0;
    o[0] = a00; o[1] = a01; o[2] = a02; o[3] = a03; o += N;
    o[0] = a10; o[1] = a11; o[2] = a12; o[3] = a13; o += N;
    o[0] = a20; o[1] = a21; o[2] = a22; o[3] = a23; o += N;
    o[0] = a30; o[1] = a31; o[2] = a32; o[3] = a33;
}

static void gemm(float *out, const float *x, const kweight *W, int T) {
    int N = W->rows, K = W->cols;
    int n_panels = (N + PANEL_ROWS - 1) / PANEL_ROWS;
#pragma omp parallel
    {
        float *panel = malloc(sizeof(float) * PANEL_ROWS * (size_t)K);
        if (!panel) abort();
#pragma omp for schedule(static)
        for (int p = 0; p < n_panels; p++) {
            int n0 = p * PANEL_ROWS, nr = N - n0 < PANEL_ROWS ? N - n0 : PANEL_ROWS;
            for (int r = 0; r < nr; r++) widen_row(panel + (size_t)r * K, W, n0 + r);
            int t = 0;
            if (nr == PANEL_ROWS)
                for (; t + TOK_BLOCK <= T; t += TOK_BLOCK) block_4x4(out, N, x, K, panel, t, n0);
            for (; t < T; t++)
                for (int r = 0; r < nr; r++)
                    out[(size_t)t * N + n0 + r] = dot_f32(x + (size_t)t * K, panel + (size_t)r * K, K);
        }
        free(panel);
    }
}

/* The library's GEMM; on an error (said once, by the library) the backend
 * turns it off and runs its own kernel from then on. 0 when out is written. */
static int library_gemm(cpu_ctx *c, float *out, const float *x, const kweight *W, int T) {
    if (!c->gemm) return -1;
    if (cpu_gemm_lib_matmul(c->gemm, out, x, W, T) == 0) return 0;
    fprintf(stderr, "glmtp: cpu backend: prefill GEMMs fall back to the own kernel\n");
    cpu_gemm_lib_destroy(c->gemm);
    c->gemm = NULL;
    return -1;
}

/* x rounded to bf16 values (kept as fp32) in the context's scratch: the
 * GEMV's activations when the library's GEMM takes bf16 ones, so that a
 * token's result does not depend on how many tokens share its step (prefix
 * cache hits, chunked prefill and batching change that count). */
static const float *round_like_library(cpu_ctx *c, const float *x, size_t n) {
    if (n > c->xr_cap) {
        float *p = malloc(n * sizeof *p);
        if (!p) {
            fprintf(stderr, "glmtp: cpu backend: out of memory for %zu activations\n", n);
            abort();
        }
        free(c->xr);
        c->xr = p;
        c->xr_cap = n;
    }
    for (size_t i = 0; i < n; i++) c->xr[i] = bf16_to_f32(f32_to_bf16(x[i]));
    return c->xr;
}

void cpu_matmul_f32(void *ctx, float *out, const void *x, const kweight *W, int T) {
    cpu_ctx *c = ctx;
    if (W->dtype != KDT_F32 && W->dtype != KDT_BF16) abort(); /* upload widened f16 */
    /* f32 weights keep the own kernel: its GEMM and GEMV sum each dot product
     * in the same order, so a token's result is bitwise independent of its
     * step's size (the f32 test models rely on it); speed is for bf16. */
    if (T >= GEMV_MAX_T && W->dtype == KDT_BF16 && library_gemm(c, out, x, W, T) == 0) return;
    if (T >= GEMV_MAX_T) {
        gemm(out, x, W, T);
        return;
    }
    if (c->gemm && W->dtype == KDT_BF16) x = round_like_library(c, x, (size_t)T * W->cols);
    gemv(out, x, W, T);
}

void cpu_matmul(void *ctx, void *out, const void *x, const kweight *W, const kweight *bias, int T) {
    cpu_matmul_f32(ctx, out, x, W, T);
    if (!bias) return;
    float *o = out;
    int N = W->rows;
    for (int t = 0; t < T; t++)
        for (int n = 0; n < N; n++) o[(size_t)t * N + n] += cpu_weight_at(bias, n);
}
