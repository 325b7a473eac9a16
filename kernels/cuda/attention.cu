/* Causal GQA attention over the paged bf16 KV cache (or the fp8 one:
 * kernels.h KV_DTYPE_FP8, rows widened as they are loaded, each kernel a
 * template on it), prefill and decode in one
 * kernel (kernels.h: token t of sequence seq[t] attends to positions
 * 0..pos[t] through its block table; local q head h uses KV head h / q_per_kv).
 * When the step's host positions are given and the head dim suits it,
 * attention_prefill.cu first takes the prefill runs on tensor cores and this
 * kernel gets the other tokens through a token list (tok_list).
 *
 * One block of ATT_WARPS warps per (q head, token, split). A warp takes one key
 * position at a time: each lane holds EPL = d/32 (rounded up to 1, 2, 4, 8) of
 * the d dims of q, the key and the value, the dot product is a warp sum, and the
 * softmax is online (running max m, sum l, unnormalised output acc, all fp32).
 * The block's warps then merge their (m, l, acc) through shared memory.
 *
 * Long contexts with few (token, head) pairs (decode) are split along the
 * sequence (flash-decoding): each split writes its (m, l, acc) to scratch and
 * attention_combine merges them, so a single decode token still fills the GPU.
 * Where it applies the tokens go instead to a grouped tensor-core kernel
 * (below; GLMTP_GQA_ATTENTION=0 turns it off): one block per KV head, its q
 * heads as rows.
 * out [T, n_q * d] bf16; q [T, ld_q] bf16 (head h at column h * d). */
#include <math.h>
#include <string.h>

#include "cuda_common.cuh"

#define ATT_WARPS 4
#define MIN_SPLIT_POS 64 /* fewer positions per split than this costs more to merge than it saves */
#define MAX_SPLITS 256
#define GRID_Y_MAX 65535 /* CUDA's limit on gridDim.y (and z) */

typedef struct attn_args {
    bf16 *out;
    float *part_o;  /* [n, n_q, n_split, d] unnormalised outputs, when n_split > 1 (n: tokens in the grid) */
    float *part_ml; /* [n, n_q, n_split, 2] running max and sum */
    const bf16 *q;
    const bf16 *kc, *vc; /* an fp8 cache's e4m3 bytes when ks, vs are set */
    const float *ks, *vs; /* fp8 cache (kernels.h KV_DTYPE_FP8): a scale per (slot, KV head) row; else NULL */
    const int32_t *pos, *seq, *tables;
    const int32_t *tok_list; /* [n] step token of grid row i; NULL: row i is token i */
    int row0;                /* grid row of blockIdx.y = 0: launches cover at most 65535 rows each */
    int ld_q, max_blocks, block_size, n_kv, q_per_kv, d, split_len, n_split;
    float scale;
} attn_args;

/* EPL consecutive dims of one cache row into fp32; a 4/8/16-byte load when the
 * row is exactly 32 * EPL wide (then every lane's slice is aligned, as cache
 * rows start at multiples of d elements of a cudaMalloc'ed buffer). */
template <int EPL>
static __device__ __forceinline__ void load_row(float *dst, const bf16 *row, int lane, int d) {
    const bf16 *src = row + lane * EPL;
    if constexpr (EPL >= 2) {
        if (d == 32 * EPL) {
            unsigned u[EPL / 2];
            if constexpr (EPL == 8) {
                uint4 v = *(const uint4 *)src;
                u[0] = v.x, u[1] = v.y, u[2] = v.z, u[3] = v.w;
            } else if constexpr (EPL == 4) {
                uint2 v = *(const uint2 *)src;
                u[0] = v.x, u[1] = v.y;
            } else {
                u[0] = *(const unsigned *)src;
            }
#pragma unroll
            for (int e = 0; e < EPL; e += 2) { /* little-endian: the lower address is the low half */
                dst[e] = __uint_as_float(u[e / 2] << 16);
                dst[e + 1] = __uint_as_float(u[e / 2] & 0xffff0000u);
            }
            return;
        }
    }
#pragma unroll
    for (int e = 0; e < EPL; e++) dst[e] = lane * EPL + e < d ? bf2f(src[e]) : 0.0f;
}

/* The same from an fp8 cache row (bytes) and its scale, in fp32. */
template <int EPL>
static __device__ __forceinline__ void load_row_fp8(float *dst, const uint8_t *row, float scale, int lane, int d) {
#pragma unroll
    for (int e = 0; e < EPL; e++) dst[e] = lane * EPL + e < d ? fp8_to_f32(row[lane * EPL + e]) * scale : 0.0f;
}

/* Element offset of position p's row of KV head g in the paged cache. */
static __device__ __forceinline__ size_t kv_row(const attn_args &a, const int32_t *table, int p, int g) {
    int blk = table[p / a.block_size];
    return (((size_t)blk * a.block_size + p % a.block_size) * a.n_kv + g) * a.d;
}

template <int EPL, bool FP8>
static __global__ void __launch_bounds__(ATT_WARPS * 32) attention_kernel(attn_args a) {
    pdl_begin();
    __shared__ float sm_m[ATT_WARPS], sm_l[ATT_WARPS];
    __shared__ float sm_acc[ATT_WARPS][32 * EPL];
    int h = blockIdx.x, i_row = a.row0 + blockIdx.y, sp = blockIdx.z, n_q = gridDim.x;
    int t = a.tok_list ? a.tok_list[i_row] : i_row;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, d = a.d;
    int g = h / a.q_per_kv, s = a.seq[t], np = a.pos[t] + 1;
    int p0 = sp * a.split_len, p1 = min(np, p0 + a.split_len);

    float qr[EPL], acc[EPL], kf[EPL], vf[EPL];
    const bf16 *qv = a.q + (size_t)t * a.ld_q + (size_t)h * d;
#pragma unroll
    for (int e = 0; e < EPL; e++) {
        int i = lane * EPL + e;
        qr[e] = i < d ? bf2f(qv[i]) : 0.0f; /* q rows need not be aligned: plain loads */
        acc[e] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    const int32_t *table = a.tables + (size_t)s * a.max_blocks;
    for (int p = p0 + w; p < p1; p += ATT_WARPS) {
        size_t row = kv_row(a, table, p, g);
        if constexpr (FP8) {
            load_row_fp8<EPL>(kf, (const uint8_t *)a.kc + row, a.ks[row / d], lane, d);
            load_row_fp8<EPL>(vf, (const uint8_t *)a.vc + row, a.vs[row / d], lane, d);
        } else {
            load_row<EPL>(kf, a.kc + row, lane, d);
            load_row<EPL>(vf, a.vc + row, lane, d);
        }
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < EPL; e++) dot += qr[e] * kf[e];
        float sc = warp_sum(dot) * a.scale;
        float m_new = fmaxf(m, sc);
        float corr = expf(m - m_new), pw = expf(sc - m_new); /* expf(-inf) = 0 on the first key */
        l = l * corr + pw;
#pragma unroll
        for (int e = 0; e < EPL; e++) acc[e] = acc[e] * corr + pw * vf[e];
        m = m_new;
    }

    /* Merge the warps: weights exp(m_w - M); a warp that saw no key has l = 0. */
    if (lane == 0) sm_m[w] = m, sm_l[w] = l;
#pragma unroll
    for (int e = 0; e < EPL; e++) sm_acc[w][lane * EPL + e] = acc[e];
    __syncthreads();
    float M = -INFINITY;
    for (int i = 0; i < ATT_WARPS; i++) M = fmaxf(M, sm_m[i]);
    float L = 0.0f, f[ATT_WARPS];
    for (int i = 0; i < ATT_WARPS; i++) {
        f[i] = sm_l[i] > 0.0f ? expf(sm_m[i] - M) : 0.0f;
        L += sm_l[i] * f[i];
    }
    size_t th = (size_t)t * n_q + h, ph = (size_t)i_row * n_q + h; /* output row; partials row */
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float o = 0.0f;
        for (int k = 0; k < ATT_WARPS; k++) o += sm_acc[k][i] * f[k];
        if (a.n_split == 1)
            a.out[th * d + i] = f2bf(o / L); /* L > 0: position 0 is always in split 0 */
        else
            a.part_o[(ph * a.n_split + sp) * d + i] = o;
    }
    if (a.n_split > 1 && threadIdx.x == 0) {
        a.part_ml[(ph * a.n_split + sp) * 2] = M;
        a.part_ml[(ph * a.n_split + sp) * 2 + 1] = L;
    }
}

/* The q heads that share a KV head in one block, on tensor cores (GQA
 * grouping; the default since GPU run 4 passed its tests and timed batch-64
 * decode at 8.7 ms a step against 27.2 with the per-head kernel on an H200;
 * GLMTP_GQA_ATTENTION=0 for the per-head one). The per-head kernel above
 * re-reads a KV head's rows for each of its q_per_kv heads (16 for
 * GLM-4-9B), and at long contexts no cache holds them (128K tokens of one
 * layer's KV are 134 MB against 50 MB of L2); it also
 * spends a warp reduction per key and head. Here one block of ATT_WARPS warps
 * per (KV head, token, split) reads each key and value row once, and the
 * group's heads are the 16 rows of an m16n8k16 tile (zero rows past the
 * group), so a key costs a share of two mma instead of 16 warp sums.
 *
 * The block walks the split's keys in tiles of GQA_BN = 16 per warp, gathered
 * through the block table into shared memory with cp.async (keys past the
 * split zero-filled, masked), K of the next tile loading during this tile's
 * P V and V of the next during its Q K^T, as attention_prefill.cu's first
 * kernel does (whose fragment layouts this follows). Warp w takes keys
 * 16w..16w+15 of every tile: S = Q K^T (16 x 16), online softmax per row in
 * log2 units (exp2(s * scale * log2 e)), O += P V with P rounded to bf16 (as
 * FlashAttention; the test bounds the effect), and at the end the warps merge
 * their (m, l, O) through the same shared memory. Split partials are written
 * in natural-log units for attention_combine_kernel.
 *
 * Needs d 64 or 128, q_per_kv <= 16, ld_q a multiple of 8 and q, the caches
 * 16-byte aligned (attention_cuda checks; else the per-head kernel). Head
 * h0 + r of group grp is row r, h0 = grp * q_per_kv, r < min(q_per_kv, n_q -
 * h0) (fewer when tp > KV groups). Shared memory 2 * GQA_BN * (d + 8) * 2
 * bytes (34,816 for d = 128), static. */
#define GQA_BN (ATT_WARPS * 16) /* keys per tile: 16 per warp */

/* Keys kb..kb+GQA_BN-1 of KV head grp into dst: cp.async from a bf16 cache,
 * or (FP8) dequantised to bf16 with plain loads and stores at the same point
 * (cuda_common.cuh fp8_kv_rows; the commits and waits around it then cover
 * nothing, the barriers still order the buffers). */
template <int D, bool FP8>
static __device__ __forceinline__ void gqa_rows(bf16 *dst, const bf16 *cache, const float *scales,
                                                const int32_t *table, int kb, int kmax, int grp, const attn_args &a) {
    if constexpr (FP8)
        fp8_kv_rows<D, GQA_BN, ATT_WARPS * 32>(dst, (const uint8_t *)cache, scales, table, kb, kmax, grp,
                                               a.block_size, a.n_kv);
    else
        cp_async_kv_rows<D, GQA_BN, ATT_WARPS * 32>(dst, cache, table, kb, kmax, grp, a.block_size, a.n_kv);
}

template <int D, bool FP8>
static __global__ void __launch_bounds__(ATT_WARPS * 32) attention_gqa_kernel(attn_args a, int n_q) {
    pdl_begin();
    constexpr int LDS = D + 8, CPR = D / 8, KS = D / 16, DT = D / 8;
    constexpr int KV_BYTES = 2 * GQA_BN * LDS * 2, MERGE_BYTES = ATT_WARPS * 16 * (D + 2) * 4;
    static_assert(D % 16 == 0 && MERGE_BYTES <= KV_BYTES, "whole mma tiles; the merge fits the K and V tiles");
    __shared__ __align__(16) unsigned char smem[KV_BYTES];
    bf16 *sk = (bf16 *)smem, *sv = sk + GQA_BN * LDS;

    const int grp = blockIdx.x, i_row = a.row0 + blockIdx.y, sp = blockIdx.z;
    const int t = a.tok_list ? a.tok_list[i_row] : i_row;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int h0 = grp * a.q_per_kv, ng = min(min(16, a.q_per_kv), n_q - h0);
    const int s = a.seq[t], np = a.pos[t] + 1;
    const int p0 = sp * a.split_len, p1 = min(np, p0 + a.split_len), kmax = p1 - 1;
    const int n_kt = p1 > p0 ? CEIL_DIV(p1 - p0, GQA_BN) : 0; /* 0: an empty split of a shorter sequence */
    const int32_t *table = a.tables + (size_t)s * a.max_blocks;
    const float scale_log2 = a.scale * 1.4426950408889634f;

    /* Q: the group's heads as rows (zero past ng) -> sk -> A fragments. */
    for (int c = tid; c < 16 * CPR; c += ATT_WARPS * 32) {
        int r = c / CPR, col = (c % CPR) * 8;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (r < ng) v = *(const uint4 *)(a.q + (size_t)t * a.ld_q + (size_t)(h0 + r) * D + col);
        *(uint4 *)(sk + r * LDS + col) = v;
    }
    __syncthreads();
    uint32_t qf[KS][4];
#pragma unroll
    for (int kk = 0; kk < KS; kk++) ldsm_x4(qf[kk], sk + (lane & 15) * LDS + kk * 16 + (lane >> 4) * 8);
    __syncthreads(); /* sk holds K from here on */

    float o[DT][4];
#pragma unroll
    for (int i = 0; i < DT; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    /* this thread's rows lane/4 and lane/4 + 8: m in scaled log2 units; l per
     * lane, summed over the quad at the end */
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    /* Groups per thread: K0 V0 | K1 V1 | ...; "wait 1" leaves only the newest
     * in flight (empty groups are committed after the last tile). */
    if (n_kt > 0) {
        gqa_rows<D, FP8>(sk, a.kc, a.ks, table, p0, kmax, grp, a);
        cp_async_commit();
        gqa_rows<D, FP8>(sv, a.vc, a.vs, table, p0, kmax, grp, a);
        cp_async_commit();
    }
    for (int j = 0; j < n_kt; j++) {
        const int kb = p0 + j * GQA_BN;
        cp_async_wait_1(); /* K(j) is in */
        __syncthreads();

        /* S = Q K^T over this warp's 16 keys (two n8 tiles), K [key][dim] in
         * shared memory as the column-major B operand. */
        float sc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
        for (int kk = 0; kk < KS; kk++) {
            uint32_t kf[4];
            ldsm_x4(kf, sk + (warp * 16 + (lane & 7) + ((lane >> 4) << 3)) * LDS + kk * 16 + ((lane >> 3) & 1) * 8);
            mma_bf16(sc[0], qf[kk], kf[0], kf[1]);
            mma_bf16(sc[1], qf[kk], kf[2], kf[3]);
        }
        __syncthreads(); /* every warp is done with sk */
        if (j + 1 < n_kt)
            gqa_rows<D, FP8>(sk, a.kc, a.ks, table, kb + GQA_BN, kmax, grp, a);
        cp_async_commit();

        /* Scale to log2 units; keys past the split are -inf. */
#pragma unroll
        for (int i = 0; i < 2; i++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int key = kb + warp * 16 + i * 8 + 2 * (lane & 3) + (e & 1);
                sc[i][e] = key > kmax ? -INFINITY : sc[i][e] * scale_log2;
            }
        }
        /* Online softmax per row. A warp may have seen no key yet (its keys of
         * the split's first tiles can all be past kmax): then m stays -inf and
         * exp2 against 0 keeps p, l and O at 0 instead of NaN. */
#pragma unroll
        for (int e = 0; e < 2; e++) {
            float mx = fmaxf(fmaxf(sc[0][2 * e], sc[0][2 * e + 1]), fmaxf(sc[1][2 * e], sc[1][2 * e + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            float m_new = fmaxf(m[e], mx), m_use = m_new == -INFINITY ? 0.0f : m_new;
            float corr = exp2f(m[e] - m_use);
            m[e] = m_new;
            float sum = 0.0f;
#pragma unroll
            for (int i = 0; i < 2; i++) {
                sc[i][2 * e] = exp2f(sc[i][2 * e] - m_use);
                sc[i][2 * e + 1] = exp2f(sc[i][2 * e + 1] - m_use);
                sum += sc[i][2 * e] + sc[i][2 * e + 1];
            }
            l[e] = l[e] * corr + sum;
#pragma unroll
            for (int i = 0; i < DT; i++) o[i][2 * e] *= corr, o[i][2 * e + 1] *= corr;
        }

        cp_async_wait_1(); /* V(j) is in */
        __syncthreads();
        /* O += P V: P's A fragment is the S tiles as they are; V [key][dim]
         * is the row-major B operand, read transposed. */
        uint32_t pa[4] = {pack_bf16(sc[0][0], sc[0][1]), pack_bf16(sc[0][2], sc[0][3]), pack_bf16(sc[1][0], sc[1][1]),
                          pack_bf16(sc[1][2], sc[1][3])};
#pragma unroll
        for (int d2 = 0; d2 < DT / 2; d2++) {
            uint32_t vf[4];
            ldsm_x4_trans(vf, sv + (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS + d2 * 16 + (lane >> 4) * 8);
            mma_bf16(o[2 * d2], pa, vf[0], vf[1]);
            mma_bf16(o[2 * d2 + 1], pa, vf[2], vf[3]);
        }
        __syncthreads(); /* every warp is done with sv */
        if (j + 1 < n_kt)
            gqa_rows<D, FP8>(sv, a.vc, a.vs, table, kb + GQA_BN, kmax, grp, a);
        cp_async_commit();
    }
    cp_async_wait_0();
#pragma unroll
    for (int e = 0; e < 2; e++) {
        l[e] += __shfl_xor_sync(0xffffffffu, l[e], 1);
        l[e] += __shfl_xor_sync(0xffffffffu, l[e], 2);
    }
    __syncthreads(); /* the tiles are done with: smem holds the merge from here on */

    /* Merge the warps: so [warp][row][d] unnormalised O, sml [warp][row] (m, l). */
    float *so = (float *)smem, *sml = so + ATT_WARPS * 16 * D;
#pragma unroll
    for (int e = 0; e < 2; e++) {
        int r = (lane >> 2) + 8 * e;
        float *dst = so + (size_t)(warp * 16 + r) * D + 2 * (lane & 3);
#pragma unroll
        for (int i = 0; i < DT; i++) dst[i * 8] = o[i][2 * e], dst[i * 8 + 1] = o[i][2 * e + 1];
        if ((lane & 3) == 0) sml[(warp * 16 + r) * 2] = m[e], sml[(warp * 16 + r) * 2 + 1] = l[e];
    }
    __syncthreads();
    for (int idx = tid; idx < ng * D; idx += ATT_WARPS * 32) {
        int r = idx / D, i = idx % D;
        float M = -INFINITY, L = 0.0f, O = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++)
            if (sml[(w * 16 + r) * 2 + 1] > 0.0f) M = fmaxf(M, sml[(w * 16 + r) * 2]);
        for (int w = 0; w < ATT_WARPS; w++) {
            float lw = sml[(w * 16 + r) * 2 + 1];
            if (lw > 0.0f) { /* a warp that saw no key has l = 0 and m = -inf */
                float f = exp2f(sml[(w * 16 + r) * 2] - M);
                L += lw * f;
                O += so[(size_t)(w * 16 + r) * D + i] * f;
            }
        }
        size_t th = (size_t)t * n_q + h0 + r, ph = (size_t)i_row * n_q + h0 + r; /* output row; partials row */
        if (a.n_split == 1) {
            a.out[th * D + i] = f2bf(O / L); /* L >= 1: position 0 is in split 0 */
        } else {
            a.part_o[(ph * a.n_split + sp) * D + i] = O;
            if (i == 0) { /* natural-log units for the combine kernel; L = 0 marks an empty split */
                a.part_ml[(ph * a.n_split + sp) * 2] = M * 0.6931471805599453f;
                a.part_ml[(ph * a.n_split + sp) * 2 + 1] = L;
            }
        }
    }
}

/* One block per (head, grid row): merges the splits' partial results. */
static __global__ void attention_combine_kernel(bf16 *out, const float *part_o, const float *part_ml,
                                                const int32_t *tok_list, int n_split, int d, int row0) {
    pdl_begin();
    int h = blockIdx.x, i_row = row0 + blockIdx.y, n_q = gridDim.x;
    int t = tok_list ? tok_list[i_row] : i_row;
    size_t th = (size_t)t * n_q + h, ph = (size_t)i_row * n_q + h; /* output row; partials row */
    const float *ml = part_ml + ph * n_split * 2;
    float M = -INFINITY, L = 0.0f;
    for (int s = 0; s < n_split; s++)
        if (ml[2 * s + 1] > 0.0f) M = fmaxf(M, ml[2 * s]);
    for (int s = 0; s < n_split; s++)
        if (ml[2 * s + 1] > 0.0f) L += ml[2 * s + 1] * expf(ml[2 * s] - M);
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float o = 0.0f;
        for (int s = 0; s < n_split; s++)
            if (ml[2 * s + 1] > 0.0f) o += part_o[(ph * n_split + s) * d + i] * expf(ml[2 * s] - M);
        out[th * d + i] = f2bf(o / L);
    }
}

// kernel launchers

template <int EPL>
static void attention_launch(const cuda_ctx *c, dim3 grid, const attn_args &a) {
    if (a.ks)
        launch(c, attention_kernel<EPL, true>, grid, ATT_WARPS * 32, 0, a);
    else
        launch(c, attention_kernel<EPL, false>, grid, ATT_WARPS * 32, 0, a);
}

template <int D>
static void attention_gqa_launch(const cuda_ctx *c, dim3 grid, const attn_args &a, int n_q) {
    if (a.ks)
        launch(c, attention_gqa_kernel<D, true>, grid, ATT_WARPS * 32, 0, a, n_q);
    else
        launch(c, attention_gqa_kernel<D, false>, grid, ATT_WARPS * 32, 0, a, n_q);
}

static void attention_cuda(cuda_ctx *c, bf16 *out, const bf16 *q, int ld_q, const bf16 *kc, const bf16 *vc,
                           const kattn_batch *b, int n_q, int n_kv, int q_per_kv, int d, float scale) {
    int T = b->n_tokens;
    c->attention_ran = NULL;
    if (T <= 0 || n_q <= 0) return;
    if (d > 256) {
        fprintf(stderr, "glmtp: rank %s: cuda attention: head dim %d (max 256)\n", glmtp_check_rank(), d);
        abort();
    }
    /* Prefill runs on tensor cores first (when it applies); the general kernel
     * takes the n tokens left: all T in order (tok_list NULL), or those listed. */
    const int32_t *tok_list = NULL;
    int max_pos = b->max_pos;
    int n = cuda_attention_prefill(c, out, q, ld_q, kc, vc, b, n_q, n_kv, q_per_kv, d, scale, &tok_list, &max_pos);
    if (n <= 0) return;
    /* Grouped: one block per (KV head, token) when 2 to 16 q heads share one. */
    int groups = CEIL_DIV(n_q, q_per_kv);
    int gqa = c->gqa_attention && q_per_kv >= 2 && q_per_kv <= 16 && (d == 64 || d == 128) && ld_q % 8 == 0 &&
              ((uintptr_t)q | (uintptr_t)kc | (uintptr_t)vc) % 16 == 0;
    /* Split the sequence only when the blocks cannot fill the GPU: aim at ~8
     * blocks of ATT_WARPS warps per SM, each with a tile of keys at least. */
    int n_pos = max_pos + 1, blocks = n * (gqa ? groups : n_q), n_split = 1, target = 8 * c->sm_count;
    if (blocks < target && n_pos > MIN_SPLIT_POS) {
        n_split = CEIL_DIV(target, blocks);
        if (n_split > CEIL_DIV(n_pos, MIN_SPLIT_POS)) n_split = CEIL_DIV(n_pos, MIN_SPLIT_POS);
        if (n_split > MAX_SPLITS) n_split = MAX_SPLITS;
    }
    attn_args a;
    memset(&a, 0, sizeof a);
    a.out = out, a.q = q, a.kc = kc, a.vc = vc;
    if (b->kv_dtype == KV_DTYPE_FP8) {
        a.ks = (const float *)((const uint8_t *)kc + b->kv_scale_off);
        a.vs = (const float *)((const uint8_t *)vc + b->kv_scale_off);
    }
    a.pos = b->pos, a.seq = b->seq, a.tables = b->block_tables, a.tok_list = tok_list;
    a.ld_q = ld_q, a.max_blocks = b->max_blocks, a.block_size = b->block_size;
    a.n_kv = n_kv, a.q_per_kv = q_per_kv, a.d = d, a.scale = scale;
    a.n_split = n_split, a.split_len = CEIL_DIV(n_pos, n_split);
    if (n_split > 1) {
        size_t n_part = (size_t)n * n_q * n_split;
        float *part = (float *)cuda_scratch(c, &c->attn_part, n_part * ((size_t)d + 2) * sizeof(float));
        a.part_o = part;
        a.part_ml = part + n_part * d;
    }
    c->attention_ran = gqa ? "grouped" : "per_head";
    /* gridDim.y is at most 65535: a step of more tokens (a 128K prefill whose
     * rows the tensor-core kernel left here) runs in slices of grid rows. */
    for (int r0 = 0; r0 < n; r0 += GRID_Y_MAX) {
        unsigned rows = (unsigned)(n - r0 < GRID_Y_MAX ? n - r0 : GRID_Y_MAX);
        a.row0 = r0;
        if (gqa) {
            dim3 ggrid((unsigned)groups, rows, (unsigned)n_split);
            if (d == 64)
                attention_gqa_launch<64>(c, ggrid, a, n_q);
            else
                attention_gqa_launch<128>(c, ggrid, a, n_q);
        } else {
            dim3 grid((unsigned)n_q, rows, (unsigned)n_split);
            if (d <= 32)
                attention_launch<1>(c, grid, a);
            else if (d <= 64)
                attention_launch<2>(c, grid, a);
            else if (d <= 128)
                attention_launch<4>(c, grid, a);
            else
                attention_launch<8>(c, grid, a);
        }
    }
    for (int r0 = 0; n_split > 1 && r0 < n; r0 += GRID_Y_MAX) {
        unsigned rows = (unsigned)(n - r0 < GRID_Y_MAX ? n - r0 : GRID_Y_MAX);
        launch(c, attention_combine_kernel, dim3((unsigned)n_q, rows), 128, 0, out, a.part_o, a.part_ml, tok_list,
               n_split, d, r0);
    }
}

void cuda_op_attention(void *ctx, void *out, const void *q, int ld_q, const void *kcache, const void *vcache,
                       const kattn_batch *b, int n_q, int n_kv, int q_per_kv, int d, float scale) {
    attention_cuda((cuda_ctx *)ctx, (bf16 *)out, (const bf16 *)q, ld_q, (const bf16 *)kcache, (const bf16 *)vcache, b,
                   n_q, n_kv, q_per_kv, d, scale);
}
