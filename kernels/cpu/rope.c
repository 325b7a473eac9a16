/* RoPE on the CPU, GLM-4 flavour: adjacent pairs (GPT-J), first rot_dim dims of
 * each head. Frequencies are computed in fp32 as base^(2j/rot_dim) and inverted,
 * the way HF GlmRotaryEmbedding does, so angles agree with the reference to the ulp. */
#include <math.h>
#include <stdlib.h>

#include "cpu.h"

void cpu_rope(void *ctx, void *qkv, const int32_t *pos, int T, int ld, int n_heads, int d, int rot_dim,
              float base) {
    (void)ctx;
    int half = rot_dim / 2;
    float *inv = malloc(sizeof(float) * (size_t)(half > 0 ? half : 1));
    if (!inv) abort();
    for (int j = 0; j < half; j++) inv[j] = 1.0f / powf(base, (float)(2 * j) / (float)rot_dim);
#pragma omp parallel for schedule(static) if (T > 1)
    for (int t = 0; t < T; t++) {
        float p = (float)pos[t];
        float *row = (float *)qkv + (size_t)t * ld;
        for (int j = 0; j < half; j++) {
            float a = p * inv[j], c = cosf(a), s = sinf(a);
            for (int h = 0; h < n_heads; h++) {
                float *v = row + (size_t)h * d + 2 * j;
                float x0 = v[0], x1 = v[1];
                v[0] = x0 * c - x1 * s;
                v[1] = x1 * c + x0 * s;
            }
        }
    }
    free(inv);
}
