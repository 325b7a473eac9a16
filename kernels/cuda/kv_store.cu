/* KV store: rows k[t, :kv_width] and v[t, :kv_width] (k, v [T, ld] bf16, views
 * into the QKV buffer) go to slot b->slots[t] of the paged caches
 * kcache, vcache [n_blocks * block_size, kv_width] bf16 (kernels.h layout). */
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

// kernel launchers

static void kv_store_cuda(const cuda_ctx *c, bf16 *kc, bf16 *vc, const bf16 *k, const bf16 *v, int ld, int kv_width,
                          const kattn_batch *b) {
    if (b->n_tokens <= 0 || kv_width <= 0) return;
    launch(c, kv_store_kernel, b->n_tokens, 128, 0, kc, vc, k, v, ld, kv_width, b->slots);
}

void cuda_op_kv_store(void *ctx, void *kcache, void *vcache, const void *k, const void *v, int ld, int kv_width,
                      const kattn_batch *b) {
    kv_store_cuda((const cuda_ctx *)ctx, (bf16 *)kcache, (bf16 *)vcache, (const bf16 *)k, (const bf16 *)v, ld,
                  kv_width, b);
}
