/* A request being generated (see gen_request.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen_request.h"

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
    free(r->pixels);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->stop);
    free(r->out);
    free(r->text);
    free(r->lp), free(r->top_lp), free(r->top_id);
    free(r->plp), free(r->ptop_lp), free(r->ptop_id);
    memset(r, 0, sizeof *r);
}

static void *grow(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) abort();
    return q;
}

/* lse of row[0..V) in double (max, then the sum of exp: as score's log_softmax),
 * then *lp of id and the top n ids of [0, n_real) by selection into a sorted
 * list (n <= GEN_MAX_TOP). */
static void row_logprobs(const float *row, int V, int n_real, int id, int n, double *lp, int *top_id,
                         double *top_lp) {
    double mx = row[0], s = 0.0;
    for (int i = 1; i < V; i++)
        if (row[i] > mx) mx = row[i];
    for (int i = 0; i < V; i++) s += exp((double)row[i] - mx);
    double lse = mx + log(s);
    *lp = (double)row[id] - lse;
    int k = 0;
    for (int i = 0; i < n_real && n > 0; i++) {
        double v = (double)row[i] - lse;
        if (v != v) continue;
        if (k == n && !(v > top_lp[n - 1])) continue; /* ties keep the lower id */
        int j = k < n ? k++ : n - 1;
        while (j > 0 && v > top_lp[j - 1]) top_lp[j] = top_lp[j - 1], top_id[j] = top_id[j - 1], j--;
        top_lp[j] = v, top_id[j] = i;
    }
    for (; k < n; k++) top_lp[k] = -INFINITY, top_id[k] = -1;
}

void gen_store_logprobs(gen_request *r, int prompt, int pos, const float *row, int V, int n_real) {
    int n = r->top_n;
    if (prompt) {
        if (!r->plp) {
            r->plp = grow(NULL, sizeof(double) * (size_t)r->n_prompt);
            r->ptop_lp = grow(NULL, sizeof(double) * (size_t)r->n_prompt * (size_t)n);
            r->ptop_id = grow(NULL, sizeof(int) * (size_t)r->n_prompt * (size_t)n);
            r->plp[0] = NAN;
            for (int k = 0; k < n; k++) r->ptop_lp[k] = NAN, r->ptop_id[k] = -1;
            r->n_plp = 1;
        }
        row_logprobs(row, V, n_real, r->prompt[pos], n, &r->plp[pos], r->ptop_id + (size_t)pos * n,
                     r->ptop_lp + (size_t)pos * n);
        if (pos + 1 > r->n_plp) r->n_plp = pos + 1;
        return;
    }
    if (pos >= r->cap_lp) {
        r->cap_lp = r->cap_out > pos ? r->cap_out : 2 * pos + 64;
        r->lp = grow(r->lp, sizeof(double) * (size_t)r->cap_lp);
        r->top_lp = grow(r->top_lp, sizeof(double) * (size_t)r->cap_lp * (size_t)n);
        r->top_id = grow(r->top_id, sizeof(int) * (size_t)r->cap_lp * (size_t)n);
    }
    row_logprobs(row, V, n_real, r->out[pos], n, &r->lp[pos], r->top_id + (size_t)pos * n,
                 r->top_lp + (size_t)pos * n);
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

void gen_flush_text(gen_request *r) {
    char buf[32];
    size_t k = tok_decode_flush(&r->dec, buf, sizeof buf);
    if (k) text_append(r, buf, k);
}
