/* comm.h: ranks and collectives. One interface, several implementations:
 *   comm_mpi.c    - MPI (CPU ranks, and GPU ranks sharing one device)
 *   comm_single.c - one rank, no MPI library (build with -DGLMTP_MPI=OFF)
 *   comm_nccl.c   - NCCL all-reduce on GPU ranks, the rest through the MPI
 *                   comm it was made from (comm_nccl.h; CUDA builds)
 *
 * All-reduce buffers are backend memory. The MPI and single implementations
 * need host-addressable memory unless comm_set_device_copy says how to stage
 * device buffers through the host. gather, bcast and allgather always take
 * host memory.
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
    /* Ends every rank of the job with exit status code. Does not return. Any
     * thread may call it: on a thread other than the one that made the comm it
     * ends this rank at once (_exit, after flushing stdio) and the launcher
     * ends the others (mpirun does when a rank exits non-zero; srun with
     * --kill-on-bad-exit), since MPI is not to be entered from a second thread
     * and exit() would tear the process down under a main thread still using
     * it (a CUDA stream sync, an MPI call). */
    void (*abort)(void *ctx, int code);
    void (*finalize)(void *ctx);
    /* 1 when allreduce_sum only queues device work on the backend's stream (no
     * host copies, no waits), so that a backend graph may record it. */
    int (*allreduce_capturable)(void *ctx);
    /* After queueing a recorded graph (whose all-reduces were captured, not
     * issued): the work queued so far must finish within the collective
     * timeout like an all-reduce, so a peer that dies mid-graph still ends the
     * job. A no-op where collectives are host calls with their own timeout. */
    void (*watch_queued)(void *ctx);
} comm_iface;

typedef struct comm {
    int rank, size;             /* in the job */
    int local_rank, local_size; /* on this node (GPU choice) */
    double timeout_s;           /* collective timeout in force */
    const comm_iface *iface;
    void *ctx;
} comm;

/* Starts the job's communicator (MPI_Init when built with MPI). Returns NULL with
 * a message in err on failure. timeout_s <= 0 means the default (600 s). */
comm *comm_create(int *argc, char ***argv, double timeout_s, char *err, size_t errlen);
/* Finalizes and frees; accepts NULL. */
void comm_destroy(comm *c);

/* Copies between backend (device) memory and host memory, synchronously:
 * the kernels_iface to_host / to_device signature. */
typedef void (*comm_copy_fn)(void *ctx, void *dst, const void *src, size_t bytes);
/* Makes allreduce_sum of a comm from comm_create accept device buffers: each
 * is copied to the host, reduced there (bf16 summed in fp32) and copied back.
 * NULL functions restore host buffers. The comm keeps ctx (not owned); reset
 * before the backend behind it goes away. */
void comm_set_device_copy(comm *c, comm_copy_fn to_host, comm_copy_fn to_device, void *ctx);

/* Agreement on failure: every rank passes whether it failed; returns the lowest
 * failing rank, or -1 when all succeeded. A collective: call on every rank. */
int comm_first_failed(comm *c, int failed);
/* Checks that every rank holds the same value (a hash of its arguments or
 * config); returns the lowest rank that differs from rank 0, or -1. */
int comm_first_mismatch(comm *c, uint64_t value);

/* printf on rank 0 only. */
void comm_printf0(const comm *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
