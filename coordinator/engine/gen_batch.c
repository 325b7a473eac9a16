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

/* gen_run's hooks' state. */
typedef struct batch_state {
    int done, budget, tty;
    const char *const *names;
    const gen_request *reqs; /* to name a request by its index */
    double *t_first, *t_print; /* per request: its first prefill chunk's start, its last progress line */
} batch_state;

static void count_finished(void *user, sched_req *r) {
    (void)r;
    ((batch_state *)user)->done++;
}

/* Per-request prefill progress of long prompts (see gen_batch.h). */
static void prefill_progress(void *user, const sched_plan *p, double dt) {
    batch_state *b = user;
    double now = util_now();
    for (int i = 0; i < p->n; i++) {
        const sched_req *r = p->req[i];
        const gen_request *g = r->g;
        int k = (int)(g - b->reqs), total = g->n_prompt;
        if (g->n_out > 0 || r->n_fed - p->chunk[i] >= total) continue; /* not feeding its prompt */
        if (b->t_first[k] == 0) b->t_first[k] = now - dt;
        if (total - r->n_cached <= GEN_PROGRESS_STEPS * b->budget) continue;
        int done = r->n_fed < total ? r->n_fed : total, in = done >= total;
        if (!in && now - b->t_print[k] < (b->tty ? 0.2 : 5.0)) continue;
        b->t_print[k] = now;
        double el = now - b->t_first[k], tps = el > 0 ? (done - r->n_cached) / el : 0.0;
        char name[32];
        if (!(b->names && b->names[k])) snprintf(name, sizeof name, "request %d", k + 1);
        const char *nm = b->names && b->names[k] ? b->names[k] : name;
        if (in)
            fprintf(stderr, "%sglmtp: generate: %s: prompt of %d tokens in (%d cached) after %.1f s, %.0f tokens/s\n",
                    b->tty ? "\r\033[K" : "", nm, total, r->n_cached, el, tps);
        else
            fprintf(stderr, "%sglmtp: generate: %s: prefill %d/%d tokens (%d cached), %.0f tokens/s, %.1f s%s",
                    b->tty ? "\r\033[K" : "", nm, done, total, r->n_cached, tps, el, b->tty ? "" : "\n");
    }
}

void gen_run(engine *e, const tokenizer *tok, gen_request *reqs, int n, const gen_options *o) {
    gen_run_named(e, tok, reqs, n, o, NULL);
}

void gen_run_named(engine *e, const tokenizer *tok, gen_request *reqs, int n, const gen_options *o,
                   const char *const *names) {
    int budget = o->step_tokens > 0 ? o->step_tokens : 512;
    batch_state b = {0, budget, isatty(2), names, reqs, calloc((size_t)n + 1, sizeof(double)),
                     calloc((size_t)n + 1, sizeof(double))};
    sched q;
    sched_hooks h = {.on_finish = count_finished, .on_step = o->progress ? prefill_progress : NULL, .user = &b};
    sched_init(&q, e, tok, o, &h);
    sched_req *sr = calloc((size_t)(n > 0 ? n : 1), sizeof *sr);
    if (!sr || !b.t_first || !b.t_print) abort();
    for (int i = 0; i < n; i++) {
        reqs[i].rng = reqs[i].seed;
        sr[i].g = &reqs[i];
        sched_add(&q, &sr[i]);
    }
    double t0 = util_now(), last_print = t0;
    while (sched_step(&q, budget))
        if (o->progress && util_now() - last_print > (b.tty ? 0.2 : 5.0)) {
            progress(b.done, n, t0, &q, 0);
            last_print = util_now();
        }
    if (tok)
        for (int i = 0; i < n; i++) gen_flush_text(&reqs[i]);
    if (o->progress) progress(b.done, n, t0, &q, 1);
    sched_free(&q);
    free(sr);
    free(b.t_first);
    free(b.t_print);
}
