/* Sampling: out_ids[i] (host) = sample of logits row i of [n, V] fp32.
 *
 * Greedy rows (temperature <= 0 or top_k == 1, the CPU backend's test) are
 * argmax'ed on the GPU: one block per row, ties to the lowest id as the CPU's
 * first-maximum scan, NaN never wins. Rows with temperature, top-k or top-p
 * are copied to the host and sampled by the CPU backend's own cpu_sample, so a
 * seed draws the same token on either backend (sorting 151552 candidates is a
 * fraction of a decode step on the host; a GPU sampler can come later).
 *
 * The logits may also be in host memory: rank 0 samples the gathered
 * vocab-parallel logits there (coordinator/gen.c). Then everything is done by
 * cpu_sample, with no copy to the device and back. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"

extern "C" {
#include "../cpu/cpu.h" /* cpu_sample: the reference algorithm, reused */
}

static __device__ __forceinline__ void take_better(float &bv, int &bi, float v, int i) {
    if (v > bv || (v == bv && i < bi)) bv = v, bi = i;
}

/* One block per row of [n, ld]: the first maximum among columns [0, V), its
 * value too (the vocab-parallel LM head compares the ranks' maxima). */
static __global__ void argmax_val_kernel(int32_t *out_idx, float *out_val, const float *logits, int V, int ld) {
    __shared__ float sv[32];
    __shared__ int si[32];
    const float *l = logits + (size_t)blockIdx.x * ld;
    float bv = -INFINITY;
    int bi = INT_MAX;
    for (int i = threadIdx.x; i < V; i += blockDim.x) take_better(bv, bi, l[i], i);
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        take_better(bv, bi, ov, oi);
    }
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) sv[w] = bv, si[w] = bi;
    __syncthreads();
    if (w == 0) {
        bv = lane < nw ? sv[lane] : -INFINITY;
        bi = lane < nw ? si[lane] : INT_MAX;
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            take_better(bv, bi, ov, oi);
        }
        if (lane == 0) {
            out_idx[blockIdx.x] = bi == INT_MAX ? 0 : bi;
            out_val[blockIdx.x] = bi == INT_MAX ? -INFINITY : bv;
        }
    }
}

static int is_greedy(const ksample_params *p) { return p->temperature <= 0.0f || p->top_k == 1; }

static int on_device(const void *p) {
    cudaPointerAttributes at;
    cudaError_t e = cudaPointerGetAttributes(&at, p);
    if (e != cudaSuccess) { /* CUDA < 11 answered plain host pointers with an error */
        (void)cudaGetLastError();
        return 0;
    }
    return at.type == cudaMemoryTypeDevice || at.type == cudaMemoryTypeManaged;
}

// kernel launchers

void cuda_op_argmax(void *ctx, int *out_idx, float *out_val, const float *logits, int n, int V, int ld) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (n <= 0) return;
    /* [n] indices then [n] values in one scratch buffer, one copy back */
    int32_t *d = (int32_t *)cuda_scratch(c, &c->argmax, 8 * (size_t)n);
    argmax_val_kernel<<<n, 512, 0, c->stream>>>(d, (float *)(d + n), logits, V, ld);
    CUDA_CHECK_LAUNCH();
    int32_t *h = (int32_t *)malloc(8 * (size_t)n);
    if (!h) abort();
    CUDA_CHECK(cudaMemcpyAsync(h, d, 8 * (size_t)n, cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    memcpy(out_idx, h, 4 * (size_t)n);
    memcpy(out_val, h + n, 4 * (size_t)n);
    free(h);
}

void cuda_op_sample(void *ctx, int *out_ids, const float *logits, int n, int V, const ksample_params *p) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (n <= 0) return;
    if (!on_device(logits)) {
        cpu_sample(NULL, out_ids, logits, n, V, p);
        return;
    }
    float *vals = (float *)malloc(sizeof(float) * (size_t)n);
    if (!vals) abort();
    cuda_op_argmax(ctx, out_ids, vals, logits, n, V, V);
    free(vals);
    for (int i = 0; i < n; i++) {
        if (is_greedy(&p[i])) continue;
        if (c->host_row_cap < (size_t)V) {
            free(c->host_row);
            c->host_row = (float *)malloc(sizeof(float) * (size_t)V);
            if (!c->host_row) abort();
            c->host_row_cap = (size_t)V;
        }
        CUDA_CHECK(cudaMemcpyAsync(c->host_row, logits + (size_t)i * V, sizeof(float) * (size_t)V,
                                   cudaMemcpyDeviceToHost, c->stream));
        CUDA_CHECK(cudaStreamSynchronize(c->stream));
        cpu_sample(NULL, &out_ids[i], c->host_row, 1, V, &p[i]);
    }
}
