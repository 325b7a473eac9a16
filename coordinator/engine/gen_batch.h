/* gen_batch.h: batch generation on rank 0: a fixed set of requests run to
 * completion, sharing every forward step through the scheduler of sched.h
 * (generate, chat, bench throughput). */
#ifndef GLMTP_GEN_BATCH_H
#define GLMTP_GEN_BATCH_H

#include "gen_request.h"

/* Runs all requests to completion (rank 0; the other ranks are in engine_follow).
 * tok may be NULL (no text). Requests whose prompt plus max_new exceed the KV
 * pool must have been refused by the caller (gen_fits). o->step_tokens 0 means
 * 512. */
void gen_run(engine *e, const tokenizer *tok, gen_request *reqs, int n, const gen_options *o);

#endif
