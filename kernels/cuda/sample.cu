/* The LM head's reductions on the GPU: argmax (greedy rows) and top-k
 * candidates with the softmax normaliser (the rows that sample), so that only
 * a few candidates per row cross to the host (kernels/sampling.h).
 *
 * top_k: one block per row. A radix select over the candidates' order keys
 * (four 8-bit passes of a shared histogram) finds the k-th candidate's key;
 * one pass collects the candidates above it and, in id order, as many equal to
 * it as are needed; a bitonic sort in shared memory orders them; a last pass
 * sums exp(v - max) in double, as the CPU does. The default since GPU run 4
 * (bitwise the CPU's candidates; batch-64 top-k 50 decode 27.8 ms a step
 * against 35.5 through the host on an H200); with GLMTP_GPU_TOPK=0 the rows
 * are copied to the host and cpu_top_k runs there. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"

extern "C" {
#include "../cpu/cpu.h" /* cpu_top_k: the host path */
}

enum { TOPK_THREADS = 512 };

static __device__ __forceinline__ void take_better(float &bv, int &bi, float v, int i) {
    if (v > bv || (v == bv && i < bi)) bv = v, bi = i;
}

/* One block per row of [n, ld]: the first maximum among columns [0, V), its
 * value too (the vocab-parallel LM head compares the ranks' maxima). */
static __global__ void argmax_val_kernel(int32_t *out_idx, float *out_val, const float *logits, int V, int ld) {
    pdl_begin();
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

/* An unsigned key that orders floats as < does (v is never NaN here). */
static __device__ __forceinline__ uint32_t order_key(float v) {
    uint32_t u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static __device__ __forceinline__ float key_value(uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

/* Candidate a comes before b: larger key, then lower id. */
static __device__ __forceinline__ bool before(uint32_t ka, int ia, uint32_t kb, int ib) {
    return ka > kb || (ka == kb && ia < ib);
}

static __device__ double block_sum_f64(double v, double *red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) red[w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < nw ? red[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) red[0] = v;
    }
    __syncthreads();
    return red[0];
}

/* One block of TOPK_THREADS per row; k <= KERNELS_TOPK_MAX. */
static __global__ void top_k_kernel(kcand *out, double *sums, const float *logits, const float *temps, int V, int ld,
                                    int k) {
    pdl_begin();
    __shared__ uint32_t hist[256];
    __shared__ uint32_t ckey[KERNELS_TOPK_MAX];
    __shared__ int cid[KERNELS_TOPK_MAX];
    __shared__ int warp_eq[TOPK_THREADS / 32];
    __shared__ double red[32];
    __shared__ uint32_t s_digit;
    __shared__ int s_rem, s_n, s_eq_seen;
    const float *l = logits + (size_t)blockIdx.x * ld;
    const float t = temps[blockIdx.x];
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;

    /* The k-th candidate's key, 8 bits at a time from the top. */
    uint32_t prefix = 0, mask = 0;
    int rem = k; /* of the candidates matching prefix so far, how many to take */
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        for (int i = tid; i < V; i += blockDim.x) {
            uint32_t key = order_key(sampling_value(l[i], t));
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (tid == 0) {
            int b = 255, r = rem;
            for (; b > 0 && (int)hist[b] < r; b--) r -= (int)hist[b];
            s_digit = (uint32_t)b, s_rem = r;
        }
        __syncthreads();
        prefix |= s_digit << shift;
        mask |= 0xffu << shift;
        rem = s_rem;
        __syncthreads(); /* everyone has read s_digit before the next pass writes it */
    }
    const uint32_t kt = prefix; /* above it: k - rem candidates; equal to it: take the first rem by id */

    if (tid == 0) s_n = 0, s_eq_seen = 0;
    __syncthreads();
    for (int base = 0; base < V; base += blockDim.x) {
        int i = base + tid;
        uint32_t key = i < V ? order_key(sampling_value(l[i], t)) : 0u;
        bool eq = i < V && key == kt;
        if (i < V && key > kt) {
            int slot = atomicAdd(&s_n, 1);
            if (slot < k) ckey[slot] = key, cid[slot] = i; /* always, when the select is right */
        }
        unsigned ballot = __ballot_sync(0xffffffffu, eq);
        if (lane == 0) warp_eq[w] = __popc(ballot);
        __syncthreads();
        int before_me = s_eq_seen + __popc(ballot & ((1u << lane) - 1u));
        for (int j = 0; j < w; j++) before_me += warp_eq[j];
        if (eq && before_me < rem) {
            int slot = atomicAdd(&s_n, 1);
            if (slot < k) ckey[slot] = key, cid[slot] = i;
        }
        __syncthreads();
        if (tid == 0)
            for (int j = 0; j < (int)(blockDim.x >> 5); j++) s_eq_seen += warp_eq[j];
        __syncthreads();
    }

    /* Bitonic sort of the k candidates, padded to a power of two with keys
     * below every real one (-inf's key is 0x007fffff). */
    int P = 1;
    while (P < k) P <<= 1;
    for (int i = k + tid; i < P; i += blockDim.x) ckey[i] = 0u, cid[i] = INT_MAX;
    for (int size = 2; size <= P; size <<= 1)
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            __syncthreads();
            for (int i = tid; i < P; i += blockDim.x) {
                int j = i ^ stride;
                if (j <= i) continue;
                bool in_order = (i & size) == 0;
                bool swap = in_order ? before(ckey[j], cid[j], ckey[i], cid[i])
                                     : before(ckey[i], cid[i], ckey[j], cid[j]);
                if (swap) {
                    uint32_t tk = ckey[i];
                    int ti = cid[i];
                    ckey[i] = ckey[j], cid[i] = cid[j], ckey[j] = tk, cid[j] = ti;
                }
            }
        }
    __syncthreads();

    kcand *o = out + (size_t)blockIdx.x * k;
    for (int i = tid; i < k; i += blockDim.x) o[i].v = key_value(ckey[i]), o[i].id = cid[i];
    const double mx = key_value(ckey[0]);
    double s = 0.0;
    if (mx != -INFINITY)
        for (int i = tid; i < V; i += blockDim.x) s += exp((double)sampling_value(l[i], t) - mx);
    s = block_sum_f64(s, red);
    if (tid == 0) sums[blockIdx.x] = s;
}

// kernel launchers

void cuda_op_argmax(void *ctx, int *out_idx, float *out_val, const float *logits, int n, int V, int ld) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (n <= 0) return;
    /* [n] indices then [n] values in one scratch buffer, one copy back */
    int32_t *d = (int32_t *)cuda_scratch(c, &c->argmax, 8 * (size_t)n);
    launch(c, argmax_val_kernel, n, 512, 0, d, (float *)(d + n), logits, V, ld);
    int32_t *h = (int32_t *)malloc(8 * (size_t)n);
    if (!h) abort();
    CUDA_CHECK(cudaMemcpyAsync(h, d, 8 * (size_t)n, cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    memcpy(out_idx, h, 4 * (size_t)n);
    memcpy(out_val, h + n, 4 * (size_t)n);
    free(h);
}

/* Without the kernel: the rows to the host, cpu_top_k there. */
static void top_k_on_host(cuda_ctx *c, kcand *out, double *sum, const float *logits, int n, int V, int ld, int k,
                          const float *temp) {
    size_t row = sizeof(float) * (size_t)V;
    size_t need = (size_t)n * V;
    if (c->host_row_cap < need) { /* pinned: a batch's rows are tens of MB per step */
        size_t cap = need > 2 * c->host_row_cap ? need : 2 * c->host_row_cap; /* a growing batch re-pins rarely */
        if (c->host_row) CUDA_CHECK(cudaFreeHost(c->host_row));
        c->host_row = NULL;
        c->host_row_cap = 0;
        CUDA_CHECK(cudaMallocHost((void **)&c->host_row, sizeof(float) * cap));
        c->host_row_cap = cap;
    }
    CUDA_CHECK(cudaMemcpy2DAsync(c->host_row, row, logits, sizeof(float) * (size_t)ld, row, (size_t)n,
                                 cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    cpu_top_k(NULL, out, sum, c->host_row, n, V, V, k, temp);
}

void cuda_op_top_k(void *ctx, kcand *out, double *sum, const float *logits, int n, int V, int ld, int k,
                   const float *temp) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (n <= 0) return;
    if (k < 1 || k > V || k > KERNELS_TOPK_MAX) { /* the kernel's shared arrays hold KERNELS_TOPK_MAX */
        fprintf(stderr, "glmtp: top_k called with k = %d outside [1, min(V = %d, %d)]\n", k, V, KERNELS_TOPK_MAX);
        abort();
    }
    if (!c->gpu_top_k) {
        top_k_on_host(c, out, sum, logits, n, V, ld, k, temp);
        return;
    }
    /* one scratch buffer: temperatures [n] in, candidates [n, k] and sums [n] out */
    size_t cand_bytes = sizeof(kcand) * (size_t)n * k, sum_off = (cand_bytes + 7) & ~(size_t)7;
    size_t out_bytes = sum_off + sizeof(double) * (size_t)n;
    char *d = (char *)cuda_scratch(c, &c->top_k, out_bytes + sizeof(float) * (size_t)n);
    float *d_temp = (float *)(d + out_bytes);
    CUDA_CHECK(cudaMemcpyAsync(d_temp, temp, sizeof(float) * (size_t)n, cudaMemcpyHostToDevice, c->stream));
    launch(c, top_k_kernel, n, TOPK_THREADS, 0, (kcand *)d, (double *)(d + sum_off), logits, (const float *)d_temp, V,
           ld, k);
    char *h = (char *)malloc(out_bytes);
    if (!h) abort();
    CUDA_CHECK(cudaMemcpyAsync(h, d, out_bytes, cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    memcpy(out, h, cand_bytes);
    memcpy(sum, h + sum_off, sizeof(double) * (size_t)n);
    free(h);
}
