/* Tensor-core causal attention for the prefill runs of a step (FlashAttention
 * style), over the paged bf16 KV cache (or the fp8 one, kernels.h
 * KV_DTYPE_FP8: each kernel a template on it, whose tile loaders dequantise
 * the rows to bf16 in shared memory with plain loads where the bf16 path
 * issues cp.async; the rest of the kernel is the same); attention.cu's general kernel takes the
 * step's other tokens. Same contract as the attention op (kernels.h).
 *
 * Plan (host, once per step): a run is a stretch of consecutive tokens of one
 * sequence at consecutive positions (a prefill chunk, which may start at pos >
 * 0 when earlier chunks are cached). Runs of at least FA_MIN_RUN tokens are cut
 * into query tiles of FA_BM rows (FA2_BM for variant 2, below; the last may be
 * partial); every other token goes to the general kernel through a device list
 * of token indices. The plan is cached per step (serial, T, host pos/seq, tile
 * rows), so the 40 layers of a step upload it once. While a CUDA graph is
 * being captured on the stream this file stands aside (the upload is a host
 * copy): the general kernel takes all.
 *
 * Kernel: one CTA of 4 warps per (query tile, q head); warp w owns query rows
 * 16w..16w+15 of the tile. Q (FA_BM x d) is held in registers as mma A
 * fragments. The CTA walks KV tiles of FA_BN keys from position 0 to the tile's
 * last position, gathering K and V rows through the block table into shared
 * memory with 16-byte cp.async (keys past that last position are zero-filled,
 * never read). K of the next tile loads while this tile's P V runs, V of the
 * next while its Q K^T runs. Per KV tile:
 *   S = Q K^T          mma.sync m16n8k16 bf16 -> fp32, per warp 16 x FA_BN
 *   causal mask        only on tiles that reach past the tile's first position
 *   online softmax     fp32 running max m and sum l per row, exp2 with scale*log2e
 *   O += P V           P rounded to bf16 (the A operand), O fp32 in registers
 * and finally O / l is written bf16; rows past the tile's n are not written.
 *
 * Register fragments (PTX m16n8k16, g = lane / 4, c = lane % 4): an A
 * register holds 2 adjacent k of one row (rows g, g+8; k 2c, 2c+8), a B
 * register 2 adjacent k of one column n = g, an accumulator rows g and g+8 at
 * columns 2c, 2c+1. An S accumulator tile therefore is exactly the P A
 * fragment of the next product (no shuffles), and each row's statistics live in
 * the 4 lanes of a quad.
 *
 * Shapes and limits: d 64 or 128 (template), ld_q a multiple of 8 and q, out,
 * kcache, vcache 16-byte aligned (else the caller keeps the general kernel);
 * any block_size; any number of tiles (launched 65535 at most at a time, tile0).
 * Shared memory 2 * FA_BN * (d + 8) * 2 bytes (34,816 for d = 128, 18,432 for
 * 64), static: rows padded by 16 bytes so the 8 rows an ldmatrix reads fall in
 * different banks. Q is staged through the K buffer before the loop.
 * Registers: Q fragments d/2, O accumulators d/2, S 32 per thread; at most 168
 * (FA_MIN_CTAS), no spills (nvcc 13.0, sm_80 and sm_90).
 *
 * Variant 2 (the default; GLMTP_FLASH_VARIANT=1 selects the kernel above;
 * cuda_ctx.flash_variant; d 64 or 128, scale
 * > 0): the FlashAttention-2 tiling. The kernel above reads a K or V fragment
 * (one x4 ldmatrix, 512 bytes) for every two mma, brings each KV tile to
 * shared memory for 64 query rows only, and has four barriers and half a
 * tile of load latency cover per KV tile (~140 TFLOP/s at 8K on an H200).
 *   tiles        FA2_BM = 128 query rows per CTA of 4 warps, each warp 32
 *                rows as two m16 row blocks, so every K and V fragment feeds
 *                4 mma (2 row blocks x 2 n8 tiles) and each KV tile serves
 *                twice the rows. KV tiles of FA2_BN = 64 keys in shared
 *                memory, computed in softmax steps of KN keys (FA2_KN: 32
 *                for d = 128, 64 for d = 64). Q is read from shared memory,
 *                2 ldmatrix per k step for the KN keys: 192 ldmatrix bytes
 *                per mma for d = 128 (256 above).
 *   registers    O 2 x d/8 x 4 fp32 (128 for d = 128), S 2 x KN/8 x 4 (32),
 *                P as bf16 pairs (16), m and l 8, fragments and addresses.
 *                Q cannot stay in registers as well (another 64). With KN =
 *                64, S is 64 and nvcc 13.0 (sm_80 and sm_90) spills 44 bytes
 *                at 255 registers, hence KN = 32 for d = 128: 240 registers,
 *                no spills; d = 64 (O 64): KN = 64, about 215.
 *                __launch_bounds__(128, 2): at most 255, 2 CTAs (8 warps) per
 *                SM.
 *   shared       dynamic (cudaFuncSetAttribute past 48 KB), rows padded to
 *                d + 8 elements as above:
 *                  sq [FA2_BM][d+8]     Q, at the end O staged for stores
 *                  sk [2][FA2_BN][d+8]  K, double-buffered
 *                  sv [2][FA2_BN][d+8]  V, double-buffered
 *                104,448 bytes for d = 128 (2 CTAs fit an H100/H200 SM's
 *                228 KB; 1 on an A100), 55,296 for d = 64.
 *   pipeline     one barrier per KV tile: wait for this thread's copies of
 *                tile j, barrier (tile j visible to all; every warp done with
 *                tile j - 1, whose buffers tile j + 1 then takes), queue tile
 *                j + 1 (K and V rows looked up in the block table once), then
 *                compute tile j while it lands: a whole tile of cover.
 *   causal       a warp skips the softmax steps whose first key is past its
 *                last row's position (exact: they would add p = 0 and rescale
 *                by 1), and masks only where a step's last key is past its
 *                first row's position. Plan tiles are FA2_BM rows
 *                (attn_plan.bm), sorted longest first as above.
 *   softmax      the running max m is kept in scaled log2 units and
 *                p = exp2(s * scale_log2 - m) is one FFMA + ex2 (as
 *                FlashAttention-2; the max is taken on raw scores, which is
 *                why scale must be > 0); otherwise the same math: P rounded
 *                to bf16 for P V, l summed from the fp32 p.
 *   output       O / l goes through the warp's own rows of sq (no other warp
 *                reads them), then 16-byte row-contiguous stores, rows < n
 *                only.
 *
 * Accuracy: P is rounded to bf16 before P V (as FlashAttention does), so each
 * softmax weight carries a relative error up to 2^-9 that the general kernel's
 * fp32 weights do not; tests/gpu/test_gpu_kernels.c bounds the effect. */
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"

#define FA_BM 64      /* query rows per CTA: 16 per warp */
#define FA_BN 64      /* keys per KV tile */
#define FA_WARPS 4
#define FA_THREADS (FA_WARPS * 32)
#define FA_MIN_RUN 16 /* shorter runs (decode, short chunks) go to the general kernel */
/* CTAs per SM the registers must allow: 3 caps them at 168 (no spills with
 * nvcc 13.0; 170 uncapped), 12 warps per SM instead of 8, and ran GLM-4's
 * T = 4096 prefill 1.21 -> 1.05 ms on an H200. */
#define FA_MIN_CTAS 3

/* Variant 2 (see the header comment). */
#define FA2_BM 128    /* query rows per CTA: 32 per warp, two m16 row blocks */
#define FA2_BN 64     /* keys per KV tile */
#define FA2_WARPS 4
#define FA2_THREADS (FA2_WARPS * 32)
#define FA2_MIN_CTAS 2 /* caps registers at 255: O and S alone take 192 for d = 128 */
#define FA2_KN(d) ((d) > 64 ? 32 : 64) /* keys per softmax step (S registers: 2 x KN / 8 x 4) */

typedef struct flash_args {
    bf16 *out;
    const bf16 *q, *kc, *vc; /* kc, vc: an fp8 cache's e4m3 bytes when ks, vs are set */
    const float *ks, *vs;    /* fp8 cache (kernels.h KV_DTYPE_FP8): a scale per (slot, KV head) row; else NULL */
    const int32_t *tiles;  /* [n_tiles][4]: first token, rows, sequence, first position */
    int tile0;             /* tile of blockIdx.y = 0: launches cover at most 65535 tiles each */
    const int32_t *tables; /* [n_seqs, max_blocks] */
    int ld_q, ld_out, max_blocks, block_size, n_kv, q_per_kv;
    float scale_log2; /* softmax scale * log2(e): exp(x * scale) = exp2(x * scale_log2) */
} flash_args;

/* ------------------------------------------------------------------ kernel */

/* Keys kb..kb+FA_BN-1 of KV head g into dst [FA_BN][D + 8] (cp.async; keys
 * past kmax zero rows: masked anyway, and zeros keep 0 * garbage out of P V). */
template <int D, bool FP8>
static __device__ __forceinline__ void load_kv_tile(bf16 *dst, const bf16 *cache, const float *scales,
                                                    const int32_t *table, int kb, int kmax, int g,
                                                    const flash_args &a) {
    if constexpr (FP8) /* dequantised with plain loads where the cp.async would be issued */
        fp8_kv_rows<D, FA_BN, FA_THREADS>(dst, (const uint8_t *)cache, scales, table, kb, kmax, g, a.block_size,
                                          a.n_kv);
    else
        cp_async_kv_rows<D, FA_BN, FA_THREADS>(dst, cache, table, kb, kmax, g, a.block_size, a.n_kv);
}

template <int D, bool FP8>
static __global__ void __launch_bounds__(FA_THREADS, FA_MIN_CTAS) flash_prefill_kernel(flash_args a) {
    pdl_begin();
    constexpr int LDS = D + 8;     /* shared row stride in elements (+16 bytes: no ldmatrix bank conflicts) */
    constexpr int CPR = D / 8;     /* 16-byte chunks per row */
    constexpr int KS = D / 16;     /* k steps of Q K^T */
    constexpr int NT = FA_BN / 8;  /* n8 tiles of S per warp */
    constexpr int DT = D / 8;      /* n8 tiles of O per warp */
    static_assert(FA_BM == FA_WARPS * 16 && FA_BM <= FA_BN, "Q is staged in the K buffer, 16 rows per warp");
    static_assert(D % 16 == 0 && FA_BN % 16 == 0, "whole mma tiles");
    __shared__ __align__(16) bf16 sk[FA_BN * LDS];
    __shared__ __align__(16) bf16 sv[FA_BN * LDS];

    const int32_t *tile = a.tiles + 4 * ((size_t)a.tile0 + blockIdx.y);
    const int t0 = tile[0], n = tile[1], s = tile[2], pos0 = tile[3];
    const int h = blockIdx.x, g = h / a.q_per_kv;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int kmax = pos0 + n - 1; /* the tile's last position: the last key any row sees */
    const int n_kt = kmax / FA_BN + 1;
    const int32_t *table = a.tables + (size_t)s * a.max_blocks;

    /* Q tile -> shared (rows past n zero) -> A fragments in registers. */
    for (int c = tid; c < FA_BM * CPR; c += FA_THREADS) {
        int r = c / CPR, col = (c % CPR) * 8;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (r < n) v = *(const uint4 *)(a.q + (size_t)(t0 + r) * a.ld_q + (size_t)h * D + col);
        *(uint4 *)(sk + r * LDS + col) = v;
    }
    __syncthreads();
    uint32_t qf[KS][4];
#pragma unroll
    for (int kk = 0; kk < KS; kk++) ldsm_x4(qf[kk], sk + (warp * 16 + (lane & 15)) * LDS + kk * 16 + (lane >> 4) * 8);
    __syncthreads(); /* sk holds K from here on */

    /* This thread's two rows of the tile (r and r + 8) and the last key each
     * may see: its own position, and never past kmax (rows past n are padding:
     * computed, finite, not written). */
    const int row0 = warp * 16 + (lane >> 2);
    const int lim[2] = {min(pos0 + row0, kmax), min(pos0 + row0 + 8, kmax)};
    float o[DT][4];
#pragma unroll
    for (int i = 0; i < DT; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    /* m in scaled log2 units; l per lane, summed over the quad at the end */
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    /* Group order per thread: K0 V0 | K1 V1 | ... ; "wait 1" always leaves only
     * the newest group in flight (empty groups are committed when there is no
     * next tile, so the count stays the same on the last one). */
    load_kv_tile<D, FP8>(sk, a.kc, a.ks, table, 0, kmax, g, a);
    cp_async_commit();
    load_kv_tile<D, FP8>(sv, a.vc, a.vs, table, 0, kmax, g, a);
    cp_async_commit();

    for (int j = 0; j < n_kt; j++) {
        const int kb = j * FA_BN;
        cp_async_wait_1(); /* K(j) is in (V(j) may still be in flight) */
        __syncthreads();

        /* S = Q K^T. K is [key][dim] in shared memory, which is the column-major
         * B operand: matrices (keys 0-7, dims 0-7), (0-7, 8-15), (8-15, 0-7),
         * (8-15, 8-15) of each 16 x 16 block give b0, b1 of two n8 tiles. */
        float sc[NT][4];
#pragma unroll
        for (int i = 0; i < NT; i++) sc[i][0] = sc[i][1] = sc[i][2] = sc[i][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KS; kk++) {
#pragma unroll
            for (int n2 = 0; n2 < NT / 2; n2++) {
                uint32_t kf[4];
                ldsm_x4(kf, sk + (n2 * 16 + (lane & 7) + ((lane >> 4) << 3)) * LDS + kk * 16 + ((lane >> 3) & 1) * 8);
                mma_bf16(sc[2 * n2], qf[kk], kf[0], kf[1]);
                mma_bf16(sc[2 * n2 + 1], qf[kk], kf[2], kf[3]);
            }
        }
        __syncthreads(); /* every warp is done with sk: the next K may land there */
        if (j + 1 < n_kt) load_kv_tile<D, FP8>(sk, a.kc, a.ks, table, kb + FA_BN, kmax, g, a);
        cp_async_commit();

        /* Scale to log2 units, then mask keys past each row's limit; only
         * tiles whose last key is past the tile's first position need it. */
        const bool masked = kb + FA_BN - 1 > pos0;
#pragma unroll
        for (int i = 0; i < NT; i++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int key = kb + i * 8 + 2 * (lane & 3) + (e & 1);
                sc[i][e] = masked && key > lim[e >> 1] ? -INFINITY : sc[i][e] * a.scale_log2;
            }
        }

        /* Online softmax per row (e = 0: row0, 1: row0 + 8). The row max over
         * the quad is finite: key 0 is in tile 0 for every row, so m is finite
         * from the first tile on and exp2(m_old - m_new) is 0 there. */
#pragma unroll
        for (int e = 0; e < 2; e++) {
            float mx = -INFINITY;
#pragma unroll
            for (int i = 0; i < NT; i++) mx = fmaxf(mx, fmaxf(sc[i][2 * e], sc[i][2 * e + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            float m_new = fmaxf(m[e], mx);
            float corr = exp2f(m[e] - m_new);
            m[e] = m_new;
            float sum = 0.0f;
#pragma unroll
            for (int i = 0; i < NT; i++) {
                sc[i][2 * e] = exp2f(sc[i][2 * e] - m_new); /* exp2(-inf) = 0 for masked keys */
                sc[i][2 * e + 1] = exp2f(sc[i][2 * e + 1] - m_new);
                sum += sc[i][2 * e] + sc[i][2 * e + 1];
            }
            l[e] = l[e] * corr + sum;
#pragma unroll
            for (int i = 0; i < DT; i++) o[i][2 * e] *= corr, o[i][2 * e + 1] *= corr;
        }

        cp_async_wait_1(); /* V(j) is in (K(j+1) may still be in flight) */
        __syncthreads();

        /* O += P V. P's A fragment for keys 16kk..16kk+15 is S tiles 2kk and
         * 2kk+1 as they are. V is [key][dim], the row-major B operand, so it is
         * read transposed: matrices (keys 0-7, dims 0-7), (8-15, 0-7), (0-7,
         * 8-15), (8-15, 8-15) give b0, b1 of two n8 tiles of dims. */
#pragma unroll
        for (int kk = 0; kk < FA_BN / 16; kk++) {
            uint32_t pa[4] = {pack_bf16(sc[2 * kk][0], sc[2 * kk][1]), pack_bf16(sc[2 * kk][2], sc[2 * kk][3]),
                              pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]),
                              pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
#pragma unroll
            for (int d2 = 0; d2 < DT / 2; d2++) {
                uint32_t vf[4];
                int vrow = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                ldsm_x4_trans(vf, sv + vrow * LDS + d2 * 16 + (lane >> 4) * 8);
                mma_bf16(o[2 * d2], pa, vf[0], vf[1]);
                mma_bf16(o[2 * d2 + 1], pa, vf[2], vf[3]);
            }
        }
        __syncthreads(); /* every warp is done with sv: the next V may land there */
        if (j + 1 < n_kt) load_kv_tile<D, FP8>(sv, a.vc, a.vs, table, kb + FA_BN, kmax, g, a);
        cp_async_commit();
    }

    /* O / l, rows < n only. l >= 1: the key that set the row's final max
     * added exp2(0) = 1 and was never rescaled after. */
#pragma unroll
    for (int e = 0; e < 2; e++) {
        l[e] += __shfl_xor_sync(0xffffffffu, l[e], 1);
        l[e] += __shfl_xor_sync(0xffffffffu, l[e], 2);
    }
#pragma unroll
    for (int e = 0; e < 2; e++) {
        int r = row0 + 8 * e;
        if (r >= n) continue;
        float inv = 1.0f / l[e];
        bf16 *dst = a.out + (size_t)(t0 + r) * a.ld_out + (size_t)h * D + 2 * (lane & 3);
#pragma unroll
        for (int i = 0; i < DT; i++)
            *(__nv_bfloat162 *)(dst + i * 8) = __floats2bfloat162_rn(o[i][2 * e] * inv, o[i][2 * e + 1] * inv);
    }
}

/* ------------------------------------------------------ kernel, variant 2 */

/* Queues the cp.async copies of keys kb..kb+FA2_BN-1 of KV head g into dk
 * and dv [FA2_BN][D + 8], as load_kv_tile does, K and V together: a thread
 * copies the same 16-byte column of FA2_BN / (FA2_THREADS / (D / 8)) rows of
 * both, so it looks each row up in the block table once, and its row and
 * column offsets are two registers (load_kv_tile's generic loop keeps one pair
 * per chunk live, which this kernel has no registers for). */
template <int D, bool FP8>
static __device__ __forceinline__ void load_kv_tile2(bf16 *dk, bf16 *dv, const int32_t *table, int kb, int kmax,
                                                     int g, const flash_args &a) {
    constexpr int LDS = D + 8, CPR = D / 8, RPP = FA2_THREADS / CPR; /* rows per pass */
    static_assert(FA2_THREADS % CPR == 0 && FA2_BN % RPP == 0, "whole rows per pass");
    const unsigned col = (threadIdx.x % CPR) * 8, r0 = threadIdx.x / CPR;
#pragma unroll
    for (int i = 0; i < FA2_BN / RPP; i++) {
        const unsigned r = r0 + i * RPP, p = min((unsigned)kb + r, (unsigned)kmax);
        /* a key past kmax reads nothing (src size 0) from kmax's valid address:
         * no branch around the table lookup */
        const int bytes = kb + (int)r <= kmax ? 16 : 0;
        const unsigned bs = (unsigned)a.block_size, blk = (unsigned)table[p / bs];
        const size_t kvrow = ((size_t)blk * bs + p % bs) * (unsigned)a.n_kv + (unsigned)g, off = kvrow * D + col;
        if constexpr (FP8) { /* fp8 cache: dequantised with plain loads, the same rows and columns */
            uint4 kv = make_uint4(0u, 0u, 0u, 0u), vv = kv;
            if (bytes) {
                kv = fp8x8_to_bf16x8(*(const uint2 *)((const uint8_t *)a.kc + off), a.ks[kvrow]);
                vv = fp8x8_to_bf16x8(*(const uint2 *)((const uint8_t *)a.vc + off), a.vs[kvrow]);
            }
            *(uint4 *)(dk + r * LDS + col) = kv;
            *(uint4 *)(dv + r * LDS + col) = vv;
        } else {
            cp_async16(dk + r * LDS + col, a.kc + off, bytes);
            cp_async16(dv + r * LDS + col, a.vc + off, bytes);
        }
    }
}

/* Dynamic shared memory of variant 2: sq, sk[2], sv[2], rows of D + 8. */
template <int D>
static constexpr size_t flash2_smem_bytes(void) {
    return (size_t)(FA2_BM + 4 * FA2_BN) * (D + 8) * sizeof(bf16);
}

template <int D, bool FP8>
static __global__ void __launch_bounds__(FA2_THREADS, FA2_MIN_CTAS) flash2_prefill_kernel(flash_args a) {
    pdl_begin();
    constexpr int LDS = D + 8;           /* shared row stride in elements (+16 bytes: no ldmatrix bank conflicts) */
    constexpr int CPR = D / 8;           /* 16-byte chunks per row */
    constexpr int KS = D / 16;           /* k steps of Q K^T */
    constexpr int KN = FA2_KN(D);        /* keys per softmax step */
    constexpr int NT = KN / 8;           /* n8 tiles of S per row block */
    constexpr int DT = D / 8;            /* n8 tiles of O per row block */
    constexpr int BUF = FA2_BN * LDS;    /* elements of one K or V buffer */
    static_assert(FA2_BM == FA2_WARPS * 32, "32 query rows (two m16 blocks) per warp");
    static_assert(D % 16 == 0 && FA2_BN % 16 == 0, "whole mma tiles");
    extern __shared__ __align__(16) unsigned char fa2_smem[];
    bf16 *const sq = (bf16 *)fa2_smem;
    bf16 *const sk = sq + FA2_BM * LDS; /* [2][FA2_BN][LDS] */
    bf16 *const sv = sk + 2 * BUF;      /* [2][FA2_BN][LDS] */

    const int32_t *tile = a.tiles + 4 * ((size_t)a.tile0 + blockIdx.y);
    const int t0 = tile[0], n = tile[1], s = tile[2], pos0 = tile[3];
    const int h = blockIdx.x, g = h / a.q_per_kv;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int kmax = pos0 + n - 1; /* the tile's last position: the last key any row sees */
    const int n_kt = kmax / FA2_BN + 1;
    const int32_t *table = a.tables + (size_t)s * a.max_blocks;

    /* Group 0: Q (rows past n zero) with K and V of tile 0. */
    {
        constexpr int RPP = FA2_THREADS / CPR; /* rows per pass */
        const int col = (tid % CPR) * 8;
#pragma unroll 4
        for (int r = tid / CPR; r < FA2_BM; r += RPP) {
            const bf16 *src = a.q; /* any valid address: nothing is read for a zero row */
            int bytes = 0;
            if (r < n) src = a.q + (size_t)(t0 + r) * a.ld_q + (size_t)h * D + col, bytes = 16;
            cp_async16(sq + r * LDS + col, src, bytes);
        }
    }
    load_kv_tile2<D, FP8>(sk, sv, table, 0, kmax, g, a);
    cp_async_commit();

    /* This thread's rows: wrow + 16 rb + 8 hf + lane / 4 for row block rb and
     * accumulator half hf (elements 2hf, 2hf + 1), at position qpos + 16 rb +
     * 8 hf; each sees the keys up to its position, never past kmax (rows past
     * n are padding: computed, finite, not written). wlast: the last key any
     * row of the warp sees, -1 when all its rows are padding. */
    const int wrow = warp * 32;
    const int wlast = wrow < n ? min(pos0 + wrow + 31, kmax) : -1;
    const int qpos = pos0 + wrow + (lane >> 2);
    float o[2][DT][4];
#pragma unroll
    for (int rb = 0; rb < 2; rb++)
#pragma unroll
        for (int i = 0; i < DT; i++) o[rb][i][0] = o[rb][i][1] = o[rb][i][2] = o[rb][i][3] = 0.0f;
    /* m in scaled log2 units; l per lane, summed over the quad at the end */
    float m[2][2] = {{-INFINITY, -INFINITY}, {-INFINITY, -INFINITY}}, l[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};

    for (int j = 0; j < n_kt; j++) {
        const int kb = j * FA2_BN;
        const bf16 *kt = sk + (j & 1) * BUF, *vt = sv + (j & 1) * BUF;
        cp_async_wait_0(); /* this thread's copies of tile j (and Q) have landed */
        __syncthreads();   /* everyone's have, and every warp is done with tile j - 1 */
        if (j + 1 < n_kt) {
            /* into the buffers tile j - 1 used; lands while tile j is computed */
            load_kv_tile2<D, FP8>(sk + ((j + 1) & 1) * BUF, sv + ((j + 1) & 1) * BUF, table, kb + FA2_BN, kmax, g, a);
            cp_async_commit();
        }
        /* The tile in sub-tiles of KN keys (one softmax step each). Keys are
         * walked upwards, so once a sub-tile starts past the warp's last row
         * every later one does too; the warp still takes the barriers. */
#pragma unroll
        for (int sub = 0; sub < FA2_BN / KN; sub++) {
            const int kb2 = kb + sub * KN;
            if (kb2 > wlast) break;
            const bf16 *ks = kt + sub * KN * LDS, *vs = vt + sub * KN * LDS;

            /* S = Q K^T. The A operand of each row block is read from sq per k
             * step (the kernel above keeps it in registers); K is [key][dim],
             * the column-major B operand: one x4 ldmatrix gives b0, b1 of two
             * n8 tiles of keys, and each feeds both row blocks. */
            float sc[2][NT][4];
#pragma unroll
            for (int rb = 0; rb < 2; rb++)
#pragma unroll
                for (int i = 0; i < NT; i++) sc[rb][i][0] = sc[rb][i][1] = sc[rb][i][2] = sc[rb][i][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KS; kk++) {
                uint32_t qa[2][4];
#pragma unroll
                for (int rb = 0; rb < 2; rb++)
                    ldsm_x4(qa[rb], sq + (wrow + 16 * rb + (lane & 15)) * LDS + kk * 16 + (lane >> 4) * 8);
#pragma unroll
                for (int n2 = 0; n2 < NT / 2; n2++) {
                    uint32_t kf[4];
                    const int krow = n2 * 16 + (lane & 7) + ((lane >> 4) << 3);
                    ldsm_x4(kf, ks + krow * LDS + kk * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
                    for (int rb = 0; rb < 2; rb++) {
                        mma_bf16(sc[rb][2 * n2], qa[rb], kf[0], kf[1]);
                        mma_bf16(sc[rb][2 * n2 + 1], qa[rb], kf[2], kf[3]);
                    }
                }
            }

            /* Mask keys past each row's limit, only where the sub-tile's last
             * key is past the warp's first row (whose limit is the smallest). */
            if (kb2 + KN - 1 > pos0 + wrow) {
#pragma unroll
                for (int rb = 0; rb < 2; rb++)
#pragma unroll
                    for (int i = 0; i < NT; i++)
#pragma unroll
                        for (int e = 0; e < 4; e++)
                            if (kb2 + i * 8 + 2 * (lane & 3) + (e & 1) > min(qpos + 16 * rb + 8 * (e >> 1), kmax))
                                sc[rb][i][e] = -INFINITY;
            }

            /* Online softmax per row. The row max over the quad is finite on
             * the first sub-tile (key 0 is every row's), so m is finite from
             * then on; a row whose keys in a later one are all masked keeps m
             * (mx = -inf) and adds 0. P goes straight to bf16 pairs:
             * pk[rb][i][hf] holds S tile i's elements 2hf, 2hf + 1. */
            uint32_t pk[2][NT][2];
#pragma unroll
            for (int rb = 0; rb < 2; rb++) {
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    float mx = -INFINITY;
#pragma unroll
                    for (int i = 0; i < NT; i++) mx = fmaxf(mx, fmaxf(sc[rb][i][2 * hf], sc[rb][i][2 * hf + 1]));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                    const float m_new = fmaxf(m[rb][hf], mx * a.scale_log2); /* scale > 0: max commutes with it */
                    const float corr = exp2f(m[rb][hf] - m_new);             /* 0 on the first (m = -inf) */
                    m[rb][hf] = m_new;
                    float sum = 0.0f;
#pragma unroll
                    for (int i = 0; i < NT; i++) {
                        /* masked keys: exp2(-inf) = 0 */
                        const float p0 = exp2f(fmaf(sc[rb][i][2 * hf], a.scale_log2, -m_new));
                        const float p1 = exp2f(fmaf(sc[rb][i][2 * hf + 1], a.scale_log2, -m_new));
                        sum += p0 + p1;
                        pk[rb][i][hf] = pack_bf16(p0, p1);
                    }
                    l[rb][hf] = l[rb][hf] * corr + sum;
#pragma unroll
                    for (int i = 0; i < DT; i++) o[rb][i][2 * hf] *= corr, o[rb][i][2 * hf + 1] *= corr;
                }
            }

            /* O += P V. P's A fragment for keys 16kk..16kk+15 of a row block is
             * its S tiles 2kk and 2kk+1 as they are; V is [key][dim], the
             * row-major B operand, read transposed; each V fragment feeds both
             * row blocks. */
#pragma unroll
            for (int kk = 0; kk < KN / 16; kk++) {
                uint32_t pa[2][4];
#pragma unroll
                for (int rb = 0; rb < 2; rb++) {
                    pa[rb][0] = pk[rb][2 * kk][0], pa[rb][1] = pk[rb][2 * kk][1];
                    pa[rb][2] = pk[rb][2 * kk + 1][0], pa[rb][3] = pk[rb][2 * kk + 1][1];
                }
#pragma unroll
                for (int d2 = 0; d2 < DT / 2; d2++) {
                    uint32_t vf[4];
                    int vrow = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                    ldsm_x4_trans(vf, vs + vrow * LDS + d2 * 16 + (lane >> 4) * 8);
#pragma unroll
                    for (int rb = 0; rb < 2; rb++) {
                        mma_bf16(o[rb][2 * d2], pa[rb], vf[0], vf[1]);
                        mma_bf16(o[rb][2 * d2 + 1], pa[rb], vf[2], vf[3]);
                    }
                }
            }
        }
    }
    if (wrow >= n) return; /* padding rows only (no barrier follows) */

    /* O / l into this warp's own rows of sq (no other warp reads them; the
     * syncwarps order the lanes' ldmatrix reads, these writes and the copy
     * out), then 16-byte stores of whole rows, rows < n only. l >= 1 up to
     * rounding: the key that set the row's final max added exp2(~0). */
#pragma unroll
    for (int rb = 0; rb < 2; rb++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            l[rb][hf] += __shfl_xor_sync(0xffffffffu, l[rb][hf], 1);
            l[rb][hf] += __shfl_xor_sync(0xffffffffu, l[rb][hf], 2);
        }
    __syncwarp();
#pragma unroll
    for (int rb = 0; rb < 2; rb++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const float inv = 1.0f / l[rb][hf];
            bf16 *dst = sq + (wrow + 16 * rb + 8 * hf + (lane >> 2)) * LDS + 2 * (lane & 3);
#pragma unroll
            for (int i = 0; i < DT; i++)
                *(__nv_bfloat162 *)(dst + i * 8) =
                    __floats2bfloat162_rn(o[rb][i][2 * hf] * inv, o[rb][i][2 * hf + 1] * inv);
        }
    __syncwarp();
    for (int c = lane; c < 32 * CPR; c += 32) {
        int r = wrow + c / CPR, col = (c % CPR) * 8;
        if (r < n)
            *(uint4 *)(a.out + (size_t)(t0 + r) * a.ld_out + (size_t)h * D + col) =
                *(const uint4 *)(sq + r * LDS + col);
    }
}

/* -------------------------------------------------------------------- plan */

static void *xrealloc(void *p, size_t bytes) {
    void *q = realloc(p, bytes);
    if (!q) {
        fprintf(stderr, "glmtp: rank %s: cuda attention: out of host memory for the prefill plan\n",
                glmtp_check_rank());
        abort();
    }
    return q;
}

/* Longest tiles first (they have the most keys), so the last wave is short. */
static int tile_cmp(const void *x, const void *y) {
    const int32_t *a = (const int32_t *)x, *b = (const int32_t *)y;
    int la = a[3] + a[1], lb = b[3] + b[1];
    return la != lb ? (la > lb ? -1 : 1) : (a[0] < b[0] ? -1 : a[0] > b[0]);
}

/* Builds and uploads the plan of the step in b, with query tiles of bm rows
 * (the kernel variant's), unless the cached one is for the same step and bm:
 * same serial, T and host pos/seq (the comparison costs microseconds and
 * keeps two callers that reuse a serial apart). */
static void plan_update(cuda_ctx *c, const kattn_batch *b, int bm) {
    attn_plan *pl = &c->plan;
    int T = b->n_tokens;
    const int32_t *pos = b->host_pos, *seq = b->host_seq;
    size_t tb = (size_t)T * sizeof(int32_t);
    if (pl->T == T && pl->bm == bm && pl->serial == b->serial && !memcmp(pl->key, pos, tb) &&
        !memcmp(pl->key + T, seq, tb))
        return;

    if (pl->key_cap < 2 * (size_t)T) {
        pl->key_cap = 2 * (size_t)T;
        pl->key = (int32_t *)xrealloc(pl->key, pl->key_cap * sizeof(int32_t));
    }
    /* At most T tiles (4 ints each) and T other tokens: tiles grow from 0,
     * the other tokens from 4T, then move down behind the tiles. */
    if (pl->host_cap < 5 * (size_t)T) {
        pl->host_cap = 5 * (size_t)T;
        pl->host = (int32_t *)xrealloc(pl->host, pl->host_cap * sizeof(int32_t));
    }
    int32_t *tiles = pl->host, *rest = pl->host + 4 * (size_t)T;
    int n_tiles = 0, n_rest = 0, rest_max = 0;
    for (int t = 0; t < T;) {
        int e = t + 1; /* the run is [t, e) */
        while (e < T && seq[e] == seq[t] && pos[e] == pos[e - 1] + 1) e++;
        if (e - t >= FA_MIN_RUN) {
            for (int r = t; r < e; r += bm) {
                int32_t *ti = tiles + 4 * (size_t)n_tiles++;
                ti[0] = r, ti[1] = e - r < bm ? e - r : bm, ti[2] = seq[t], ti[3] = pos[r];
            }
        } else {
            for (int r = t; r < e; r++) {
                rest[n_rest++] = r;
                if (pos[r] > rest_max) rest_max = pos[r];
            }
        }
        t = e;
    }
    qsort(tiles, (size_t)n_tiles, 4 * sizeof(int32_t), tile_cmp);
    memmove(tiles + 4 * (size_t)n_tiles, rest, (size_t)n_rest * sizeof(int32_t));

    size_t n_int = 4 * (size_t)n_tiles + (size_t)n_rest;
    if (n_tiles > 0) {
        /* Stream-ordered after every queued kernel that reads the old plan; the
         * host buffer may be reused at once (pageable: staged before return). */
        void *dev = cuda_scratch(c, &pl->dev, n_int * sizeof(int32_t));
        CUDA_CHECK(cudaMemcpyAsync(dev, pl->host, n_int * sizeof(int32_t), cudaMemcpyHostToDevice, c->stream));
    }
    memcpy(pl->key, pos, tb);
    memcpy(pl->key + T, seq, tb);
    pl->T = T, pl->bm = bm, pl->serial = b->serial;
    pl->n_tiles = n_tiles, pl->n_rest = n_rest, pl->rest_max_pos = rest_max;
}

// kernel launchers

template <int D>
static void flash_launch(const cuda_ctx *c, int n_q, int n_tiles, const flash_args &a) {
    if (a.ks)
        launch(c, flash_prefill_kernel<D, true>, dim3((unsigned)n_q, (unsigned)n_tiles), FA_THREADS, 0, a);
    else
        launch(c, flash_prefill_kernel<D, false>, dim3((unsigned)n_q, (unsigned)n_tiles), FA_THREADS, 0, a);
}

/* Variant 2 takes over 48 KB of dynamic shared memory, which must be allowed
 * per kernel, and wants the whole carveout as shared memory so that 2 CTAs
 * fit an SM (its global loads are cp.async.cg, which bypass L1). Host-side
 * attribute writes (about a microsecond each), made at every launch so they
 * hold on whichever device the calling context uses. */
template <int D, bool FP8>
static void flash2_launch_kv(const cuda_ctx *c, int n_q, int n_tiles, const flash_args &a) {
    const size_t smem = flash2_smem_bytes<D>();
    CUDA_CHECK(cudaFuncSetAttribute(flash2_prefill_kernel<D, FP8>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)smem));
    CUDA_CHECK(cudaFuncSetAttribute(flash2_prefill_kernel<D, FP8>, cudaFuncAttributePreferredSharedMemoryCarveout,
                                    (int)cudaSharedmemCarveoutMaxShared));
    launch(c, flash2_prefill_kernel<D, FP8>, dim3((unsigned)n_q, (unsigned)n_tiles), FA2_THREADS, smem, a);
}

template <int D>
static void flash2_launch(const cuda_ctx *c, int n_q, int n_tiles, const flash_args &a) {
    if (a.ks)
        flash2_launch_kv<D, true>(c, n_q, n_tiles, a);
    else
        flash2_launch_kv<D, false>(c, n_q, n_tiles, a);
}


int cuda_attention_prefill(cuda_ctx *c, void *out, const void *q, int ld_q, const void *kcache, const void *vcache,
                           const kattn_batch *b, int n_q, int n_kv, int q_per_kv, int d, float scale,
                           const int32_t **rest, int *rest_max_pos) {
    int T = b->n_tokens;
    *rest = NULL;
    *rest_max_pos = b->max_pos;
    c->flash_ran = 0;
    int ok = !c->no_flash_prefill && b->host_pos && b->host_seq && T > 0 && n_q > 0 && q_per_kv > 0 &&
             (d == 64 || d == 128) && ld_q % 8 == 0 && aligned16(q) && aligned16(out) && aligned16(kcache) &&
             aligned16(vcache);
    if (!ok) return T;
    /* A graph being captured must not copy from the host (the plan upload):
     * the general kernel takes every token of a captured step. */
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(c->stream, &cap));
    if (cap != cudaStreamCaptureStatusNone) return T;
    /* Variant 2 takes the row max on unscaled scores: scale > 0 (1/sqrt(d)). */
    const int variant = c->flash_variant == 2 && scale > 0.0f ? 2 : 1;
    plan_update(c, b, variant == 2 ? FA2_BM : FA_BM);
    const attn_plan *pl = &c->plan;
    if (pl->n_tiles == 0) return T; /* decode and short chunks only: the general kernel as before */

    const int32_t *dev = (const int32_t *)pl->dev.p;
    flash_args a;
    memset(&a, 0, sizeof a);
    a.out = (bf16 *)out, a.q = (const bf16 *)q, a.kc = (const bf16 *)kcache, a.vc = (const bf16 *)vcache;
    if (b->kv_dtype == KV_DTYPE_FP8) {
        a.ks = (const float *)((const uint8_t *)kcache + b->kv_scale_off);
        a.vs = (const float *)((const uint8_t *)vcache + b->kv_scale_off);
    }
    a.tiles = dev, a.tables = b->block_tables;
    a.ld_q = ld_q, a.ld_out = n_q * d, a.max_blocks = b->max_blocks, a.block_size = b->block_size;
    a.n_kv = n_kv, a.q_per_kv = q_per_kv;
    a.scale_log2 = scale * 1.4426950408889634f;
    for (int t0 = 0; t0 < pl->n_tiles; t0 += 65535) { /* gridDim.y <= 65535 */
        int nt = pl->n_tiles - t0 < 65535 ? pl->n_tiles - t0 : 65535;
        a.tile0 = t0;
        if (variant == 2 && d == 64)
            flash2_launch<64>(c, n_q, nt, a);
        else if (variant == 2)
            flash2_launch<128>(c, n_q, nt, a);
        else if (d == 64)
            flash_launch<64>(c, n_q, nt, a);
        else
            flash_launch<128>(c, n_q, nt, a);
    }
    c->flash_ran = variant;
    *rest = dev + 4 * (size_t)pl->n_tiles;
    *rest_max_pos = pl->rest_max_pos;
    return pl->n_rest;
}
