/* step_plan.h: rank 0's helpers to build glm_steps for simple drivers (score,
 * generate on ids). The serving scheduler builds richer ones later. */
#ifndef GLMTP_STEP_PLAN_H
#define GLMTP_STEP_PLAN_H

#include "../../worker/step.h"

/* A step of n tokens of one sequence at positions start.., whose block table is
 * seq (already reserved). all_logits: logits of every token, else only the last. */
void plan_one_seq(glm_step *s, const kv_seq *seq, const int *ids, int start, int n, int block_size, int all_logits);

/* Every id must be inside the vocabulary and the list inside the context.
 * Same answer on every rank (all see the same ids); 0 or 1 after printing. */
int plan_check_ids(const comm *c, const int *ids, int n, const glm_config *cfg, const char *what);

#endif
