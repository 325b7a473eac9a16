/* Causal GQA attention over the paged KV cache, CPU reference. One code path for
 * prefill and decode: every token reads its sequence's K/V through the block
 * table, so a prefill token and a decode token differ only in how many positions
 * they see. Cache elements are fp32. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"

static inline size_t slot_of(const kattn_batch *b, int s, int p) {
    int blk = b->block_tables[(size_t)s * b->max_blocks + p / b->block_size];
    return (size_t)blk * b->block_size + p % b->block_size;
}

void cpu_kv_store(void *ctx, void *kcache, void *vcache, const void *k, const void *v, int ld, int kv_width,
                  const kattn_batch *b) {
    (void)ctx;
    for (int t = 0; t < b->n_tokens; t++) {
        size_t slot = (size_t)b->slots[t];
        memcpy((float *)kcache + slot * kv_width, (const float *)k + (size_t)t * ld, sizeof(float) * kv_width);
        memcpy((float *)vcache + slot * kv_width, (const float *)v + (size_t)t * ld, sizeof(float) * kv_width);
    }
}

void cpu_attention(void *ctx, void *out, const void *q, int ld_q, const void *kcache, const void *vcache,
                   const kattn_batch *b, int n_q, int n_kv, int q_per_kv, int d, float scale) {
    (void)ctx;
    const float *K = kcache, *V = vcache;
    int T = b->n_tokens;
#pragma omp parallel
    {
        float *sc = malloc(sizeof(float) * (size_t)(b->max_pos + 1));
        if (!sc) abort();
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int t = 0; t < T; t++) {
            for (int h = 0; h < n_q; h++) {
                const float *qv = (const float *)q + (size_t)t * ld_q + (size_t)h * d;
                float *o = (float *)out + (size_t)t * n_q * d + (size_t)h * d;
                int g = h / q_per_kv, s = b->seq[t], np = b->pos[t] + 1;
                float mx = -INFINITY;
                for (int p = 0; p < np; p++) {
                    const float *kv = K + (slot_of(b, s, p) * n_kv + g) * d;
                    float dot = 0.0f;
                    for (int i = 0; i < d; i++) dot += qv[i] * kv[i];
                    sc[p] = dot * scale;
                    if (sc[p] > mx) mx = sc[p];
                }
                float sum = 0.0f;
                for (int p = 0; p < np; p++) {
                    sc[p] = expf(sc[p] - mx);
                    sum += sc[p];
                }
                float inv = 1.0f / sum;
                for (int i = 0; i < d; i++) o[i] = 0.0f;
                for (int p = 0; p < np; p++) {
                    const float *vv = V + (slot_of(b, s, p) * n_kv + g) * d;
                    float w = sc[p] * inv;
                    for (int i = 0; i < d; i++) o[i] += w * vv[i];
                }
            }
        }
        free(sc);
    }
}

/* On the CPU the two passes touch rows already in cache: no fused kernel. */
void cpu_rope_kv_store(void *ctx, void *qkv, void *kcache, void *vcache, int T, int ld, int n_q, int n_kv, int d,
                       int rot_dim, float base, const kattn_batch *b) {
    cpu_rope(ctx, qkv, b->pos, T, ld, n_q + n_kv, d, rot_dim, base);
    float *k = (float *)qkv + (size_t)n_q * d, *v = k + (size_t)n_kv * d;
    cpu_kv_store(ctx, kcache, vcache, k, v, ld, n_kv * d, b);
}
