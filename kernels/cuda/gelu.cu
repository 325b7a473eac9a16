/* Exact GELU in place (the GLM-4V vision tower's MLP): x = 0.5 x (1 +
 * erf(x / sqrt 2)), computed as the CPU backend does (kernels/cpu/
 * elementwise.c), 0.5 x erfc(-x / sqrt 2) in fp32, which does not cancel for
 * large negative x; one rounding to bf16. */
#include "cuda_common.cuh"

static __device__ __forceinline__ float gelu_f(float x) { return 0.5f * x * erfcf(-x * 0.70710678118654752f); }

static __global__ void gelu_kernel(bf16 *x, size_t n) {
    pdl_begin();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = f2bf(gelu_f(bf2f(x[i])));
}

/* 8 elements (one 16-byte load and store) a thread per step. */
static __global__ void gelu8_kernel(uint4 *x, size_t n8) {
    pdl_begin();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += (size_t)gridDim.x * blockDim.x) {
        float f[8];
        bf16x8_to_f32(f, x[i]);
#pragma unroll
        for (int e = 0; e < 8; e++) f[e] = gelu_f(f[e]);
        x[i] = f32x8_to_bf16(f);
    }
}

// kernel launchers

/* 16-byte-aligned buffers go 8 at a time, with the last n % 8 elements (or all
 * of an unaligned buffer) element by element. */
static void gelu_cuda(const cuda_ctx *c, bf16 *x, size_t n) {
    if (n == 0) return;
    size_t done = 0;
    if (aligned16(x) && n >= 8) {
        size_t n8 = n / 8;
        launch(c, gelu8_kernel, grid_for(c, n8, 256), 256, 0, (uint4 *)x, n8);
        done = n8 * 8;
    }
    if (done < n) launch(c, gelu_kernel, grid_for(c, n - done, 256), 256, 0, x + done, n - done);
}

void cuda_op_gelu(void *ctx, void *x, size_t n) { gelu_cuda((const cuda_ctx *)ctx, (bf16 *)x, n); }
