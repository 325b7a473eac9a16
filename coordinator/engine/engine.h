/* engine.h: what every rank sets up before running steps: backend, this rank's
 * shard of the model, its KV cache, the forward pass; and on rank 0 the KV block
 * pool and its prefix cache. Load errors are agreed on by all ranks so that
 * every rank exits with the message instead of some hanging in the first
 * collective. */
#ifndef GLMTP_ENGINE_H
#define GLMTP_ENGINE_H

#include "../../comm/comm.h"
#include "../../kernels/kernels.h"
#include "../../worker/forward.h"
#include "../../worker/kvcache.h"
#include "../../worker/model.h"
#include "prefix_cache.h"

typedef struct engine {
    comm *comm;
    comm *nccl; /* GPU ranks' NCCL communicator (owned), NULL otherwise */
    kbackend kb;
    glm_model *m;
    kv_cache *kv;
    glm_forward *fw;
    kv_blocks blocks; /* rank 0 only */
    pcache *pc;       /* rank 0 only: the scheduler's view of blocks (prefix cache, on by default) */
    struct kvstore *snap; /* rank 0 only: --kv-snapshot-dir's snapshots (kvstore.h; the front's), or NULL */
} engine;

#define ENGINE_GPU_MEM_UTIL 0.90    /* --gpu-memory-utilization default, as vLLM's */
#define ENGINE_KV_TOKENS_CPU 65536  /* kv_tokens 0 on a backend without device memory */

/* Collective. KV capacity: kv_tokens positions in blocks of block_size; 0 sizes
 * the pool from device memory: mem_util of the device's total, less what is in
 * use once the weights are loaded and room for the activations of a large
 * step and, for GLM-4V, the vision tower's scratch for an image
 * (vision_act_bytes; ENGINE_KV_TOKENS_CPU on the CPU). The smallest rank's
 * figure is used by all. Prints per rank the weight bytes (the language
 * model's and the vision tower's apart), the pool and the tokens it holds.
 * device: "cpu" (threads per rank, 0 = all cores) or "cuda" (GPU node-local
 * rank modulo visible GPUs). comm_kind: NULL (default: NCCL for cuda with more
 * than one rank), "nccl" or "mpi" (all-reduce through the host; lets ranks
 * share a GPU). kv_dtype: KV_DTYPE_ACT or KV_DTYPE_FP8 (kernels.h; the bytes
 * per token, so the tokens that fit, follow from it). Returns 0, or 1 after
 * every rank has printed why it stops. */
int engine_open(engine *e, comm *c, const char *dir, int kv_tokens, int block_size, int threads,
                const char *device, const char *comm_kind, double mem_util, int kv_dtype);
void engine_close(engine *e);

/* Rank 0 drives, the other ranks follow: rank 0 calls engine_step for each
 * step it plans (sent to every rank, then run) and engine_finish once at the
 * end; every other rank calls engine_follow, which runs steps until then.
 * logits / hidden as in forward_run (rank 0 host memory). */
void engine_step(engine *e, glm_step *s, float *logits, float *hidden);
/* Greedy rows only: ids[i] (rank 0) = argmax of logit row i over ids
 * [0, vocab_limit); the logits stay on the devices. */
void engine_step_argmax(engine *e, glm_step *s, int vocab_limit, int *ids);
/* ids[i] (rank 0) = logit row i sampled by p[i] over ids [0, vocab_limit)
 * (forward_run_sample; engine_step_argmax when every row is greedy): only
 * candidates leave the devices, unless a row's pick needs its whole row. */
void engine_step_sample(engine *e, glm_step *s, int vocab_limit, const ksample_params *p, int *ids);
void engine_finish(engine *e);
/* GLM-4V, rank 0 (collective through the followers): encodes pixels (host
 * [in_ch, image, image] fp32, normalised) into image slot `slot` on every
 * rank, for steps' image spans; engine_image_drop frees the slot. */
void engine_image(engine *e, int slot, const float *pixels);
void engine_image_drop(engine *e, int slot);
/* Rank 0, idle: keeps followers' collective timeout from firing. */
void engine_keepalive(engine *e);
void engine_follow(engine *e);

/* Collective check that all ranks were started with the same arguments. */
int engine_check_args(comm *c, int argc, char **argv);

/* Prints "glmtp: [rank r: ]msg" to stderr. */
void engine_error(const comm *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
