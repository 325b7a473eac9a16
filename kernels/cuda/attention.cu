/* Causal GQA attention over the paged bf16 KV cache, prefill and decode in one
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
 * out [T, n_q * d] bf16; q [T, ld_q] bf16 (head h at column h * d). */
#include <math.h>
#include <string.h>

#include "cuda_common.cuh"

#define ATT_WARPS 4
#define MIN_SPLIT_POS 64 /* fewer positions per split than this costs more to merge than it saves */
#define MAX_SPLITS 256

typedef struct attn_args {
    bf16 *out;
    float *part_o;  /* [n, n_q, n_split, d] unnormalised outputs, when n_split > 1 (n: tokens in the grid) */
    float *part_ml; /* [n, n_q, n_split, 2] running max and sum */
    const bf16 *q;
    const bf16 *kc, *vc;
    const int32_t *pos, *seq, *tables;
    const int32_t *tok_list; /* [n] step token of grid row blockIdx.y; NULL: row i is token i */
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

/* Element offset of position p's row of KV head g in the paged cache. */
static __device__ __forceinline__ size_t kv_row(const attn_args &a, const int32_t *table, int p, int g) {
    int blk = table[p / a.block_size];
    return (((size_t)blk * a.block_size + p % a.block_size) * a.n_kv + g) * a.d;
}

template <int EPL>
static __global__ void __launch_bounds__(ATT_WARPS * 32) attention_kernel(attn_args a) {
    pdl_begin();
    __shared__ float sm_m[ATT_WARPS], sm_l[ATT_WARPS];
    __shared__ float sm_acc[ATT_WARPS][32 * EPL];
    int h = blockIdx.x, i_row = blockIdx.y, sp = blockIdx.z, n_q = gridDim.x;
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
        load_row<EPL>(kf, a.kc + row, lane, d);
        load_row<EPL>(vf, a.vc + row, lane, d);
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

/* The same attention with the q heads that share a KV head in one block (GQA
 * grouping; GLMTP_GQA_ATTENTION=1, opt-in until a GPU run checks and times
 * it): one block of ATT_WARPS warps per (KV head, token, split) handles up to
 * G query heads, so each key and value row is read once for the group instead
 * of once per query head. The other kernel re-reads a KV head's rows for each
 * of its q_per_kv heads (16 for GLM-4-9B), which at long contexts no cache
 * holds: 128K tokens of one layer's KV are 134 MB against 50 MB of L2.
 * Per head the arithmetic is the other kernel's (a warp's keys, its online
 * softmax, the same merge), so results agree to fp32 rounding of the merge.
 * Head h0 + g of group grp, h0 = grp * q_per_kv, g < min(G, n_q - h0). */
template <int EPL, int G>
static __global__ void __launch_bounds__(ATT_WARPS * 32) attention_gqa_kernel(attn_args a, int n_q) {
    pdl_begin();
    __shared__ float sm_m[ATT_WARPS][G], sm_l[ATT_WARPS][G];
    __shared__ float sm_acc[ATT_WARPS][G][32 * EPL];
    int grp = blockIdx.x, i_row = blockIdx.y, sp = blockIdx.z;
    int t = a.tok_list ? a.tok_list[i_row] : i_row;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, d = a.d;
    int h0 = grp * a.q_per_kv, ng = min(min(G, a.q_per_kv), n_q - h0);
    int s = a.seq[t], np = a.pos[t] + 1;
    int p0 = sp * a.split_len, p1 = min(np, p0 + a.split_len);

    float qr[G][EPL], acc[G][EPL], m[G], l[G], kf[EPL], vf[EPL];
#pragma unroll
    for (int g = 0; g < G; g++) {
        const bf16 *qv = a.q + (size_t)t * a.ld_q + (size_t)(h0 + g) * d;
#pragma unroll
        for (int e = 0; e < EPL; e++) {
            int i = lane * EPL + e;
            qr[g][e] = g < ng && i < d ? bf2f(qv[i]) : 0.0f;
            acc[g][e] = 0.0f;
        }
        m[g] = -INFINITY, l[g] = 0.0f;
    }
    const int32_t *table = a.tables + (size_t)s * a.max_blocks;
    /* The next key's rows are loaded before this key's arithmetic, so a
     * warp's loop waits on memory once per key less (it is latency-bound: a
     * warp takes its keys one after another). */
    if (p0 + w < p1) {
        size_t row = kv_row(a, table, p0 + w, grp);
        load_row<EPL>(kf, a.kc + row, lane, d);
        load_row<EPL>(vf, a.vc + row, lane, d);
    }
    for (int p = p0 + w; p < p1; p += ATT_WARPS) {
        float kn[EPL] = {}, vn[EPL] = {};
        if (p + ATT_WARPS < p1) {
            size_t row = kv_row(a, table, p + ATT_WARPS, grp);
            load_row<EPL>(kn, a.kc + row, lane, d);
            load_row<EPL>(vn, a.vc + row, lane, d);
        }
#pragma unroll
        for (int g = 0; g < G; g++) {
            if (g >= ng) break;
            float dot = 0.0f;
#pragma unroll
            for (int e = 0; e < EPL; e++) dot += qr[g][e] * kf[e];
            float sc = warp_sum(dot) * a.scale;
            float m_new = fmaxf(m[g], sc);
            float corr = expf(m[g] - m_new), pw = expf(sc - m_new);
            l[g] = l[g] * corr + pw;
#pragma unroll
            for (int e = 0; e < EPL; e++) acc[g][e] = acc[g][e] * corr + pw * vf[e];
            m[g] = m_new;
        }
#pragma unroll
        for (int e = 0; e < EPL; e++) kf[e] = kn[e], vf[e] = vn[e];
    }

#pragma unroll
    for (int g = 0; g < G; g++) {
        if (lane == 0) sm_m[w][g] = m[g], sm_l[w][g] = l[g];
#pragma unroll
        for (int e = 0; e < EPL; e++) sm_acc[w][g][lane * EPL + e] = acc[g][e];
    }
    __syncthreads();
    for (int g = 0; g < ng; g++) {
        float M = -INFINITY;
        for (int i = 0; i < ATT_WARPS; i++) M = fmaxf(M, sm_m[i][g]);
        float L = 0.0f, f[ATT_WARPS];
        for (int i = 0; i < ATT_WARPS; i++) {
            f[i] = sm_l[i][g] > 0.0f ? expf(sm_m[i][g] - M) : 0.0f;
            L += sm_l[i][g] * f[i];
        }
        int h = h0 + g;
        size_t th = (size_t)t * n_q + h, ph = (size_t)i_row * n_q + h; /* output row; partials row */
        for (int i = threadIdx.x; i < d; i += blockDim.x) {
            float o = 0.0f;
            for (int k = 0; k < ATT_WARPS; k++) o += sm_acc[k][g][i] * f[k];
            if (a.n_split == 1)
                a.out[th * d + i] = f2bf(o / L);
            else
                a.part_o[(ph * a.n_split + sp) * d + i] = o;
        }
        if (a.n_split > 1 && threadIdx.x == 0) {
            a.part_ml[(ph * a.n_split + sp) * 2] = M;
            a.part_ml[(ph * a.n_split + sp) * 2 + 1] = L;
        }
    }
}

/* One block per (head, grid row): merges the splits' partial results. */
static __global__ void attention_combine_kernel(bf16 *out, const float *part_o, const float *part_ml,
                                                const int32_t *tok_list, int n_split, int d) {
    pdl_begin();
    int h = blockIdx.x, i_row = blockIdx.y, n_q = gridDim.x;
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
    launch(c, attention_kernel<EPL>, grid, ATT_WARPS * 32, 0, a);
}

/* The grouped kernel for q_per_kv heads per block, instantiated for group
 * sizes 2 to 16 (GLM-4-9B: 16 at tp <= 2, 8 for the 1M model); 0 when it does
 * not apply (the caller launches the per-head kernel). */
template <int EPL>
static int attention_gqa_launch(const cuda_ctx *c, dim3 grid, const attn_args &a, int n_q) {
    int G = a.q_per_kv < n_q ? a.q_per_kv : n_q; /* heads per block: tp > KV groups leaves fewer */
    if (G <= 2)
        launch(c, attention_gqa_kernel<EPL, 2>, grid, ATT_WARPS * 32, 0, a, n_q);
    else if (G <= 4)
        launch(c, attention_gqa_kernel<EPL, 4>, grid, ATT_WARPS * 32, 0, a, n_q);
    else if (G <= 8)
        launch(c, attention_gqa_kernel<EPL, 8>, grid, ATT_WARPS * 32, 0, a, n_q);
    else if (G <= 16)
        launch(c, attention_gqa_kernel<EPL, 16>, grid, ATT_WARPS * 32, 0, a, n_q);
    else
        return 0;
    return 1;
}

static void attention_cuda(cuda_ctx *c, bf16 *out, const bf16 *q, int ld_q, const bf16 *kc, const bf16 *vc,
                           const kattn_batch *b, int n_q, int n_kv, int q_per_kv, int d, float scale) {
    int T = b->n_tokens;
    if (T <= 0 || n_q <= 0) return;
    if (d > 256 || T > 65535) {
        fprintf(stderr, "glmtp: rank %s: cuda attention: head dim %d (max 256) or %d tokens in a step (max 65535)\n",
                glmtp_check_rank(), d, T);
        abort();
    }
    /* Prefill runs on tensor cores first (when it applies); the general kernel
     * takes the n tokens left: all T in order (tok_list NULL), or those listed. */
    const int32_t *tok_list = NULL;
    int max_pos = b->max_pos;
    int n = cuda_attention_prefill(c, out, q, ld_q, kc, vc, b, n_q, n_kv, q_per_kv, d, scale, &tok_list, &max_pos);
    if (n <= 0) return;
    /* Grouped: one block per (KV head, token) when q_per_kv heads share one
     * (G up to 16, d up to 128: its shared memory holds G x d partials per warp). */
    int groups = CEIL_DIV(n_q, q_per_kv);
    int gqa = c->gqa_attention && q_per_kv >= 2 && q_per_kv <= 16 && d <= 128 && groups <= n_kv;
    /* Split the sequence only when the blocks cannot fill the GPU: aim at ~8
     * blocks of ATT_WARPS warps per SM. A grouped block does a group's work
     * per key, so it splits down to shorter runs. */
    int min_split = gqa ? MIN_SPLIT_POS / 4 : MIN_SPLIT_POS;
    int n_pos = max_pos + 1, blocks = n * (gqa ? groups : n_q), n_split = 1, target = 8 * c->sm_count;
    if (blocks < target && n_pos > min_split) {
        n_split = CEIL_DIV(target, blocks);
        if (n_split > CEIL_DIV(n_pos, min_split)) n_split = CEIL_DIV(n_pos, min_split);
        if (n_split > MAX_SPLITS) n_split = MAX_SPLITS;
    }
    attn_args a;
    memset(&a, 0, sizeof a);
    a.out = out, a.q = q, a.kc = kc, a.vc = vc;
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
    int done = 0;
    if (gqa) {
        dim3 ggrid((unsigned)groups, (unsigned)n, (unsigned)n_split);
        done = d <= 32   ? attention_gqa_launch<1>(c, ggrid, a, n_q)
               : d <= 64 ? attention_gqa_launch<2>(c, ggrid, a, n_q)
                         : attention_gqa_launch<4>(c, ggrid, a, n_q);
    }
    dim3 grid((unsigned)n_q, (unsigned)n, (unsigned)n_split);
    if (done)
        ;
    else if (d <= 32)
        attention_launch<1>(c, grid, a);
    else if (d <= 64)
        attention_launch<2>(c, grid, a);
    else if (d <= 128)
        attention_launch<4>(c, grid, a);
    else
        attention_launch<8>(c, grid, a);
    if (n_split > 1) {
        launch(c, attention_combine_kernel, dim3((unsigned)n_q, (unsigned)n), 128, 0, out, a.part_o, a.part_ml,
               tok_list, n_split, d);
    }
}

void cuda_op_attention(void *ctx, void *out, const void *q, int ld_q, const void *kcache, const void *vcache,
                       const kattn_batch *b, int n_q, int n_kv, int q_per_kv, int d, float scale) {
    attention_cuda((cuda_ctx *)ctx, (bf16 *)out, (const bf16 *)q, ld_q, (const bf16 *)kcache, (const bf16 *)vcache, b,
                   n_q, n_kv, q_per_kv, d, scale);
}
