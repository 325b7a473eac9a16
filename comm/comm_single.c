/* The one-rank communicator: used when glmtp is built without MPI. Collectives
 * are copies or nothing. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm.h"

typedef struct single_ctx {
    pthread_t owner; /* the thread that made the comm (abort's contract) */
} single_ctx;

static void single_allreduce(void *ctx, void *buf, size_t n, kdtype dt) { (void)ctx, (void)buf, (void)n, (void)dt; }

static void single_gather(void *ctx, const void *send, void *recv, const size_t *bytes) {
    (void)ctx;
    if (recv != send) memmove(recv, send, bytes[0]);
}

static void single_bcast(void *ctx, void *buf, size_t bytes) { (void)ctx, (void)buf, (void)bytes; }

static void single_allgather_u64(void *ctx, uint64_t v, uint64_t *out) {
    (void)ctx;
    out[0] = v;
}

static void single_abort(void *ctx, int code) {
    single_ctx *s = ctx;
    fflush(stdout);
    fflush(stderr);
    if (!pthread_equal(pthread_self(), s->owner)) _exit(code);
    exit(code);
}

static void single_finalize(void *ctx) { (void)ctx; }

static int single_capturable(void *ctx) {
    (void)ctx;
    return 1; /* one rank: nothing to reduce */
}

static void single_watch_queued(void *ctx) { (void)ctx; }

static const comm_iface single_iface = {
    /* .name          = */ "single",
    /* .allreduce_sum = */ single_allreduce,
    /* .gather        = */ single_gather,
    /* .bcast         = */ single_bcast,
    /* .allgather_u64 = */ single_allgather_u64,
    /* .abort         = */ single_abort,
    /* .finalize      = */ single_finalize,
    /* .allreduce_capturable = */ single_capturable,
    /* .watch_queued  = */ single_watch_queued,
};

comm *comm_create(int *argc, char ***argv, double timeout_s, char *err, size_t errlen) {
    (void)argc, (void)argv;
    comm *c = calloc(1, sizeof *c);
    single_ctx *s = calloc(1, sizeof *s);
    if (!c || !s) {
        snprintf(err, errlen, "out of memory");
        free(c);
        free(s);
        return NULL;
    }
    s->owner = pthread_self();
    c->ctx = s;
    c->rank = 0;
    c->size = 1;
    c->local_rank = 0;
    c->local_size = 1;
    c->timeout_s = timeout_s > 0 ? timeout_s : 600.0;
    c->iface = &single_iface;
    return c;
}

/* One rank: all-reduce touches no buffer, so there is nothing to stage. */
void comm_set_device_copy(comm *c, comm_copy_fn to_host, comm_copy_fn to_device, void *ctx) {
    (void)c, (void)to_host, (void)to_device, (void)ctx;
}

void comm_destroy(comm *c) {
    if (!c) return;
    c->iface->finalize(c->ctx);
    free(c->ctx);
    free(c);
}
