/* Embedding lookup: out[t, :] = E[ids[t], :]. out [T, H] bf16, E [V, H] (bf16,
 * or fp32 if it was uploaded as a vector), ids dev [T]. */
#include "cuda_common.cuh"

static __global__ void embedding_kernel(bf16 *out, const void *E, int dtype, const int32_t *ids, int H) {
    int t = blockIdx.x;
    size_t base = (size_t)ids[t] * H;
    bf16 *o = out + (size_t)t * H;
    for (int i = threadIdx.x; i < H; i += blockDim.x) o[i] = f2bf(wload(E, dtype, base + i));
}

// kernel launchers

static void embedding_cuda(cudaStream_t s, bf16 *out, const kweight *E, const int32_t *ids, int T) {
    if (T <= 0) return;
    embedding_kernel<<<T, 256, 0, s>>>(out, E->data, E->dtype, ids, E->cols);
    CUDA_CHECK_LAUNCH();
}

void cuda_op_embedding(void *ctx, void *out, const kweight *E, const int32_t *ids, int T) {
    embedding_cuda(((cuda_ctx *)ctx)->stream, (bf16 *)out, E, ids, T);
}
