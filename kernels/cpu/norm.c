/* RMSNorm on the CPU: fp32 throughout, one rounding (none, since fp32 out). */
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
