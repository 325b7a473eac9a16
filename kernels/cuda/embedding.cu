/* Embedding lookup: out[t, :] = E[ids[t], :]. out [T, H] bf16, E [V, H] (bf16,
 * or fp32 if it was uploaded as a vector), ids dev [T]. */
#include "cuda_common.cuh"

static __global__ void embedding_kernel(bf16 *out, const void *E, int dtype, const int32_t *ids, int H) {
    pdl_begin();
    int t = blockIdx.x;
    size_t base = (size_t)ids[t] * H;
    bf16 *o = out + (size_t)t * H;
    for (int i = threadIdx.x; i < H; i += blockDim.x) o[i] = f2bf(wload(E, dtype, base + i));
}

// kernel launchers

static void embedding_cuda(const cuda_ctx *c, bf16 *out, const kweight *E, const int32_t *ids, int T) {
    if (T <= 0) return;
    launch(c, embedding_kernel, T, 256, 0, out, E->data, (int)E->dtype, ids, E->cols);
}

void cuda_op_embedding(void *ctx, void *out, const kweight *E, const int32_t *ids, int T) {
    embedding_cuda((const cuda_ctx *)ctx, (bf16 *)out, E, ids, T);
}
