/* KV store: rows k[t, :kv_width] and v[t, :kv_width] (k, v [T, ld] bf16, views
 * into the QKV buffer) go to slot b->slots[t] of the paged caches
 * kcache, vcache [n_blocks * block_size, kv_width] bf16 (kernels.h layout), or
 * with b->kv_dtype KV_DTYPE_FP8 quantised per (token, KV head) row into e4m3
 * bytes and fp32 scales (kernels.h; cuda_common.cuh fp8_quantise_row_warp).
 * The fp8 store is shared with the fused RoPE + store (rope.cu). */
#include "cuda_common.cuh"

static __global__ void kv_store_kernel(bf16 *kc, bf16 *vc, const bf16 *k, const bf16 *v, int ld, int kv_width,
                                       const int32_t *slots) {
    pdl_begin();
    int t = blockIdx.x;
    size_t dst = (size_t)slots[t] * kv_width, src = (size_t)t * ld;
    for (int i = threadIdx.x; i < kv_width; i += blockDim.x) {
        kc[dst + i] = k[src + i];
        vc[dst + i] = v[src + i];
    }
}

static __global__ void kv_store_fp8_kernel(kv_fp8_dst dst, const bf16 *k, const bf16 *v, int ld,
                                           const int32_t *slots) {
    pdl_begin();
    int t = blockIdx.x;
    kv_store_fp8_rows(dst, k + (size_t)t * ld, v + (size_t)t * ld, slots[t]);
}

// kernel launchers

static void kv_store_cuda(const cuda_ctx *c, bf16 *kc, bf16 *vc, const bf16 *k, const bf16 *v, int ld, int kv_width,
                          const kattn_batch *b) {
    if (b->n_tokens <= 0 || kv_width <= 0) return;
    if (b->kv_dtype == KV_DTYPE_FP8) {
        kv_fp8_dst dst = kv_fp8_dst_of(kc, vc, kv_width, b);
        launch(c, kv_store_fp8_kernel, b->n_tokens, 128, 0, dst, k, v, ld, b->slots);
        return;
    }
    launch(c, kv_store_kernel, b->n_tokens, 128, 0, kc, vc, k, v, ld, kv_width, b->slots);
}

void cuda_op_kv_store(void *ctx, void *kcache, void *vcache, const void *k, const void *v, int ld, int kv_width,
                      const kattn_batch *b) {
    kv_store_cuda((const cuda_ctx *)ctx, (bf16 *)kcache, (bf16 *)vcache, (const bf16 *)k, (const bf16 *)v, ld,
                  kv_width, b);
}
