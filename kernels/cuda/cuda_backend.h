/* cuda_backend.h: internal to the CUDA backend (C++; .cu files only).
 *
 * The context every op receives as its `void *ctx`, the scratch buffers the ops
 * grow on demand, and the op entries that cuda_backend.cu puts into its
 * kernels_iface table, one file each (kernels/cuda/<op>.cu; the kernels and
 * their launchers stay static there). Shapes and ownership as in kernels.h:
 * activations and the KV cache are bf16, logits fp32, matrices bf16, vectors
 * (rows = 1: norm weights, biases) fp32. Every launch goes on ctx->stream. */
#ifndef GLMTP_CUDA_BACKEND_H
#define GLMTP_CUDA_BACKEND_H

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "../kernels.h"
#include "cuda_check.h"

/* Device memory owned by the context, grown (never shrunk) by cuda_scratch. */
typedef struct cuda_buf {
    void *p;
    size_t bytes;
} cuda_buf;

typedef struct lt_plan lt_plan; /* matmul.cu: cached cuBLASLt descriptors + algorithm */

typedef struct cuda_ctx {
    int device, sm_count;
    cudaStream_t stream; /* the one stream of this backend (NCCL uses it too) */
    cublasLtHandle_t lt;
    void *lt_workspace;
    size_t lt_workspace_bytes;
    lt_plan *plans; /* matmul.cu's cache, n_plans slots */
    int n_plans, next_plan;
    cuda_buf gemm_f32;   /* matmul with bias: fp32 GEMM output [T, N] */
    cuda_buf attn_part;  /* attention: partial results of sequence splits */
    cuda_buf rows;       /* gather_rows: row ids copied from the host */
    cuda_buf gather_tmp; /* gather_rows: staging when out overlaps x */
    cuda_buf argmax;     /* sample: per-row argmax ids */
    cuda_buf rope_inv;   /* rope: inverse frequencies for (rope_base, rope_rot) */
    float rope_base;
    int rope_rot;
    float *host_row; /* sample: one logits row on the host (malloc) */
    size_t host_row_cap;
} cuda_ctx;

/* At least `bytes` of scratch in b (contents undefined). Growing waits for the
 * stream first, so queued kernels never see their buffer freed. */
void *cuda_scratch(cuda_ctx *c, cuda_buf *b, size_t bytes);
void cuda_buf_free(cuda_ctx *c, cuda_buf *b);

/* matmul.cu: releases the cuBLASLt plan cache. */
void cuda_matmul_release(cuda_ctx *c);

/* The op entries (signatures of kernels_iface, same argument order and shapes
 * as kernels/cpu/). */
void cuda_op_embedding(void *ctx, void *out, const kweight *E, const int32_t *ids, int T);
void cuda_op_rmsnorm(void *ctx, void *out, const void *x, const kweight *w, int T, float eps);
void cuda_op_matmul(void *ctx, void *out, const void *x, const kweight *W, const kweight *bias, int T);
void cuda_op_matmul_f32(void *ctx, float *out, const void *x, const kweight *W, int T);
void cuda_op_rope(void *ctx, void *qkv, const int32_t *pos, int T, int ld, int n_heads, int d, int rot_dim,
                  float base);
void cuda_op_kv_store(void *ctx, void *kcache, void *vcache, const void *k, const void *v, int ld, int kv_width,
                      const kattn_batch *b);
void cuda_op_attention(void *ctx, void *out, const void *q, int ld_q, const void *kcache, const void *vcache,
                       const kattn_batch *b, int n_q, int n_kv, int q_per_kv, int d, float scale);
void cuda_op_swiglu(void *ctx, void *out, const void *gu, int T, int F);
void cuda_op_add(void *ctx, void *x, const void *y, size_t n);
void cuda_op_gather_rows(void *ctx, void *out, const void *x, const int *rows, int n, int width);
void cuda_op_sample(void *ctx, int *out_ids, const float *logits, int n, int V, const ksample_params *p);

#endif
