/* NCCL communicator (see comm_nccl.h): all-reduce on the GPU stream, a watchdog
 * thread for errors and timeouts, everything else through the base comm. */
#include <nccl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../kernels/cuda/cuda_check.h" /* after nccl.h: defines NCCL_CHECK */
#include "comm_nccl.h"

/* All-reduces the watchdog tracks at once. A decode step queues two per layer
 * and ends with a stream sync, so 256 is never reached in practice; if it is,
 * the host waits for the oldest one (the GPU is far behind anyway). */
#define RING 256
#define POLL_NS 1000000L /* watchdog period: 1 ms */
#define ABORT_GRACE_S 30  /* die(): how long ncclCommAbort and the job abort may take before the rank ends itself */

typedef struct nccl_ctx {
    comm *base;
    ncclComm_t nc;
    cudaStream_t stream;
    int rank, device;
    double timeout_s;
    volatile sig_atomic_t dying; /* die() began: the main thread queues no more NCCL work */
    int abort_on_destroy;        /* setup failed: other ranks may not have joined, so no ncclCommDestroy */
    pthread_t watchdog;
    int watchdog_running;
    pthread_mutex_t mu;
    /* under mu */
    int stop, initializing;
    double init_t0;
    unsigned long issued, done; /* all-reduces queued; known finished */
    double t_issue[RING];
    cudaEvent_t ev[RING];
} nccl_ctx;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_ns(long ns) {
    struct timespec ts = {0, ns};
    nanosleep(&ts, NULL);
}

/* Ends the job (the watchdog's thread): the message, ncclCommAbort (unblocks
 * kernels waiting for a dead peer, so a host thread stuck in a stream sync
 * returns; from then on the main thread parks in park_if_dying instead of
 * using the freed comm), then the base comm's abort, which from this thread
 * ends the rank with _exit and leaves the other ranks to the launcher (comm.h:
 * MPI is not entered from a second thread). Since NCCL 2.19 an abort can wait
 * for the other ranks of the node to abort too (NVIDIA/nccl#863), which a hung
 * peer never does: SIGALRM's default action ends this rank if the two have
 * not within ABORT_GRACE_S, and mpirun then ends the job. */
static void die(nccl_ctx *n, const char *why) {
    n->dying = 1;
    fprintf(stderr, "glmtp: rank %d: device %d: %s; aborting the NCCL communicator and the job\n", n->rank, n->device,
            why);
    fflush(stderr);
    alarm(ABORT_GRACE_S);
    pthread_mutex_lock(&n->mu);
    ncclComm_t nc = n->nc;
    pthread_mutex_unlock(&n->mu);
    if (nc) (void)ncclCommAbort(nc);
    n->base->iface->abort(n->base->ctx, 4);
    abort(); /* not reached */
}

/* The main thread, once die() has begun: waits for the end it brings. */
static void park_if_dying(nccl_ctx *n) {
    while (n->dying) pause();
}

/* Retires finished all-reduces; returns the failure, if any, in why. */
static int check_locked(nccl_ctx *n, char *why, size_t len) {
    double now = now_s();
    if (n->initializing) {
        if (now - n->init_t0 <= n->timeout_s) return 0;
        snprintf(why, len, "NCCL communicator setup not finished after %.0f s: another rank died or hangs",
                 n->timeout_s);
        return 1;
    }
    if (!n->nc) return 0; /* setup failed; comm_nccl_create is tearing down */
    while (n->done < n->issued) {
        cudaError_t e = cudaEventQuery(n->ev[n->done % RING]);
        if (e == cudaErrorNotReady) break;
        if (e != cudaSuccess) {
            snprintf(why, len, "CUDA error while waiting for all-reduce #%lu: %s", n->done + 1, cudaGetErrorString(e));
            return 1;
        }
        n->done++;
    }
    if (n->done < n->issued && now - n->t_issue[n->done % RING] > n->timeout_s) {
        snprintf(why, len, "NCCL all-reduce #%lu not finished after %.0f s: another rank died or hangs", n->done + 1,
                 n->timeout_s);
        return 1;
    }
    ncclResult_t ae = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(n->nc, &ae);
    if (r != ncclSuccess || (ae != ncclSuccess && ae != ncclInProgress)) {
        snprintf(why, len, "NCCL asynchronous error: %s", ncclGetErrorString(r != ncclSuccess ? r : ae));
        return 1;
    }
    return 0;
}

static void *watchdog_main(void *arg) {
    nccl_ctx *n = arg;
    CUDA_CHECK(cudaSetDevice(n->device)); /* events and the comm belong to this device */
    char why[512];
    for (;;) {
        pthread_mutex_lock(&n->mu);
        if (n->stop) {
            pthread_mutex_unlock(&n->mu);
            return NULL;
        }
        int failed = check_locked(n, why, sizeof why);
        pthread_mutex_unlock(&n->mu);
        if (failed) die(n, why);
        sleep_ns(POLL_NS);
    }
}

/* Hands the watchdog an event behind the work queued on the stream so far, to
 * time out like an all-reduce. Not while a graph is being recorded: nothing
 * runs then, and an event recorded during capture cannot be queried. */
static void watch(nccl_ctx *n) {
    enum cudaStreamCaptureStatus cs;
    CUDA_CHECK(cudaStreamIsCapturing(n->stream, &cs));
    if (cs != cudaStreamCaptureStatusNone) return;
    pthread_mutex_lock(&n->mu);
    while (n->issued - n->done >= RING) { /* ring full: let the watchdog retire the oldest */
        pthread_mutex_unlock(&n->mu);
        sleep_ns(50000);
        pthread_mutex_lock(&n->mu);
    }
    CUDA_CHECK(cudaEventRecord(n->ev[n->issued % RING], n->stream));
    n->t_issue[n->issued % RING] = now_s();
    n->issued++;
    pthread_mutex_unlock(&n->mu);
}

static void nccl_allreduce(void *ctx, void *buf, size_t count, kdtype dt) {
    nccl_ctx *n = ctx;
    if (count == 0) return;
    park_if_dying(n);
    ncclDataType_t t = dt == KDT_F32 ? ncclFloat32 : dt == KDT_BF16 ? ncclBfloat16 : ncclFloat16;
    NCCL_CHECK(ncclAllReduce(buf, buf, count, t, ncclSum, n->nc, n->stream));
    watch(n);
}

static void nccl_watch_queued(void *ctx) {
    park_if_dying(ctx);
    watch(ctx);
}

static void nccl_gather(void *ctx, const void *send, void *recv, const size_t *bytes) {
    comm *b = ((nccl_ctx *)ctx)->base;
    b->iface->gather(b->ctx, send, recv, bytes);
}

static void nccl_bcast(void *ctx, void *buf, size_t bytes) {
    comm *b = ((nccl_ctx *)ctx)->base;
    b->iface->bcast(b->ctx, buf, bytes);
}

static void nccl_allgather_u64(void *ctx, uint64_t v, uint64_t *out) {
    comm *b = ((nccl_ctx *)ctx)->base;
    b->iface->allgather_u64(b->ctx, v, out);
}

static void nccl_abort(void *ctx, int code) {
    nccl_ctx *n = ctx;
    if (n->nc) (void)ncclCommAbort(n->nc);
    n->base->iface->abort(n->base->ctx, code);
    abort(); /* not reached */
}

static void nccl_finalize(void *ctx) { (void)ctx; } /* comm_nccl_destroy does the work */

static int nccl_capturable(void *ctx) {
    (void)ctx;
    return 1;
}

static const comm_iface nccl_iface = {
    /* .name          = */ "nccl",
    /* .allreduce_sum = */ nccl_allreduce,
    /* .gather        = */ nccl_gather,
    /* .bcast         = */ nccl_bcast,
    /* .allgather_u64 = */ nccl_allgather_u64,
    /* .abort         = */ nccl_abort,
    /* .finalize      = */ nccl_finalize,
    /* .allreduce_capturable = */ nccl_capturable,
    /* .watch_queued  = */ nccl_watch_queued,
};

/* Every rank learns whether any failed; the lowest failing rank's reason goes
 * into err on every rank, so all return NULL together and none hangs. */
static int agree(comm *base, int failed, char *err, size_t errlen) {
    int first = comm_first_failed(base, failed);
    if (first < 0) return 0;
    char msg[512] = "";
    if (failed) snprintf(msg, sizeof msg, "%s", err);
    size_t *bytes = malloc(sizeof *bytes * (size_t)base->size);
    char *all = base->rank == 0 ? malloc(sizeof msg * (size_t)base->size) : NULL;
    if (!bytes || (base->rank == 0 && !all)) abort();
    for (int r = 0; r < base->size; r++) bytes[r] = sizeof msg;
    base->iface->gather(base->ctx, msg, all, bytes);
    if (base->rank == 0) memcpy(msg, all + sizeof msg * (size_t)first, sizeof msg);
    base->iface->bcast(base->ctx, msg, sizeof msg);
    msg[sizeof msg - 1] = 0;
    if (base->rank != first) snprintf(err, errlen, "rank %d: %s", first, msg);
    free(bytes);
    free(all);
    return 1;
}

/* FNV-1a over a string, continuing from h. */
static uint64_t fnv(uint64_t h, const char *s) {
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

/* NCCL needs a distinct GPU per rank. Ranks are compared by (host, PCI bus id)
 * rather than by counting visible devices, so launchers that give each rank
 * its own CUDA_VISIBLE_DEVICES pass. Collective. Returns the lowest rank whose
 * GPU an earlier rank already has, or -1. */
static int shared_gpu(comm *base, int dev, char *bus, size_t bus_len) {
    char host[256] = "?";
    if (cudaDeviceGetPCIBusId(bus, (int)bus_len, dev) != cudaSuccess) snprintf(bus, bus_len, "device %d", dev);
    gethostname(host, sizeof host - 1);
    uint64_t *all = malloc(sizeof *all * (size_t)base->size);
    if (!all) abort();
    base->iface->allgather_u64(base->ctx, fnv(fnv(0xcbf29ce484222325ull, host), bus), all);
    int dup = -1;
    for (int r = 1; r < base->size && dup < 0; r++)
        for (int q = 0; q < r; q++)
            if (all[q] == all[r]) dup = r;
    free(all);
    return dup;
}

comm *comm_nccl_create(comm *base, void *cuda_stream, char *err, size_t errlen) {
    int dev = 0, failed = 0;
    char bus[64];
    CUDA_CHECK(cudaGetDevice(&dev));
    int dup = shared_gpu(base, dev, bus, sizeof bus);
    if (dup >= 0) {
        snprintf(err, errlen,
                 "rank %d shares its GPU with a lower rank: NCCL needs a GPU per rank (give each rank its own GPU, "
                 "or --comm mpi to share)",
                 dup);
        return NULL; /* every rank saw the same table: all return here */
    }
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (!failed && base->rank == 0) {
        ncclResult_t r = ncclGetUniqueId(&id);
        if (r != ncclSuccess) snprintf(err, errlen, "ncclGetUniqueId: %s", ncclGetErrorString(r)), failed = 1;
    }
    if (agree(base, failed, err, errlen)) return NULL;
    base->iface->bcast(base->ctx, &id, sizeof id);

    nccl_ctx *n = calloc(1, sizeof *n);
    comm *c = calloc(1, sizeof *c);
    if (!n || !c) abort();
    n->base = base;
    n->stream = (cudaStream_t)cuda_stream;
    n->rank = base->rank;
    n->device = dev;
    n->timeout_s = base->timeout_s > 0 ? base->timeout_s : 600.0;
    pthread_mutex_init(&n->mu, NULL);
    for (int i = 0; i < RING; i++) CUDA_CHECK(cudaEventCreateWithFlags(&n->ev[i], cudaEventDisableTiming));
    /* The watchdog covers the setup too: ncclCommInitRank blocks until every
     * rank has joined, so a rank that died since the broadcast would hang it. */
    n->initializing = 1;
    n->init_t0 = now_s();
    if (pthread_create(&n->watchdog, NULL, watchdog_main, n) != 0) {
        fprintf(stderr, "glmtp: rank %d: cannot start the NCCL watchdog thread\n", n->rank);
        abort();
    }
    n->watchdog_running = 1;
    ncclComm_t nc = NULL;
    ncclResult_t r = ncclCommInitRank(&nc, base->size, id, base->rank);
    pthread_mutex_lock(&n->mu);
    n->nc = nc;
    n->initializing = 0;
    pthread_mutex_unlock(&n->mu);
    if (r != ncclSuccess) {
        snprintf(err, errlen, "ncclCommInitRank (rank %d of %d, device %d): %s", base->rank, base->size, dev,
                 ncclGetErrorString(r));
        failed = 1;
    }
    if (agree(base, failed, err, errlen)) {
        n->abort_on_destroy = 1;
        c->ctx = n;
        c->iface = &nccl_iface;
        comm_nccl_destroy(c);
        return NULL;
    }
    c->rank = base->rank;
    c->size = base->size;
    c->local_rank = base->local_rank;
    c->local_size = base->local_size;
    c->timeout_s = n->timeout_s;
    c->iface = &nccl_iface;
    c->ctx = n;
    return c;
}

void comm_nccl_destroy(comm *c) {
    if (!c) return;
    nccl_ctx *n = c->ctx;
    if (n->nc && !n->abort_on_destroy) CUDA_CHECK(cudaStreamSynchronize(n->stream));
    if (n->watchdog_running) {
        pthread_mutex_lock(&n->mu);
        n->stop = 1;
        pthread_mutex_unlock(&n->mu);
        pthread_join(n->watchdog, NULL);
    }
    if (n->nc && n->abort_on_destroy)
        (void)ncclCommAbort(n->nc); /* destroy may wait for ranks that never joined */
    else if (n->nc)
        NCCL_CHECK(ncclCommDestroy(n->nc));
    for (int i = 0; i < RING; i++)
        if (n->ev[i]) CUDA_CHECK(cudaEventDestroy(n->ev[i]));
    pthread_mutex_destroy(&n->mu);
    free(n);
    free(c);
}
