/* RoPE, GLM-4 flavour (spec §2.5): GPT-J rotation of adjacent pairs in dims
 * [0, rot_dim) of each of the first n_heads d-wide heads of every row of
 * qkv [T, ld] bf16, in place; dims [rot_dim, d) untouched.
 *
 * The inverse frequencies are computed on the host with the CPU backend's
 * exact expression (1 / powf(base, 2j/rot_dim)) and cached on the device per
 * (base, rot_dim), so both backends rotate by the same fp32 angles
 * (float)pos * inv[j]; sincosf here is the accurate one (no fast math), within
 * 2 ulp of the host's cosf/sinf. */
#include <stdlib.h>

#include "cuda_common.cuh"

static __global__ void rope_kernel(bf16 *qkv, const int32_t *pos, const float *inv, int T, int ld, int n_heads, int d,
                                   int half) {
    pdl_begin();
    size_t n = (size_t)T * n_heads * half;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        int j = (int)(i % half);
        size_t th = i / half;
        int h = (int)(th % n_heads), t = (int)(th / n_heads);
        float a = (float)pos[t] * inv[j], s, c;
        sincosf(a, &s, &c);
        bf16 *v = qkv + (size_t)t * ld + (size_t)h * d + 2 * j;
        float x0 = bf2f(v[0]), x1 = bf2f(v[1]);
        v[0] = f2bf(x0 * c - x1 * s);
        v[1] = f2bf(x1 * c + x0 * s);
    }
}

/* Device table of inv[j] for this (base, rot_dim); recomputed only when they
 * change (one model uses one pair, so once per run). */
static const float *rope_table(cuda_ctx *c, float base, int rot_dim) {
    int half = rot_dim / 2;
    if (c->rope_inv.p && c->rope_base == base && c->rope_rot == rot_dim) return (const float *)c->rope_inv.p;
    float *inv = (float *)malloc(sizeof(float) * (size_t)half);
    if (!inv) abort();
    for (int j = 0; j < half; j++) inv[j] = 1.0f / powf(base, (float)(2 * j) / (float)rot_dim);
    float *dev = (float *)cuda_scratch(c, &c->rope_inv, sizeof(float) * (size_t)half);
    CUDA_CHECK(cudaMemcpyAsync(dev, inv, sizeof(float) * (size_t)half, cudaMemcpyHostToDevice, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream)); /* inv is freed next */
    free(inv);
    c->rope_base = base;
    c->rope_rot = rot_dim;
    return dev;
}

/* RoPE on the n_heads heads of one token's row, the block's threads sharing
 * the pairs: the rope kernel's arithmetic per pair. */
static __device__ __forceinline__ void rope_row(bf16 *row, float p, const float *inv, int n_heads, int d, int half) {
    for (int i = threadIdx.x; i < n_heads * half; i += blockDim.x) {
        int h = i / half, j = i % half;
        float a = p * inv[j], s, c;
        sincosf(a, &s, &c);
        bf16 *v = row + (size_t)h * d + 2 * j;
        float x0 = bf2f(v[0]), x1 = bf2f(v[1]);
        v[0] = f2bf(x0 * c - x1 * s);
        v[1] = f2bf(x1 * c + x0 * s);
    }
}

/* RoPE on the q and k heads of one token (one block per token), then its K
 * and V rows into the cache slot: rope_row, and the kv_store copy after a
 * barrier, so the cache gets the rotated K exactly as the two kernels would
 * write it. */
static __global__ void rope_kv_store_kernel(bf16 *qkv, bf16 *kc, bf16 *vc, const int32_t *pos, const int32_t *slots,
                                            const float *inv, int ld, int n_heads, int d, int half, int kcol,
                                            int vcol, int kv_width) {
    pdl_begin();
    int t = blockIdx.x;
    bf16 *row = qkv + (size_t)t * ld;
    rope_row(row, (float)pos[t], inv, n_heads, d, half);
    __syncthreads();
    size_t dst = (size_t)slots[t] * kv_width;
    for (int i = threadIdx.x; i < kv_width; i += blockDim.x) {
        kc[dst + i] = row[kcol + i];
        vc[dst + i] = row[vcol + i];
    }
}

/* The same with an fp8 cache (kernels.h KV_DTYPE_FP8): the rotated K and V
 * rows quantised as kv_store.cu's fp8 kernel does. */
static __global__ void rope_kv_store_fp8_kernel(bf16 *qkv, kv_fp8_dst dst, const int32_t *pos, const int32_t *slots,
                                                const float *inv, int ld, int n_heads, int d, int half, int kcol,
                                                int vcol) {
    pdl_begin();
    int t = blockIdx.x;
    bf16 *row = qkv + (size_t)t * ld;
    rope_row(row, (float)pos[t], inv, n_heads, d, half);
    __syncthreads();
    kv_store_fp8_rows(dst, row + kcol, row + vcol, slots[t]);
}

// kernel launchers

static void rope_cuda(cuda_ctx *c, bf16 *qkv, const int32_t *pos, int T, int ld, int n_heads, int d, int rot_dim,
                      float base) {
    int half = rot_dim / 2;
    size_t n = (size_t)T * n_heads * half;
    if (n == 0) return;
    const float *inv = rope_table(c, base, rot_dim);
    launch(c, rope_kernel, grid_for(c, n, 256), 256, 0, qkv, pos, inv, T, ld, n_heads, d, half);
}

void cuda_op_rope(void *ctx, void *qkv, const int32_t *pos, int T, int ld, int n_heads, int d, int rot_dim,
                  float base) {
    rope_cuda((cuda_ctx *)ctx, (bf16 *)qkv, pos, T, ld, n_heads, d, rot_dim, base);
}

/* The fused kernel (GPU run 4: bitwise the pair), or with
 * GLMTP_FUSED_ROPE_KV=0 the two ops it replaces. */
void cuda_op_rope_kv_store(void *ctx, void *qkv, void *kcache, void *vcache, int T, int ld, int n_q, int n_kv, int d,
                           int rot_dim, float base, const kattn_batch *b) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    bf16 *q = (bf16 *)qkv;
    int kcol = n_q * d, vcol = (n_q + n_kv) * d, kv_width = n_kv * d;
    if (!c->fused_rope_kv) {
        rope_cuda(c, q, b->pos, T, ld, n_q + n_kv, d, rot_dim, base);
        cuda_op_kv_store(ctx, kcache, vcache, q + kcol, q + vcol, ld, kv_width, b);
        return;
    }
    if (T <= 0) return;
    const float *inv = rope_table(c, base, rot_dim);
    if (b->kv_dtype == KV_DTYPE_FP8) {
        launch(c, rope_kv_store_fp8_kernel, T, 256, 0, q, kv_fp8_dst_of(kcache, vcache, kv_width, b), b->pos,
               b->slots, inv, ld, n_q + n_kv, d, rot_dim / 2, kcol, vcol);
        return;
    }
    launch(c, rope_kv_store_kernel, T, 256, 0, q, (bf16 *)kcache, (bf16 *)vcache, b->pos, b->slots, inv, ld,
           n_q + n_kv, d, rot_dim / 2, kcol, vcol, kv_width);
}
