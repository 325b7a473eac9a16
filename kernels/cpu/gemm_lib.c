/* Prefill GEMMs through oneDNN's matmul primitive (contract in cpu.h).
 *
 * Why a library: bf16 weights multiplied in bf16 (AVX512-BF16 or AMX) run
 * several times faster than widening them to fp32 for our own kernel, and the
 * blocking, packing and JIT that get there are oneDNN's to keep up, not ours.
 * Debian 12's OpenBLAS (0.3.21) does not export cblas_sbgemm, and oneDNN is
 * what PyTorch's CPU matmuls use.
 *
 * Built only with GLMTP_HAVE_DNNL; otherwise the handle never exists and the
 * backend runs its own kernel. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"

#ifdef GLMTP_HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>

/* Distinct (T, N, K, weight type) kept: a block has four weight shapes (plus
 * the LM head's when all logits are asked for), so this holds the shapes of
 * several step sizes; chunked prefill repeats a few sizes over and over. */
#define GEMM_LIB_SLOTS 32
#define GEMM_LIB_NAME_LEN 160

typedef struct gemm_entry {
    int T, N, K;
    kdtype wdt; /* KDT_BF16 or KDT_F32 */
    dnnl_primitive_t prim; /* NULL: free slot */
    dnnl_memory_t src, wei, dst; /* descriptors with no data: the handles are set per call */
    unsigned long long used; /* the handle's clock at its last use */
} gemm_entry;

struct cpu_gemm_lib {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    gemm_entry slots[GEMM_LIB_SLOTS];
    unsigned long long clock;
    uint16_t *xb; /* activations rounded to bf16 */
    size_t xb_cap; /* elements */
    char name[GEMM_LIB_NAME_LEN];
};

/* 1 on success; otherwise prints what failed and why, and gives 0. */
static int dnnl_ok(dnnl_status_t s, const char *what) {
    if (s == dnnl_success) return 1;
    fprintf(stderr, "glmtp: cpu backend: oneDNN %s failed: %s\n", what, dnnl_status2str(s));
    return 0;
}

static void entry_clear(gemm_entry *e) {
    /* Destroying a NULL object is a no-op in oneDNN; statuses here can only
     * say "invalid argument" for NULL, so they are not worth a message. */
    if (e->prim) dnnl_primitive_destroy(e->prim);
    if (e->src) dnnl_memory_destroy(e->src);
    if (e->wei) dnnl_memory_destroy(e->wei);
    if (e->dst) dnnl_memory_destroy(e->dst);
    memset(e, 0, sizeof *e);
}

static void set_name(cpu_gemm_lib *g, const char *impl) {
    const dnnl_version_t *v = dnnl_version();
    snprintf(g->name, sizeof g->name, "oneDNN %d.%d.%d matmul%s%s%s", v->major, v->minor, v->patch,
             impl ? " (" : "", impl ? impl : "", impl ? ")" : "");
}

cpu_gemm_lib *cpu_gemm_lib_create(void) {
    cpu_gemm_lib *g = calloc(1, sizeof *g);
    if (!g) {
        fprintf(stderr, "glmtp: cpu backend: out of memory\n");
        return NULL;
    }
    if (!dnnl_ok(dnnl_engine_create(&g->engine, dnnl_cpu, 0), "engine_create") ||
        !dnnl_ok(dnnl_stream_create(&g->stream, g->engine, dnnl_stream_default_flags), "stream_create")) {
        cpu_gemm_lib_destroy(g);
        return NULL;
    }
    set_name(g, NULL);
    return g;
}

void cpu_gemm_lib_destroy(cpu_gemm_lib *g) {
    if (!g) return;
    for (int i = 0; i < GEMM_LIB_SLOTS; i++) entry_clear(&g->slots[i]);
    if (g->stream) dnnl_stream_destroy(g->stream);
    if (g->engine) dnnl_engine_destroy(g->engine);
    free(g->xb);
    free(g);
}

const char *cpu_gemm_lib_name(cpu_gemm_lib *g) { return g->name; }

/* The primitive for out [T, N] = x [T, K] W^T in slot e. W [N, K] row-major is
 * the [K, N] weights operand in column-major order (tag ba). */
static int entry_make(cpu_gemm_lib *g, gemm_entry *e, int T, int N, int K, kdtype wdt) {
    dnnl_data_type_t dt = wdt == KDT_BF16 ? dnnl_bf16 : dnnl_f32;
    dnnl_dims_t ds = {T, K}, dw = {K, N}, dd = {T, N};
    dnnl_memory_desc_t src, wei, dst;
    dnnl_matmul_desc_t mm;
    dnnl_primitive_desc_t pd = NULL;
    const char *impl = NULL;
    e->T = T, e->N = N, e->K = K, e->wdt = wdt;
    int ok = dnnl_ok(dnnl_memory_desc_init_by_tag(&src, 2, ds, dt, dnnl_ab), "memory_desc (src)") &&
             dnnl_ok(dnnl_memory_desc_init_by_tag(&wei, 2, dw, dt, dnnl_ba), "memory_desc (weights)") &&
             dnnl_ok(dnnl_memory_desc_init_by_tag(&dst, 2, dd, dnnl_f32, dnnl_ab), "memory_desc (dst)") &&
             dnnl_ok(dnnl_matmul_desc_init(&mm, &src, &wei, NULL, &dst), "matmul_desc_init") &&
             dnnl_ok(dnnl_primitive_desc_create(&pd, &mm, NULL, g->engine, NULL), "primitive_desc_create") &&
             dnnl_ok(dnnl_primitive_create(&e->prim, pd), "primitive_create") &&
             dnnl_ok(dnnl_memory_create(&e->src, &src, g->engine, DNNL_MEMORY_NONE), "memory_create (src)") &&
             dnnl_ok(dnnl_memory_create(&e->wei, &wei, g->engine, DNNL_MEMORY_NONE), "memory_create (weights)") &&
             dnnl_ok(dnnl_memory_create(&e->dst, &dst, g->engine, DNNL_MEMORY_NONE), "memory_create (dst)");
    if (ok && dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success) set_name(g, impl);
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (!ok) entry_clear(e);
    return ok ? 0 : -1;
}

/* Whether slot e is a better one to replace than the chosen v: free slots
 * first, then the least recently used. */
static int better_victim(const gemm_entry *e, const gemm_entry *v) {
    if (!v->prim) return 0;
    if (!e->prim) return 1;
    return e->used < v->used;
}

/* The slot for this shape: a hit, else a free slot or the least recently used
 * one, made anew. NULL on a library error. */
static gemm_entry *entry_get(cpu_gemm_lib *g, int T, int N, int K, kdtype wdt) {
    gemm_entry *victim = &g->slots[0];
    g->clock++;
    for (int i = 0; i < GEMM_LIB_SLOTS; i++) {
        gemm_entry *e = &g->slots[i];
        if (e->prim && e->T == T && e->N == N && e->K == K && e->wdt == wdt) {
            e->used = g->clock;
            return e;
        }
        if (better_victim(e, victim)) victim = e;
    }
    entry_clear(victim);
    if (entry_make(g, victim, T, N, K, wdt)) return NULL;
    victim->used = g->clock;
    return victim;
}

/* oneDNN takes non-const handles for every argument; it only reads src and weights. */
static int run(cpu_gemm_lib *g, gemm_entry *e, float *out, const void *x, const void *w) {
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, e->src}, {DNNL_ARG_WEIGHTS, e->wei}, {DNNL_ARG_DST, e->dst}};
    return dnnl_ok(dnnl_memory_set_data_handle(e->src, (void *)x), "memory_set_data_handle (src)") &&
                   dnnl_ok(dnnl_memory_set_data_handle(e->wei, (void *)w), "memory_set_data_handle (weights)") &&
                   dnnl_ok(dnnl_memory_set_data_handle(e->dst, out), "memory_set_data_handle (dst)") &&
                   dnnl_ok(dnnl_primitive_execute(e->prim, g->stream, 3, args), "primitive_execute") &&
                   dnnl_ok(dnnl_stream_wait(g->stream), "stream_wait")
               ? 0
               : -1;
}

/* g->xb holds at least n elements. */
static int xb_reserve(cpu_gemm_lib *g, size_t n) {
    if (n <= g->xb_cap) return 0;
    uint16_t *p = malloc(n * sizeof *p);
    if (!p) {
        fprintf(stderr, "glmtp: cpu backend: out of memory for %zu bf16 activations\n", n);
        return -1;
    }
    free(g->xb);
    g->xb = p;
    g->xb_cap = n;
    return 0;
}

int cpu_gemm_lib_matmul_bf16(cpu_gemm_lib *g, float *out, const uint16_t *xb, const kweight *W, int T) {
    if (W->dtype != KDT_BF16) return -1;
    gemm_entry *e = entry_get(g, T, W->rows, W->cols, KDT_BF16);
    return e ? run(g, e, out, xb, W->data) : -1;
}

int cpu_gemm_lib_matmul(cpu_gemm_lib *g, float *out, const float *x, const kweight *W, int T) {
    if (W->dtype == KDT_F32) {
        gemm_entry *e = entry_get(g, T, W->rows, W->cols, KDT_F32);
        return e ? run(g, e, out, x, W->data) : -1;
    }
    if (W->dtype != KDT_BF16) return -1;
    size_t n = (size_t)T * W->cols;
    if (xb_reserve(g, n)) return -1;
    uint16_t *xb = g->xb;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) xb[i] = f32_to_bf16(x[i]);
    return cpu_gemm_lib_matmul_bf16(g, out, xb, W, T);
}

#else /* no library in this build */

cpu_gemm_lib *cpu_gemm_lib_create(void) { return NULL; }
void cpu_gemm_lib_destroy(cpu_gemm_lib *g) { (void)g; }

int cpu_gemm_lib_matmul(cpu_gemm_lib *g, float *out, const float *x, const kweight *W, int T) {
    (void)g, (void)out, (void)x, (void)W, (void)T;
    return -1;
}

int cpu_gemm_lib_matmul_bf16(cpu_gemm_lib *g, float *out, const uint16_t *xb, const kweight *W, int T) {
    (void)g, (void)out, (void)xb, (void)W, (void)T;
    return -1;
}

const char *cpu_gemm_lib_name(cpu_gemm_lib *g) {
    (void)g;
    return "none";
}

#endif
