/* lm_head.h: what leaves the devices after the vocab-parallel LM head (internal
 * to worker/; forward.c calls it after the LM-head GEMM).
 *
 * Each rank holds logits [n, vr] fp32 in backend memory for its slice of the
 * vocabulary (ids [v0, v1) of m->shard). All three are collectives: every
 * rank calls them with the same n and step; results land on rank 0. */
#ifndef GLMTP_LM_HEAD_H
#define GLMTP_LM_HEAD_H

#include "model.h"
#include "step.h"

/* Host staging the logits path reuses across steps (owned by the caller, sized
 * for the largest n): slice [n, vr] on every rank, gathered [n, vocab] on rank 0. */
typedef struct lm_host {
    float *slice, *gathered;
} lm_host;

/* out (rank 0, host [n, vocab]) = the n rows of logits, slices interleaved. */
void lm_gather(const glm_model *m, const float *logits, int n, lm_host *h, float *out);

/* ids (rank 0, host [n]) = each row's argmax over ids [0, vocab_limit): each
 * rank's argmax and its value, kept by rank 0 where largest (ties to the lower
 * id). */
void lm_argmax(const glm_model *m, const float *logits, int n, int vocab_limit, int *ids);

/* ids (rank 0) = each logit row of step s sampled by p[row] (rank 0's), over
 * ids [0, s->vocab_limit): each rank's first s->cands candidates at
 * s->temps[row] and their normaliser go to rank 0, which merges them and picks
 * (kernels/sampling.h); rows whose pick needs more of the order are gathered
 * whole (those rows only), which rank 0 announces to every rank. */
void lm_sample(const glm_model *m, const float *logits, const glm_step *s, const ksample_params *p, lm_host *h,
               int *ids);

#endif
