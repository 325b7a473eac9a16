/* cuda_check.h: the one generator of CUDA_CHECK, CUBLAS_CHECK and NCCL_CHECK.
 *
 * On failure each prints the library's message, the statement as written, the
 * rank, the device, the function and file:line, then aborts: a device error is
 * a broken invariant, not a request error, and under mpirun one rank's abort
 * ends the job. The rank comes from the launcher's environment because a
 * kernel launch deep inside a backend has no comm to ask.
 *
 * Plain C and CUDA alike (comm/comm_nccl.c uses it too). CUBLAS_CHECK exists
 * when cublasLt.h was included first, NCCL_CHECK when nccl.h was. */
#ifndef GLMTP_CUDA_CHECK_H
#define GLMTP_CUDA_CHECK_H

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

/* "0" outside a launcher: a single-rank run. */
static inline const char *glmtp_check_rank(void) {
    static const char *vars[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *r = getenv(vars[i]);
        if (r && *r) return r;
    }
    return "0";
}

static inline void glmtp_check_fail(const char *lib, const char *msg, const char *call, const char *func,
                                    const char *file, int line) {
    int dev = -1;
    (void)cudaGetDevice(&dev); /* still answers after a sticky kernel error */
    fprintf(stderr, "glmtp: rank %s: device %d: %s error: %s\n  in: %s\n  at: %s (%s:%d)\n", glmtp_check_rank(),
            dev, lib, msg ? msg : "(no message)", call, func, file, line);
    fflush(stderr);
    abort();
}

#define GLMTP_CHECK_GEN_(lib, type, ok, strfn, call)                                                   \
    do {                                                                                               \
        type glmtp_status_ = (call);                                                                   \
        if (glmtp_status_ != (ok)) glmtp_check_fail(lib, strfn(glmtp_status_), #call, __func__, __FILE__, __LINE__); \
    } while (0)

#define CUDA_CHECK(call) GLMTP_CHECK_GEN_("CUDA", cudaError_t, cudaSuccess, cudaGetErrorString, call)

#ifdef CUBLAS_VER_MAJOR
#define CUBLAS_CHECK(call) GLMTP_CHECK_GEN_("cuBLAS", cublasStatus_t, CUBLAS_STATUS_SUCCESS, cublasLtGetStatusString, call)
#endif

#ifdef NCCL_MAJOR
#define NCCL_CHECK(call) GLMTP_CHECK_GEN_("NCCL", ncclResult_t, ncclSuccess, ncclGetErrorString, call)
#endif

/* After every kernel launch: launch-configuration errors surface here, at the
 * launch that caused them, instead of at the next synchronising call. */
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

#endif
