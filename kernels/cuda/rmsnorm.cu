/* RMSNorm: out[t] = w * (x[t] / sqrt(mean(x[t]^2) + eps)), fp32 math and one
 * rounding to bf16 at the end (the original modeling_chatglm.py order; spec
 * §2.3). x, out [T, H] bf16 and may alias: each thread rewrites only the
 * elements it read, after the block-wide sum. w [1, H] fp32 (or bf16). */
#include "cuda_common.cuh"

static __global__ void rmsnorm_kernel(bf16 *out, const bf16 *x, const void *w, int wdtype, int H, float eps) {
    const bf16 *xr = x + (size_t)blockIdx.x * H;
    bf16 *o = out + (size_t)blockIdx.x * H;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
        float v = bf2f(xr[i]);
        ss += v * v;
    }
    ss = block_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)H + eps); /* as the CPU backend: no rsqrtf approximation */
    for (int i = threadIdx.x; i < H; i += blockDim.x) o[i] = f2bf(wload(w, wdtype, i) * (bf2f(xr[i]) * r));
}

// kernel launchers

static void rmsnorm_cuda(cudaStream_t s, bf16 *out, const bf16 *x, const kweight *w, int T, float eps) {
    if (T <= 0) return;
    int H = w->cols, threads = H >= 1024 ? 512 : 128;
    rmsnorm_kernel<<<T, threads, 0, s>>>(out, x, w->data, w->dtype, H, eps);
    CUDA_CHECK_LAUNCH();
}

void cuda_op_rmsnorm(void *ctx, void *out, const void *x, const kweight *w, int T, float eps) {
    rmsnorm_cuda(((cuda_ctx *)ctx)->stream, (bf16 *)out, (const bf16 *)x, w, T, eps);
}
