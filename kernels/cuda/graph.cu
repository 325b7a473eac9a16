/* CUDA graphs of the backend's ops (kernels.h: capture_begin .. graph_destroy).
 *
 * Capture records what is queued on ctx->stream in thread-local mode (other
 * threads, such as the NCCL watchdog, keep their own CUDA calls). A graph
 * remembers ctx->scratch_gen at capture: scratch the ops use is reallocated
 * only on growth, which bumps the generation, and a graph made before that
 * points at freed memory, so launching it is refused (-1) instead. */
#include <stdio.h>
#include <stdlib.h>

#include "cuda_common.cuh"

typedef struct cuda_graph {
    cudaGraphExec_t exec;
    uint64_t gen;
} cuda_graph;

int cuda_capture_begin(void *ctx) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    CUDA_CHECK(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    return 0;
}

void *cuda_capture_end(void *ctx) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(c->stream, &g);
    if (e != cudaSuccess || !g) {
        /* An op did something a graph cannot hold (a host copy, a wait): the
         * capture is invalidated and nothing of it ran. */
        fprintf(stderr, "glmtp: rank %s: cuda graph capture failed: %s\n", glmtp_check_rank(), cudaGetErrorString(e));
        (void)cudaGetLastError();
        if (g) (void)cudaGraphDestroy(g);
        return NULL;
    }
    cuda_graph *cg = (cuda_graph *)calloc(1, sizeof *cg);
    if (!cg) abort();
    e = cudaGraphInstantiate(&cg->exec, g, 0);
    CUDA_CHECK(cudaGraphDestroy(g));
    if (e != cudaSuccess) {
        fprintf(stderr, "glmtp: rank %s: cuda graph instantiation failed: %s\n", glmtp_check_rank(),
                cudaGetErrorString(e));
        (void)cudaGetLastError();
        free(cg);
        return NULL;
    }
    cg->gen = c->scratch_gen;
    return cg;
}

int cuda_graph_launch(void *ctx, void *graph) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    cuda_graph *cg = (cuda_graph *)graph;
    if (cg->gen != c->scratch_gen) return -1;
    CUDA_CHECK(cudaGraphLaunch(cg->exec, c->stream));
    return 0;
}

void cuda_graph_destroy(void *ctx, void *graph) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    cuda_graph *cg = (cuda_graph *)graph;
    if (!cg) return;
    CUDA_CHECK(cudaStreamSynchronize(c->stream)); /* a queued launch may still be running it */
    CUDA_CHECK(cudaGraphExecDestroy(cg->exec));
    free(cg);
}
