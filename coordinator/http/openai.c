/* OpenAI chat and text completions over the engine loop (see http.h).
 *
 * A request becomes n ready requests (srv_gen, one per choice; a completions
 * request with several prompts gets n per prompt; a chat image's pixels are
 * copied into each choice's request), pushed into the serve inbox
 * with a sink whose callbacks (engine thread) fill an oai_call under its mutex:
 * whole outputs for a plain response, SSE bytes ("data: {chunk}\n\n" ...
 * "data: [DONE]\n\n") for a stream. The HTTP thread waits on the call's
 * condition variable; every 100 ms it also looks whether the client hung up,
 * which marks the call gone, and the engine loop then cancels its requests
 * Tool calls stream in OpenAI's chunks (index, id, type, name, then the
 * arguments), but held until the output ends (toolcall_stream hold_calls 1):
 * the model stops right after the object, so nothing is delayed in practice,
 * and a stream always equals the whole response, malformed JSON (plain
 * content) included
 * (their KV blocks freed). The call is freed by whoever drops the last
 * reference: the HTTP side holds one, each choice in the engine one. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../worker/util.h"
#include "../text/chat_template.h"
#include "../text/tool_calls.h"
#include "openai.h"

/* ==== Errors ==== */

static char *json_take(cJSON *o, size_t *len) {
    char *t = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!t) abort();
    if (len) *len = strlen(t);
    return t;
}


/* ==== The call: what the engine thread and the HTTP thread share ==== */

typedef struct oai_choice {
    struct oai_call *call;
    int index, prompt_index;
    int done;
    char *text;  /* whole output (copied at the end) */
    int *ids, n_ids;
    int n_prompt, n_cached;
    const char *reason;
    char *error;
    int role_sent;
    toolcall_stream *ts; /* chat streams with tools */
    int is_call;         /* the stream turned out a call */
    size_t canned_pos;   /* bytes of oai_call.canned streamed */
    cJSON *lp;           /* whole responses: the choice's "logprobs" (owned), built at the end */
    long text_off;       /* completions logprobs: text_offset of the next token */
    int echo_sent;       /* streamed echo with logprobs: the prompt chunk went (after the prefill) */
} oai_choice;

typedef struct oai_call {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs, gone, n_done, n_choices;
    oai_choice *ch;
    int chat, stream, include_usage, echo;
    int want_lp, top_n; /* logprobs asked; alternatives per token */
    int ids_as_tokens;  /* logprobs' token texts as "token_id:N" (vLLM's return_tokens_as_token_ids) */
    char id[64];
    long created;
    const char *model;
    char **names; /* tool names a call may use (chat); NULL-free when n_names 0 */
    int n_names;
    char **prompt_text; /* completions echo: per prompt */
    int n_prompts;
    char *sse; /* stream bytes not read yet: [sse_pos, sse_len) */
    size_t sse_len, sse_cap, sse_pos;
    int sse_end;
    server *s;
    const tokenizer *tok;
    const char *canned; /* tests only (GLMTP_HTTP_DEBUG_OUTPUT): the text every choice answers */
} oai_call;

static void call_unref_locked(oai_call *c) { /* unlocks; frees on the last reference */
    int last = --c->refs == 0;
    pthread_mutex_unlock(&c->mu);
    if (!last) return;
    for (int i = 0; i < c->n_choices; i++) {
        free(c->ch[i].text), free(c->ch[i].ids), free(c->ch[i].error);
        toolcall_stream_free(c->ch[i].ts);
        cJSON_Delete(c->ch[i].lp);
    }
    for (int i = 0; i < c->n_names; i++) free(c->names[i]);
    for (int i = 0; i < c->n_prompts; i++) free(c->prompt_text[i]);
    free(c->names), free(c->prompt_text), free(c->ch), free(c->sse);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}

static void sse_put(oai_call *c, const char *s, size_t n) {
    if (c->sse_len + n + 1 > c->sse_cap) {
        size_t cap = (c->sse_len + n + 1) * 2;
        char *p = realloc(c->sse, cap);
        if (!p) abort();
        c->sse = p, c->sse_cap = cap;
    }
    memcpy(c->sse + c->sse_len, s, n);
    c->sse_len += n;
}

/* Appends "data: <o>\n\n" (deletes o). */
static void sse_json(oai_call *c, cJSON *o) {
    size_t n;
    char *t = json_take(o, &n);
    sse_put(c, "data: ", 6);
    sse_put(c, t, n);
    sse_put(c, "\n\n", 2);
    free(t);
}

/* A chunk object with one choice (returned: the choice, to fill). */
static cJSON *chunk_new(oai_call *c, int index, cJSON **choice) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", c->id);
    cJSON_AddStringToObject(o, "object", c->chat ? "chat.completion.chunk" : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)c->created);
    cJSON_AddStringToObject(o, "model", c->model);
    cJSON *a = cJSON_AddArrayToObject(o, "choices");
    *choice = cJSON_CreateObject();
    cJSON_AddNumberToObject(*choice, "index", index);
    cJSON_AddItemToArray(a, *choice);
    if (c->include_usage) cJSON_AddNullToObject(o, "usage");
    return o;
}

/* ---- logprobs ---- */

/* Token id's bytes as text: invalid or partial UTF-8 sequences become U+FFFD
 * (OpenAI's token text; `bytes` keeps the raw bytes). Caller frees. */
static char *token_text(const oai_call *c, int id, const unsigned char **raw, size_t *n) {
    const tokenizer *tok = c->tok;
    *raw = tok && id >= 0 && id < tok_n_total(tok) ? tok_bytes(tok, id, n) : NULL;
    if (!*raw) *raw = (const unsigned char *)"", *n = 0;
    const unsigned char *b = *raw;
    char *t = malloc(3 * *n + 1), *w = t;
    if (!t) abort();
    for (size_t i = 0; i < *n;) {
        unsigned char x = b[i];
        size_t len = x < 0x80 ? 1 : (x & 0xE0) == 0xC0 && x >= 0xC2 ? 2 : (x & 0xF0) == 0xE0 ? 3
                                  : (x & 0xF8) == 0xF0 && x <= 0xF4 ? 4 : 0;
        int ok = len > 0 && i + len <= *n;
        for (size_t k = 1; ok && k < len; k++) ok = (b[i + k] & 0xC0) == 0x80;
        if (ok && len == 3) ok = !(x == 0xE0 && b[i + 1] < 0xA0) && !(x == 0xED && b[i + 1] >= 0xA0);
        if (ok && len == 4) ok = !(x == 0xF0 && b[i + 1] < 0x90) && !(x == 0xF4 && b[i + 1] >= 0x90);
        if (ok) {
            memcpy(w, b + i, len), w += len, i += len;
        } else { /* one byte of a bad sequence: U+FFFD */
            memcpy(w, "\xEF\xBF\xBD", 3), w += 3, i++;
        }
    }
    *w = 0;
    if (c->ids_as_tokens) { /* vLLM's return_tokens_as_token_ids */
        free(t);
        if (!(t = malloc(32))) abort();
        snprintf(t, 32, "token_id:%d", id);
    }
    return t;
}

/* A chat logprob entry {token, logprob, bytes} of id. */
static cJSON *chat_lp_entry(const oai_call *c, int id, double lp) {
    const unsigned char *raw;
    size_t n;
    char *t = token_text(c, id, &raw, &n);
    cJSON *e = cJSON_CreateObject(), *b;
    cJSON_AddStringToObject(e, "token", t);
    cJSON_AddNumberToObject(e, "logprob", lp);
    b = cJSON_AddArrayToObject(e, "bytes");
    for (size_t i = 0; i < n; i++) cJSON_AddItemToArray(b, cJSON_CreateNumber(raw[i]));
    free(t);
    return e;
}

/* Chat's {"content": [...]} for g->out[first, first + n). */
static cJSON *chat_logprobs(const oai_call *c, const gen_request *g, int first, int n) {
    cJSON *o = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(o, "content");
    for (int i = first; i < first + n && g->lp; i++) {
        cJSON *e = chat_lp_entry(c, g->out[i], g->lp[i]), *top = cJSON_AddArrayToObject(e, "top_logprobs");
        for (int k = 0; k < g->top_n && k < c->top_n; k++)
            if (g->top_id[(size_t)i * g->top_n + k] >= 0)
                cJSON_AddItemToArray(top, chat_lp_entry(c, g->top_id[(size_t)i * g->top_n + k],
                                                        g->top_lp[(size_t)i * g->top_n + k]));
        cJSON_AddItemToArray(a, e);
    }
    return o;
}

/* Completions' legacy {tokens, token_logprobs, top_logprobs, text_offset}:
 * a new one, or o's arrays extended, with ids[0, n) of logprobs lp (NAN:
 * null) and top n_top each; text_offset counts bytes of the token texts from
 * *off. */
static cJSON *text_logprobs(const oai_call *c, cJSON *o, const int *ids, int n, const double *lp, const int *top_id,
                            const double *top_lp, int n_top, long *off) {
    if (!o) {
        o = cJSON_CreateObject();
        cJSON_AddArrayToObject(o, "tokens"), cJSON_AddArrayToObject(o, "token_logprobs");
        cJSON_AddArrayToObject(o, "top_logprobs"), cJSON_AddArrayToObject(o, "text_offset");
    }
    cJSON *at = cJSON_GetObjectItem(o, "tokens"), *al = cJSON_GetObjectItem(o, "token_logprobs");
    cJSON *ap = cJSON_GetObjectItem(o, "top_logprobs"), *ao = cJSON_GetObjectItem(o, "text_offset");
    for (int i = 0; i < n && lp; i++) {
        const unsigned char *raw;
        size_t len;
        char *t = token_text(c, ids[i], &raw, &len);
        cJSON_AddItemToArray(at, cJSON_CreateString(t));
        cJSON_AddItemToArray(ao, cJSON_CreateNumber((double)*off));
        *off += (long)strlen(t);
        free(t);
        if (isnan(lp[i])) {
            cJSON_AddItemToArray(al, cJSON_CreateNull());
            cJSON_AddItemToArray(ap, cJSON_CreateNull());
            continue;
        }
        cJSON_AddItemToArray(al, cJSON_CreateNumber(lp[i]));
        cJSON *d = cJSON_CreateObject();
        for (int k = 0; k < n_top && k < c->top_n; k++) {
            int id = top_id[(size_t)i * n_top + k];
            if (id < 0) continue;
            char *tt = token_text(c, id, &raw, &len);
            if (!cJSON_GetObjectItemCaseSensitive(d, tt)) /* texts may repeat: the likelier stays */
                cJSON_AddNumberToObject(d, tt, top_lp[(size_t)i * n_top + k]);
            free(tt);
        }
        cJSON_AddItemToArray(ap, d);
    }
    return o;
}

/* Completions echo: the prompt's logprobs (null where not known). */
static cJSON *prompt_logprobs(const oai_call *c, const gen_request *g, long *off) {
    double *lp = malloc(sizeof(double) * ((size_t)g->n_prompt + 1));
    if (!lp) abort();
    for (int i = 0; i < g->n_prompt; i++) lp[i] = g->plp && i > 0 && i < g->n_plp ? g->plp[i] : NAN;
    cJSON *o = text_logprobs(c, NULL, g->prompt, g->n_prompt, lp, g->ptop_id, g->ptop_lp, g->top_n, off);
    free(lp);
    return o;
}

/* A chat chunk with delta d (taken) for choice ch. */
static void chat_chunk_lp(oai_call *c, oai_choice *ch, cJSON *d, const char *finish, cJSON *lp) {
    cJSON *choice, *o = chunk_new(c, ch->index, &choice);
    if (!ch->role_sent) {
        cJSON_AddItemToObjectCS(d, "role", cJSON_CreateString("assistant"));
        ch->role_sent = 1;
    }
    cJSON_AddItemToObject(choice, "delta", d);
    if (lp) cJSON_AddItemToObject(choice, "logprobs", lp);
    else cJSON_AddNullToObject(choice, "logprobs");
    if (finish) cJSON_AddStringToObject(choice, "finish_reason", finish);
    else cJSON_AddNullToObject(choice, "finish_reason");
    sse_json(c, o);
}

static void chat_chunk(oai_call *c, oai_choice *ch, cJSON *d, const char *finish) {
    chat_chunk_lp(c, ch, d, finish, NULL);
}

/* A completions chunk; lp (taken) its logprobs or NULL. */
static void text_chunk_lp(oai_call *c, oai_choice *ch, const char *text, size_t len, const char *finish, cJSON *lp) {
    cJSON *choice, *o = chunk_new(c, ch->index, &choice);
    char *t = strndup(text, len);
    if (!t) abort();
    cJSON_AddStringToObject(choice, "text", t);
    free(t);
    if (lp) cJSON_AddItemToObject(choice, "logprobs", lp);
    else cJSON_AddNullToObject(choice, "logprobs");
    if (finish) cJSON_AddStringToObject(choice, "finish_reason", finish);
    else cJSON_AddNullToObject(choice, "finish_reason");
    sse_json(c, o);
}

static void text_chunk(oai_call *c, oai_choice *ch, const char *text, size_t len, const char *finish) {
    text_chunk_lp(c, ch, text, len, finish, NULL);
}

/* A streamed echo with logprobs: the prompt chunk, once its logprobs are known
 * (c->mu held). */
static void echo_chunk(oai_call *c, oai_choice *ch, const gen_request *g) {
    if (ch->echo_sent || !c->echo || !c->want_lp) return;
    ch->echo_sent = 1;
    const char *t = c->prompt_text[ch->prompt_index];
    text_chunk_lp(c, ch, t ? t : "", t ? strlen(t) : 0, NULL, prompt_logprobs(c, g, &ch->text_off));
}

/* toolcall_stream's emit: one chat chunk per delta. */
static void on_toolcall_delta(void *user, toolcall_delta_kind kind, const char *text, size_t len) {
    oai_choice *ch = user;
    oai_call *c = ch->call;
    char *t = strndup(text, len);
    if (!t) abort();
    cJSON *d = cJSON_CreateObject();
    if (kind == TOOLCALL_CONTENT) {
        cJSON_AddStringToObject(d, "content", t);
    } else {
        cJSON *tc = cJSON_AddArrayToObject(d, "tool_calls"), *call = cJSON_CreateObject();
        cJSON_AddItemToArray(tc, call);
        cJSON_AddNumberToObject(call, "index", 0);
        cJSON *fn;
        if (kind == TOOLCALL_CALL_START) {
            char id[32];
            toolcall_make_id(util_fnv(UTIL_FNV_INIT, c->id, strlen(c->id)) + (uint64_t)ch->index, id);
            cJSON_AddStringToObject(call, "id", id);
            cJSON_AddStringToObject(call, "type", "function");
            fn = cJSON_AddObjectToObject(call, "function");
            cJSON_AddStringToObject(fn, "name", t);
            cJSON_AddStringToObject(fn, "arguments", "");
            ch->is_call = 1;
        } else {
            fn = cJSON_AddObjectToObject(call, "function");
            cJSON_AddStringToObject(fn, "arguments", t);
        }
    }
    free(t);
    chat_chunk(c, ch, d, NULL);
}

/* Tests: the canned text in place of the model's, 7 bytes per token (all the
 * rest at the end), so that a stream splits it as tokens would. */
static void canned_piece(oai_choice *ch, int final, const char **text, size_t *len) {
    size_t n = strlen(ch->call->canned) - ch->canned_pos;
    *text = ch->call->canned + ch->canned_pos;
    *len = final || n < 7 ? n : 7;
    ch->canned_pos += *len;
}

static void sink_delta(void *user, const gen_request *g, int first, int n, const char *text, size_t len) {
    oai_choice *ch = user;
    oai_call *c = ch->call;
    pthread_mutex_lock(&c->mu);
    if (c->canned) canned_piece(ch, 0, &text, &len);
    int lp = c->want_lp && g && n > 0 && !ch->ts && !c->canned; /* tool-call streams carry none */
    if (!c->gone && g) echo_chunk(c, ch, g);
    if (!c->gone && (len > 0 || lp)) {
        if (ch->ts) toolcall_stream_feed(ch->ts, text, len);
        else if (c->chat) {
            cJSON *d = cJSON_CreateObject();
            char *t = strndup(text, len);
            if (!t) abort();
            cJSON_AddStringToObject(d, "content", t);
            free(t);
            chat_chunk_lp(c, ch, d, NULL, lp ? chat_logprobs(c, g, first, n) : NULL);
        } else
            text_chunk_lp(c, ch, text, len, NULL,
                          lp ? text_logprobs(c, NULL, g->out + first, n, g->lp + first,
                                             g->top_id + (size_t)first * g->top_n,
                                             g->top_lp + (size_t)first * g->top_n, g->top_n, &ch->text_off)
                             : NULL);
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
}

/* OpenAI's names: a call stops with "tool_calls"; cancelled or shut down
 * requests "abort" (vLLM's). */
static const char *finish_name(const oai_choice *ch) { return oai_finish_name(ch->reason, ch->is_call); }

/* The call's choices as the shared builders read them (malloc'ed; lp moved
 * when take_lp). */
static oai_result *call_results(oai_call *c, int take_lp) {
    oai_result *res = calloc((size_t)c->n_choices + 1, sizeof *res);
    if (!res) abort();
    for (int i = 0; i < c->n_choices; i++) {
        oai_choice *ch = &c->ch[i];
        res[i] = (oai_result){ch->text ? ch->text : "", ch->n_ids, ch->n_prompt, ch->n_cached, ch->prompt_index,
                              ch->reason, ch->is_call, take_lp ? ch->lp : NULL};
        if (take_lp) ch->lp = NULL;
    }
    return res;
}

static cJSON *usage_json(oai_call *c) {
    oai_result *res = call_results(c, 0);
    cJSON *u = oai_usage_json(res, c->n_choices);
    free(res);
    return u;
}

/* The stream's end of one choice; after the last, usage (when asked) and [DONE]. */
static void stream_final(oai_call *c, oai_choice *ch) {
    if (ch->error) {
        cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "error");
        cJSON_AddStringToObject(e, "message", ch->error);
        cJSON_AddStringToObject(e, "type", "invalid_request_error");
        cJSON_AddNullToObject(e, "param");
        cJSON_AddNumberToObject(e, "code", 400);
        sse_json(c, o);
    } else {
        if (ch->ts && toolcall_stream_finish(ch->ts) == 0) ch->is_call = 0;
        if (c->chat) chat_chunk(c, ch, cJSON_CreateObject(), finish_name(ch));
        else text_chunk(c, ch, "", 0, finish_name(ch));
    }
    if (c->n_done < c->n_choices) return;
    if (c->include_usage) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "id", c->id);
        cJSON_AddStringToObject(o, "object", c->chat ? "chat.completion.chunk" : "text_completion");
        cJSON_AddNumberToObject(o, "created", (double)c->created);
        cJSON_AddStringToObject(o, "model", c->model);
        cJSON_AddArrayToObject(o, "choices");
        cJSON_AddItemToObject(o, "usage", usage_json(c));
        sse_json(c, o);
    }
    sse_put(c, "data: [DONE]\n\n", 14);
    c->sse_end = 1;
}

static void sink_final(void *user, const gen_request *g, const char *reason, int n_cached, const char *error) {
    oai_choice *ch = user;
    oai_call *c = ch->call;
    pthread_mutex_lock(&c->mu);
    if (c->canned && c->stream && !c->gone && !error) {
        const char *t;
        size_t len;
        canned_piece(ch, 1, &t, &len);
        pthread_mutex_unlock(&c->mu);
        if (len) sink_delta(user, NULL, 0, 0, t, len);
        pthread_mutex_lock(&c->mu);
    }
    ch->text = strdup(c->canned ? c->canned : g->text ? g->text : "");
    ch->ids = malloc(sizeof(int) * (size_t)(g->n_out + 1));
    if (!ch->text || !ch->ids) abort();
    memcpy(ch->ids, g->out, sizeof(int) * (size_t)g->n_out);
    ch->n_ids = g->n_out, ch->n_prompt = g->n_prompt, ch->n_cached = n_cached;
    ch->reason = reason; /* a string literal of loop.c / gen_request.c */
    if (error && !(ch->error = strdup(error))) abort();
    if (c->want_lp && !error && !c->stream) { /* the whole choice's logprobs, while g lives */
        if (c->chat) ch->lp = chat_logprobs(c, g, 0, g->n_out);
        else {
            long off = 0;
            ch->lp = c->echo ? prompt_logprobs(c, g, &off) : NULL;
            ch->lp = text_logprobs(c, ch->lp, g->out, g->n_out, g->lp, g->top_id, g->top_lp, g->top_n, &off);
        }
    }
    if (c->stream && !c->gone && !error) echo_chunk(c, ch, g);
    ch->done = 1;
    c->n_done++;
    if (c->stream && !c->gone) stream_final(c, ch);
    pthread_cond_broadcast(&c->cv);
    call_unref_locked(c);
}

static int sink_gone(void *user) {
    oai_choice *ch = user;
    pthread_mutex_lock(&ch->call->mu);
    int g = ch->call->gone;
    pthread_mutex_unlock(&ch->call->mu);
    return g;
}

static const srv_sink oai_sink = {sink_delta, sink_final, sink_gone};

/* Whether the peer of fd has hung up (POLLRDHUP: it closed its end). */
static int peer_gone(int fd) {
    if (fd < 0) return 0;
    struct pollfd p = {fd, POLLRDHUP, 0};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

/* With c->mu held: waits up to 100 ms for news; marks the call gone when the
 * client hung up or the engine loop has ended. */
static void call_wait(oai_call *c, int fd) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 100 * 1000000L;
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    pthread_cond_timedwait(&c->cv, &c->mu, &ts);
    if (peer_gone(fd)) c->gone = 1;
    pthread_mutex_lock(&c->s->mu);
    int ended = c->s->sched_done;
    pthread_mutex_unlock(&c->s->mu);
    if (ended && c->n_done < c->n_choices) c->gone = 1; /* items after the loop's end are never answered */
}

long oai_stream_read(oai_call *c, char *buf, size_t max) {
    pthread_mutex_lock(&c->mu);
    while (c->sse_pos == c->sse_len && !c->sse_end && !c->gone) call_wait(c, -1);
    long n;
    if (c->sse_pos < c->sse_len) {
        size_t k = c->sse_len - c->sse_pos < max ? c->sse_len - c->sse_pos : max;
        memcpy(buf, c->sse + c->sse_pos, k);
        c->sse_pos += k;
        if (c->sse_pos == c->sse_len) c->sse_pos = c->sse_len = 0;
        n = (long)k;
    } else
        n = c->sse_end ? -1 : -2;
    pthread_mutex_unlock(&c->mu);
    return n;
}

void oai_stream_free(oai_call *c) {
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    if (c->n_done < c->n_choices) c->gone = 1; /* the client left mid-stream: cancel */
    call_unref_locked(c);
}

/* A ready request for one choice. */
static srv_gen *make_gen(oai_call *c, oai_choice *ch, const oai_params *p, const int *ids, int n_ids, int max_new,
                         int chat, uint64_t seed) {
    srv_gen *g = calloc(1, sizeof *g);
    if (!g || !(g->g.prompt = malloc(sizeof(int) * (size_t)n_ids))) abort();
    memcpy(g->g.prompt, ids, sizeof(int) * (size_t)n_ids);
    g->g.n_prompt = n_ids, g->g.max_new = max_new;
    g->g.temperature = p->temperature, g->g.top_p = p->top_p, g->g.top_k = p->top_k, g->g.seed = seed;
    g->g.strip_leading = chat, g->g.ignore_eos = p->ignore_eos;
    g->g.want_logprobs = p->want_lp, g->g.top_n = p->top_n, g->g.want_prompt_logprobs = p->want_lp && p->echo;
    if (p->n_stop) {
        if (!(g->g.stop = calloc((size_t)p->n_stop, sizeof(char *)))) abort();
        for (int i = 0; i < p->n_stop; i++)
            if (!(g->g.stop[g->g.n_stop++] = strdup(p->stop[i]))) abort();
    }
    if (p->n_stop_ids) {
        if (!(g->stop_ids = malloc(sizeof(int) * (size_t)p->n_stop_ids))) abort();
        memcpy(g->stop_ids, p->stop_ids, sizeof(int) * (size_t)p->n_stop_ids);
        g->n_stop_ids = p->n_stop_ids;
    }
    char id[96];
    snprintf(id, sizeof id, "%s-%d", c->id, ch->index);
    if (!(g->id = strdup(id))) abort();
    g->stream = p->stream, g->sink = &oai_sink, g->user = ch;
    return g;
}

/* ==== Responses ==== */

/* The whole response once every choice is done (c->mu held). */
static void whole_response(oai_call *c, oai_reply *r) {
    for (int i = 0; i < c->n_choices; i++)
        if (c->ch[i].error) {
            oai_error(r, 400, "invalid_request_error", NULL, NULL, "%s", c->ch[i].error);
            return;
        }
    oai_result *res = call_results(c, 1);
    oai_head hd = {c->id, c->created, c->model, c->chat, c->echo, c->prompt_text, (const char *const *)c->names,
                   c->n_names};
    cJSON *o = oai_response_json(&hd, res, c->n_choices);
    for (int i = 0; i < c->n_choices; i++) c->ch[i].is_call = res[i].is_call;
    free(res);
    memset(r, 0, sizeof *r);
    r->status = 200, r->ctype = "application/json";
    r->body = json_take(o, &r->len);
}

/* ==== The endpoint ==== */

void oai_generate(oai_ctx *h, int chat, const cJSON *b, int fd, oai_reply *r) {
    memset(r, 0, sizeof *r);
    oai_params p = {0};
    oai_prompt *pr = NULL;
    int n_pr = 0;
    oai_call *c = calloc(1, sizeof *c);
    if (!c || pthread_mutex_init(&c->mu, NULL) || pthread_cond_init(&c->cv, NULL)) abort();
    c->refs = 1, c->chat = chat, c->model = h->model_name, c->s = h->s, c->tok = h->ctx->tok, c->canned = h->canned;
    c->created = (long)time(NULL);
    pthread_mutex_lock(&h->mu);
    unsigned long long serial = ++h->serial;
    pthread_mutex_unlock(&h->mu);
    snprintf(c->id, sizeof c->id, "%s-%llx%06llu", chat ? "chatcmpl" : "cmpl", (unsigned long long)c->created, serial);
    if (oai_check_keys(b, chat ? oai_chat_keys : oai_text_keys, r) || oai_parse_params(h->ctx, chat, b, &p, r)) goto fail;
    if (chat) {
        if (!(pr = calloc(1, sizeof *pr))) abort();
        n_pr = 1;
        if (oai_chat_prompt(h->ctx, b, pr, &c->names, &c->n_names, r)) goto fail;
    } else if (oai_parse_prompts(h->ctx, b, &pr, &n_pr, r))
        goto fail;
    c->stream = p.stream, c->include_usage = p.include_usage, c->echo = p.echo;
    c->want_lp = p.want_lp, c->top_n = p.top_n, c->ids_as_tokens = p.ids_as_tokens;
    int n = n_pr * p.n;
    if (!(c->ch = calloc((size_t)n, sizeof *c->ch)) || !(c->prompt_text = calloc((size_t)n_pr, sizeof(char *))))
        abort();
    c->n_prompts = n_pr;
    int *max_new = malloc(sizeof(int) * (size_t)n_pr);
    if (!max_new) abort();
    for (int i = 0; i < n_pr; i++) {
        c->prompt_text[i] = pr[i].text, pr[i].text = NULL;
        char field[40];
        snprintf(field, sizeof field, chat ? "messages" : n_pr > 1 ? "prompt[%d]" : "prompt", i);
        if (oai_fit_length(h->ctx, pr[i].n, &p, &max_new[i], field, r)) {
            free(max_new);
            goto fail;
        }
    }
    /* Queue them all, or none when the queue is full or the server stops. */
    pthread_mutex_lock(&h->s->mu);
    int stopping = h->s->stopping, depth = h->s->n_in + h->s->stats.queue_depth;
    pthread_mutex_unlock(&h->s->mu);
    if (stopping || depth >= h->s->max_queue) {
        free(max_new);
        if (stopping) oai_error(r, 503, "server_error", NULL, "shutting_down", "server is shutting down");
        else
            oai_error(r, 503, "server_error", NULL, "overloaded", "overloaded: %d requests queued (--max-queue %d)",
                      depth, h->s->max_queue);
        goto fail;
    }
    uint64_t base = p.seed_given ? p.seed : h->ctx->defaults->seed + serial;
    for (int i = 0; i < n; i++) {
        oai_choice *ch = &c->ch[i];
        ch->call = c, ch->index = i, ch->prompt_index = i / p.n;
        if (chat && p.stream && c->n_names)
            ch->ts = toolcall_stream_new((const char *const *)c->names, c->n_names, 1, on_toolcall_delta, ch);
    }
    c->n_choices = n, c->refs += n;
    srv_item **items = calloc((size_t)n, sizeof *items);
    if (!items) abort();
    for (int i = 0; i < n; i++) {
        const oai_prompt *q = &pr[c->ch[i].prompt_index];
        srv_item *it = calloc(1, sizeof *it);
        if (!it) abort();
        it->kind = SRV_GEN, it->conn = -1;
        it->gen = make_gen(c, &c->ch[i], &p, q->ids, q->n, max_new[c->ch[i].prompt_index], chat,
                           base + (uint64_t)(i % p.n));
        oai_prompt_image_copy(q, &it->gen->g); /* GLM-4V: each choice owns its pixels */
        items[i] = it;
    }
    srv_push_in_all(h->s, items, n);
    free(items);
    free(max_new);
    oai_params_free(&p);
    oai_prompts_free(pr, n_pr);
    if (c->stream) {
        pthread_mutex_lock(&c->mu);
        if (c->echo && !c->want_lp) /* echo in a stream: the prompt first, as a chunk of each choice */
            for (int i = 0; i < n; i++) {
                const char *t = c->prompt_text[c->ch[i].prompt_index];
                if (t) text_chunk(c, &c->ch[i], t, strlen(t), NULL);
            }
        pthread_mutex_unlock(&c->mu);
        r->status = 200, r->ctype = "text/event-stream", r->stream = c;
        return;
    }
    pthread_mutex_lock(&c->mu);
    while (c->n_done < c->n_choices && !c->gone) call_wait(c, fd);
    if (c->n_done < c->n_choices)
        oai_error(r, 499, "invalid_request_error", NULL, "client_gone", "the client closed the connection");
    else
        whole_response(c, r);
    call_unref_locked(c);
    return;
fail:
    oai_params_free(&p);
    oai_prompts_free(pr, n_pr);
    pthread_mutex_lock(&c->mu);
    call_unref_locked(c);
}

/* ==== /tokenize, /detokenize (vLLM) ==== */

void oai_tokenize(oai_ctx *h, const cJSON *b, oai_reply *r) {
    const tokenizer *tok = h->ctx->tok;
    if (!tok) {
        oai_error(r, 400, "invalid_request_error", NULL, NULL, "the model directory has no tokenizer.model");
        return;
    }
    static const char *const keys[] = {"model", "prompt", "messages", "add_special_tokens", "add_generation_prompt",
                                       "tools", NULL};
    if (oai_check_keys(b, keys, r)) return;
    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(b, "prompt");
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(b, "messages");
    int special = oai_get_bool(b, "add_special_tokens", 1, r), gen = oai_get_bool(b, "add_generation_prompt", 1, r);
    if (special < 0 || gen < 0) return;
    int *ids = NULL, n = 0;
    char err[1024];
    if (cJSON_IsString(prompt) && !msgs) {
        if (special) ids = oai_encode_text(tok, prompt->valuestring, &n);
        else if (tok_encode(tok, prompt->valuestring, strlen(prompt->valuestring), &ids, &n)) abort();
    } else if (cJSON_IsArray(msgs) && !prompt) {
        if (chat_encode_json(tok, msgs, cJSON_GetObjectItemCaseSensitive(b, "tools"), h->ctx->preamble, gen, &ids,
                             &n, err, sizeof err)) {
            oai_error(r, 400, "invalid_request_error", "messages", NULL, "%s", err);
            return;
        }
    } else {
        oai_bad_field(r, "prompt", "give a string 'prompt' or a list 'messages'");
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "count", n);
    cJSON_AddNumberToObject(o, "max_model_len", h->max_model_len);
    cJSON *a = cJSON_AddArrayToObject(o, "tokens");
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(ids[i]));
    free(ids);
    memset(r, 0, sizeof *r);
    r->status = 200, r->ctype = "application/json";
    r->body = json_take(o, &r->len);
}

void oai_detokenize(oai_ctx *h, const cJSON *b, oai_reply *r) {
    static const char *const keys[] = {"model", "tokens", NULL};
    if (oai_check_keys(b, keys, r)) return;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(b, "tokens");
    if (!h->ctx->tok) {
        oai_error(r, 400, "invalid_request_error", NULL, NULL, "the model directory has no tokenizer.model");
        return;
    }
    if (!cJSON_IsArray(t)) {
        oai_bad_field(r, "tokens", "must be a list of token ids");
        return;
    }
    oai_prompt p = {0};
    if (cJSON_GetArraySize(t) == 0) {
        if (!(p.text = strdup(""))) abort();
    } else if (oai_ids_from_json(h->ctx, t, "tokens", &p, r))
        return;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "prompt", p.text);
    free(p.ids), free(p.text);
    memset(r, 0, sizeof *r);
    r->status = 200, r->ctype = "application/json";
    r->body = json_take(o, &r->len);
}
