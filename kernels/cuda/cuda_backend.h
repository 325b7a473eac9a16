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

/* attention_prefill.cu's plan of one step: the query tiles of its prefill runs
 * ([n_tiles][4] int32: first token, rows, sequence, first position) followed by
 * the indices of the other tokens ([n_rest] int32), on the host and the device,
 * and what it was made from (the step's serial, T and host pos/seq), so the
 * layers of one step build and upload it once. */
typedef struct attn_plan {
    cuda_buf dev;       /* tiles then other tokens, uploaded */
    int32_t *host;      /* the same on the host (malloc), host_cap int32 */
    int32_t *key;       /* pos[0..T) then seq[0..T) it was made from (malloc), key_cap int32 */
    size_t host_cap, key_cap;
    uint64_t serial;
    int T;              /* 0: no plan yet */
    int bm;             /* query rows per tile it was cut into (the kernel variant's) */
    int n_tiles, n_rest, rest_max_pos;
} attn_plan;

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
    cuda_buf argmax;     /* argmax: per-row ids and values */
    cuda_buf top_k;      /* top_k: temperatures in, candidates and sums out */
    cuda_buf rope_inv;   /* rope: inverse frequencies for (rope_base, rope_rot) */
    attn_plan plan;       /* attention: the step's prefill tiles (attention_prefill.cu) */
    int no_flash_prefill; /* GLMTP_NO_FLASH_PREFILL=1 at creation: every token through the general kernel */
    int flash_variant;    /* GLMTP_FLASH_VARIANT at creation: 1 = the 64-row prefill kernel, else 2 (128-row) */
    int flash_ran;        /* the variant the last attention call launched, 0 none (kernels_cuda_flash_variant) */
    const char *matmul_ran;    /* the path the last matmul call took (matmul.cu's names; kernels_cuda_matmul_ran) */
    const char *attention_ran; /* the kernel attention.cu launched last call: "per_head", "grouped" or NULL */
    float rope_base;
    int rope_rot;
    uint64_t scratch_gen; /* bumped whenever cuda_scratch reallocates: graphs made before are stale */
    int no_gemv;          /* GLMTP_NO_GEMV=1 at creation: small-T matmuls through cuBLASLt too */
    int gemv_split;       /* GLMTP_GEMV_SPLIT (default on): the GEMV splits K over warps for small row counts */
    int lt_bias;          /* GLMTP_LT_BIAS=1 at creation: matmul's bias in cuBLASLt's epilogue */
    int skinny;           /* GLMTP_SKINNY=1 at creation: T = 2..8 matmuls on matmul.cu's tensor-core kernel */
    int fused_add_norm;   /* GLMTP_FUSED_ADD_NORM (default on): add_rmsnorm in one kernel */
    int fused_rope_kv;    /* GLMTP_FUSED_ROPE_KV (default on): rope_kv_store in one kernel */
    int fused_swiglu;     /* GLMTP_FUSED_SWIGLU (default on): matmul_swiglu in one GEMV (T = 1) */
    int gpu_top_k;        /* GLMTP_GPU_TOPK (default on): top_k in a kernel, not on the host */
    int pdl;              /* GLMTP_PDL=1 at creation on sm_90+: launch() overlaps kernels (cuda_common.cuh) */
    int gqa_attention;    /* GLMTP_GQA_ATTENTION (default on): attention.cu's grouped kernel */
    float *host_row; /* top_k without its kernel: the rows on the host (pinned), host_row_cap floats */
    size_t host_row_cap;
} cuda_ctx;

/* At least `bytes` of scratch in b (contents undefined). Growing waits for the
 * stream first, so queued kernels never see their buffer freed. */
void *cuda_scratch(cuda_ctx *c, cuda_buf *b, size_t bytes);
void cuda_buf_free(cuda_ctx *c, cuda_buf *b);

/* graph.cu: CUDA graphs of the ops on ctx->stream (kernels_iface semantics). */
int cuda_capture_begin(void *ctx);
void *cuda_capture_end(void *ctx);
int cuda_graph_launch(void *ctx, void *graph);
void cuda_graph_destroy(void *ctx, void *graph);

/* matmul.cu: releases the cuBLASLt plan cache. */
void cuda_matmul_release(cuda_ctx *c);

/* attention_prefill.cu: runs the step's prefill runs (tokens of one sequence at
 * consecutive positions, at least a threshold long) through the tensor-core
 * kernel when the shapes allow (b->host_pos/host_seq set, d 64 or 128, aligned
 * rows) and returns how many tokens are left for the general kernel in
 * attention.cu: then *rest is the device list of their indices (NULL when it
 * handled none: all T tokens, in order) and *rest_max_pos their largest
 * position. Arguments as the attention op's. */
int cuda_attention_prefill(cuda_ctx *c, void *out, const void *q, int ld_q, const void *kcache, const void *vcache,
                           const kattn_batch *b, int n_q, int n_kv, int q_per_kv, int d, float scale,
                           const int32_t **rest, int *rest_max_pos);

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
void cuda_op_rope_kv_store(void *ctx, void *qkv, void *kcache, void *vcache, int T, int ld, int n_q, int n_kv, int d,
                           int rot_dim, float base, const kattn_batch *b);
void cuda_op_add_rmsnorm(void *ctx, void *x, const void *y, void *out, const kweight *w, int T, float eps);
void cuda_op_matmul_swiglu(void *ctx, void *out, const void *x, const kweight *W, void *gu, int T);
void cuda_op_gather_rows(void *ctx, void *out, const void *x, const int *rows, int n, int width);
void cuda_op_argmax(void *ctx, int *out_idx, float *out_val, const float *logits, int n, int V, int ld);
void cuda_op_top_k(void *ctx, kcand *out, double *sum, const float *logits, int n, int V, int ld, int k,
                   const float *temp);
/* The vision tower's ops: layernorm.cu, gelu.cu, attention_full.cu. */
void cuda_op_layernorm(void *ctx, void *out, const void *x, const kweight *w, const kweight *b, int T, float eps);
void cuda_op_gelu(void *ctx, void *x, size_t n);
void cuda_op_attention_full(void *ctx, void *out, const void *q, const void *k, const void *v, int ld, int T,
                            int n_heads, int d, float scale);

#endif
