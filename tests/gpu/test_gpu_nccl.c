/* test_gpu_kernels, part 4: the NCCL communicator on one rank. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../comm/comm.h"
#include "gpu_check.h"
#ifdef GLMTP_HAVE_NCCL
#include "../../comm/comm_nccl.h"
#endif

/* ------------------------------------------------------------ NCCL, 1 rank */

#ifdef GLMTP_HAVE_NCCL
/* The NCCL communicator on one rank: setup through the base comm, all-reduces
 * queued on the backend's stream (a sum over one rank leaves the data as it
 * is), more of them than the watchdog's ring holds, and teardown. */
void test_nccl_single(int *argc, char ***argv) {
    char err[512];
    comm *base = comm_create(argc, argv, 60, err, sizeof err);
    if (!base || base->size != 1) {
        expect(0, "nccl: a one-rank base comm (%s)", base ? "more than one rank" : err);
        comm_destroy(base);
        return;
    }
    comm *nc = comm_nccl_create(base, kernels_cuda_stream(G), err, sizeof err);
    expect(nc != NULL, "nccl: comm_nccl_create on one rank%s%s", nc ? "" : ": ", nc ? "" : err);
    if (nc) {
        size_t n = 4096 * 5;
        float *x = rand_bf16(n, -3, 3);
        void *d = g_act(x, n);
        for (int i = 0; i < 300; i++) nc->iface->allreduce_sum(nc->ctx, d, n, KDT_BF16);
        float *got = g_get("nccl all-reduce", d, n);
        check("nccl all-reduce bf16 x300 on one rank (identity)", got, x, n, 0.0, 0.0);
        void *f = G.iface->alloc(G.ctx, n * 4);
        G.iface->to_device(G.ctx, f, x, n * 4);
        nc->iface->allreduce_sum(nc->ctx, f, n, KDT_F32);
        G.iface->to_host(G.ctx, got, f, n * 4);
        check("nccl all-reduce f32 on one rank (identity)", got, x, n, 0.0, 0.0);
        /* watched work (as after a graph launch), more marks than the ring
         * holds: the watchdog retires them (a wait for the ring would hang or
         * time out otherwise), and the work is what it was */
        float *z = xmalloc(n * sizeof(float));
        memset(z, 0, n * sizeof(float));
        void *zero = g_act(z, n);
        free(z);
        for (int i = 0; i < 300; i++) {
            G.iface->add(G.ctx, d, zero, n);
            nc->iface->watch_queued(nc->ctx);
        }
        float *kept = g_get("nccl watch_queued", d, n);
        check("nccl: 300 watched marks behind queued adds of zero (identity)", kept, x, n, 0.0, 0.0);
        free(kept);
        G.iface->free(G.ctx, zero);
        G.iface->free(G.ctx, f), G.iface->free(G.ctx, d);
        free(got), free(x);
        comm_nccl_destroy(nc);
    }
    comm_destroy(base);
}
#endif
