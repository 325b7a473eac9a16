/* limits.h: this machine's physical limits, measured in the same run as
 * the figures they are compared with (STYLE.md: a limit beside every figure). */
#ifndef GLMTP_BENCH_LIMITS_H
#define GLMTP_BENCH_LIMITS_H

#include <stddef.h>
#include <stdint.h>

#include "../engine/engine.h"

/* Host memory: STREAM-style copy (bytes read + written) and read, GB/s, with
 * all of this process's OpenMP threads, best of reps over `bytes` buffers. */
void limits_host_bandwidth(size_t bytes, int reps, double *copy_gbs, double *read_gbs);

/* Device memory through the backend's add kernel (x += y: 2 reads + 1 write), GB/s. */
double limits_backend_bandwidth(const engine *e, size_t bytes, int reps);

/* n activations uniform in [-1, 1] (seeded) in new backend memory: kernels
 * are timed on data, not zeros, which can run faster. Free with iface->free. */
void *limits_random_acts(const engine *e, size_t n, uint64_t seed);

/* A plain BLAS GEMM (fp32 cblas_sgemm, or the backend's matmul when no BLAS is
 * built in) of every linear-layer shape of one GLM block at T tokens on this
 * rank's shard: seconds per layer and achieved GFLOP/s. *what names the GEMM used. */
double limits_gemm_layer(const engine *e, int T, double *gflops, const char **what);

/* The same for one shape: x [T, K] times a random weight [N, K]^T, best of 3;
 * seconds and GFLOP/s, *what names the GEMM. */
double limits_gemm_shape(const engine *e, int T, int N, int K, double *gflops, const char **what);
/* The CPU backend's library GEMM in bf16 (kernels/cpu/gemm_lib.c: bf16
 * activations and weights, fp32 output) of the same four shapes at T tokens,
 * on random bf16 data: seconds per layer and GFLOP/s, best of 3 after a
 * warm-up; *what names the library and the implementation it picked. 0 with no
 * such library (not a CPU backend, or a build without one): nothing is set. */
double limits_gemm_bf16_layer(const engine *e, int T, double *gflops, const char **what, char *what_buf,
                              size_t what_len);

#endif
