/* comm.h: ranks and collectives. One interface, several implementations:
 *   comm_mpi.c    - MPI (CPU ranks, and later GPU ranks sharing one device)
 *   comm_single.c - one rank, no MPI library (build with -DGLMTP_MPI=OFF)
 *   (NCCL comes with the CUDA backend and implements the same table.)
 *
 * Buffers passed to collectives are backend memory; the MPI and single
 * implementations require host-addressable memory (the CPU backend's).
 * Every collective has a timeout: a rank that waits longer than timeout_s for its
 * peers prints what it was waiting in and aborts the whole job (no hang). */
#ifndef GLMTP_COMM_H
#define GLMTP_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "../kernels/dtype.h"

typedef struct comm_iface {
    const char *name;
    /* In place sum over all ranks of n elements of type dt. */
    void (*allreduce_sum)(void *ctx, void *buf, size_t n, kdtype dt);
    /* Rank r sends `bytes[r]` bytes from `send`; rank 0 receives them one after
     * another into `recv` (rank order). recv and bytes are read on rank 0 only. */
    void (*gather)(void *ctx, const void *send, void *recv, const size_t *bytes);
    /* Rank 0's `bytes` bytes at buf are copied to every rank's buf. */
    void (*bcast)(void *ctx, void *buf, size_t bytes);
    /* out[r] = each rank's v (all ranks get all values). out has size entries. */
    void (*allgather_u64)(void *ctx, uint64_t v, uint64_t *out);
    /* Ends every rank of the job with exit status code. Does not return. */
    void (*abort)(void *ctx, int code);
    void (*finalize)(void *ctx);
} comm_iface;

typedef struct comm {
    int rank, size;             /* in the job */
    int local_rank, local_size; /* on this node (GPU choice) */
    const comm_iface *iface;
    void *ctx;
} comm;

/* Starts the job's communicator (MPI_Init when built with MPI). Returns NULL with
 * a message in err on failure. timeout_s <= 0 means the default (600 s). */
comm *comm_create(int *argc, char ***argv, double timeout_s, char *err, size_t errlen);
/* Finalizes and frees; accepts NULL. */
void comm_destroy(comm *c);

/* Agreement on failure: every rank passes whether it failed; returns the lowest
 * failing rank, or -1 when all succeeded. A collective: call on every rank. */
int comm_first_failed(comm *c, int failed);
/* Checks that every rank holds the same value (a hash of its arguments or
 * config); returns the lowest rank that differs from rank 0, or -1. */
int comm_first_mismatch(comm *c, uint64_t value);

/* printf on rank 0 only. */
void comm_printf0(const comm *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
