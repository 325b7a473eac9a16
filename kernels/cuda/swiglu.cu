/* SwiGLU: out [T, F] = silu(gu[:, :F]) * gu[:, F:], gu [T, 2F] bf16 (gate half
 * first, spec §2.6). fp32 math with expf, the CPU backend's formula. */
#include "cuda_common.cuh"

static __global__ void swiglu_kernel(bf16 *out, const bf16 *gu, size_t n, int F) {
    pdl_begin();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t t = i / (size_t)F, j = i % (size_t)F;
        float g = bf2f(gu[t * 2 * F + j]), u = bf2f(gu[t * 2 * F + F + j]);
        out[i] = f2bf(g / (1.0f + expf(-g)) * u);
    }
}

// kernel launchers

static void swiglu_cuda(const cuda_ctx *c, bf16 *out, const bf16 *gu, int T, int F) {
    size_t n = (size_t)T * F;
    if (n == 0) return;
    launch(c, swiglu_kernel, grid_for(c, n, 256), 256, 0, out, gu, n, F);
}

void cuda_op_swiglu(void *ctx, void *out, const void *gu, int T, int F) {
    swiglu_cuda((const cuda_ctx *)ctx, (bf16 *)out, (const bf16 *)gu, T, F);
}
