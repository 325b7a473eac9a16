/* LayerNorm with bias (the GLM-4V vision tower): out[t] = (x[t] - mean) /
 * sqrt(var + eps) * w + b, biased variance, fp32 math and one rounding to bf16
 * at the end. x, out [T, N] bf16 and may alias: each thread rewrites only the
 * elements it read, after the block-wide sums (x[0] is read by every thread
 * before the first). w, b [1, N] fp32 (or bf16).
 *
 * As the CPU backend (kernels/cpu/norm.c): two passes about the row's first
 * element x0, so a large common offset never rounds the deviations. */
#include "cuda_common.cuh"

static __global__ void layernorm_kernel(bf16 *out, const bf16 *x, const void *w, int wdtype, const void *b,
                                        int bdtype, int N, float eps) {
    pdl_begin();
    const bf16 *xr = x + (size_t)blockIdx.x * N;
    bf16 *o = out + (size_t)blockIdx.x * N;
    float x0 = bf2f(xr[0]), s = 0.0f;
    for (int i = threadIdx.x; i < N; i += blockDim.x) s += bf2f(xr[i]) - x0;
    float mu = block_sum(s) / (float)N, ss = 0.0f; /* mean - x0 */
    for (int i = threadIdx.x; i < N; i += blockDim.x) {
        float z = (bf2f(xr[i]) - x0) - mu;
        ss += z * z;
    }
    ss = block_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)N + eps); /* as the CPU backend: no rsqrtf approximation */
    for (int i = threadIdx.x; i < N; i += blockDim.x)
        o[i] = f2bf(((bf2f(xr[i]) - x0) - mu) * r * wload(w, wdtype, i) + wload(b, bdtype, i));
}

// kernel launchers

static void layernorm_cuda(const cuda_ctx *c, bf16 *out, const bf16 *x, const kweight *w, const kweight *b, int T,
                           float eps) {
    int N = w->cols;
    if (T <= 0 || N <= 0) return;
    launch(c, layernorm_kernel, T, N >= 1024 ? 256 : 128, 0, out, x, (const void *)w->data, (int)w->dtype,
           (const void *)b->data, (int)b->dtype, N, eps);
}

void cuda_op_layernorm(void *ctx, void *out, const void *x, const kweight *w, const kweight *b, int T, float eps) {
    layernorm_cuda((const cuda_ctx *)ctx, (bf16 *)out, (const bf16 *)x, w, b, T, eps);
}
