/* gpu_check.h: what the parts of test_gpu_kernels share: the two backends
 * (G, the CUDA backend under test; C, the CPU backend as reference), the
 * pass/fail tally and its checks, and buffers of the same values on both.
 *
 * Inputs are rounded to bf16 first and both backends get the same values (the
 * CPU as fp32), so a difference is the CUDA kernel's own error: fp32
 * accumulation order, and the one rounding of its bf16 output. check() is
 * |gpu - cpu| <= atol + rtol * |cpu| element-wise; rtol 2^-8 (BF16_RTOL) is one
 * bf16 unit in the last place at the bottom of a binade (a correctly rounded
 * bf16 result is within half of that), atol covers fp32 order differences
 * where the value cancels to near zero. PAD sentinels behind GPU outputs catch
 * writes past the end (g_act, g_get). Host buffers come from malloc and
 * belong to the caller; backend buffers are freed through the backend. */
#ifndef GLMTP_TESTS_GPU_CHECK_H
#define GLMTP_TESTS_GPU_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "../../kernels/dtype.h"
#include "../../kernels/kernels.h"
#include "../../kernels/rng.h"

#define BF16_RTOL (1.0 / 256.0)
#define SENTINEL 0x7fa5u /* a bf16 NaN pattern nothing computes */
#define PAD 64           /* sentinel elements behind each checked output */

extern int n_pass, n_fail;
extern kbackend G, C; /* CUDA under test, CPU reference */
extern uint64_t g_rng;

void *xmalloc(size_t n); /* zeroed; exits on failure */
void tally(int ok);
void check(const char *name, const float *got, const float *want, size_t n, double atol, double rtol);
void expect(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
float bfr(float x);                              /* x rounded to a bf16 value */
float *rand_bf16(size_t n, float lo, float hi);  /* bf16 values, uniform in [lo, hi) */
void *g_act(const float *x, size_t n);           /* GPU bf16 [n] (+PAD sentinels) of x, or sentinels for NULL */
float *g_get(const char *name, const void *d, size_t n); /* g_act buffer as fp32; checks the sentinels */
void *c_act(const float *x, size_t n);           /* CPU fp32 [n] of x (NULL: zeros) */
void *g_ints(const int32_t *x, size_t n);
void *c_ints(const int32_t *x, size_t n);
void upload2(kweight *g, kweight *c, const void *host, kdtype dt, int rows, int cols); /* same weight on both */
void free2(kweight *g, kweight *c);
/* Sets a CUDA backend switch by its environment variable's name (0/1; see
 * kernels/cuda/cuda_backend.cu), returns the setting before; an unknown name
 * is a failed check. */
int gpu_switch(const char *env, int set);

/* A token of an attention step: sequence s at position p. */
typedef struct {
    int s, p;
} tok;

/* test_gpu_attention.c's tolerance for the tensor-core attention kernels:
 * check_tol is |got - want| <= tol[i] element-wise; flash_tol the per-element
 * bound for a step's tokens tk over the fp32 caches K, V [slots, n_kv, d]
 * (caller frees). */
void check_tol(const char *name, const float *got, const float *want, const float *tol, size_t n);
float *flash_tol(const float *qkv, int ld, const tok *tk, int T, const int32_t *tables, int max_blocks, int bs,
                 const float *K, const float *V, int n_q, int n_kv, int q_per_kv, int d, float scale,
                 const float *ref);

/* The parts, in the order main runs them. */
void test_upload(void);       /* test_gpu_ops.c */
void test_embedding(void);
void test_small_ops(void);
void test_matmul(void);
void test_rope(void);
void test_rope_kv_store(int T, int n_q, int n_kv, int d, int rot);
void test_vision_ops(void);    /* layernorm, gelu */
void test_attention(void);    /* test_gpu_attention.c */
void test_prefill_attention(void);
void test_prefill_attention_big(int T);
void test_attention_full(void);
void test_fp8_kv_store(void); /* test_gpu_fp8.c: the fp8 KV cache */
void test_fp8_attention(void);
void test_top_k(void);        /* test_gpu_sample.c */
void test_argmax(void);
void test_nccl_single(int *argc, char ***argv); /* test_gpu_nccl.c (with NCCL) */

#endif
