/* kernels.h: the one backend interface the GLM-4 forward pass is written against.
 *
 * A backend is {iface, ctx}: a table of function pointers plus its private state.
 * Implementations: kernels/cpu/ (fp32 activations, bf16/f32 weights, OpenMP) and
 * kernels/cuda/ (bf16 activations, cuBLASLt). No member may be NULL.
 *
 * Memory: every "dev" pointer below lives in backend memory, got from alloc()
 * (host memory on CPU, GPU memory on CUDA). Activations are in the backend's
 * activation type, iface->act_bytes per element; logits are always fp32.
 * Integer arrays the kernels read (ids, positions, slots, block tables) are
 * int32 in backend memory too (copied with to_device).
 *
 * Shapes use T = tokens in the step, H = hidden, d = head dim, row-major.
 * Weights are PyTorch-style [rows = out_features, cols = in_features]: y = x W^T.
 */
#ifndef GLMTP_KERNELS_H
#define GLMTP_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "sampling.h"

/* The most candidates per row the top_k op must give. */
#define KERNELS_TOPK_MAX 1024

/* A weight matrix (or vector: rows = 1) in backend memory; dtype is the storage
 * type the backend chose (CPU keeps bf16 and f32 as given, widens f16 to f32;
 * CUDA stores matrices bf16 and vectors f32). */
typedef struct kweight {
    void *data;
    kdtype dtype;
    int rows, cols;
} kweight;

/* Where the tokens of one step read and write the paged KV cache.
 * Cache layout per layer: [n_blocks, block_size, n_kv_local, d] for K and for V.
 * Token t of the step belongs to sequence seq[t] at position pos[t]; it attends
 * to positions 0..pos[t] of that sequence (its own K/V must be stored first).
 * Position p of sequence s is slot block_tables[s * max_blocks + p / block_size]
 * * block_size + p % block_size. */
typedef struct kattn_batch {
    int n_tokens;
    const int32_t *pos;          /* dev [T] */
    const int32_t *seq;          /* dev [T] */
    const int32_t *slots;        /* dev [T] slot where token t's K/V go */
    const int32_t *block_tables; /* dev [n_seqs, max_blocks] */
    int max_blocks;
    int block_size;
    int max_pos; /* largest pos[t] in the step (sizes scratch) */
    /* Host copies of pos and seq (may be NULL), for backends that plan work on
     * the host (e.g. group a prefill's tokens into tiles); serial changes with
     * every step, so a plan made for one layer can serve the step's others. */
    const int32_t *host_pos, *host_seq;
    uint64_t serial;
    /* KV cache element type, a property of the cache (kvcache.h) that the
     * three KV ops read here: KV_DTYPE_ACT (0) keeps activations as laid out
     * above. KV_DTYPE_FP8: each K or V buffer holds e4m3 bytes (kernels/fp8.h)
     * [n_slots, n_kv_local, d] from its start and, from byte kv_scale_off (a
     * multiple of 16), fp32 scales [n_slots, n_kv_local]: one per (token, KV
     * head) row, max |x| / 448 of the row as stored. kv_store and
     * rope_kv_store quantise on write (fp8_quantise_row's numbers from the
     * backend's activations), attention dequantises on read (e4m3 * scale;
     * CPU in fp32, CUDA rounded to bf16 for the tensor cores). */
    int kv_dtype;
    int kv_head_dim; /* fp8: d, the width of a scaled row (kv_store sees n_kv * d) */
    size_t kv_scale_off;
} kattn_batch;

enum { KV_DTYPE_ACT = 0, KV_DTYPE_FP8 = 1 };

typedef struct kernels_iface {
    const char *name;
    size_t act_bytes; /* bytes per activation element */

    /* Memory. alloc returns zeroed memory and aborts the process on failure
     * (running out of memory mid-step is not a request error). */
    void *(*alloc)(void *ctx, size_t bytes);
    void (*free)(void *ctx, void *p); /* accepts NULL */
    void (*to_device)(void *ctx, void *dst, const void *src, size_t bytes);
    void (*to_host)(void *ctx, void *dst, const void *src, size_t bytes);
    /* Copies host data of type dt, [rows, cols] row-major, into backend memory. */
    void (*weight_upload)(void *ctx, kweight *w /* OUT */, const void *host, kdtype dt, int rows, int cols);
    void (*weight_free)(void *ctx, kweight *w);

    /* out[t,:] = E[ids[t], :].  out [T, H], E [V, H]. */
    void (*embedding)(void *ctx, void *out, const kweight *E, const int32_t *ids, int T);
    /* out[t] = w * x[t] / sqrt(mean(x[t]^2) + eps), fp32 math. x, out [T, H]; may alias. */
    void (*rmsnorm)(void *ctx, void *out, const void *x, const kweight *w, int T, float eps);
    /* out [T, N] = x [T, K] W^T (+ bias [N] if non-NULL). */
    void (*matmul)(void *ctx, void *out, const void *x, const kweight *W, const kweight *bias, int T);
    /* Same with fp32 output regardless of act type (LM head). */
    void (*matmul_f32)(void *ctx, float *out, const void *x, const kweight *W, int T);
    /* In place on the first n_heads heads of each row of qkv [T, ld]: GPT-J style
     * rotation of adjacent pairs in dims [0, rot_dim) of each d-wide head with
     * angle pos[t] * base^(-2j/rot_dim); dims [rot_dim, d) untouched. */
    void (*rope)(void *ctx, void *qkv, const int32_t *pos, int T, int ld, int n_heads, int d, int rot_dim,
                 float base);
    /* Writes K and V rows (k [T, ld] and v [T, ld], first kv_width columns used)
     * into the cache at b->slots[t]. kv_width = n_kv_local * d. */
    void (*kv_store)(void *ctx, void *kcache, void *vcache, const void *k, const void *v, int ld, int kv_width,
                     const kattn_batch *b);
    /* rope on the n_q + n_kv heads of qkv, then kv_store of its K (column
     * n_q*d) and V (column (n_q+n_kv)*d) rows, kv_width n_kv*d, at b->pos and
     * b->slots: the same numbers as the two ops, in one pass where fused. */
    void (*rope_kv_store)(void *ctx, void *qkv, void *kcache, void *vcache, int T, int ld, int n_q, int n_kv, int d,
                          int rot_dim, float base, const kattn_batch *b);
    /* Causal GQA over the paged cache. q [T, ld_q] (n_q heads of d), out [T, n_q*d].
     * Local q head i uses local KV head i / q_per_kv. Softmax in fp32. */
    void (*attention)(void *ctx, void *out, const void *q, int ld_q, const void *kcache, const void *vcache,
                      const kattn_batch *b, int n_q, int n_kv, int q_per_kv, int d, float scale);
    /* out [T, F] = silu(gu[:, :F]) * gu[:, F:],  gu [T, 2F]. */
    void (*swiglu)(void *ctx, void *out, const void *gu, int T, int F);
    /* out [T, F] = swiglu(x W^T), W [2F, K] (gate rows first): the same
     * numbers as matmul into gu [T, 2F] then swiglu, in one pass where fused
     * (gu is scratch the backend may use or not; it may not alias out or x). */
    void (*matmul_swiglu)(void *ctx, void *out, const void *x, const kweight *W, void *gu, int T);
    /* x += y, n elements. */
    void (*add)(void *ctx, void *x, const void *y, size_t n);
    /* x += y, then out = rmsnorm(x) with w (the residual add that closes a
     * sub-layer and the norm that opens the next): the same numbers as add
     * followed by rmsnorm. x, y, out [T, H] with H = w->cols; out is neither x
     * nor y. */
    void (*add_rmsnorm)(void *ctx, void *x, const void *y, void *out, const kweight *w, int T, float eps);
    /* out[i, :] = x[rows[i], :] for i < n; rows in host memory; width in elements. */
    void (*gather_rows)(void *ctx, void *out, const void *x, const int *rows, int n, int width);
    /* Per row i < n of logits [n, ld] fp32 in backend memory: out_idx[i] and
     * out_val[i] (host) = the first maximum among columns [0, V) and its value;
     * NaN never wins; a row with no number gives index 0 and -inf. Greedy
     * decoding without moving the logits to the host. */
    void (*argmax)(void *ctx, int *out_idx, float *out_val, const float *logits, int n, int V, int ld);
    /* Per row i < n of logits [n, ld] fp32 in backend memory, over columns
     * [0, V), with v = sampling_value(logit, temp[i]) (temp: host [n]): out
     * [n, k] (host) = the row's first k candidates in candidate order
     * (sampling.h), sum[i] (host) = the sum over the V columns of
     * exp(v - max v) in double, 0 for a row with no finite v.
     * 1 <= k <= V and k <= KERNELS_TOPK_MAX.
     * What sampling needs of a row, without moving its logits to the host. */
    void (*top_k)(void *ctx, kcand *out, double *sum, const float *logits, int n, int V, int ld, int k,
                  const float *temp);
    /* Waits for queued work (no-op on CPU). */
    void (*sync)(void *ctx);
    /* Marks the start (on 1) or end (on 0) of a timed region for profilers:
     * cudaProfilerStart/Stop on CUDA (nsys/ncu capture ranges, the windows of
     * tests/gpu/kernel_trace.c); no-op on CPU. Call after sync. */
    void (*profile_range)(void *ctx, int on);
    /* Releases the backend itself. */
    void (*destroy)(void *ctx);
    /* Device memory: 0 with the bytes free and in total on this rank's device,
     * or -1 where the backend has none of its own (CPU). */
    int (*mem_info)(void *ctx, size_t *free_bytes, size_t *total_bytes);
    /* Graphs (CUDA graphs; the CPU has none and returns -1 / NULL):
     * capture_begin makes the ops that follow be recorded instead of run (0, or
     * -1 when this backend cannot); capture_end stops recording and returns the
     * graph ready to launch, or NULL when the capture failed (the ops recorded
     * are then dropped; nothing ran). A graph keeps the pointers and sizes its
     * ops were called with. graph_launch queues it (0), or returns -1 when the
     * graph is stale (scratch memory it used was reallocated since): destroy
     * it and capture again. Recorded ops must not copy from or to the host. */
    int (*capture_begin)(void *ctx);
    void *(*capture_end)(void *ctx);
    int (*graph_launch)(void *ctx, void *graph);
    void (*graph_destroy)(void *ctx, void *graph); /* accepts NULL */

    /* Ops of the GLM-4V vision tower. */
    /* out [T, N] = (x - mean) / sqrt(var + eps) * w + b per row, N = w->cols,
     * biased variance, fp32 math (LayerNorm with bias; the vision tower).
     * w, b [1, N]; x, out [T, N]; may alias. */
    void (*layernorm)(void *ctx, void *out, const void *x, const kweight *w, const kweight *b, int T, float eps);
    /* x = 0.5 x (1 + erf(x / sqrt 2)) (exact GELU), n elements, in place. */
    void (*gelu)(void *ctx, void *x, size_t n);
    /* Bidirectional multi-head attention without a cache (the vision tower):
     * row t's head h is at column h * d of q, k and v (each [T, ld]); every
     * token attends to all T tokens; out [T, n_heads * d]; softmax in fp32. */
    void (*attention_full)(void *ctx, void *out, const void *q, const void *k, const void *v, int ld, int T,
                           int n_heads, int d, float scale);
} kernels_iface;

typedef struct kbackend {
    const kernels_iface *iface;
    void *ctx;
} kbackend;

#ifdef __cplusplus
extern "C" {
#endif

/* CPU backend; n_threads <= 0 uses all cores (OpenMP). Never fails. Prefill
 * GEMMs go through oneDNN where the build has it (GLMTP_DNNL) unless the
 * environment sets GLMTP_CPU_OWN_GEMM=1 (kernels/cpu/cpu.h says what differs). */
kbackend kernels_cpu_create(int n_threads);

#ifdef GLMTP_HAVE_CUDA
/* CUDA backend (kernels/cuda/) on device `device` modulo the number of visible
 * devices (callers pass the node-local rank, so ranks spread over a node's GPUs
 * and several ranks may share one). bf16 activations and KV cache, fp32 logits;
 * matrices stored bf16, vectors (rows = 1: norms, biases) fp32. Returns
 * {NULL, NULL} with the reason in err when there is no usable device. */
kbackend kernels_cuda_create(int device, char *err, size_t errlen);
/* The cudaStream_t every op of a CUDA backend is queued on (for NCCL); NULL
 * for any other backend. */
void *kernels_cuda_stream(kbackend kb);
#endif

#ifdef __cplusplus
}
#endif

#endif
