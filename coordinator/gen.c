/* Batch generation (see gen.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../worker/util.h"
#include "sched.h"

static int is_stop_id(const glm_config *c, int id) {
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_ids[i] == id) return 1;
    return 0;
}

int gen_fits(const engine *e, int n_prompt, int max_new) {
    int bs = e->blocks.block_size;
    return (n_prompt + max_new + bs - 1) / bs <= e->blocks.n_blocks;
}

void gen_request_free(gen_request *r) {
    if (!r) return;
    free(r->prompt);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->stop);
    free(r->out);
    free(r->text);
    memset(r, 0, sizeof *r);
}

static void text_append(gen_request *r, const char *s, size_t n) {
    if (r->text_len + n + 1 > r->text_cap) {
        size_t cap = r->text_cap ? r->text_cap * 2 : 256;
        while (cap < r->text_len + n + 1) cap *= 2;
        char *t = realloc(r->text, cap);
        if (!t) abort();
        r->text = t;
        r->text_cap = cap;
    }
    memcpy(r->text + r->text_len, s, n);
    r->text_len += n;
    r->text[r->text_len] = 0;
}

/* Truncates the text at the first stop string, if one has appeared. */
static int hit_stop_string(gen_request *r, size_t delta) {
    for (int i = 0; i < r->n_stop; i++) {
        size_t sl = strlen(r->stop[i]);
        if (sl == 0 || r->text_len < sl) continue;
        size_t from = r->text_len > delta + sl ? r->text_len - delta - sl : 0;
        char *hit = strstr(r->text + from, r->stop[i]);
        if (hit) {
            r->text_len = (size_t)(hit - r->text);
            r->text[r->text_len] = 0;
            return 1;
        }
    }
    return 0;
}

void gen_accept_token(engine *e, const tokenizer *tok, gen_request *r, int id, const gen_options *o, char *buf,
                         size_t cap) {
    if (!r->ignore_eos && is_stop_id(&e->m->cfg, id)) {
        r->finish = "stop";
        return;
    }
    if (r->n_out == r->cap_out) {
        r->cap_out = r->cap_out ? 2 * r->cap_out : 64;
        r->out = realloc(r->out, sizeof(int) * (size_t)r->cap_out);
        if (!r->out) abort();
    }
    r->out[r->n_out++] = id;
    if (tok) {
        size_t n = tok_decode_push(tok, &r->dec, id, buf, cap);
        if (n == (size_t)-1) n = 0; /* padding id past the vocabulary: masked before sampling */
        const char *p = buf;
        if (r->strip_leading && r->text_len == 0)
            while (n > 0 && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')) p++, n--;
        size_t before = r->text_len;
        text_append(r, p, n);
        if (hit_stop_string(r, n)) r->finish = "stop";
        if (o->on_text && r->text_len > before) o->on_text(o->user, r, r->text + before, r->text_len - before);
    }
    if (!r->finish && r->n_out >= r->max_new) r->finish = "length";
}

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
    if (tok) /* leftovers of an unfinished character */
        for (int i = 0; i < n; i++) {
            char buf[32];
            size_t k = tok_decode_flush(&reqs[i].dec, buf, sizeof buf);
            if (k) text_append(&reqs[i], buf, k);
        }
    if (o->progress) progress(done, n, t0, &q, 1);
    sched_free(&q);
    free(sr);
}
