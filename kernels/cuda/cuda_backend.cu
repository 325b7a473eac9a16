/* CUDA backend: context, memory, weight upload and the kernels_iface table.
 * The ops live one per file beside this one (see cuda_backend.h).
 *
 * Memory: alloc is cudaMalloc + zero fill; to_device/to_host are copies on the
 * backend's stream followed by a wait for it, so they are synchronous and
 * ordered after every queued kernel (the stream is non-blocking: copies on the
 * legacy default stream would not be). Frees wait for the stream too.
 *
 * Weights: matrices are stored bf16 (f32 and f16 host data rounded to nearest
 * even on the host during upload); vectors (rows = 1: RMSNorm weights, the QKV
 * bias) are stored fp32, which is exact for bf16 checkpoints and keeps f32 ones
 * exact, and costs nothing next to the matrices. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_profiler_api.h>

#include "cuda_common.cuh"

#define LT_WORKSPACE_BYTES ((size_t)32 << 20) /* cuBLASLt's recommendation for Hopper */
#define UPLOAD_CHUNK ((size_t)16 << 20)       /* elements converted per host staging chunk */

/* The code the device runs waits in pdl_begin() (griddepcontrol needs sm_90
 * code: a build for sm_80 alone, JIT-compiled on a Hopper, has no waits). */
static __global__ void pdl_probe_kernel(void) {}
static int pdl_compiled(void) {
    cudaFuncAttributes fa;
    return cudaFuncGetAttributes(&fa, pdl_probe_kernel) == cudaSuccess && fa.binaryVersion >= 90 &&
           fa.ptxVersion >= 90;
}

void *cuda_scratch(cuda_ctx *c, cuda_buf *b, size_t bytes) {
    if (bytes <= b->bytes && b->p) return b->p;
    size_t n = bytes > 2 * b->bytes ? bytes : 2 * b->bytes;
    if (n < 256) n = 256;
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    CUDA_CHECK(cudaFree(b->p));
    b->p = NULL;
    b->bytes = 0;
    CUDA_CHECK(cudaMalloc(&b->p, n));
    b->bytes = n;
    c->scratch_gen++;
    return b->p;
}

void cuda_buf_free(cuda_ctx *c, cuda_buf *b) {
    (void)c;
    if (b->p) CUDA_CHECK(cudaFree(b->p));
    b->p = NULL;
    b->bytes = 0;
}

static void *cuda_alloc(void *ctx, size_t bytes) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    void *p = NULL;
    size_t n = bytes ? bytes : 1; /* callers may ask for empty buffers; they still get a unique pointer */
    cudaError_t e = cudaMalloc(&p, n);
    if (e != cudaSuccess) {
        size_t free_b = 0, total_b = 0;
        (void)cudaGetLastError(); /* clear the non-sticky allocation error */
        (void)cudaMemGetInfo(&free_b, &total_b);
        fprintf(stderr, "glmtp: rank %s: device %d: out of GPU memory allocating %zu bytes (%s; %zu of %zu bytes free)\n",
                glmtp_check_rank(), c->device, bytes, cudaGetErrorString(e), free_b, total_b);
        abort();
    }
    CUDA_CHECK(cudaMemsetAsync(p, 0, n, c->stream));
    return p;
}

static void cuda_free(void *ctx, void *p) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (!p) return;
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    CUDA_CHECK(cudaFree(p));
}

static void cuda_to_device(void *ctx, void *dst, const void *src, size_t bytes) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
}

static void cuda_to_host(void *ctx, void *dst, const void *src, size_t bytes) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
}

static float host_elem(const void *src, kdtype dt, size_t i) {
    switch (dt) {
    case KDT_BF16: return bf16_to_f32(((const uint16_t *)src)[i]);
    case KDT_F16: return f16_to_f32(((const uint16_t *)src)[i]);
    default: return ((const float *)src)[i];
    }
}

/* Converts host data to the storage type in chunks through one staging buffer
 * (a whole f32 embedding converted at once would double host memory). */
static void upload_converted(cuda_ctx *c, void *dst, const void *src, kdtype dt, size_t n, kdtype to) {
    size_t es = kdtype_size(to), chunk = n < UPLOAD_CHUNK ? n : UPLOAD_CHUNK;
    void *tmp = malloc(chunk * es);
    if (!tmp) {
        fprintf(stderr, "glmtp: cuda backend: out of host memory staging a weight upload\n");
        abort();
    }
    for (size_t i0 = 0; i0 < n; i0 += chunk) {
        size_t m = n - i0 < chunk ? n - i0 : chunk;
        if (to == KDT_F32)
            for (size_t i = 0; i < m; i++) ((float *)tmp)[i] = host_elem(src, dt, i0 + i);
        else
            for (size_t i = 0; i < m; i++) ((uint16_t *)tmp)[i] = f32_to_bf16(host_elem(src, dt, i0 + i));
        cuda_to_device(c, (char *)dst + i0 * es, tmp, m * es);
    }
    free(tmp);
}

static void cuda_weight_upload(void *ctx, kweight *w, const void *host, kdtype dt, int rows, int cols) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    size_t n = (size_t)rows * cols;
    kdtype to = rows == 1 ? KDT_F32 : KDT_BF16;
    w->rows = rows;
    w->cols = cols;
    w->dtype = to;
    w->data = cuda_alloc(c, n * kdtype_size(to));
    if (dt == to)
        cuda_to_device(c, w->data, host, n * kdtype_size(to));
    else
        upload_converted(c, w->data, host, dt, n, to);
}

static void cuda_weight_free(void *ctx, kweight *w) {
    if (!w) return;
    cuda_free(ctx, w->data);
    w->data = NULL;
}

static void cuda_sync(void *ctx) { CUDA_CHECK(cudaStreamSynchronize(((cuda_ctx *)ctx)->stream)); }

static void cuda_profile_range(void *ctx, int on) {
    (void)ctx;
    CUDA_CHECK(on ? cudaProfilerStart() : cudaProfilerStop());
}

static void cuda_destroy(void *ctx) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (!c) return;
    CUDA_CHECK(cudaSetDevice(c->device)); /* another thread may have left a different device current */
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    cuda_matmul_release(c);
    cuda_buf *bufs[] = {&c->gemm_f32, &c->attn_part, &c->rows,    &c->gather_tmp,
                        &c->argmax,   &c->top_k,     &c->rope_inv, &c->plan.dev};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) cuda_buf_free(c, bufs[i]);
    free(c->plan.host);
    free(c->plan.key);
    if (c->lt_workspace) CUDA_CHECK(cudaFree(c->lt_workspace));
    if (c->lt) CUBLAS_CHECK(cublasLtDestroy(c->lt));
    CUDA_CHECK(cudaStreamDestroy(c->stream));
    if (c->host_row) CUDA_CHECK(cudaFreeHost(c->host_row));
    free(c);
}

static int cuda_mem_info(void *ctx, size_t *free_bytes, size_t *total_bytes) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    CUDA_CHECK(cudaSetDevice(c->device));
    CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
    return 0;
}

static const kernels_iface cuda_iface = {
    /* .name          = */ "cuda",
    /* .act_bytes     = */ 2,
    /* .alloc         = */ cuda_alloc,
    /* .free          = */ cuda_free,
    /* .to_device     = */ cuda_to_device,
    /* .to_host       = */ cuda_to_host,
    /* .weight_upload = */ cuda_weight_upload,
    /* .weight_free   = */ cuda_weight_free,
    /* .embedding     = */ cuda_op_embedding,
    /* .rmsnorm       = */ cuda_op_rmsnorm,
    /* .matmul        = */ cuda_op_matmul,
    /* .matmul_f32    = */ cuda_op_matmul_f32,
    /* .rope          = */ cuda_op_rope,
    /* .kv_store      = */ cuda_op_kv_store,
    /* .rope_kv_store = */ cuda_op_rope_kv_store,
    /* .attention     = */ cuda_op_attention,
    /* .swiglu        = */ cuda_op_swiglu,
    /* .matmul_swiglu = */ cuda_op_matmul_swiglu,
    /* .add           = */ cuda_op_add,
    /* .add_rmsnorm   = */ cuda_op_add_rmsnorm,
    /* .gather_rows   = */ cuda_op_gather_rows,
    /* .argmax        = */ cuda_op_argmax,
    /* .top_k         = */ cuda_op_top_k,
    /* .sync          = */ cuda_sync,
    /* .profile_range = */ cuda_profile_range,
    /* .destroy       = */ cuda_destroy,
    /* .mem_info      = */ cuda_mem_info,
    /* .capture_begin = */ cuda_capture_begin,
    /* .capture_end   = */ cuda_capture_end,
    /* .graph_launch  = */ cuda_graph_launch,
    /* .graph_destroy = */ cuda_graph_destroy,
    /* .layernorm     = */ cuda_op_layernorm,
    /* .gelu          = */ cuda_op_gelu,
    /* .attention_full = */ cuda_op_attention_full,
};

/* The on/off switches read from the environment at creation (set and not
 * "0" is on; unset is the default): paths to compare (GLMTP_NO_*), kernels
 * opt-in until a GPU run has checked and timed them, and the ones such a run
 * made the default (on: an A/B switch; run 4 in bench/results/). */
static const struct {
    const char *env;
    size_t field;
    int on; /* the default */
} switches[] = {
    {"GLMTP_FUSED_ADD_NORM", offsetof(cuda_ctx, fused_add_norm), 1}, /* add_rmsnorm in one kernel */
    {"GLMTP_FUSED_ROPE_KV", offsetof(cuda_ctx, fused_rope_kv), 1},   /* rope_kv_store in one kernel */
    {"GLMTP_FUSED_SWIGLU", offsetof(cuda_ctx, fused_swiglu), 1},     /* SwiGLU in the T = 1 GEMV */
    {"GLMTP_GPU_TOPK", offsetof(cuda_ctx, gpu_top_k), 1},            /* the sampling candidates' kernel */
    {"GLMTP_GQA_ATTENTION", offsetof(cuda_ctx, gqa_attention), 1},   /* the grouped decode attention kernel */
    {"GLMTP_GEMV_SPLIT", offsetof(cuda_ctx, gemv_split), 1},         /* K split over warps in small GEMVs */
    {"GLMTP_PDL", offsetof(cuda_ctx, pdl), 0},                       /* programmatic dependent launch */
    {"GLMTP_SKINNY", offsetof(cuda_ctx, skinny), 0},                 /* T = 2..8 tensor-core matmul */
    {"GLMTP_LT_BIAS", offsetof(cuda_ctx, lt_bias), 0},               /* bias in cuBLASLt's epilogue */
    {"GLMTP_NO_GEMV", offsetof(cuda_ctx, no_gemv), 0},               /* small-T matmuls through cuBLASLt */
    {"GLMTP_NO_FLASH_PREFILL", offsetof(cuda_ctx, no_flash_prefill), 0}, /* no tensor-core prefill attention */
};

/* Unset or empty: dflt; else on unless "0". */
static int env_switch(const char *name, int dflt) {
    const char *v = getenv(name);
    return v && *v ? strcmp(v, "0") != 0 : dflt;
}

/* Failures a user can cause (no device, wrong device, old GPU) come back in
 * err; anything after the device is chosen is a broken invariant and aborts. */
kbackend kernels_cuda_create(int device, char *err, size_t errlen) {
    kbackend none = {NULL, NULL};
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        snprintf(err, errlen, "no CUDA device: %s", e != cudaSuccess ? cudaGetErrorString(e) : "none visible");
        (void)cudaGetLastError();
        return none;
    }
    int dev = (device < 0 ? 0 : device) % n;
    int major = 0, minor = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    if (major < 8) {
        snprintf(err, errlen, "CUDA device %d has compute capability %d.%d; the CUDA backend needs 8.0 or newer (bf16)",
                 dev, major, minor);
        return none;
    }
    e = cudaSetDevice(dev);
    if (e != cudaSuccess) {
        snprintf(err, errlen, "cannot use CUDA device %d: %s", dev, cudaGetErrorString(e));
        return none;
    }
    cuda_ctx *c = (cuda_ctx *)calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of host memory");
        return none;
    }
    c->device = dev;
    CUDA_CHECK(cudaDeviceGetAttribute(&c->sm_count, cudaDevAttrMultiProcessorCount, dev));
    CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasLtCreate(&c->lt));
    c->lt_workspace_bytes = LT_WORKSPACE_BYTES;
    CUDA_CHECK(cudaMalloc(&c->lt_workspace, c->lt_workspace_bytes));
    c->rope_rot = -1;
    /* Read once, so a GPU run can compare paths or switch a broken one off. */
    for (size_t i = 0; i < sizeof switches / sizeof *switches; i++)
        *(int *)((char *)c + switches[i].field) = env_switch(switches[i].env, switches[i].on);
    c->pdl = c->pdl && pdl_compiled(); /* else launches would overlap kernels that never wait */
    /* 1: the 64-row prefill kernel; else the 128-row one, 2.1x faster on an
     * H200 (298 against 141 TFLOP/s at 8K tokens, bench/results/2026-11-27-*) */
    const char *fv = getenv("GLMTP_FLASH_VARIANT");
    c->flash_variant = fv && !strcmp(fv, "1") ? 1 : 2;

    char name[256] = "?";
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, dev) == cudaSuccess) snprintf(name, sizeof name, "%s", prop.name);
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    fprintf(stderr,
            "glmtp: rank %s: cuda backend on device %d of %d: %s, compute %d.%d, %d SMs, %.1f of %.1f GiB free%s%s\n",
            glmtp_check_rank(), dev, n, name, major, minor, c->sm_count, free_b / 1073741824.0,
            total_b / 1073741824.0,
            c->no_flash_prefill ? " (GLMTP_NO_FLASH_PREFILL: no tensor-core prefill attention)" : "",
            c->flash_variant == 1 ? " (GLMTP_FLASH_VARIANT=1: 64-row prefill attention tiles)" : "");
    kbackend b = {&cuda_iface, c};
    return b;
}

void *kernels_cuda_stream(kbackend kb) {
    if (kb.iface != &cuda_iface) return NULL;
    return (void *)((cuda_ctx *)kb.ctx)->stream;
}

/* Test hook (declared by tests/gpu/test_gpu_kernels.c, not in kernels.h): set
 * 1 or 2 switches the prefill attention kernel as GLMTP_FLASH_VARIANT does at
 * creation (other values change nothing); returns the variant the last
 * attention call launched (0: none, every token took the general kernel), or
 * -1 for a backend that is not CUDA. */
extern "C" int kernels_cuda_flash_variant(kbackend kb, int set) {
    if (kb.iface != &cuda_iface) return -1;
    cuda_ctx *c = (cuda_ctx *)kb.ctx;
    if (set == 1 || set == 2) c->flash_variant = set;
    return c->flash_ran;
}

/* Test hooks: the path the last matmul or matmul_f32 call took (matmul.cu's
 * names), and the kernel the last attention call ran for the tokens the
 * tensor-core prefill left ("per_head", "grouped"; NULL when it left none);
 * NULL before any call or for a backend that is not CUDA. */
extern "C" const char *kernels_cuda_matmul_ran(kbackend kb) {
    return kb.iface == &cuda_iface ? ((cuda_ctx *)kb.ctx)->matmul_ran : NULL;
}

extern "C" const char *kernels_cuda_attention_ran(kbackend kb) {
    return kb.iface == &cuda_iface ? ((cuda_ctx *)kb.ctx)->attention_ran : NULL;
}

/* Test hook (declared by tests/gpu/test_gpu_kernels.c): set 0 or 1 turns the
 * switch named by its environment variable (the table above) off or on, as
 * that variable does at creation; other values change nothing. Returns the
 * setting before, or -1 for a backend that is not CUDA or an unknown name. */
extern "C" int kernels_cuda_switch(kbackend kb, const char *env, int set) {
    if (kb.iface != &cuda_iface) return -1;
    for (size_t i = 0; i < sizeof switches / sizeof *switches; i++) {
        if (strcmp(switches[i].env, env) != 0) continue;
        int *f = (int *)((char *)kb.ctx + switches[i].field), was = *f;
        if (set == 0 || set == 1) *f = set && (f != &((cuda_ctx *)kb.ctx)->pdl || pdl_compiled());
        return was;
    }
    return -1;
}
