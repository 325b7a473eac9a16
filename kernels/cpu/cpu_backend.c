/* CPU backend: memory management and the kernels_iface table. Backend memory is
 * plain host memory, so to_device/to_host are memcpy. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"

static void *cpu_alloc(void *ctx, size_t bytes) {
    (void)ctx;
    /* 64-byte alignment for vector loads; calloc semantics. */
    size_t n = (bytes + 63) & ~(size_t)63;
    void *p = NULL;
    if (n == 0) n = 64;
    if (posix_memalign(&p, 64, n) != 0) {
        fprintf(stderr, "glmtp: cpu backend: out of memory allocating %zu bytes\n", bytes);
        abort();
    }
    memset(p, 0, n);
    return p;
}

static void cpu_free(void *ctx, void *p) {
    (void)ctx;
    free(p);
}

static void cpu_copy(void *ctx, void *dst, const void *src, size_t bytes) {
    (void)ctx;
    if (bytes) memcpy(dst, src, bytes);
}

/* bf16 and f32 are kept as stored (the GEMM reads both); f16 is widened to f32
 * because nothing on the CPU path computes in f16. */
static void cpu_weight_upload(void *ctx, kweight *w, const void *host, kdtype dt, int rows, int cols) {
    size_t n = (size_t)rows * cols;
    w->rows = rows;
    w->cols = cols;
    if (dt == KDT_F16) {
        float *d = cpu_alloc(ctx, n * 4);
        const uint16_t *s = host;
        for (size_t i = 0; i < n; i++) d[i] = f16_to_f32(s[i]);
        w->data = d;
        w->dtype = KDT_F32;
    } else {
        w->data = cpu_alloc(ctx, n * kdtype_size(dt));
        memcpy(w->data, host, n * kdtype_size(dt));
        w->dtype = dt;
    }
}

static void cpu_weight_free(void *ctx, kweight *w) {
    if (!w) return;
    cpu_free(ctx, w->data);
    w->data = NULL;
}

static void cpu_sync(void *ctx) { (void)ctx; }
static void cpu_profile_range(void *ctx, int on) { (void)ctx, (void)on; }

static void cpu_destroy(void *ctx) {
    cpu_ctx *c = ctx;
    cpu_gemm_lib_destroy(c->gemm);
    free(c->xr);
    free(c);
}

static int cpu_mem_info(void *ctx, size_t *free_bytes, size_t *total_bytes) {
    (void)ctx, (void)free_bytes, (void)total_bytes;
    return -1;
}

static int cpu_capture_begin(void *ctx) {
    (void)ctx;
    return -1;
}

static void *cpu_capture_end(void *ctx) {
    (void)ctx;
    return NULL;
}

static int cpu_graph_launch(void *ctx, void *graph) {
    (void)ctx, (void)graph;
    return -1;
}

static void cpu_graph_destroy(void *ctx, void *graph) { (void)ctx, (void)graph; }

static const kernels_iface cpu_iface = {
    /* .name          = */ "cpu",
    /* .act_bytes     = */ sizeof(float),
    /* .alloc         = */ cpu_alloc,
    /* .free          = */ cpu_free,
    /* .to_device     = */ cpu_copy,
    /* .to_host       = */ cpu_copy,
    /* .weight_upload = */ cpu_weight_upload,
    /* .weight_free   = */ cpu_weight_free,
    /* .embedding     = */ cpu_embedding,
    /* .rmsnorm       = */ cpu_rmsnorm,
    /* .matmul        = */ cpu_matmul,
    /* .matmul_f32    = */ cpu_matmul_f32,
    /* .rope          = */ cpu_rope,
    /* .kv_store      = */ cpu_kv_store,
    /* .rope_kv_store = */ cpu_rope_kv_store,
    /* .attention     = */ cpu_attention,
    /* .swiglu        = */ cpu_swiglu,
    /* .matmul_swiglu = */ cpu_matmul_swiglu,
    /* .add           = */ cpu_add,
    /* .add_rmsnorm   = */ cpu_add_rmsnorm,
    /* .gather_rows   = */ cpu_gather_rows,
    /* .argmax        = */ cpu_argmax,
    /* .top_k         = */ cpu_top_k,
    /* .sync          = */ cpu_sync,
    /* .profile_range = */ cpu_profile_range,
    /* .destroy       = */ cpu_destroy,
    /* .mem_info      = */ cpu_mem_info,
    /* .capture_begin = */ cpu_capture_begin,
    /* .capture_end   = */ cpu_capture_end,
    /* .graph_launch  = */ cpu_graph_launch,
    /* .graph_destroy = */ cpu_graph_destroy,
    /* .layernorm     = */ cpu_layernorm,
    /* .gelu          = */ cpu_gelu,
    /* .attention_full = */ cpu_attention_full,
};

kbackend kernels_cpu_create(int n_threads) {
    cpu_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        fprintf(stderr, "glmtp: cpu backend: out of memory\n");
        abort();
    }
    if (n_threads > 0) omp_set_num_threads(n_threads);
    c->n_threads = omp_get_max_threads();
    /* GLMTP_CPU_OWN_GEMM=1: prefill through the own kernel, to compare with. */
    const char *own = getenv("GLMTP_CPU_OWN_GEMM");
    if (!own || !*own || strcmp(own, "0") == 0) c->gemm = cpu_gemm_lib_create();
    kbackend b = {&cpu_iface, c};
    return b;
}
