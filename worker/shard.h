/* shard.h: which part of each weight a rank holds (DESIGN.md sharding table).
 * Query heads split evenly; KV groups split when tp <= n_kv, else each rank
 * holds one replicated group rank / (tp / n_kv); FFN width and vocabulary split
 * into contiguous ranges, uneven when tp does not divide them. */
#ifndef GLMTP_SHARD_H
#define GLMTP_SHARD_H

#include "config.h"

typedef struct glm_shard {
    int tp, rank;
    int q0, nq;   /* global first query head, local count */
    int kv0, nkv; /* global first KV group, local count */
    int f0, f1;   /* FFN columns [f0, f1) */
    int v0, v1;   /* vocabulary rows [v0, v1) */
} glm_shard;

/* Requires config_check_tp(cfg, tp) == 0. */
void shard_plan(glm_shard *s /* OUT */, const glm_config *cfg, int tp, int rank);

/* [lo, hi) of an n-wide range split into tp near-equal parts. */
void shard_range(int n, int tp, int rank, int *lo, int *hi);

#endif
