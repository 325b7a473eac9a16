#include "shard.h"

void shard_range(int n, int tp, int rank, int *lo, int *hi) {
    *lo = (int)((long long)n * rank / tp);
    *hi = (int)((long long)n * (rank + 1) / tp);
}

void shard_plan(glm_shard *s, const glm_config *c, int tp, int rank) {
    s->tp = tp;
    s->rank = rank;
    s->nq = c->n_heads / tp;
    s->q0 = rank * s->nq;
    if (tp <= c->n_kv) {
        s->nkv = c->n_kv / tp;
        s->kv0 = rank * s->nkv;
    } else { /* replicated: consecutive ranks share a group, matching GQA grouping */
        s->nkv = 1;
        s->kv0 = rank / (tp / c->n_kv);
    }
    shard_range(c->ffn, tp, rank, &s->f0, &s->f1);
    shard_range(c->vocab, tp, rank, &s->v0, &s->v1);
}
