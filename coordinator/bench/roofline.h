/* roofline.h: the analytic performance model of `glmtp bench --model-only`.
 *
 * Predicts, for a GLM-4 config on tp GPUs of a given kind joined by a given
 * link, the time of a decode step and of a prefill from first principles:
 *   decode  = max(bytes read / HBM bandwidth, FLOPs / peak) + all-reduce time
 *   prefill = max(FLOPs / peak, bytes / HBM bandwidth) + all-reduce time
 *   all-reduce (ring) = latency + 2 (tp-1)/tp * bytes / link bandwidth, 2 per layer
 * Per-rank weight and KV bytes come from the real sharding plan (worker/shard.c),
 * bf16 everywhere. The hardware table holds vendor datasheet peaks. */
#ifndef GLMTP_ROOFLINE_H
#define GLMTP_ROOFLINE_H

#include "../../worker/config.h"

typedef struct hw_gpu {
    const char *name;
    double flops;     /* dense bf16 FLOP/s */
    double hbm;       /* bytes/s */
    double mem_bytes; /* HBM capacity */
} hw_gpu;

typedef struct hw_link {
    const char *name;
    double bw;      /* bytes/s per direction per GPU */
    double latency; /* s per all-reduce of a small message */
} hw_link;

const hw_gpu *roofline_gpu(const char *name);   /* NULL if unknown */
const hw_link *roofline_link(const char *name); /* NULL if unknown */

typedef struct roofline_model {
    double weight_bytes;      /* read per decode step, per rank (embedding rows excluded) */
    double weight_bytes_held; /* resident per rank, embedding included */
    double kv_bytes_token;    /* KV cache per token per rank */
    double flops_token;       /* linear-layer FLOPs per token per rank */
} roofline_model;

/* Sizes for rank 0 of tp (the largest shard when splits are uneven). */
void roofline_sizes(const glm_config *c, int tp, roofline_model *m /* OUT */);

typedef struct roofline_time {
    double total, compute, memory, comm; /* seconds */
} roofline_time;

/* One decode step: batch sequences, each with `context` tokens cached. */
roofline_time roofline_decode(const glm_config *c, int tp, const hw_gpu *g, const hw_link *l, int batch,
                              long context);
/* Prefill of `tokens` tokens of one sequence. */
roofline_time roofline_prefill(const glm_config *c, int tp, const hw_gpu *g, const hw_link *l, long tokens);
/* Tokens of KV cache that fit per rank when `util` of HBM is usable. */
double roofline_max_tokens(const glm_config *c, int tp, const hw_gpu *g, double util);

#endif
