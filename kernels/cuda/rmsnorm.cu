/* RMSNorm: out[t] = w * (x[t] / sqrt(mean(x[t]^2) + eps)), fp32 math and one
 * rounding to bf16 at the end (the original modeling_chatglm.py order; spec
 * §2.3). x, out [T, H] bf16 and may alias: each thread rewrites only the
 * elements it read, after the block-wide sum. w [1, H] fp32 (or bf16). */
#include "cuda_common.cuh"

static __global__ void rmsnorm_kernel(bf16 *out, const bf16 *x, const void *w, int wdtype, int H, float eps) {
    pdl_begin();
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

/* x += y (bf16, rounded once, as the add op) then RMSNorm of the new x into
 * out, one block per row. Each thread sums and then rewrites the same elements
 * in the same order as rmsnorm_kernel with the same block size, so the result
 * is bitwise the unfused pair's; x is read and written once instead of three
 * reads and a write. */
static __global__ void add_rmsnorm_kernel(bf16 *x, const bf16 *y, bf16 *out, const void *w, int wdtype, int H,
                                          float eps) {
    pdl_begin();
    bf16 *xr = x + (size_t)blockIdx.x * H;
    const bf16 *yr = y + (size_t)blockIdx.x * H;
    bf16 *o = out + (size_t)blockIdx.x * H;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
        bf16 s = f2bf(bf2f(xr[i]) + bf2f(yr[i]));
        xr[i] = s;
        float v = bf2f(s);
        ss += v * v;
    }
    ss = block_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)H + eps);
    for (int i = threadIdx.x; i < H; i += blockDim.x) o[i] = f2bf(wload(w, wdtype, i) * (bf2f(xr[i]) * r));
}

/* The same two kernels 8 elements at a time, for rows that are a whole number
 * of 16-byte vectors (H % 8 == 0, aligned): thread i holds vectors i,
 * i + blockDim, ... (at most CH) in registers between the sum and the
 * rewrite, so x is read once and every load is 16 bytes. A one-row decode
 * step is then one round of loads instead of H / blockDim dependent ones
 * (5.8 us a call on an H200 with the loop above, 81 calls a step). Sums in
 * the same order in both kernels, so add_rmsnorm8 stays bitwise the pair. */
/* Both vector kernels end here: the block's sum of squares (this thread's part
 * in ss) to the scale, then each vector the thread holds times w, rounded
 * once, to o. */
template <int CH>
static __device__ __forceinline__ void norm8_store(float (*v)[8], float ss, const void *w, int wdtype, int H,
                                                   float eps, uint4 *o) {
    int n8 = H / 8;
    ss = block_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)H + eps);
#pragma unroll
    for (int j = 0; j < CH; j++) {
        int i = threadIdx.x + j * blockDim.x;
        if (i < n8) {
            float wf[8];
            wload8(wf, w, wdtype, (size_t)i * 8);
#pragma unroll
            for (int e = 0; e < 8; e++) v[j][e] = wf[e] * (v[j][e] * r);
            o[i] = f32x8_to_bf16(v[j]);
        }
    }
}

template <int CH>
static __global__ void rmsnorm8_kernel(bf16 *out, const bf16 *x, const void *w, int wdtype, int H, float eps) {
    pdl_begin();
    int n8 = H / 8;
    const uint4 *xr = (const uint4 *)(x + (size_t)blockIdx.x * H);
    uint4 *o = (uint4 *)(out + (size_t)blockIdx.x * H);
    float v[CH][8], ss = 0.0f;
#pragma unroll
    for (int j = 0; j < CH; j++) {
        int i = threadIdx.x + j * blockDim.x;
        if (i < n8) {
            bf16x8_to_f32(v[j], xr[i]);
#pragma unroll
            for (int e = 0; e < 8; e++) ss += v[j][e] * v[j][e];
        }
    }
    norm8_store<CH>(v, ss, w, wdtype, H, eps, o);
}

template <int CH>
static __global__ void add_rmsnorm8_kernel(bf16 *x, const bf16 *y, bf16 *out, const void *w, int wdtype, int H,
                                           float eps) {
    pdl_begin();
    int n8 = H / 8;
    uint4 *xr = (uint4 *)(x + (size_t)blockIdx.x * H);
    const uint4 *yr = (const uint4 *)(y + (size_t)blockIdx.x * H);
    uint4 *o = (uint4 *)(out + (size_t)blockIdx.x * H);
    float v[CH][8], ss = 0.0f;
#pragma unroll
    for (int j = 0; j < CH; j++) {
        int i = threadIdx.x + j * blockDim.x;
        if (i < n8) {
            float a[8], b[8];
            bf16x8_to_f32(a, xr[i]);
            bf16x8_to_f32(b, yr[i]);
#pragma unroll
            for (int e = 0; e < 8; e++) a[e] += b[e];
            uint4 s = f32x8_to_bf16(a); /* the add op's one rounding */
            xr[i] = s;
            bf16x8_to_f32(v[j], s);
#pragma unroll
            for (int e = 0; e < 8; e++) ss += v[j][e] * v[j][e];
        }
    }
    norm8_store<CH>(v, ss, w, wdtype, H, eps, o);
}

// kernel launchers

/* The vector kernels' shape for rows of H: threads (a multiple of 32, at most
 * 1024) and vectors per thread (1, 2 or 4); 0 when they do not apply and the
 * element loop runs instead. */
static int rmsnorm8_shape(const void *x, const void *out, const kweight *w, int *threads) {
    int H = w->cols, n8 = H / 8;
    if (H % 8 || n8 > 4 * 1024 || !aligned16(x) || !aligned16(out) || !aligned16(w->data))
        return 0;
    *threads = n8 < 1024 ? CEIL_DIV(n8, 32) * 32 : 1024;
    int ch = CEIL_DIV(n8, *threads);
    return ch <= 1 ? 1 : ch <= 2 ? 2 : 4;
}

static void rmsnorm_cuda(const cuda_ctx *c, bf16 *out, const bf16 *x, const kweight *w, int T, float eps) {
    if (T <= 0) return;
    int H = w->cols, threads = 0, ch = rmsnorm8_shape(x, out, w, &threads);
    void *wd = w->data;
    int wt = (int)w->dtype;
    if (ch == 1) launch(c, rmsnorm8_kernel<1>, T, threads, 0, out, x, (const void *)wd, wt, H, eps);
    else if (ch == 2) launch(c, rmsnorm8_kernel<2>, T, threads, 0, out, x, (const void *)wd, wt, H, eps);
    else if (ch == 4) launch(c, rmsnorm8_kernel<4>, T, threads, 0, out, x, (const void *)wd, wt, H, eps);
    else launch(c, rmsnorm_kernel, T, H >= 1024 ? 512 : 128, 0, out, x, (const void *)wd, wt, H, eps);
}

void cuda_op_rmsnorm(void *ctx, void *out, const void *x, const kweight *w, int T, float eps) {
    rmsnorm_cuda((const cuda_ctx *)ctx, (bf16 *)out, (const bf16 *)x, w, T, eps);
}

/* The fused kernel (GPU run 4: bitwise the pair, the same tokens), or with
 * GLMTP_FUSED_ADD_NORM=0 the two ops it replaces. The fused
 * kernel takes the vector form exactly when rmsnorm_cuda would (same shape:
 * same summation order). */
void cuda_op_add_rmsnorm(void *ctx, void *x, const void *y, void *out, const kweight *w, int T, float eps) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (T <= 0) return;
    int H = w->cols;
    if (!c->fused_add_norm) {
        cuda_op_add(ctx, x, y, (size_t)T * H);
        cuda_op_rmsnorm(ctx, out, x, w, T, eps);
        return;
    }
    int threads = 0, ch = rmsnorm8_shape(x, out, w, &threads);
    if (ch && !aligned16(y)) { /* rmsnorm alone takes the vector form: keep its order */
        cuda_op_add(ctx, x, y, (size_t)T * H);
        cuda_op_rmsnorm(ctx, out, x, w, T, eps);
        return;
    }
    bf16 *xb = (bf16 *)x, *ob = (bf16 *)out;
    const bf16 *yb = (const bf16 *)y;
    const void *wd = w->data;
    int wt = (int)w->dtype;
    if (ch == 1) launch(c, add_rmsnorm8_kernel<1>, T, threads, 0, xb, yb, ob, wd, wt, H, eps);
    else if (ch == 2) launch(c, add_rmsnorm8_kernel<2>, T, threads, 0, xb, yb, ob, wd, wt, H, eps);
    else if (ch == 4) launch(c, add_rmsnorm8_kernel<4>, T, threads, 0, xb, yb, ob, wd, wt, H, eps);
    else launch(c, add_rmsnorm_kernel, T, H >= 1024 ? 512 : 128, 0, xb, yb, ob, wd, wt, H, eps);
}
