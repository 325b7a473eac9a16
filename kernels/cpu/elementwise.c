/* Small memory-bound ops of the CPU backend: embedding lookup, SwiGLU, residual
 * add, row gather, GELU. fp32 activations. */
#include <math.h>
#include <string.h>

#include "cpu.h"

void cpu_embedding(void *ctx, void *out, const kweight *E, const int32_t *ids, int T) {
    (void)ctx;
    int H = E->cols;
    for (int t = 0; t < T; t++) {
        float *o = (float *)out + (size_t)t * H;
        size_t base = (size_t)ids[t] * H;
        for (int i = 0; i < H; i++) o[i] = cpu_weight_at(E, base + i);
    }
}

void cpu_swiglu(void *ctx, void *out, const void *gu, int T, int F) {
    (void)ctx;
#pragma omp parallel for schedule(static) if (T > 1)
    for (int t = 0; t < T; t++) {
        const float *g = (const float *)gu + (size_t)t * 2 * F, *u = g + F;
        float *o = (float *)out + (size_t)t * F;
        for (int i = 0; i < F; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

/* Two passes on the CPU: the GEMM dominates, and there is no launch to save. */
void cpu_matmul_swiglu(void *ctx, void *out, const void *x, const kweight *W, void *gu, int T) {
    cpu_matmul(ctx, gu, x, W, NULL, T);
    cpu_swiglu(ctx, out, gu, T, W->rows / 2);
}

void cpu_add(void *ctx, void *x, const void *y, size_t n) {
    (void)ctx;
    float *a = x;
    const float *b = y;
    for (size_t i = 0; i < n; i++) a[i] += b[i];
}

void cpu_gather_rows(void *ctx, void *out, const void *x, const int *rows, int n, int width) {
    (void)ctx;
    for (int i = 0; i < n; i++)
        memmove((float *)out + (size_t)i * width, (const float *)x + (size_t)rows[i] * width,
                sizeof(float) * width);
}

/* 0.5 x (1 + erf(x / sqrt 2)) written as 0.5 x erfc(-x / sqrt 2): the same
 * function, without the cancellation of 1 + erf near -1 that would leave
 * large negative x with few correct digits. */
void cpu_gelu(void *ctx, void *x, size_t n) {
    (void)ctx;
    float *a = x;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) a[i] = 0.5f * a[i] * erfcf(-a[i] * 0.70710678118654752f);
}
