/* comm.h's abort called from a second thread (the NCCL watchdog's case): the
 * job must end with the code, at once, without this process's exit handlers
 * running under a main thread that is still busy. The last rank's second
 * thread aborts while its main thread waits in a collective that rank 0 joins
 * only 30 s later (with one rank: while it sleeps). comm_abort.py checks the
 * exit status, the time taken and that no exit handler ran.
 * usage: test_comm_abort (under mpirun for an MPI build) */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "../comm/comm.h"

#define LATE_S 30 /* how long rank 0 keeps the others waiting */

static void *aborter(void *arg) {
    comm *c = arg;
    struct timespec ts = {0, 300 * 1000 * 1000};
    nanosleep(&ts, NULL);
    fprintf(stderr, "rank %d: aborting from a second thread\n", c->rank);
    c->iface->abort(c->ctx, 7);
    return NULL;
}

static void exit_handler(void) { fprintf(stderr, "exit handler ran\n"); }

int main(int argc, char **argv) {
    char err[256];
    comm *c = comm_create(&argc, &argv, 2.0 * LATE_S, err, sizeof err);
    if (!c) {
        fprintf(stderr, "comm_create: %s\n", err);
        return 2;
    }
    atexit(exit_handler);
    pthread_t t;
    if (c->rank == c->size - 1 && pthread_create(&t, NULL, aborter, c) != 0) {
        fprintf(stderr, "pthread_create failed\n");
        return 2;
    }
    if (c->rank == 0) {
        struct timespec ts = {LATE_S, 0};
        nanosleep(&ts, NULL);
    }
    uint64_t *all = malloc((size_t)c->size * sizeof *all);
    if (!all) return 2;
    c->iface->allgather_u64(c->ctx, (uint64_t)c->rank, all);
    fprintf(stderr, "rank %d: abort did not end the job\n", c->rank);
    free(all);
    comm_destroy(c);
    return 0;
}
