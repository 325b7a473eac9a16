/* forward.h: the GLM-4 forward pass, written once against kernels.h and comm.h.
 *
 * Runs one glm_step through all layers on this rank's shard (two all-reduces of
 * [T, H] per layer), then the vocab-parallel LM head on the rows the step asks
 * for, gathered to rank 0. Every rank calls forward_run with the same step. */
#ifndef GLMTP_FORWARD_H
#define GLMTP_FORWARD_H

#include "kvcache.h"
#include "model.h"
#include "step.h"

typedef struct glm_forward glm_forward;

/* Keeps m and kv (not owned); owns scratch that grows with the largest step. */
glm_forward *forward_create(glm_model *m, kv_cache *kv);
void forward_free(glm_forward *f); /* accepts NULL */

/* logits: rank 0 host memory [n_logits, vocab] fp32 (ignored elsewhere; may be
 * NULL on other ranks). hidden: NULL, or host [n_logits, H] fp32 on rank 0 that
 * receives the output of the final RMSNorm (before the LM head). */
void forward_run(glm_forward *f, const glm_step *s, float *logits, float *hidden);

/* The same for a step with head STEP_ARGMAX: ids (rank 0 host memory,
 * [n_logits]; may be NULL elsewhere) receives each logit row's argmax over ids
 * [0, vocab_limit); no logits leave the devices. */
void forward_run_argmax(glm_forward *f, const glm_step *s, int *ids);

/* The same for a step with head STEP_SAMPLE: ids (rank 0) receives each logit
 * row sampled by p[row] (rank 0's; NULL elsewhere) over ids [0, vocab_limit),
 * with s->temps[row] = p[row].temperature (1 for greedy rows). Each
 * non-greedy row's generator advances by one draw. What leaves the devices is
 * s->cands candidates per row and rank, unless a pick needs the whole row
 * (kernels/sampling.h). */
void forward_run_sample(glm_forward *f, const glm_step *s, const ksample_params *p, int *ids);

/* GLM-4V (m->vision set): encodes an image into slot (>= 0; any earlier one
 * there is replaced), for the steps' image spans to read. pixels: host [in_ch,
 * image, image] fp32, the same on every rank. Collective. */
void forward_image(glm_forward *f, int slot, const float *pixels);
/* Slot's embeddings (encoded) to host fp32 out [config_image_tokens, H] (this rank's copy). */
void forward_image_rows(glm_forward *f, int slot, float *out);
/* Frees slot's embeddings (no-op when empty). */
void forward_image_drop(glm_forward *f, int slot);

/* Seconds spent in all-reduce and in the whole of forward_run so far. */
void forward_times(const glm_forward *f, double *allreduce_s, double *total_s);

#endif
