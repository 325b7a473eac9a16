/* gen_batch.h: batch generation on rank 0 through the scheduler of sched.h:
 * a stream of requests (gen_stream: generate's JSONL driver, which reads its
 * input a window at a time) or a fixed set run to completion (gen_run: chat,
 * bench throughput). */
#ifndef GLMTP_GEN_BATCH_H
#define GLMTP_GEN_BATCH_H

#include "gen_request.h"

/* With o->progress, a prompt whose prefill takes more than GEN_PROGRESS_STEPS
 * steps also gets its own lines on stderr while it is fed (tokens done and
 * total, cached, tokens/s; redrawn in place on a terminal, every 5 s
 * otherwise) and one when it is in; a line of requests done, tokens and
 * tokens/s comes every 5 s (0.2 s on a terminal) and at the end. */
#define GEN_PROGRESS_STEPS 4

/* Where gen_stream takes its requests from and gives them back. */
typedef struct gen_feed {
    /* The next request to run, or NULL when there is none for now (the
     * caller holds as many as it allows in flight) or none left. The request
     * stays the caller's; gen_stream sets its rng from its seed and runs it,
     * or, when r->finish is already set (a request refused before it ran),
     * hands it straight back to done. *name (OUT, preset to NULL) names it in
     * progress lines and must live until done. A request must fit the KV pool
     * (gen_fits) unless it is finished. */
    gen_request *(*next)(void *user, const char **name);
    /* r is finished (r->finish set, its text flushed) and out of the
     * scheduler; gen_stream no longer touches it. next may return new
     * requests again after this. */
    void (*done)(void *user, gen_request *r);
    void *user;
    int total; /* requests expected in all, for the progress lines; 0: unknown */
} gen_feed;

/* Runs requests from f until next gives none and none is running (rank 0;
 * the other ranks are in engine_follow). Before each step it takes every
 * request next gives; each finished request goes to done at the end of the
 * step it finished in. tok may be NULL (no text). o->step_tokens 0 means 512.
 * Returns the most requests it held at once (in the scheduler, between next
 * and done). */
int gen_stream(engine *e, const tokenizer *tok, const gen_options *o, const gen_feed *f);

/* Runs the n requests of reqs to completion (gen_stream over the array);
 * names[i] names request i in progress lines (names or names[i] NULL:
 * "request i+1"). */
void gen_run_named(engine *e, const tokenizer *tok, gen_request *reqs, int n, const gen_options *o,
                   const char *const *names);
void gen_run(engine *e, const tokenizer *tok, gen_request *reqs, int n, const gen_options *o);

#endif
