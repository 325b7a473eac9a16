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
    double weight_bytes_held; /* resident per rank, embedding and vision tower included */
    double vision_bytes;      /* GLM-4V's tower and adapter per rank (vision_device_bytes; 0 without one) */
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

/* ---- capacity planning: which GPUs hold one sequence of N tokens ---- */

/* The GPU table (for listing every kind); *n gets its length. */
const hw_gpu *roofline_gpus(int *n /* OUT */);

/* KV bytes per element: "bf16" 2; "fp8" 1 plus one fp32 scale per head
 * vector of head_dim elements (4 / head_dim). -1 for another name. */
double roofline_kv_elem_bytes(const char *dtype, int head_dim);

/* What the engine reserves beside weights and KV (engine.c's figures): the
 * activations of an 8192-token step in bf16 plus logits rows, and 512 MiB of
 * library workspaces; the pool gets ROOFLINE_MEM_UTIL of the memory. */
#define ROOFLINE_ACT_TOKENS 8192
#define ROOFLINE_SLACK_BYTES (512.0 * 1048576)
#define ROOFLINE_MEM_UTIL 0.90
#define ROOFLINE_MAX_TP 64
#define ROOFLINE_PLAN_TP_ROWS 8 /* --plan's per-tp table: tp 1, 2, 4, 8 (those the heads allow) */

double roofline_act_bytes(const glm_config *c, int tp, int tokens);

typedef struct roofline_plan {
    int tp; /* the fewest ranks (tp the heads allow) that hold it; 0: none up to ROOFLINE_MAX_TP */
    /* per rank at that tp */
    double weight_bytes, kv_bytes, act_bytes, need_bytes, room_bytes; /* need = the three + slack; room = util x HBM */
    double vision_weight_bytes; /* part of weight_bytes: GLM-4V's tower and adapter */
    double vision_act_bytes;    /* part of act_bytes: the tower's scratch for an image (vision_act_bytes, bf16) */
    double kv_token_bytes;
    double prefill_s; /* the whole sequence prefilled (roofline_prefill: attention FLOPs grow as context^2) */
    double decode_s;  /* one decode step at that context: (weights + context x KV) / HBM, or FLOPs / peak */
} roofline_plan;

/* The memory figures of roofline_plan at a given tp (config_check_tp passed):
 * weights (language + vision), KV of `context` tokens at kv_elem bytes per
 * element, the step's activations and the vision scratch, need = their sum +
 * ROOFLINE_SLACK_BYTES. Times and room are left 0. */
void roofline_need(const glm_config *c, int tp, long context, double kv_elem, roofline_plan *p /* OUT */);


/* The fewest GPUs of kind g (joined by l) whose memory holds the weights, the
 * KV cache of one sequence of `context` tokens at kv_elem bytes per element,
 * and the engine's reserve, each within util of HBM. Returns p->tp. */
int roofline_plan_fit(const glm_config *c, const hw_gpu *g, const hw_link *l, long context, double kv_elem,
                      double util, roofline_plan *p /* OUT */);

#endif
