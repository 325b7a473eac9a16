/* MPI communicator for CPU ranks. Collectives are non-blocking calls polled
 * against a deadline, so a dead or stuck peer ends the job with a message
 * instead of hanging it: MPI itself has no timeout on a blocking collective. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm.h"

typedef struct mpi_ctx {
    int rank;
    double timeout_s;
    unsigned long n_calls; /* collectives issued, for the timeout message */
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
                fprintf(stderr,
                        "glmtp: rank %d: %s (collective #%lu) timed out after %.0f s: another rank died or "
                        "hangs; aborting the job\n",
                        m->rank, what, m->n_calls, m->timeout_s);
                MPI_Abort(MPI_COMM_WORLD, 4);
            }
        }
    }
}

static void mpi_allreduce(void *ctx, void *buf, size_t n, kdtype dt) {
    mpi_ctx *m = ctx;
    if (dt != KDT_F32) {
        fprintf(stderr, "glmtp: rank %d: MPI all-reduce supports F32 buffers only, got %s\n", m->rank,
                kdtype_name(dt));
        MPI_Abort(MPI_COMM_WORLD, 3);
    }
    MPI_Request req;
    MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &req), m->rank);
    wait_req(m, &req, "all-reduce");
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
    (void)ctx;
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

static void mpi_finalize(void *ctx) {
    (void)ctx;
    MPI_Finalize();
}

static const comm_iface mpi_iface = {
    /* .name          = */ "mpi",
    /* .allreduce_sum = */ mpi_allreduce,
    /* .gather        = */ mpi_gather,
    /* .bcast         = */ mpi_bcast,
    /* .allgather_u64 = */ mpi_allgather_u64,
    /* .abort         = */ mpi_abort,
    /* .finalize      = */ mpi_finalize,
};

comm *comm_create(int *argc, char ***argv, double timeout_s, char *err, size_t errlen) {
    if (MPI_Init(argc, argv) != MPI_SUCCESS) {
        snprintf(err, errlen, "MPI_Init failed");
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
    m->rank = c->rank;
    m->timeout_s = timeout_s > 0 ? timeout_s : 600.0;
    c->iface = &mpi_iface;
    c->ctx = m;
    return c;
}

void comm_destroy(comm *c) {
    if (!c) return;
    c->iface->finalize(c->ctx);
    free(c->ctx);
    free(c);
}
