/* Batch generation (see gen_batch.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "../../worker/util.h"
#include "gen_batch.h"
#include "sched.h"

static void progress(int done, int n, double t0, const sched *q, int final) {
    double dt = util_now() - t0;
    double tps = dt > 0 ? q->generated / dt : 0.0;
    if (isatty(2)) {
        int w = 30, fill = n ? done * w / n : w;
        fprintf(stderr, "\r[%.*s%*s] %d/%d requests, %ld tokens, %.1f tokens/s%s", fill,
                "##############################", w - fill, "", done, n, q->generated, tps, final ? "\n" : "");
    } else {
        fprintf(stderr, "glmtp: generate: %d/%d requests done, %ld tokens generated, %.1f tokens/s, %.1f s\n", done,
                n, q->generated, tps, dt);
    }
    if (final && pcache_enabled(q->e->pc)) {
        pcache_stats ps;
        pcache_get_stats(q->e->pc, &ps);
        fprintf(stderr, "glmtp: generate: prefix cache: %lld of %lld prompt tokens cached (hit rate %.1f%%), "
                "%lld blocks evicted\n", ps.cached_tokens, ps.prompt_tokens,
                ps.prompt_tokens ? 100.0 * (double)ps.cached_tokens / (double)ps.prompt_tokens : 0.0, ps.evictions);
    }
    /* recomputed prompts cost time: say so, as vLLM warns */
    if (final && q->preemptions)
        fprintf(stderr, "glmtp: generate: %ld preemptions (KV pool full: requests freed their blocks and recomputed "
                "later; a larger --kv-tokens avoids them)\n", q->preemptions);
}

static void count_finished(void *user, sched_req *r) {
    (void)r;
    (*(int *)user)++;
}

void gen_run(engine *e, const tokenizer *tok, gen_request *reqs, int n, const gen_options *o) {
    int done = 0;
    sched q;
    sched_hooks h = {.on_finish = count_finished, .user = &done};
    sched_init(&q, e, tok, o, &h);
    sched_req *sr = calloc((size_t)(n > 0 ? n : 1), sizeof *sr);
    if (!sr) abort();
    for (int i = 0; i < n; i++) {
        reqs[i].rng = reqs[i].seed;
        sr[i].g = &reqs[i];
        sched_add(&q, &sr[i]);
    }
    double t0 = util_now(), last_print = t0;
    while (sched_step(&q, o->step_tokens > 0 ? o->step_tokens : 512))
        if (o->progress && util_now() - last_print > (isatty(2) ? 0.2 : 5.0)) {
            progress(done, n, t0, &q, 0);
            last_print = util_now();
        }
    if (tok)
        for (int i = 0; i < n; i++) gen_flush_text(&reqs[i]);
    if (o->progress) progress(done, n, t0, &q, 1);
    sched_free(&q);
    free(sr);
}
