/* gen_batch.h: batch generation on rank 0: a fixed set of requests run to
 * completion, sharing every forward step through the scheduler of sched.h
 * (generate, chat, bench throughput). */
#ifndef GLMTP_GEN_BATCH_H
#define GLMTP_GEN_BATCH_H

#include "gen_request.h"

/* Runs all requests to completion (rank 0; the other ranks are in engine_follow).
 * tok may be NULL (no text). Requests whose prompt plus max_new exceed the KV
 * pool must have been refused by the caller (gen_fits). o->step_tokens 0 means
 * 512. With o->progress, a prompt whose prefill takes more than
 * GEN_PROGRESS_STEPS steps also gets its own lines on stderr while it is fed
 * (tokens done and total, cached, tokens/s; redrawn in place on a terminal,
 * every 5 s otherwise) and one when it is in. */
#define GEN_PROGRESS_STEPS 4
/* gen_run with names[i] naming request i in those lines (NULL: "request i+1"). */
void gen_run_named(engine *e, const tokenizer *tok, gen_request *reqs, int n, const gen_options *o,
                   const char *const *names);
void gen_run(engine *e, const tokenizer *tok, gen_request *reqs, int n, const gen_options *o);

#endif
