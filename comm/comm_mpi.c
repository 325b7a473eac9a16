/* MPI communicator for CPU ranks (and GPU ranks through host staging, see
 * comm_set_device_copy). Collectives are non-blocking calls polled against a
 * deadline, so a dead or stuck peer ends the job with a message instead of
 * hanging it: MPI itself has no timeout on a blocking collective. */
#include <mpi.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "comm.h"

typedef struct mpi_ctx {
    pthread_t owner; /* the thread that called MPI_Init: the only one in MPI */
    int rank, size;
    double timeout_s;
    unsigned long n_calls; /* collectives issued, for the timeout message */
    /* Device staging for all-reduce (comm_set_device_copy); NULL: host buffers. */
    comm_copy_fn to_host, to_device;
    void *dev_ctx;
    void *stage;   /* host copy of the buffer as stored */
    void *stage32; /* bf16 widened to fp32 for the sum */
    size_t stage_bytes, stage32_bytes;
} mpi_ctx;

static void mpi_check(int rc, const char *call, int rank, const char *file, int line) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    fprintf(stderr, "glmtp: rank %d: MPI error %s in %s at %s:%d\n", rank, msg, call, file, line);
    MPI_Abort(MPI_COMM_WORLD, 3);
}
#define MPI_CHECK(x, rank) mpi_check((x), #x, (rank), __FILE__, __LINE__)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Spins briefly (decode steps are short), then sleeps between polls so that
 * oversubscribed ranks leave the cores to the ranks still computing. */
static void wait_req(mpi_ctx *m, MPI_Request *req, const char *what) {
    double t0 = now_s();
    int done = 0;
    m->n_calls++;
    for (long spins = 0;; spins++) {
        MPI_CHECK(MPI_Test(req, &done, MPI_STATUS_IGNORE), m->rank);
        if (done) return;
        if (spins > 2000) {
            struct timespec ts = {0, 50000};
            nanosleep(&ts, NULL);
            if (now_s() - t0 > m->timeout_s) {
                /* MPI does not say which peer is missing; with two ranks it is the other one */
                char who[48] = "another rank";
                if (m->size == 2) snprintf(who, sizeof who, "rank %d", 1 - m->rank);
                fprintf(stderr,
                        "glmtp: rank %d: %s (collective #%lu) timed out after %.3g s: %s died or "
                        "hangs (stopped?); aborting the job\n",
                        m->rank, what, m->n_calls, m->timeout_s, who);
                MPI_Abort(MPI_COMM_WORLD, 4);
            }
        }
    }
}

static void *grow(void **p, size_t *cap, size_t bytes) {
    if (bytes > *cap) {
        free(*p);
        *p = malloc(bytes);
        if (!*p) {
            fprintf(stderr, "glmtp: out of host memory for an all-reduce staging buffer of %zu bytes\n", bytes);
            MPI_Abort(MPI_COMM_WORLD, 3);
        }
        *cap = bytes;
    }
    return *p;
}

static void sum_f32(mpi_ctx *m, float *buf, size_t n) {
    MPI_Request req;
    MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &req), m->rank);
    wait_req(m, &req, "all-reduce");
}

/* F32 host buffers are reduced in place. Otherwise the buffer is brought to the
 * host (device buffers through to_host), bf16 is widened to fp32, summed with
 * MPI_FLOAT, rounded back once, and returned (to_device). */
static void mpi_allreduce(void *ctx, void *buf, size_t n, kdtype dt) {
    mpi_ctx *m = ctx;
    if (dt != KDT_F32 && dt != KDT_BF16) {
        fprintf(stderr, "glmtp: rank %d: MPI all-reduce supports F32 and BF16 buffers, got %s\n", m->rank,
                kdtype_name(dt));
        MPI_Abort(MPI_COMM_WORLD, 3);
    }
    if (m->size == 1 || n == 0) return;
    if (dt == KDT_F32 && !m->to_host) {
        sum_f32(m, buf, n);
        return;
    }
    size_t bytes = n * kdtype_size(dt);
    void *host = buf;
    if (m->to_host) {
        host = grow(&m->stage, &m->stage_bytes, bytes);
        m->to_host(m->dev_ctx, host, buf, bytes);
    }
    if (dt == KDT_F32) {
        sum_f32(m, host, n);
    } else {
        float *f = grow(&m->stage32, &m->stage32_bytes, n * sizeof(float));
        const uint16_t *h = host;
        for (size_t i = 0; i < n; i++) f[i] = bf16_to_f32(h[i]);
        sum_f32(m, f, n);
        uint16_t *o = host;
        for (size_t i = 0; i < n; i++) o[i] = f32_to_bf16(f[i]);
    }
    if (m->to_device) m->to_device(m->dev_ctx, buf, host, bytes);
}

static void mpi_gather(void *ctx, const void *send, void *recv, const size_t *bytes) {
    mpi_ctx *m = ctx;
    int size;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int *counts = NULL, *displs = NULL;
    if (m->rank == 0) {
        counts = malloc(sizeof(int) * size);
        displs = malloc(sizeof(int) * size);
        if (!counts || !displs) abort();
        size_t off = 0;
        for (int r = 0; r < size; r++) {
            counts[r] = (int)bytes[r];
            displs[r] = (int)off;
            off += bytes[r];
        }
    }
    MPI_Request req;
    MPI_CHECK(MPI_Igatherv(send, (int)bytes[m->rank], MPI_BYTE, recv, counts, displs, MPI_BYTE, 0,
                           MPI_COMM_WORLD, &req),
              m->rank);
    wait_req(m, &req, "gather");
    free(counts);
    free(displs);
}

static void mpi_bcast(void *ctx, void *buf, size_t bytes) {
    mpi_ctx *m = ctx;
    MPI_Request req;
    MPI_CHECK(MPI_Ibcast(buf, (int)bytes, MPI_BYTE, 0, MPI_COMM_WORLD, &req), m->rank);
    wait_req(m, &req, "broadcast");
}

static void mpi_allgather_u64(void *ctx, uint64_t v, uint64_t *out) {
    mpi_ctx *m = ctx;
    MPI_Request req;
    MPI_CHECK(MPI_Iallgather(&v, 1, MPI_UINT64_T, out, 1, MPI_UINT64_T, MPI_COMM_WORLD, &req), m->rank);
    wait_req(m, &req, "all-gather");
}

static void mpi_abort(void *ctx, int code) {
    mpi_ctx *m = ctx;
    fflush(stdout);
    fflush(stderr);
    if (!pthread_equal(pthread_self(), m->owner)) _exit(code); /* comm.h: the launcher ends the rest */
    MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

static void mpi_finalize(void *ctx) {
    mpi_ctx *m = ctx;
    free(m->stage);
    free(m->stage32);
    m->stage = m->stage32 = NULL;
    MPI_Finalize();
}

/* One rank reduces nothing; more stage through the host. */
static int mpi_capturable(void *ctx) { return ((mpi_ctx *)ctx)->size == 1; }

static void mpi_watch_queued(void *ctx) { (void)ctx; } /* graphs only with one rank: nothing to wait for */

static const comm_iface mpi_iface = {
    /* .name          = */ "mpi",
    /* .allreduce_sum = */ mpi_allreduce,
    /* .gather        = */ mpi_gather,
    /* .bcast         = */ mpi_bcast,
    /* .allgather_u64 = */ mpi_allgather_u64,
    /* .abort         = */ mpi_abort,
    /* .finalize      = */ mpi_finalize,
    /* .allreduce_capturable = */ mpi_capturable,
    /* .watch_queued  = */ mpi_watch_queued,
};

comm *comm_create(int *argc, char ***argv, double timeout_s, char *err, size_t errlen) {
    /* FUNNELED: other threads exist (the NCCL watchdog, serve's I/O) but only
     * this one calls MPI; abort keeps to that from any thread. */
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        snprintf(err, errlen, "MPI_Init_thread failed");
        return NULL;
    }
    comm *c = calloc(1, sizeof *c);
    mpi_ctx *m = calloc(1, sizeof *m);
    if (!c || !m) {
        snprintf(err, errlen, "out of memory");
        free(c);
        free(m);
        return NULL;
    }
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &c->rank), -1);
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &c->size), c->rank);
    MPI_Comm node;
    MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node), c->rank);
    MPI_CHECK(MPI_Comm_rank(node, &c->local_rank), c->rank);
    MPI_CHECK(MPI_Comm_size(node, &c->local_size), c->rank);
    MPI_Comm_free(&node);
    m->owner = pthread_self();
    m->rank = c->rank;
    m->size = c->size;
    m->timeout_s = timeout_s > 0 ? timeout_s : 600.0;
    c->timeout_s = m->timeout_s;
    c->iface = &mpi_iface;
    c->ctx = m;
    return c;
}

void comm_set_device_copy(comm *c, comm_copy_fn to_host, comm_copy_fn to_device, void *ctx) {
    if (c->iface != &mpi_iface) return; /* another communicator: it moves device buffers itself */
    mpi_ctx *m = c->ctx;
    m->to_host = to_host;
    m->to_device = to_device;
    m->dev_ctx = ctx;
}

void comm_destroy(comm *c) {
    if (!c) return;
    c->iface->finalize(c->ctx);
    free(c->ctx);
    free(c);
}
