/* Residual add: x += y over n bf16 elements, summed in fp32 and rounded once.
 * Memory-bound, so 16-byte-aligned buffers go 8 elements per load (the forward
 * pass's buffers come straight from cudaMalloc); the rest element by element. */
#include "cuda_common.cuh"

static __device__ __forceinline__ float bits_lo(unsigned u) { return __uint_as_float(u << 16); }
static __device__ __forceinline__ float bits_hi(unsigned u) { return __uint_as_float(u & 0xffff0000u); }

/* Two bf16 sums packed as one 32-bit word, each rounded to nearest even. */
static __device__ __forceinline__ unsigned add2(unsigned a, unsigned b) {
    unsigned short lo = __bfloat16_as_ushort(f2bf(bits_lo(a) + bits_lo(b)));
    unsigned short hi = __bfloat16_as_ushort(f2bf(bits_hi(a) + bits_hi(b)));
    return (unsigned)lo | ((unsigned)hi << 16);
}

static __global__ void add_vec8_kernel(uint4 *x, const uint4 *y, size_t n8) {
    pdl_begin();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += (size_t)gridDim.x * blockDim.x) {
        uint4 a = x[i], b = y[i];
        a.x = add2(a.x, b.x);
        a.y = add2(a.y, b.y);
        a.z = add2(a.z, b.z);
        a.w = add2(a.w, b.w);
        x[i] = a;
    }
}

static __global__ void add_kernel(bf16 *x, const bf16 *y, size_t n) {
    pdl_begin();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = f2bf(bf2f(x[i]) + bf2f(y[i]));
}

// kernel launchers

static void add_cuda(const cuda_ctx *c, bf16 *x, const bf16 *y, size_t n) {
    if (n == 0) return;
    size_t done = 0;
    if ((((uintptr_t)x | (uintptr_t)y) & 15) == 0 && n >= 8) {
        size_t n8 = n / 8;
        launch(c, add_vec8_kernel, grid_for(c, n8, 256), 256, 0, (uint4 *)x, (const uint4 *)y, n8);
        CUDA_CHECK_LAUNCH();
        done = n8 * 8;
    }
    if (done < n) {
        launch(c, add_kernel, grid_for(c, n - done, 256), 256, 0, x + done, y + done, n - done);
        CUDA_CHECK_LAUNCH();
    }
}

void cuda_op_add(void *ctx, void *x, const void *y, size_t n) {
    add_cuda((const cuda_ctx *)ctx, (bf16 *)x, (const bf16 *)y, n);
}
