/* cuda_common.cuh: device helpers shared by the op files (bf16 conversion,
 * weight element access, warp and block reductions) and the launch helpers.
 * Only small inline functions live here; every op's kernels stay in its file. */
#ifndef GLMTP_CUDA_COMMON_CUH
#define GLMTP_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cuda_backend.h"

typedef __nv_bfloat16 bf16;

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

/* Grid size for grid-stride loops over n elements: enough blocks to fill the
 * device a few times over, never more than the work needs. */
static inline unsigned grid_for(const cuda_ctx *c, size_t n, int threads) {
    size_t want = (n + (size_t)threads - 1) / (size_t)threads, cap = (size_t)c->sm_count * 32;
    if (want > cap) want = cap;
    return (unsigned)(want > 0 ? want : 1);
}

/* Programmatic dependent launch (sm_90; GLMTP_PDL=1, cuda_ctx.pdl): a kernel
 * launched by launch() may be scheduled while the kernel before it on the
 * stream is still running, so its start overlaps the other's tail. Every
 * kernel therefore begins with pdl_begin(): it waits until the grids before it
 * have finished and their writes are visible (a no-op for a kernel launched
 * the plain way), then lets the next kernel be scheduled. Correctness needs
 * only the wait, and the wait comes before any read or write. */
static __device__ __forceinline__ void pdl_begin() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* kernel<<<grid, block, smem, c->stream>>>(args...), with programmatic stream
 * serialisation when c->pdl; checks the launch. */
template <typename... Params, typename... Args>
static void launch(const cuda_ctx *c, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Args... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = c->stream;
    cudaLaunchAttribute attr[1];
    if (c->pdl) {
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = attr, cfg.numAttrs = 1;
    }
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, ((Params)args)...));
}

static __device__ __forceinline__ float bf2f(bf16 v) { return __bfloat162float(v); }
static __device__ __forceinline__ bf16 f2bf(float v) { return __float2bfloat16(v); } /* round to nearest even */

/* Element i of a weight as fp32: matrices are stored bf16, vectors fp32 (see
 * weight_upload in cuda_backend.cu), and the small ops accept either. */
static __device__ __forceinline__ float wload(const void *p, int dtype, size_t i) {
    return dtype == KDT_F32 ? ((const float *)p)[i] : bf2f(((const bf16 *)p)[i]);
}

/* 8 bf16 (one 16-byte load) as fp32, and back with one rounding each. */
static __device__ __forceinline__ void bf16x8_to_f32(float *f, uint4 v) {
    unsigned u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) { /* little-endian: the lower address is the low half */
        f[2 * i] = __uint_as_float(u[i] << 16);
        f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
    }
}

static __device__ __forceinline__ uint4 f32x8_to_bf16(const float *f) {
    __nv_bfloat162 h[4];
#pragma unroll
    for (int i = 0; i < 4; i++) h[i] = __halves2bfloat162(f2bf(f[2 * i]), f2bf(f[2 * i + 1]));
    uint4 v;
    memcpy(&v, h, sizeof v);
    return v;
}

/* Weight elements i..i+7 as fp32 (wload's dtypes; i % 8 == 0, 16-byte aligned
 * vector). */
static __device__ __forceinline__ void wload8(float *f, const void *p, int dtype, size_t i) {
    if (dtype == KDT_F32) {
        float4 a = ((const float4 *)p)[i / 4], b = ((const float4 *)p)[i / 4 + 1];
        f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
    } else {
        bf16x8_to_f32(f, ((const uint4 *)p)[i / 8]);
    }
}

static inline int aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* c (16x8 fp32) += a (16x16 bf16, row-major) * b (16x8 bf16, column-major). */
static __device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Tensor-core tile movement (attention_prefill.cu, attention.cu). */
static __device__ __forceinline__ uint32_t smem_u32(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* 16 bytes global -> shared, asynchronously; src_bytes 0 writes zeros and reads
 * nothing. The "memory" clobbers keep the compiler from moving shared-memory
 * accesses across these and the barriers around them. */
static __device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)),
                 "l"(__cvta_generic_to_global(src)), "r"(src_bytes)
                 : "memory");
}

static __device__ __forceinline__ void cp_async_commit(void) { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

/* Waits until at most one committed group of this thread is still in flight. */
static __device__ __forceinline__ void cp_async_wait_1(void) { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }

/* Waits until every committed group of this thread has landed. */
static __device__ __forceinline__ void cp_async_wait_0(void) { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

/* Queues cp.async copies of the paged KV cache rows of keys kb..kb+ROWS-1 of
 * KV head g (through the block table) into dst [ROWS][D + 8] (rows padded by
 * 16 bytes against ldmatrix bank conflicts), THREADS threads sharing the
 * work; keys past kmax become zero rows and read nothing. The cache layout is
 * kernels.h's: row (block * block_size + p % block_size) * n_kv + g, d wide. */
template <int D, int ROWS, int THREADS>
static __device__ __forceinline__ void cp_async_kv_rows(bf16 *dst, const bf16 *cache, const int32_t *table, int kb,
                                                        int kmax, int g, int block_size, int n_kv) {
    constexpr int LDS = D + 8, CPR = D / 8; /* 16-byte chunks per row */
    for (int c = threadIdx.x; c < ROWS * CPR; c += THREADS) {
        int r = c / CPR, col = (c % CPR) * 8, p = kb + r;
        const bf16 *src = cache; /* any valid address: nothing is read for a zero row */
        int bytes = 0;
        if (p <= kmax) {
            int blk = table[p / block_size];
            src = cache + (((size_t)blk * block_size + p % block_size) * n_kv + g) * D + col;
            bytes = 16;
        }
        cp_async16(dst + r * LDS + col, src, bytes);
    }
}

/* ---- fp8 KV cache (kernels.h KV_DTYPE_FP8; host reference kernels/fp8.c) ----
 * cuda_fp8.h's conversions: hardware cvt on sm_89+ and its software path on
 * sm_80, the same numbers either way. */

/* One e4m3 byte's value (e4m3 -> half is exact). */
static __device__ __forceinline__ float fp8_to_f32(uint8_t b) {
    return __half2float(__half(__nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)b, __NV_E4M3)));
}

/* 8 e4m3 bytes (one 8-byte load) times their row's scale as 8 bf16 (one
 * 16-byte store): the product is rounded once, to bf16. */
static __device__ __forceinline__ uint4 fp8x8_to_bf16x8(uint2 raw, float scale) {
    float f[8];
    unsigned w[2] = {raw.x, raw.y};
#pragma unroll
    for (int i = 0; i < 4; i++) { /* little-endian: the lower byte is .x */
        __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(w[i / 2] >> (16 * (i % 2))), __NV_E4M3);
        float2 v = __half22float2(__half2(h));
        f[2 * i] = v.x * scale, f[2 * i + 1] = v.y * scale;
    }
    return f32x8_to_bf16(f);
}

/* Synchronous counterpart of cp_async_kv_rows for an fp8 cache: the same rows
 * (bytes [slots * n_kv, D], scales [slots * n_kv]) dequantised into dst
 * [ROWS][D + 8] bf16, zero rows past kmax. Called where the bf16 path issues
 * its cp.async, so the barriers that guard those buffers guard these stores. */
template <int D, int ROWS, int THREADS>
static __device__ __forceinline__ void fp8_kv_rows(bf16 *dst, const uint8_t *cache, const float *scales,
                                                   const int32_t *table, int kb, int kmax, int g, int block_size,
                                                   int n_kv) {
    constexpr int LDS = D + 8, CPR = D / 8; /* 8-element chunks per row */
    for (int c = threadIdx.x; c < ROWS * CPR; c += THREADS) {
        int r = c / CPR, col = (c % CPR) * 8, p = kb + r;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (p <= kmax) {
            int blk = table[p / block_size];
            size_t row = ((size_t)blk * block_size + p % block_size) * n_kv + g;
            v = fp8x8_to_bf16x8(*(const uint2 *)(cache + row * D + col), scales[row]);
        }
        *(uint4 *)(dst + r * LDS + col) = v;
    }
}

/* Four 8x8 bf16 matrices from shared memory; lane i gives the address of row
 * i % 8 of matrix i / 8; r[j] gets matrix j, lane l holding row l/4, columns
 * 2(l%4) and 2(l%4)+1 (with .trans: column l/4, rows 2(l%4) and 2(l%4)+1). */
static __device__ __forceinline__ void ldsm_x4(uint32_t r[4], const bf16 *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p))
                 : "memory");
}

static __device__ __forceinline__ void ldsm_x4_trans(uint32_t r[4], const bf16 *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p))
                 : "memory");
}

/* Two floats as a bf16 pair, lo in the low half (the lower k / column). */
static __device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}

static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* One warp quantises a d-wide KV row x into dst [d] e4m3 and *scale, as
 * kernels/fp8.c's fp8_quantise_row does: scale = max|x| / 448 (fmaxf: NaN
 * ignored), byte i = e4m3(x[i] / scale) rounded to nearest even, saturating
 * (x[i] itself when the scale is 0). IEEE division (no fast math), so from the
 * same inputs the same bytes as the host. */
static __device__ __forceinline__ void fp8_quantise_row_warp(uint8_t *dst, float *scale, const bf16 *x, int d,
                                                             int lane) {
    float amax = 0.0f;
    for (int i = lane; i < d; i += 32) amax = fmaxf(amax, fabsf(bf2f(x[i])));
    amax = warp_max(amax);
    float s = amax / 448.0f;
    if (lane == 0) *scale = s;
    for (int i = lane; i < d; i += 32) {
        float v = bf2f(x[i]);
        dst[i] = (uint8_t)__nv_cvt_float_to_fp8(s > 0.0f ? v / s : v, __NV_SATFINITE, __NV_E4M3);
    }
}

/* Where one token's fp8 K and V rows go: the two caches' bytes and scales. */
typedef struct kv_fp8_dst {
    uint8_t *k, *v;
    float *ks, *vs;
    int n_kv, d;
} kv_fp8_dst;

/* The caches of an fp8 step (host side; aborts on a batch without kv_head_dim). */
static inline kv_fp8_dst kv_fp8_dst_of(void *kc, void *vc, int kv_width, const kattn_batch *b) {
    int d = b->kv_head_dim;
    if (d <= 0 || kv_width % d) {
        fprintf(stderr, "glmtp: rank %s: cuda kv_store: fp8 rows of %d values need kv_head_dim dividing them (got %d)\n",
                glmtp_check_rank(), kv_width, d);
        abort();
    }
    kv_fp8_dst o;
    o.k = (uint8_t *)kc, o.v = (uint8_t *)vc;
    o.ks = (float *)((uint8_t *)kc + b->kv_scale_off), o.vs = (float *)((uint8_t *)vc + b->kv_scale_off);
    o.n_kv = kv_width / d, o.d = d;
    return o;
}

/* The block's warps quantise one token's n_kv K rows (k [n_kv * d]) and V rows
 * into slot `slot`, one warp per row. */
static __device__ __forceinline__ void kv_store_fp8_rows(const kv_fp8_dst &o, const bf16 *k, const bf16 *v,
                                                         int slot) {
    int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    for (int r = threadIdx.x >> 5; r < 2 * o.n_kv; r += nw) {
        int isv = r >= o.n_kv, h = isv ? r - o.n_kv : r;
        size_t row = (size_t)slot * o.n_kv + h;
        fp8_quantise_row_warp((isv ? o.v : o.k) + row * o.d, (isv ? o.vs : o.ks) + row,
                              (isv ? v : k) + (size_t)h * o.d, o.d, lane);
    }
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread
 * gets the result. Safe to call more than once per kernel. */
static __device__ __forceinline__ float block_sum(float v) {
    __shared__ float part[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); /* a previous call may still be reading part[] */
    if (lane == 0) part[w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < nw ? part[lane] : 0.0f;
        v = warp_sum(v);
        if (lane == 0) part[0] = v;
    }
    __syncthreads();
    return part[0];
}

#endif
