/* test_gpu_kernels: every op of the CUDA backend against the CPU backend (the
 * reference, itself checked against naive loops by tests/test_kernels.c), on
 * seeded random inputs, through the kernels_iface both implement.
 *
 * Tolerances and the shared helpers: gpu_check.h.
 *
 * Without a usable CUDA device it prints "skipped: no CUDA device" and exits
 * GPU_SKIP_EXIT (77, ctest's SKIP_RETURN_CODE for it), so ctest on a machine
 * without a GPU reports it skipped, not passed. Last line: "N passed, M failed".
 * The parts are test_gpu_*.c; gpu_check.h has what they share. */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gpu_check.h"

#define GPU_SKIP_EXIT 77

int main(int argc, char **argv) {
    int n_dev = 0;
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess || n_dev == 0) {
        printf("skipped: no CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "none visible");
        return GPU_SKIP_EXIT;
    }
    char err[512];
    setenv("GLMTP_FUSED_ADD_NORM", "1", 0); /* the fused kernels (the default) unless told otherwise */
    setenv("GLMTP_FUSED_ROPE_KV", "1", 0);
    setenv("GLMTP_GPU_TOPK", "1", 0);
    setenv("GLMTP_FUSED_SWIGLU", "1", 0);
    G = kernels_cuda_create(0, err, sizeof err);
    if (!G.iface) {
        printf("skipped: no CUDA device (%s)\n", err);
        return GPU_SKIP_EXIT;
    }
    C = kernels_cpu_create(0);
    /* GLMTP_GPU_TEST_ONLY=prefill: only the small prefill attention cases
     * (short enough to run under compute-sanitizer); =prefill-big: only the
     * timed GLM-4-sized one; =fp8: only the fp8 KV cache's cases; =vision:
     * only the vision tower's ops (layernorm, gelu, attention_full). */
    const char *only = getenv("GLMTP_GPU_TEST_ONLY");
    if (only && (!strcmp(only, "prefill") || !strcmp(only, "prefill-big") || !strcmp(only, "fp8") ||
                 !strcmp(only, "vision"))) {
        if (!strcmp(only, "prefill"))
            test_prefill_attention();
        else if (!strcmp(only, "fp8"))
            test_fp8_kv_store(), test_fp8_attention();
        else if (!strcmp(only, "vision"))
            test_vision_ops(), test_attention_full();
        else
            test_prefill_attention_big(4096);
        G.iface->sync(G.ctx);
        G.iface->destroy(G.ctx);
        C.iface->destroy(C.ctx);
        printf("%d passed, %d failed\n", n_pass, n_fail);
        return n_fail ? 1 : 0;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    printf("backends: %s (act_bytes %zu) vs %s\n", G.iface->name, G.iface->act_bytes, C.iface->name);
    test_upload();
    test_embedding();
    test_small_ops();
    test_matmul();
    test_rope();
    test_rope_kv_store(1, 32, 2, 128, 64); /* GLM-4-9B decode */
    test_rope_kv_store(5, 4, 2, 16, 8);
    test_rope_kv_store(3, 8, 4, 64, 32);
    test_vision_ops();
    test_attention();
    test_prefill_attention();
    test_prefill_attention_big(4096);
    test_attention_full();
    test_fp8_kv_store();
    test_fp8_attention();
    test_top_k();
    test_argmax();
#ifdef GLMTP_HAVE_NCCL
    test_nccl_single(&argc, &argv);
#else
    (void)argc, (void)argv;
    printf("(built without NCCL: no communicator test)\n");
#endif
    G.iface->sync(G.ctx);
    G.iface->destroy(G.ctx);
    C.iface->destroy(C.ctx);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("time %.2f s\n", (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec));
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
