/* RMSNorm and LayerNorm on the CPU: fp32 throughout, one rounding (none, since
 * fp32 out). */
#include <math.h>

#include "cpu.h"

/* Two passes over fp32 rows that stay in cache: nothing to gain on the CPU
 * from fusing. */
void cpu_add_rmsnorm(void *ctx, void *x, const void *y, void *out, const kweight *w, int T, float eps) {
    cpu_add(ctx, x, y, (size_t)T * w->cols);
    cpu_rmsnorm(ctx, out, x, w, T, eps);
}

void cpu_rmsnorm(void *ctx, void *out, const void *x, const kweight *w, int T, float eps) {
    (void)ctx;
    int H = w->cols;
#pragma omp parallel for schedule(static) if (T > 1)
    for (int t = 0; t < T; t++) {
        const float *xt = (const float *)x + (size_t)t * H;
        float *ot = (float *)out + (size_t)t * H;
        float ss = 0.0f;
        for (int i = 0; i < H; i++) ss += xt[i] * xt[i];
        float r = 1.0f / sqrtf(ss / (float)H + eps);
        for (int i = 0; i < H; i++) ot[i] = cpu_weight_at(w, i) * (xt[i] * r);
    }
}

/* LayerNorm with bias (the vision tower), two passes over the row in fp32,
 * about the row's first element x0: the differences x - x0 are exact for a
 * row of close values however large their common offset, so neither the mean
 * nor the deviations x - mean = (x - x0) - mean(x - x0) ever round at the
 * offset's scale (1000 + z: an ulp of 6e-5 in z). Then the biased variance of
 * the deviations, which is never negative. Each row is read whole before it
 * is written, so out may alias x. */
void cpu_layernorm(void *ctx, void *out, const void *x, const kweight *w, const kweight *b, int T, float eps) {
    (void)ctx;
    int N = w->cols;
    if (N <= 0) return;
#pragma omp parallel for schedule(static) if (T > 1)
    for (int t = 0; t < T; t++) {
        const float *xt = (const float *)x + (size_t)t * N;
        float *ot = (float *)out + (size_t)t * N;
        float x0 = xt[0], s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int i = 0; i < N; i++) s += xt[i] - x0;
        float mu = s / (float)N, ss = 0.0f; /* mean - x0 */
#pragma omp simd reduction(+ : ss)
        for (int i = 0; i < N; i++) ss += ((xt[i] - x0) - mu) * ((xt[i] - x0) - mu);
        float r = 1.0f / sqrtf(ss / (float)N + eps);
        for (int i = 0; i < N; i++) ot[i] = ((xt[i] - x0) - mu) * r * cpu_weight_at(w, i) + cpu_weight_at(b, i);
    }
}
