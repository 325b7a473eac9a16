/* GEMM: out [T, N] = x [T, K] W^T (+ bias [N]), W [N, K] (kernels.h). x bf16;
 * out bf16 (matmul) or fp32 (matmul_f32, the LM head); fp32 accumulation.
 *
 * bf16 weights go through cuBLASLt. Row-major out = x W^T is, in cuBLASLt's
 * column-major terms, D [N x T] = op(A) B with A = W seen as K x N (ld K,
 * transposed) and B = x seen as K x T (ld K). Descriptors and the heuristic's
 * algorithm are cached per (N, K, T, output type, pointer alignments): the
 * heuristic costs tens of microseconds, a decode step runs ~160 GEMMs.
 *
 * With a bias the GEMM writes fp32 into scratch and a small kernel adds the
 * bias and rounds once, so out = bf16(x W^T + b) as on the CPU (a bf16 GEMM
 * output plus bias would round twice). With GLMTP_LT_BIAS=1 (opt-in until a
 * GPU run checks and times it) cuBLASLt's bias epilogue does the same in the
 * GEMM: fp32 bias added to the fp32 accumulator, one rounding to bf16.
 *
 * fp32 weights (only vectors are stored fp32: a [1, K] weight, e.g. a one-row
 * vocab shard) and shapes cuBLASLt has no algorithm for take a simple kernel:
 * one warp per output element. */
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"

#define PLAN_SLOTS 128

struct lt_plan {
    int used, fallback;
    int N, K, T, bias; /* bias: the plan has the fp32 bias epilogue */
    cudaDataType_t otype;
    unsigned align_w, align_x, align_o;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t lw, lx, lo;
    cublasLtMatmulAlgo_t algo;
};

/* ------------------------------------------------------------------ kernels */

template <typename OutT>
static __device__ __forceinline__ OutT to_out(float v);
template <>
__device__ __forceinline__ float to_out<float>(float v) { return v; }
template <>
__device__ __forceinline__ bf16 to_out<bf16>(float v) { return f2bf(v); }

/* One warp per output element (t, n): lanes stride over K, then a warp sum. */
template <typename OutT>
static __global__ void matmul_warp_kernel(OutT *out, const bf16 *x, const void *W, int wdtype, const void *bias,
                                          int bdtype, int T, int N, int K) {
    pdl_begin();
    size_t n_out = (size_t)T * N, warps = (size_t)gridDim.x * blockDim.x / 32;
    int lane = threadIdx.x & 31;
    for (size_t o = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; o < n_out; o += warps) {
        size_t t = o / N, n = o % N;
        const bf16 *xr = x + t * K;
        float s = 0.0f;
        for (int k = lane; k < K; k += 32) s += bf2f(xr[k]) * wload(W, wdtype, n * K + k);
        s = warp_sum(s);
        if (lane == 0) {
            if (bias) s += wload(bias, bdtype, n);
            out[o] = to_out<OutT>(s);
        }
    }
}

static __global__ void bias_round_kernel(bf16 *out, const float *acc, const void *bias, int bdtype, size_t n, int N) {
    pdl_begin();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = f2bf(acc[i] + wload(bias, bdtype, i % N));
}

/* --------------------------------------------------------- cuBLASLt plans */

static unsigned align_of(const void *p) {
    unsigned a = 256;
    while (a > 1 && ((uintptr_t)p % a) != 0) a >>= 1;
    return a;
}

static void plan_destroy(lt_plan *p) {
    if (!p->used) return;
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->lw));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->lx));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->lo));
    CUBLAS_CHECK(cublasLtMatmulDescDestroy(p->op));
    memset(p, 0, sizeof *p);
}

void cuda_matmul_release(cuda_ctx *c) {
    if (!c->plans) return;
    for (int i = 0; i < PLAN_SLOTS; i++) plan_destroy(&c->plans[i]);
    free(c->plans);
    c->plans = NULL;
}

static void set_pref_u32(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t a, uint32_t v) {
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, a, &v, sizeof v));
}

static void plan_init(cuda_ctx *c, lt_plan *p) {
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (p->bias) {
        /* An fp32 bias beside a bf16 output is not in cublasLt.h's list of
         * bias types (it names the output's type); every refusal below sends
         * the call to the fp32 GEMM + rounding kernel instead of aborting. */
        cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
        cudaDataType_t bt = CUDA_R_32F;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
    }
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lw, CUDA_R_16BF, (uint64_t)p->K, (uint64_t)p->N, (int64_t)p->K));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lx, CUDA_R_16BF, (uint64_t)p->K, (uint64_t)p->T, (int64_t)p->K));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lo, p->otype, (uint64_t)p->N, (uint64_t)p->T, (int64_t)p->N));

    /* Split-K partial sums in fp32 first: the in-place and output-type schemes
     * accumulate in the output type, which for bf16 output breaks the fp32
     * accumulation contract. Only if that leaves no algorithm, any scheme (still
     * deterministic: in-place reduction is serialised by counters); only if
     * there is still none, the warp kernel. */
    uint32_t masks[2] = {p->otype == CUDA_R_32F ? (uint32_t)CUBLASLT_REDUCTION_SCHEME_MASK
                                                 : (uint32_t)CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE,
                         (uint32_t)CUBLASLT_REDUCTION_SCHEME_MASK};
    p->fallback = 1;
    for (int attempt = 0; attempt < 2 && p->fallback; attempt++) {
        cublasLtMatmulPreference_t pref;
        CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
        uint64_t ws = c->lt_workspace_bytes;
        CUBLAS_CHECK(
            cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
        set_pref_u32(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, masks[attempt]);
        set_pref_u32(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, p->align_w);
        set_pref_u32(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, p->align_x);
        set_pref_u32(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, p->align_o);
        set_pref_u32(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, p->align_o);
        cublasLtMatmulHeuristicResult_t res;
        memset(&res, 0, sizeof res);
        int n_res = 0;
        cublasStatus_t st =
            cublasLtMatmulAlgoGetHeuristic(c->lt, p->op, p->lw, p->lx, p->lo, p->lo, pref, 1, &res, &n_res);
        CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
        if (st == CUBLAS_STATUS_SUCCESS && n_res > 0 && res.state == CUBLAS_STATUS_SUCCESS) {
            p->algo = res.algo;
            p->fallback = 0;
        } else if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED && !p->bias) {
            CUBLAS_CHECK(st); /* a real error, not "no algorithm for this shape" */
        }
    }
}

static lt_plan *plan_get(cuda_ctx *c, int N, int K, int T, int bias, cudaDataType_t otype, const void *W,
                         const void *x, const void *out) {
    unsigned aw = align_of(W), ax = align_of(x), ao = align_of(out);
    if (!c->plans) {
        c->plans = (lt_plan *)calloc(PLAN_SLOTS, sizeof(lt_plan));
        if (!c->plans) abort();
        c->n_plans = PLAN_SLOTS;
    }
    for (int i = 0; i < PLAN_SLOTS; i++) {
        lt_plan *p = &c->plans[i];
        if (p->used && p->N == N && p->K == K && p->T == T && p->bias == bias && p->otype == otype &&
            p->align_w == aw && p->align_x == ax && p->align_o == ao)
            return p;
    }
    lt_plan *p = &c->plans[c->next_plan]; /* round-robin eviction */
    c->next_plan = (c->next_plan + 1) % PLAN_SLOTS;
    plan_destroy(p);
    p->N = N, p->K = K, p->T = T, p->bias = bias, p->otype = otype;
    p->align_w = aw, p->align_x = ax, p->align_o = ao;
    plan_init(c, p);
    p->used = 1;
    return p;
}

/* Small T (decode): a GEMV that streams W once, for a T where cuBLASLt's
 * skinny-GEMM kernels are slower (H200, batch-1 decode of glm-4-9b-chat). A
 * group of S warps owns GEMV_ROWS rows of W and all T tokens; warp s of the
 * group takes the 16-byte columns s*32 + lane, + 32 S, ... of each row and of
 * each token's x, accumulates fp32, then a warp sum, then the group's S sums
 * in order s = 0..S-1. x rows are re-read by every warp; they stay in L1/L2
 * (at most 8 x 27 KB). The bias is added before the one rounding, as on the
 * CPU. Needs K % 8 == 0 and 16-byte aligned W, x and row starts (cudaMalloc'ed
 * buffers; checked). */
/* Measured on an H200 (40-layer glm-4-9b-chat decode, bench/results/): T = 1
 * 6.91 ms per step against 7.27 through cuBLASLt; T = 8 21.7 against 10.4
 * (each token's x is re-read per 16 bytes of W: load-bound). So T = 1 only,
 * though the kernel is written for TT tokens. With S = 1 the 4096-row
 * matrices (attention output, MLP down: 256 blocks for 132 SMs) streamed at
 * 3.0 TB/s against 4.25 for the 27392-row gate/up (run 4): too few loads in
 * flight per SM. gemv_split picks S so that every matrix has enough blocks. */
#define GEMV_MAX_T 1
#define GEMV_ROWS 2
#define GEMV_WARPS 8

/* SW: the MLP's gate/up GEMV with SwiGLU in its epilogue: out [T, N] =
 * silu(g) * u with g = rows [0, N) and u = rows [N, 2N) of W, each rounded to
 * bf16 first as the unfused GEMV's output would be, then the SwiGLU op's
 * formula: bitwise the numbers of the two ops, one kernel and no [T, 2N]
 * intermediate. Each row's sum runs in the same order either way (the same S:
 * gemv_split of the 2N rows). */
template <int TT, typename OutT, bool SW>
static __global__ void __launch_bounds__(GEMV_WARPS * 32) gemv_kernel(OutT *out, const bf16 *x, const bf16 *W,
                                                                       const float *bias, int T, int N, int K, int S) {
    pdl_begin();
    constexpr int NR = SW ? 2 * GEMV_ROWS : GEMV_ROWS; /* W rows per warp */
    __shared__ float part[GEMV_WARPS][NR][TT];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, s = warp % S;
    int n0 = (blockIdx.x * (GEMV_WARPS / S) + warp / S) * GEMV_ROWS;
    int live = n0 < N; /* a dead group still reaches the barrier below */
    float acc[NR][TT];
#pragma unroll
    for (int r = 0; r < NR; r++)
#pragma unroll
        for (int t = 0; t < TT; t++) acc[r][t] = 0.0f;
    const uint4 *wr[NR];
#pragma unroll
    for (int r = 0; r < NR; r++) { /* a row past N reads row n0 (or 0) again and is not written */
        int n = (r % GEMV_ROWS) + n0, nb = live ? n0 : 0;
        wr[r] = (const uint4 *)(W + ((size_t)(n < N ? n : nb) + (r >= GEMV_ROWS ? (size_t)N : 0)) * K);
    }
    int K8 = K / 8;
#pragma unroll 2
    for (int k = s * 32 + lane; k < K8; k += 32 * S) {
        float wf[NR][8];
#pragma unroll
        for (int r = 0; r < NR; r++) bf16x8_to_f32(wf[r], __ldg(wr[r] + k));
#pragma unroll
        for (int t = 0; t < TT; t++) {
            if (t < T) {
                float xf[8];
                bf16x8_to_f32(xf, __ldg((const uint4 *)(x + (size_t)t * K) + k));
#pragma unroll
                for (int r = 0; r < NR; r++)
#pragma unroll
                    for (int e = 0; e < 8; e++) acc[r][t] += wf[r][e] * xf[e];
            }
        }
    }
#pragma unroll
    for (int r = 0; r < NR; r++)
#pragma unroll
        for (int t = 0; t < TT; t++) acc[r][t] = warp_sum(acc[r][t]);
    if (S > 1) {
        if (lane == 0)
#pragma unroll
            for (int r = 0; r < NR; r++)
#pragma unroll
                for (int t = 0; t < TT; t++) part[warp][r][t] = acc[r][t];
        __syncthreads();
        if (s != 0) return;
#pragma unroll
        for (int r = 0; r < NR; r++)
#pragma unroll
            for (int t = 0; t < TT; t++)
                for (int q = 1; q < S; q++) acc[r][t] += part[warp + q][r][t];
    }
    if (!live) return;
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) {
#pragma unroll
        for (int t = 0; t < TT; t++) {
            float v = acc[r][t];
            if (SW) {
                float g = bf2f(f2bf(v)), u = bf2f(f2bf(acc[r + GEMV_ROWS][t]));
                v = g / (1.0f + expf(-g)) * u;
            }
            if (lane == 0 && t < T && n0 + r < N)
                out[(size_t)t * N + n0 + r] = to_out<OutT>(bias ? v + bias[n0 + r] : v); /* v + 0 would turn -0 into +0 */
        }
    }
}

/* Small batches (T = 2..8, batched decode): out [T, N] = x W^T on tensor
 * cores, W read once. cuBLASLt's GEMMs tile M by 64 or more, and the GEMV
 * above re-reads every token's x per 16 bytes of W (instruction-bound at T = 8:
 * 21.7 ms a step against 10.4 on an H200). Here each block owns 16 rows of W
 * and SKINNY_WARPS warps split K; a warp's mma.m16n8k16 takes the 16 rows as A
 * and the (up to 8) tokens as B, zero rows for tokens past T. The k order
 * inside each 32-column block is permuted so that every lane loads 16
 * contiguous bytes of W and of x: lane (g = lane/4, t = lane%4) holds columns
 * 8t..8t+7 of rows g and g+8 and of token g, and those 8 columns play the k
 * positions {2t, 2t+1, 2t+8, 2t+9} of two consecutive mma steps, the same
 * positions in A and in B, so the products pair up. fp32 sums; then the warps'
 * partial sums add in shared memory and the bias goes in before the one
 * rounding, as in the GEMV. Opt-in (GLMTP_SKINNY=1) until a GPU run checks
 * and times it. Needs K % 32 == 0 and 16-byte aligned rows. */
#define SKINNY_WARPS 4

template <typename OutT>
static __global__ void __launch_bounds__(SKINNY_WARPS * 32) skinny_kernel(OutT *out, const bf16 *x, const bf16 *W,
                                                                          const float *bias, int T, int N, int K) {
    pdl_begin();
    __shared__ float part[SKINNY_WARPS][32][4];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
    int n0 = blockIdx.x * 16, r0 = n0 + g, r1 = n0 + g + 8;
    const bf16 *w0 = W + (size_t)(r0 < N ? r0 : n0) * K, *w1 = W + (size_t)(r1 < N ? r1 : n0) * K;
    const bf16 *xg = x + (size_t)(g < T ? g : 0) * K;
    int nk = K / 32, kb0 = nk * w / SKINNY_WARPS, kb1 = nk * (w + 1) / SKINNY_WARPS;
    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 4
    for (int kb = kb0; kb < kb1; kb++) {
        size_t off = (size_t)kb * 32 + (size_t)t4 * 8;
        uint4 a = __ldg((const uint4 *)(w0 + off)), b = __ldg((const uint4 *)(w1 + off));
        uint4 v = g < T ? __ldg((const uint4 *)(xg + off)) : make_uint4(0u, 0u, 0u, 0u);
        uint32_t f0[4] = {a.x, b.x, a.y, b.y}, f1[4] = {a.z, b.z, a.w, b.w};
        mma_bf16(c, f0, v.x, v.y);
        mma_bf16(c, f1, v.z, v.w);
    }
#pragma unroll
    for (int i = 0; i < 4; i++) part[w][lane][i] = c[i];
    __syncthreads();
    if (w != 0) return;
#pragma unroll
    for (int i = 0; i < 4; i++)
        for (int k = 1; k < SKINNY_WARPS; k++) c[i] += part[k][lane][i];
    /* c0, c1: row r0, tokens 2t4 and 2t4 + 1; c2, c3: row r1, the same tokens */
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int r = i < 2 ? r0 : r1, tok = 2 * t4 + (i & 1);
        if (r < N && tok < T) out[(size_t)tok * N + r] = to_out<OutT>(c[i] + (bias ? bias[r] : 0.0f));
    }
}

/* Runs the small-batch kernel when it is on and applies (returns 0), else -1. */
template <typename OutT>
static int skinny_cuda(const cuda_ctx *c, OutT *out, const bf16 *x, const kweight *W, const kweight *bias, int T) {
    int N = W->rows, K = W->cols;
    if (!c->skinny || T < 2 || T > 8 || W->dtype != KDT_BF16 || K % 32 || !aligned16(x) || !aligned16(W->data) ||
        (bias && bias->dtype != KDT_F32))
        return -1;
    launch(c, skinny_kernel<OutT>, (unsigned)CEIL_DIV(N, 16), SKINNY_WARPS * 32, 0, out, x, (const bf16 *)W->data,
           bias ? (const float *)bias->data : (const float *)NULL, T, N, K);
    return 0;
}

/* Warps per row group for a GEMV over W's `rows`: the fewest (1, 2, 4, 8) that
 * give at least 6 blocks per SM (8 fit at 32 registers a thread), so every SM
 * has loads of many groups in flight; 1 with GLMTP_GEMV_SPLIT=0. The fused
 * SwiGLU GEMV asks for the unfused one's rows (2F), so both sum in the same
 * order. Run 5: batch-1 decode 5.83 ms a step against 6.23 with S = 1, the
 * 4096-row matrices at 3.85 TB/s. */
static int gemv_split(const cuda_ctx *c, int rows) {
    int S = 1;
    while (c->gemv_split && S < GEMV_WARPS && CEIL_DIV(rows, GEMV_ROWS * (GEMV_WARPS / S)) < 6 * c->sm_count) S *= 2;
    return S;
}

/* Runs the GEMV when it applies (returns 0), else -1. */
template <typename OutT>
static int gemv_cuda(const cuda_ctx *c, OutT *out, const bf16 *x, const kweight *W, const kweight *bias, int T) {
    int N = W->rows, K = W->cols;
    if (c->no_gemv || T > GEMV_MAX_T || W->dtype != KDT_BF16 || K % 8 || !aligned16(x) || !aligned16(W->data) ||
        (bias && bias->dtype != KDT_F32))
        return -1;
    const float *b = bias ? (const float *)bias->data : NULL;
    int S = gemv_split(c, N);
    unsigned grid = (unsigned)CEIL_DIV(N, GEMV_ROWS * (GEMV_WARPS / S));
    const bf16 *w = (const bf16 *)W->data;
    launch(c, gemv_kernel<GEMV_MAX_T, OutT, false>, grid, GEMV_WARPS * 32, 0, out, x, w, b, T, N, K, S);
    return 0;
}

// kernel launchers

template <typename OutT>
static void matmul_warp_cuda(const cuda_ctx *c, OutT *out, const bf16 *x, const kweight *W, const kweight *bias,
                             int T) {
    size_t threads = (size_t)T * W->rows * 32;
    launch(c, matmul_warp_kernel<OutT>, grid_for(c, threads, 256), 256, 0, out, x, W->data, (int)W->dtype,
           bias ? bias->data : NULL, (int)(bias ? bias->dtype : KDT_F32), T, W->rows, W->cols);
}

/* out (otype: CUDA_R_16BF or CUDA_R_32F) = x W^T (+ bias: fp32 [N] in the
 * epilogue, or NULL). Returns 0, or -1 when cuBLASLt cannot do it (the caller
 * takes another way). */
static int matmul_lt(cuda_ctx *c, void *out, cudaDataType_t otype, const bf16 *x, const kweight *W,
                     const float *bias, int T) {
    if (W->dtype != KDT_BF16) return -1;
    lt_plan *p = plan_get(c, W->rows, W->cols, T, bias != NULL, otype, W->data, x, out);
    if (p->fallback) return -1;
    if (bias) /* the descriptor is cached; the pointer is this call's */
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasLtMatmul(c->lt, p->op, &alpha, W->data, p->lw, x, p->lx, &beta, out, p->lo, out, p->lo,
                                &p->algo, c->lt_workspace, c->lt_workspace_bytes, c->stream));
    return 0;
}

/* out = x W^T (+ bias) through the first path that applies; returns its name
 * (c->matmul_ran: the GPU test checks that a switch's path is the one that
 * ran). */
static const char *matmul_bf16_out(cuda_ctx *c, bf16 *out, const bf16 *x, const kweight *W, const kweight *bias,
                                   int T) {
    if (gemv_cuda<bf16>(c, out, x, W, bias, T) == 0) return "gemv";
    if (skinny_cuda<bf16>(c, out, x, W, bias, T) == 0) return "skinny";
    if (!bias) {
        if (matmul_lt(c, out, CUDA_R_16BF, x, W, NULL, T) == 0) return "cublaslt";
        matmul_warp_cuda<bf16>(c, out, x, W, NULL, T);
        return "warp";
    }
    if (c->lt_bias && bias->dtype == KDT_F32 &&
        matmul_lt(c, out, CUDA_R_16BF, x, W, (const float *)bias->data, T) == 0)
        return "cublaslt_bias_epilogue";
    size_t n = (size_t)T * W->rows;
    float *acc = (float *)cuda_scratch(c, &c->gemm_f32, n * sizeof(float));
    if (matmul_lt(c, acc, CUDA_R_32F, x, W, NULL, T)) {
        matmul_warp_cuda<bf16>(c, out, x, W, bias, T);
        return "warp";
    }
    launch(c, bias_round_kernel, grid_for(c, n, 256), 256, 0, out, (const float *)acc, bias->data, (int)bias->dtype, n,
           W->rows);
    return "cublaslt_f32_round";
}

static const char *matmul_f32_out(cuda_ctx *c, float *out, const bf16 *x, const kweight *W, int T) {
    if (gemv_cuda<float>(c, out, x, W, NULL, T) == 0) return "gemv";
    if (skinny_cuda<float>(c, out, x, W, NULL, T) == 0) return "skinny";
    if (matmul_lt(c, out, CUDA_R_32F, x, W, NULL, T) == 0) return "cublaslt";
    matmul_warp_cuda<float>(c, out, x, W, NULL, T);
    return "warp";
}

void cuda_op_matmul(void *ctx, void *out, const void *x, const kweight *W, const kweight *bias, int T) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (T <= 0 || W->rows <= 0) return;
    c->matmul_ran = matmul_bf16_out(c, (bf16 *)out, (const bf16 *)x, W, bias, T);
}

void cuda_op_matmul_f32(void *ctx, float *out, const void *x, const kweight *W, int T) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (T <= 0 || W->rows <= 0) return;
    c->matmul_ran = matmul_f32_out(c, out, (const bf16 *)x, W, T);
}

/* Fused where the GEMV applies (GPU run 4: bitwise the two ops;
 * GLMTP_FUSED_SWIGLU=0 turns it off); otherwise the two ops, through gu. */
void cuda_op_matmul_swiglu(void *ctx, void *out, const void *x, const kweight *W, void *gu, int T) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    int F = W->rows / 2, K = W->cols;
    if (T <= 0 || F <= 0) return;
    if (c->fused_swiglu && !c->no_gemv && T <= GEMV_MAX_T && W->dtype == KDT_BF16 && K % 8 == 0 && aligned16(x) &&
        aligned16(W->data)) {
        int S = gemv_split(c, 2 * F);
        unsigned grid = (unsigned)CEIL_DIV(F, GEMV_ROWS * (GEMV_WARPS / S));
        launch(c, gemv_kernel<GEMV_MAX_T, bf16, true>, grid, GEMV_WARPS * 32, 0, (bf16 *)out, (const bf16 *)x,
               (const bf16 *)W->data, (const float *)NULL, T, F, K, S);
        return;
    }
    cuda_op_matmul(ctx, gu, x, W, NULL, T);
    cuda_op_swiglu(ctx, out, gu, T, F);
}
