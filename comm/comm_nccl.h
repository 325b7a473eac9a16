/* comm_nccl.h: the NCCL communicator of GPU ranks (CUDA builds with NCCL).
 *
 * It implements comm_iface on top of a comm from comm_create (MPI, or single):
 *   allreduce_sum - ncclAllReduce (F32, BF16, F16 sums) in place on device
 *                   buffers, queued on the CUDA backend's stream, so the next
 *                   kernel waits for it on the GPU and the host never blocks;
 *   gather, bcast, allgather_u64 - delegated to the base comm (host buffers);
 *   abort - ncclCommAbort, then the base comm's abort (the whole job).
 * A watchdog thread polls each queued all-reduce (an event recorded after it)
 * and ncclCommGetAsyncError; an NCCL error, or an all-reduce (or the setup)
 * unfinished after the base comm's timeout_s, aborts the communicator and the
 * job with a message naming the rank, so a dead peer never hangs the others.
 *
 * One GPU per rank: the device current when it is created (the CUDA backend
 * made it current: node-local rank modulo visible devices). Two ranks on one
 * GPU (same host and PCI bus id) are refused with a message; such ranks use
 * the MPI comm with device staging instead (--comm mpi, comm_set_device_copy).
 * comm/ includes kernels/cuda/cuda_check.h here for the one check generator
 * (NCCL_CHECK); it includes nothing else of kernels/. */
#ifndef GLMTP_COMM_NCCL_H
#define GLMTP_COMM_NCCL_H

#include <stddef.h>

#include "comm.h"

/* Collective over base: rank 0 makes the ncclUniqueId and broadcasts it through
 * base. stream is the backend's cudaStream_t. Returns NULL with the reason in
 * err (the same decision on every rank). base is kept, not owned. */
comm *comm_nccl_create(comm *base, void *cuda_stream, char *err, size_t errlen);
/* Waits for the stream, stops the watchdog, destroys the NCCL communicator;
 * accepts NULL. Leaves the base comm alone (never pass this comm to comm_destroy). */
void comm_nccl_destroy(comm *c);

#endif
