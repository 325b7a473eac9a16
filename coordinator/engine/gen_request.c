/* A request being generated (see gen_request.h). */
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

void gen_flush_text(gen_request *r) {
    char buf[32];
    size_t k = tok_decode_flush(&r->dec, buf, sizeof buf);
    if (k) text_append(r, buf, k);
}
