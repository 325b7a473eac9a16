/* Batch generation (see gen.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../worker/util.h"
#include "gen.h"

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

static void progress(const gen_request *reqs, int n, double t0, long tokens, int final) {
    int done = 0;
    for (int i = 0; i < n; i++) done += reqs[i].finish != NULL;
    double dt = util_now() - t0;
    double tps = dt > 0 ? tokens / dt : 0.0;
    if (isatty(2)) {
        int w = 30, fill = n ? done * w / n : w;
        fprintf(stderr, "\r[%.*s%*s] %d/%d requests, %ld tokens, %.1f tokens/s%s", fill,
                "##############################", w - fill, "", done, n, tokens, tps, final ? "\n" : "");
    } else {
        fprintf(stderr, "glmtp: generate: %d/%d requests done, %ld tokens generated, %.1f tokens/s, %.1f s\n", done,
                n, tokens, tps, dt);
    }
}

void gen_run(engine *e, const tokenizer *tok, gen_request *reqs, int n, const gen_options *o) {
    const glm_config *cfg = &e->m->cfg;
    int V = cfg->vocab, budget = o->step_tokens > 0 ? o->step_tokens : 512;
    int n_real = tok ? tok_n_total(tok) : V; /* ids past the tokenizer are padding rows */
    int *rows_req = malloc(sizeof(int) * (size_t)(n + 1)), *sampled = malloc(sizeof(int) * (size_t)(n + 1));
    ksample_params *sp = malloc(sizeof(ksample_params) * (size_t)(n + 1));
    size_t dcap = tok ? 3 * (tok_max_token_len(tok) + 4) : 0;
    char *dbuf = malloc(dcap + 1);
    if (!rows_req || !sampled || !sp || !dbuf) abort();
    for (int i = 0; i < n; i++) reqs[i].rng = reqs[i].seed;
    double t0 = util_now(), last_print = t0;
    long generated = 0;
    for (;;) {
        /* Plan: decode tokens of running requests, then prompt chunks. */
        int n_tok = 0, n_seq = 0, max_blocks = 1;
        int *seq_req = malloc(sizeof(int) * (size_t)n), *chunk = malloc(sizeof(int) * (size_t)n);
        if (!seq_req || !chunk) abort();
        int left = budget;
        for (int i = 0; i < n; i++) {
            gen_request *r = &reqs[i];
            if (r->finish || !r->admitted || r->n_fed < r->n_prompt) continue;
            seq_req[n_seq] = i;
            chunk[n_seq++] = 1;
            n_tok++;
            left--;
        }
        for (int i = 0; i < n && left > 0; i++) {
            gen_request *r = &reqs[i];
            if (r->finish || r->n_fed >= r->n_prompt) continue;
            if (!r->admitted) {
                if (kv_seq_reserve(&e->blocks, &r->kv, r->n_prompt + r->max_new)) break; /* FCFS: wait for blocks */
                r->admitted = 1;
            }
            int c = r->n_prompt - r->n_fed < left ? r->n_prompt - r->n_fed : left;
            seq_req[n_seq] = i;
            chunk[n_seq++] = c;
            n_tok += c;
            left -= c;
        }
        if (n_seq == 0) {
            free(seq_req);
            free(chunk);
            break;
        }
        for (int s = 0; s < n_seq; s++)
            if (reqs[seq_req[s]].kv.n_blocks > max_blocks) max_blocks = reqs[seq_req[s]].kv.n_blocks;

        glm_step st = {0};
        int n_logits = 0;
        for (int s = 0; s < n_seq; s++) {
            gen_request *r = &reqs[seq_req[s]];
            n_logits += r->n_fed + chunk[s] >= r->n_prompt;
        }
        step_alloc(&st, n_tok, n_seq, max_blocks, n_logits, e->blocks.block_size);
        int t = 0, l = 0;
        for (int s = 0; s < n_seq; s++) {
            gen_request *r = &reqs[seq_req[s]];
            int prefill = r->n_fed < r->n_prompt;
            for (int k = 0; k < chunk[s]; k++, t++) {
                int p = prefill ? r->n_fed + k : r->n_prompt + r->n_out - 1;
                st.ids[t] = prefill ? r->prompt[p] : r->out[r->n_out - 1];
                st.pos[t] = p;
                st.seq[t] = s;
            }
            if (prefill) r->n_fed += chunk[s];
            if (r->n_fed >= r->n_prompt) {
                rows_req[l] = seq_req[s];
                st.logit_rows[l++] = t - 1;
            }
            step_set_table(&st, s, &r->kv);
        }
        step_fill_slots(&st);
        for (int i = 0; i < n_logits; i++) {
            gen_request *r = &reqs[rows_req[i]];
            sp[i] = (ksample_params){r->temperature, r->top_k, r->top_p, &r->rng};
        }
        engine_step_sample(e, &st, n_real, sp, sampled);
        step_free(&st);
        for (int i = 0; i < n_logits; i++) {
            gen_request *r = &reqs[rows_req[i]];
            gen_accept_token(e, tok, r, sampled[i], o, dbuf, dcap);
            generated++;
            if (r->finish) kv_seq_release(&e->blocks, &r->kv);
        }
        free(seq_req);
        free(chunk);
        if (o->progress && util_now() - last_print > (isatty(2) ? 0.2 : 5.0)) {
            progress(reqs, n, t0, generated, 0);
            last_print = util_now();
        }
    }
    if (tok) /* leftovers of an unfinished character */
        for (int i = 0; i < n; i++) {
            char buf[32];
            size_t k = tok_decode_flush(&reqs[i].dec, buf, sizeof buf);
            if (k) text_append(&reqs[i], buf, k);
        }
    if (o->progress) progress(reqs, n, t0, generated, 1);
    free(dbuf);
    free(rows_req);
    free(sampled);
    free(sp);
}
