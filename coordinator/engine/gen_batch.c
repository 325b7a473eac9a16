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
    char of[24] = "";
    if (n > 0) snprintf(of, sizeof of, "/%d", n);
    if (isatty(2)) {
        int w = 30, fill = n > 0 ? (done < n ? done : n) * w / n : w;
        fprintf(stderr, "\r[%.*s%*s] %d%s requests, %ld tokens, %.1f tokens/s%s", fill,
                "##############################", w - fill, "", done, of, q->generated, tps, final ? "\n" : "");
    } else {
        fprintf(stderr, "glmtp: generate: %d%s requests done, %ld tokens generated, %.1f tokens/s, %.1f s\n", done,
                of, q->generated, tps, dt);
    }
    if (final && pcache_enabled(q->e->pc)) {
        pcache_stats ps;
        pcache_get_stats(q->e->pc, &ps);
        fprintf(stderr, "glmtp: generate: prefix cache: %lld of %lld prompt tokens cached (hit rate %.1f%%), "
                "%lld blocks evicted\n", ps.cached_tokens, ps.prompt_tokens,
                ps.prompt_tokens ? 100.0 * (double)ps.cached_tokens / (double)ps.prompt_tokens : 0.0, ps.evictions);
    }
    if (final && q->images + q->images_shared)
        fprintf(stderr, "glmtp: generate: images: %ld encoded by the vision tower, %ld shared a slot holding the "
                "same image\n", q->images, q->images_shared);
    /* recomputed prompts cost time: say so, as vLLM warns */
    if (final && q->preemptions)
        fprintf(stderr, "glmtp: generate: %ld preemptions (KV pool full: requests freed their blocks and recomputed "
                "later; a larger --kv-tokens avoids them)\n", q->preemptions);
}

/* One request in flight: the scheduler's view first (sched_req * casts to
 * it), then its progress-line state. */
typedef struct stream_slot {
    sched_req sr;
    const char *name; /* the feed's, or NULL */
    int index;        /* 1-based order of arrival, to name it without a name */
    double t_first, t_print; /* its first prefill chunk's start, its last progress line */
} stream_slot;

/* gen_stream's state, shared by its hooks. */
typedef struct stream_state {
    const gen_feed *f;
    const tokenizer *tok;
    int done, arrived, held, peak, budget, tty;
} stream_state;

/* on_finish: flushes the text, hands the request back, frees the slot. */
static void slot_finished(void *user, sched_req *r) {
    stream_state *s = user;
    stream_slot *sl = (stream_slot *)r;
    if (s->tok) gen_flush_text(sl->sr.g);
    s->done++;
    s->held--;
    s->f->done(s->f->user, sl->sr.g);
    free(sl);
}

/* Per-request prefill progress of long prompts (see gen_batch.h). */
static void prefill_progress(void *user, const sched_plan *p, double dt) {
    stream_state *s = user;
    double now = util_now();
    for (int i = 0; i < p->n; i++) {
        stream_slot *sl = (stream_slot *)p->req[i];
        const sched_req *r = &sl->sr;
        int total = r->g->n_prompt;
        if (r->g->n_out > 0 || r->n_fed - p->chunk[i] >= total) continue; /* not feeding its prompt */
        if (sl->t_first == 0) sl->t_first = now - dt;
        if (total - r->n_cached <= GEN_PROGRESS_STEPS * s->budget) continue;
        int done = r->n_fed < total ? r->n_fed : total, in = done >= total;
        if (!in && now - sl->t_print < (s->tty ? 0.2 : 5.0)) continue;
        sl->t_print = now;
        double el = now - sl->t_first, tps = el > 0 ? (done - r->n_cached) / el : 0.0;
        char name[32];
        if (!sl->name) snprintf(name, sizeof name, "request %d", sl->index);
        const char *nm = sl->name ? sl->name : name;
        if (in)
            fprintf(stderr, "%sglmtp: generate: %s: prompt of %d tokens in (%d cached) after %.1f s, %.0f tokens/s\n",
                    s->tty ? "\r\033[K" : "", nm, total, r->n_cached, el, tps);
        else
            fprintf(stderr, "%sglmtp: generate: %s: prefill %d/%d tokens (%d cached), %.0f tokens/s, %.1f s%s",
                    s->tty ? "\r\033[K" : "", nm, done, total, r->n_cached, tps, el, s->tty ? "" : "\n");
    }
}

/* Takes every request the feed gives now into q (finished ones straight
 * back). Returns how many it took. */
static int take_new(stream_state *s, sched *q) {
    int took = 0;
    for (;;) {
        const char *name = NULL;
        gen_request *g = s->f->next(s->f->user, &name);
        if (!g) return took;
        took++;
        s->arrived++;
        if (g->finish) { /* refused before it ran */
            s->done++;
            s->f->done(s->f->user, g);
            continue;
        }
        stream_slot *sl = calloc(1, sizeof *sl);
        if (!sl) abort();
        g->rng = g->seed; /* the request's own stream: its tokens do not depend on its neighbours */
        sl->sr.g = g;
        sl->name = name;
        sl->index = s->arrived;
        sched_add(q, &sl->sr);
        if (++s->held > s->peak) s->peak = s->held;
    }
}

int gen_stream(engine *e, const tokenizer *tok, const gen_options *o, const gen_feed *f) {
    int budget = o->step_tokens > 0 ? o->step_tokens : 512;
    stream_state s = {.f = f, .tok = tok, .budget = budget, .tty = isatty(2)};
    sched q;
    sched_hooks h = {.on_finish = slot_finished, .on_step = o->progress ? prefill_progress : NULL, .user = &s};
    sched_init(&q, e, tok, o, &h);
    double t0 = util_now(), last_print = t0;
    for (;;) {
        int took = take_new(&s, &q);
        if (!sched_step(&q, budget) && !took) break;
        if (o->progress && util_now() - last_print > (s.tty ? 0.2 : 5.0)) {
            progress(s.done, f->total, t0, &q, 0);
            last_print = util_now();
        }
    }
    if (s.held) { /* gen_fits admits every request alone, so an idle scheduler holds none */
        fprintf(stderr, "glmtp: generate: internal error: %d requests could not be scheduled\n", s.held);
        abort();
    }
    if (o->progress) progress(s.done, f->total, t0, &q, 1);
    sched_free(&q);
    return s.peak;
}

/* gen_run_named's feed: the array in order. */
typedef struct array_feed {
    gen_request *reqs;
    const char *const *names;
    int n, next;
} array_feed;

static gen_request *array_next(void *user, const char **name) {
    array_feed *a = user;
    if (a->next == a->n) return NULL;
    if (a->names) *name = a->names[a->next];
    return &a->reqs[a->next++];
}

static void array_done(void *user, gen_request *r) {
    (void)user;
    (void)r;
}

void gen_run(engine *e, const tokenizer *tok, gen_request *reqs, int n, const gen_options *o) {
    gen_run_named(e, tok, reqs, n, o, NULL);
}

void gen_run_named(engine *e, const tokenizer *tok, gen_request *reqs, int n, const gen_options *o,
                   const char *const *names) {
    array_feed a = {reqs, names, n, 0};
    gen_feed f = {array_next, array_done, &a, n};
    gen_stream(e, tok, o, &f);
}
