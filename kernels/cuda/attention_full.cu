/* Bidirectional multi-head attention without a cache (the GLM-4V vision
 * tower): out [T, n_heads * d] bf16, head h of token t attending to all T
 * tokens; q, k, v [T, ld] bf16 with head h at column h * d (three column
 * blocks of one qkv buffer). Any d from 1 to 256.
 *
 * One block of 256 threads per (head, tile of BQ = 64 queries) walks the keys
 * in tiles of BK = 64 with an online softmax (flash attention), so nothing of
 * T x T exists. Plain fp32 FMA, no tensor cores (d = 112 and d = 14 are no
 * multiples of the mma shapes' 16): the tile's queries (pre-multiplied by
 * scale * log2 e, so that the softmax is exp2), keys and values are widened
 * from bf16 to fp32 in shared memory once; the output is rounded to bf16 once.
 *
 * Threads: rg = tid / 16 owns query rows 4 rg .. 4 rg + 3, cl = tid % 16 owns
 * keys cl + 16 j (j < 4) of each key tile and head dims cl + 16 c (c < DPT,
 * DPT = ceil(d / 16) rounded up to an instantiated width). The 16 threads of
 * a row group are one half-warp and share row maxima and sums by shuffles.
 * Shared memory, fp32: Qt [d][QS] (queries transposed, so one 16-byte load
 * gives a thread its 4 rows), Pt [BK][QS] (probabilities transposed, the
 * same), Kt [d][KS] (keys transposed; KS odd, so the transposing stores hit
 * distinct banks), Vs [BK][d]: 197 d + 4352 floats, 106 KB at d = 112 (two
 * blocks an SM), 219 KB at d = 256, which an sm_90 block may have (up to 227
 * KB) and an sm_80 one not (163 KB: d <= 189 there; a larger d aborts). */
#include "cuda_common.cuh"

enum { AF_BQ = 64, AF_BK = 64, AF_THREADS = 256, AF_QS = AF_BQ + 4, AF_KS = AF_BK + 1, AF_DMAX = 256 };

static size_t af_smem_floats(int d) {
    return (size_t)d * AF_QS + (size_t)AF_BK * AF_QS + (size_t)d * AF_KS + (size_t)AF_BK * d;
}

template <int DPT>
static __global__ void __launch_bounds__(AF_THREADS) attention_full_kernel(bf16 *out, const bf16 *q, const bf16 *k,
                                                                           const bf16 *v, int ld, int T,
                                                                           int n_heads, int d, float qscale) {
    pdl_begin();
    extern __shared__ __align__(16) float af_smem[];
    float *Qt = af_smem, *Pt = Qt + (size_t)d * AF_QS, *Kt = Pt + AF_BK * AF_QS, *Vs = Kt + (size_t)d * AF_KS;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, rg = tid >> 4, cl = tid & 15;
    const int h = blockIdx.x, q0 = blockIdx.y * AF_BQ;
    const size_t col = (size_t)h * d;

    /* a warp per row, lanes across the head dims */
    for (int r = warp; r < AF_BQ; r += AF_THREADS / 32) {
        int t = q0 + r;
        for (int i = lane; i < d; i += 32) Qt[i * AF_QS + r] = t < T ? bf2f(q[(size_t)t * ld + col + i]) * qscale : 0.0f;
    }
    float o[4][DPT], m[4], l[4]; /* l: this thread's part of the row sums, added up at the end */
#pragma unroll
    for (int a = 0; a < 4; a++) {
        m[a] = -INFINITY, l[a] = 0.0f;
#pragma unroll
        for (int c = 0; c < DPT; c++) o[a][c] = 0.0f;
    }

    for (int k0 = 0; k0 < T; k0 += AF_BK) {
        __syncthreads(); /* the previous tile's Pt and Vs are read */
        for (int r = warp; r < AF_BK; r += AF_THREADS / 32) {
            int t = k0 + r;
            for (int i = lane; i < d; i += 32) {
                float kv = 0.0f, vv = 0.0f; /* keys past T: zero rows, masked below */
                if (t < T) kv = bf2f(k[(size_t)t * ld + col + i]), vv = bf2f(v[(size_t)t * ld + col + i]);
                Kt[i * AF_KS + r] = kv;
                Vs[r * d + i] = vv;
            }
        }
        __syncthreads();

        float s[4][4] = {};
        for (int i = 0; i < d; i++) {
            float4 qa = *(const float4 *)&Qt[i * AF_QS + 4 * rg];
            const float *kr = Kt + i * AF_KS + cl;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                float kk = kr[16 * j];
                s[0][j] += qa.x * kk, s[1][j] += qa.y * kk, s[2][j] += qa.z * kk, s[3][j] += qa.w * kk;
            }
        }
#pragma unroll
        for (int j = 0; j < 4; j++)
            if (k0 + cl + 16 * j >= T)
#pragma unroll
                for (int a = 0; a < 4; a++) s[a][j] = -INFINITY;
        /* Key k0 is always in range, so every row's maximum is finite. */
#pragma unroll
        for (int a = 0; a < 4; a++) {
            float mx = fmaxf(fmaxf(s[a][0], s[a][1]), fmaxf(s[a][2], s[a][3]));
#pragma unroll
            for (int off = 8; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
            float mn = fmaxf(m[a], mx), corr = exp2f(m[a] - mn); /* 0 on the first tile */
            m[a] = mn;
            float sum = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; j++) sum += (s[a][j] = exp2f(s[a][j] - mn));
            l[a] = l[a] * corr + sum;
#pragma unroll
            for (int c = 0; c < DPT; c++) o[a][c] *= corr;
        }
#pragma unroll
        for (int j = 0; j < 4; j++)
            *(float4 *)&Pt[(cl + 16 * j) * AF_QS + 4 * rg] = make_float4(s[0][j], s[1][j], s[2][j], s[3][j]);
        __syncthreads();

        int nk = T - k0 < AF_BK ? T - k0 : AF_BK; /* the zero rows of P past T add nothing */
        for (int j = 0; j < nk; j++) {
            float4 pa = *(const float4 *)&Pt[j * AF_QS + 4 * rg];
            const float *vr = Vs + j * d + cl;
#pragma unroll
            for (int c = 0; c < DPT; c++) {
                float vv = cl + 16 * c < d ? vr[16 * c] : 0.0f;
                o[0][c] += pa.x * vv, o[1][c] += pa.y * vv, o[2][c] += pa.z * vv, o[3][c] += pa.w * vv;
            }
        }
    }

#pragma unroll
    for (int a = 0; a < 4; a++) {
        float sum = l[a];
#pragma unroll
        for (int off = 8; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
        int t = q0 + 4 * rg + a;
        if (t >= T) continue;
        float inv = 1.0f / sum;
        bf16 *orow = out + (size_t)t * n_heads * d + col;
#pragma unroll
        for (int c = 0; c < DPT; c++)
            if (cl + 16 * c < d) orow[cl + 16 * c] = f2bf(o[a][c] * inv);
    }
}

// kernel launchers

/* Over 48 KB of dynamic shared memory must be allowed per kernel: a host-side
 * attribute write at each launch (as attention_prefill.cu), so it holds on
 * whichever device the calling context uses. */
template <int DPT>
static void attention_full_launch(const cuda_ctx *c, bf16 *out, const bf16 *q, const bf16 *k, const bf16 *v, int ld,
                                  int T, int n_heads, int d, float qscale) {
    size_t smem = af_smem_floats(d) * sizeof(float);
    int dev = 0, optin = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    if (smem > (size_t)optin) {
        fprintf(stderr, "glmtp: cuda attention_full: d = %d needs %zu bytes of shared memory a block, the device "
                        "allows %d\n", d, smem, optin);
        abort();
    }
    CUDA_CHECK(cudaFuncSetAttribute(attention_full_kernel<DPT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)smem));
    dim3 grid((unsigned)n_heads, (unsigned)CEIL_DIV(T, AF_BQ));
    launch(c, attention_full_kernel<DPT>, grid, AF_THREADS, smem, out, q, k, v, ld, T, n_heads, d, qscale);
}

static void attention_full_cuda(const cuda_ctx *c, bf16 *out, const bf16 *q, const bf16 *k, const bf16 *v, int ld,
                                int T, int n_heads, int d, float scale) {
    if (T <= 0 || n_heads <= 0) return;
    if (d < 1 || d > AF_DMAX || CEIL_DIV(T, AF_BQ) > 65535) {
        fprintf(stderr, "glmtp: cuda attention_full: d = %d, T = %d outside what the kernel takes (d <= %d, "
                        "T <= %d)\n", d, T, AF_DMAX, 65535 * AF_BQ);
        abort();
    }
    float qscale = scale * 1.4426950408889634f; /* log2 e: the softmax as exp2 */
    int need = CEIL_DIV(d, 16);
    if (need <= 1) attention_full_launch<1>(c, out, q, k, v, ld, T, n_heads, d, qscale);
    else if (need <= 2) attention_full_launch<2>(c, out, q, k, v, ld, T, n_heads, d, qscale);
    else if (need <= 4) attention_full_launch<4>(c, out, q, k, v, ld, T, n_heads, d, qscale);
    else if (need <= 7) attention_full_launch<7>(c, out, q, k, v, ld, T, n_heads, d, qscale);
    else if (need <= 8) attention_full_launch<8>(c, out, q, k, v, ld, T, n_heads, d, qscale);
    else attention_full_launch<16>(c, out, q, k, v, ld, T, n_heads, d, qscale);
}

void cuda_op_attention_full(void *ctx, void *out, const void *q, const void *k, const void *v, int ld, int T,
                            int n_heads, int d, float scale) {
    attention_full_cuda((const cuda_ctx *)ctx, (bf16 *)out, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, ld, T,
                        n_heads, d, scale);
}
