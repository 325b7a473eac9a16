/* Internal to the CPU backend: the op implementations that cpu_backend.c puts
 * into its kernels_iface table. Activations are fp32; see kernels.h for shapes. */
#ifndef GLMTP_CPU_H
#define GLMTP_CPU_H

#include "../kernels.h"

void cpu_embedding(void *ctx, void *out, const kweight *E, const int32_t *ids, int T);
void cpu_rmsnorm(void *ctx, void *out, const void *x, const kweight *w, int T, float eps);
void cpu_matmul(void *ctx, void *out, const void *x, const kweight *W, const kweight *bias, int T);
void cpu_matmul_f32(void *ctx, float *out, const void *x, const kweight *W, int T);
void cpu_rope(void *ctx, void *qkv, const int32_t *pos, int T, int ld, int n_heads, int d, int rot_dim,
              float base);
void cpu_kv_store(void *ctx, void *kcache, void *vcache, const void *k, const void *v, int ld, int kv_width,
                  const kattn_batch *b);
void cpu_attention(void *ctx, void *out, const void *q, int ld_q, const void *kcache, const void *vcache,
                   const kattn_batch *b, int n_q, int n_kv, int q_per_kv, int d, float scale);
void cpu_swiglu(void *ctx, void *out, const void *gu, int T, int F);
void cpu_matmul_swiglu(void *ctx, void *out, const void *x, const kweight *W, void *gu, int T);
void cpu_add(void *ctx, void *x, const void *y, size_t n);
void cpu_rope_kv_store(void *ctx, void *qkv, void *kcache, void *vcache, int T, int ld, int n_q, int n_kv, int d,
                       int rot_dim, float base, const kattn_batch *b);
void cpu_add_rmsnorm(void *ctx, void *x, const void *y, void *out, const kweight *w, int T, float eps);
void cpu_gather_rows(void *ctx, void *out, const void *x, const int *rows, int n, int width);
void cpu_top_k(void *ctx, kcand *out, double *sum, const float *logits, int n, int V, int ld, int k,
               const float *temp);
void cpu_argmax(void *ctx, int *out_idx, float *out_val, const float *logits, int n, int V, int ld);
void cpu_layernorm(void *ctx, void *out, const void *x, const kweight *w, const kweight *b, int T, float eps);
void cpu_gelu(void *ctx, void *x, size_t n);
void cpu_attention_full(void *ctx, void *out, const void *q, const void *k, const void *v, int ld, int T, int n_heads,
                        int d, float scale);

/* Row r of a weight as fp32 element k (slow path for small ops: norms, embedding). */
static inline float cpu_weight_at(const kweight *w, size_t i) {
    switch (w->dtype) {
    case KDT_BF16: return bf16_to_f32(((const uint16_t *)w->data)[i]);
    case KDT_F16: return f16_to_f32(((const uint16_t *)w->data)[i]);
    default: return ((const float *)w->data)[i];
    }
}

#endif
