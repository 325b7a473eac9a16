/* Row gather: out[i, :] = x[rows[i], :] for i < n, width elements of bf16;
 * rows is host memory (the step's logit rows), copied to the device here.
 * If out overlaps the rows read (an in-place gather), the rows go through a
 * scratch buffer first, which gives the CPU backend's memmove semantics. */
#include "cuda_common.cuh"

static __global__ void gather_rows_kernel(bf16 *out, const bf16 *x, const int32_t *rows, int width) {
    pdl_begin();
    int i = blockIdx.x;
    const bf16 *src = x + (size_t)rows[i] * width;
    bf16 *dst = out + (size_t)i * width;
    for (int j = threadIdx.x; j < width; j += blockDim.x) dst[j] = src[j];
}

// kernel launchers

static void gather_rows_cuda(cuda_ctx *c, bf16 *out, const bf16 *x, const int *rows, int n, int width) {
    if (n <= 0 || width <= 0) return;
    int max_row = 0;
    for (int i = 0; i < n; i++)
        if (rows[i] > max_row) max_row = rows[i];
    /* int and int32_t are the same width on every platform CUDA supports. */
    int32_t *drows = (int32_t *)cuda_scratch(c, &c->rows, sizeof(int32_t) * (size_t)n);
    /* From pageable memory the copy is staged before this call returns, so the
     * caller may reuse rows at once; the kernel is ordered after it. */
    CUDA_CHECK(cudaMemcpyAsync(drows, rows, sizeof(int32_t) * (size_t)n, cudaMemcpyHostToDevice, c->stream));
    const char *xb = (const char *)x, *xe = (const char *)(x + ((size_t)max_row + 1) * width);
    const char *ob = (const char *)out, *oe = (const char *)(out + (size_t)n * width);
    bf16 *dst = out;
    int overlap = ob < xe && xb < oe;
    if (overlap) dst = (bf16 *)cuda_scratch(c, &c->gather_tmp, sizeof(bf16) * (size_t)n * width);
    launch(c, gather_rows_kernel, n, 256, 0, dst, x, drows, width);
    if (overlap)
        CUDA_CHECK(cudaMemcpyAsync(out, dst, sizeof(bf16) * (size_t)n * width, cudaMemcpyDeviceToDevice, c->stream));
}

void cuda_op_gather_rows(void *ctx, void *out, const void *x, const int *rows, int n, int width) {
    gather_rows_cuda((cuda_ctx *)ctx, (bf16 *)out, (const bf16 *)x, rows, n, width);
}
