/* Internal to the CPU backend: the op implementations that cpu_backend.c puts
 * into its kernels_iface table. Activations are fp32; see kernels.h for shapes. */
#ifndef GLMTP_CPU_H
#define GLMTP_CPU_H

#include "../kernels.h"

/* Prefill GEMMs through a library (gemm_lib.c: oneDNN's matmul primitive):
 * out [T, N] = x [T, K] W^T with x and out fp32 row-major, W [N, K] row-major
 * (the layout as loaded, handed to the library as a transposed operand, so
 * nothing is repacked per call or at load).
 *  - bf16 W: x is rounded to bf16 (nearest even) into scratch owned by the
 *    handle, the products are bf16 x bf16 with fp32 accumulation; the rounding
 *    is the only error beyond the fp32 path's (relative 2^-9 per activation).
 *  - f32 W: an fp32 GEMM (sgemm), no rounding. (The backend keeps its own
 *    kernel for f32 weights: see matmul.c.)
 * A handle belongs to one backend context and is used by one thread at a time;
 * it keeps the primitives it made, one per (T, N, K, weight type), up to a
 * bound (the least recently used is replaced). */
typedef struct cpu_gemm_lib cpu_gemm_lib;

/* A new handle, or NULL when this build has no library (GLMTP_HAVE_DNNL unset)
 * or the library cannot start (the reason is printed on stderr). */
cpu_gemm_lib *cpu_gemm_lib_create(void);
void cpu_gemm_lib_destroy(cpu_gemm_lib *g); /* NULL is fine */

/* out = x W^T as above, W bf16 or f32, T >= 1. 0 when out is written; -1 on a
 * library error (printed on stderr; out is then undefined). */
int cpu_gemm_lib_matmul(cpu_gemm_lib *g, float *out, const float *x, const kweight *W, int T);

/* The library's product alone on activations already in bf16: out [T, N] =
 * xb [T, K] W^T, W bf16 (the bench's limit). 0, or -1 as above. */
int cpu_gemm_lib_matmul_bf16(cpu_gemm_lib *g, float *out, const uint16_t *xb, const kweight *W, int T);

/* "oneDNN 2.6.3 matmul", plus the implementation the library picked for the
 * last primitive made (e.g. "brg:avx512_core_amx_bf16") once there is one.
 * Owned by the handle, valid until its next call. */
const char *cpu_gemm_lib_name(cpu_gemm_lib *g);

/* The CPU backend's context (the void *ctx of every op). */
typedef struct cpu_ctx {
    int n_threads;
    /* Prefill GEMMs (T >= the GEMV range) when not NULL; NULL: the own kernel
     * (no library in the build, GLMTP_CPU_OWN_GEMM=1, or a library error). */
    cpu_gemm_lib *gemm;
    /* With gemm and bf16 weights the GEMV path (few tokens) multiplies bf16-
     * rounded activations too, so that both paths give a token the same
     * products; xr holds them (xr_cap floats). */
    float *xr;
    size_t xr_cap;
} cpu_ctx;

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
