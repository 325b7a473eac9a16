/* openai_map.c: see openai_map.h. Moved out of http/openai.c (issue 18 item 7)
 * so that glmtp generate maps OpenAI batch lines with the server's code. */
#include "openai_map.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../worker/util.h"
#include "../text/chat_template.h"
#include "../text/tool_calls.h"
#include "image_input.h"

static char *json_take(cJSON *o, size_t *len) {
    char *t = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!t) abort();
    if (len) *len = strlen(t);
    return t;
}

/* ==== Errors ==== */

void oai_error(oai_reply *r, int status, const char *type, const char *param, const char *code, const char *fmt,
               ...) {
    char msg[1500];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type", type);
    if (param) cJSON_AddStringToObject(e, "param", param);
    else cJSON_AddNullToObject(e, "param");
    if (code) cJSON_AddStringToObject(e, "code", code);
    else cJSON_AddNullToObject(e, "code");
    memset(r, 0, sizeof *r);
    r->status = status, r->ctype = "application/json";
    r->body = json_take(o, &r->len);
}

void oai_bad_field(oai_reply *r, const char *field, const char *fmt, ...) {
    char msg[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    oai_error(r, 400, "invalid_request_error", field, NULL, "field '%s': %s", field, msg);
}

/* ==== Requests ==== */

const char *const oai_chat_keys[] = {
    "model", "messages", "tools", "tool_choice", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "seed", "stop", "n", "logprobs", "top_logprobs", "top_k", "stop_token_ids", "ignore_eos",
    "user", "frequency_penalty", "presence_penalty", "parallel_tool_calls", "return_tokens_as_token_ids", NULL};
const char *const oai_text_keys[] = {
    "model", "prompt", "stream", "stream_options", "max_tokens", "temperature", "top_p", "seed", "stop", "n",
    "logprobs", "echo", "top_k", "stop_token_ids", "ignore_eos", "user", "frequency_penalty", "presence_penalty",
    "suffix", "return_tokens_as_token_ids", NULL};


void oai_params_free(oai_params *p) {
    for (int i = 0; i < p->n_stop; i++) free(p->stop[i]);
    free(p->stop);
    free(p->stop_ids);
}

/* An optional number in [lo, hi] (integer when integer). Returns 1 if present,
 * 0 if absent or null, -1 after filling r with a 400 naming f. */
static int get_num(const cJSON *o, const char *f, double lo, double hi, int integer, double *out, oai_reply *r) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, f);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < lo || v->valuedouble > hi ||
        (integer && v->valuedouble != floor(v->valuedouble))) {
        oai_bad_field(r, f, "must be %s in [%g, %g]", integer ? "an integer" : "a number", lo, hi);
        return -1;
    }
    *out = v->valuedouble;
    return 1;
}

/* An optional boolean. Returns 1/0, or -1 after a 400. */
int oai_get_bool(const cJSON *o, const char *f, int def, oai_reply *r) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, f);
    if (!v || cJSON_IsNull(v)) return def;
    if (!cJSON_IsBool(v)) {
        oai_bad_field(r, f, "must be true or false");
        return -1;
    }
    return cJSON_IsTrue(v);
}

int oai_check_keys(const cJSON *o, const char *const *keys, oai_reply *r) {
    for (const cJSON *k = o->child; k; k = k->next) {
        int i = 0;
        while (keys[i] && strcmp(keys[i], k->string) != 0) i++;
        if (!keys[i]) {
            oai_error(r, 400, "invalid_request_error", k->string, NULL, "unrecognized request argument: '%s'",
                      k->string);
            return -1;
        }
    }
    return 0;
}

/* Reads the sampling fields (defaults from ctx). Returns 0 or -1 with r filled. */
int oai_parse_params(const req_context *ctx, int chat, const cJSON *b, oai_params *p, oai_reply *r) {
    const req_defaults *d = ctx->defaults;
    memset(p, 0, sizeof *p);
    p->max_new = d->max_new, p->temperature = d->temperature, p->top_p = d->top_p, p->top_k = d->top_k, p->n = 1;
    double v;
    int k;
    const char *mt = chat && cJSON_GetObjectItemCaseSensitive(b, "max_completion_tokens") ? "max_completion_tokens"
                                                                                           : "max_tokens";
    if ((k = get_num(b, mt, 1, 1e9, 1, &v, r)) < 0) return -1;
    if (k) p->max_new = (int)v, p->max_given = 1;
    if ((k = get_num(b, "temperature", 0, 1e4, 0, &v, r)) < 0) return -1;
    if (k) p->temperature = (float)v;
    if ((k = get_num(b, "top_p", 1e-9, 1, 0, &v, r)) < 0) return -1;
    if (k) p->top_p = (float)v;
    if ((k = get_num(b, "top_k", -1, 1e9, 1, &v, r)) < 0) return -1;
    if (k) p->top_k = v < 0 ? 0 : (int)v; /* vLLM: -1 = off */
    if ((k = get_num(b, "seed", -9.3e18, 9.3e18, 1, &v, r)) < 0) return -1;
    if (k) p->seed = (uint64_t)(int64_t)v, p->seed_given = 1;
    if ((k = get_num(b, "n", 1, 128, 1, &v, r)) < 0) return -1;
    if (k) p->n = (int)v;
    const char *zero_only[] = {"frequency_penalty", "presence_penalty"};
    for (int i = 0; i < 2; i++) {
        if ((k = get_num(b, zero_only[i], -2, 2, 0, &v, r)) < 0) return -1;
        if (k && v != 0) {
            oai_bad_field(r, zero_only[i], "not supported by glmtp (only 0)");
            return -1;
        }
    }
    if ((p->stream = oai_get_bool(b, "stream", 0, r)) < 0 || (p->ignore_eos = oai_get_bool(b, "ignore_eos", 0, r)) < 0 ||
        (p->echo = chat ? 0 : oai_get_bool(b, "echo", 0, r)) < 0 ||
        (p->ids_as_tokens = oai_get_bool(b, "return_tokens_as_token_ids", 0, r)) < 0)
        return -1;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(b, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so) || !p->stream) {
            oai_bad_field(r, "stream_options", "must be an object, and only with stream true");
            return -1;
        }
        if ((p->include_usage = oai_get_bool(so, "include_usage", 0, r)) < 0) return -1;
    }
    /* logprobs: chat takes a boolean (+ top_logprobs), completions a count. */
    if (chat) {
        if ((p->want_lp = oai_get_bool(b, "logprobs", 0, r)) < 0) return -1;
        if ((k = get_num(b, "top_logprobs", 0, GEN_MAX_TOP, 1, &v, r)) < 0) return -1;
        if (k && !p->want_lp) {
            oai_bad_field(r, "top_logprobs", "needs logprobs true");
            return -1;
        }
        if (k) p->top_n = (int)v;
    } else {
        if ((k = get_num(b, "logprobs", 0, GEN_MAX_TOP, 1, &v, r)) < 0) return -1;
        if (k) p->want_lp = 1, p->top_n = (int)v;
    }
    const cJSON *sfx = cJSON_GetObjectItemCaseSensitive(b, "suffix");
    if (sfx && !cJSON_IsNull(sfx)) {
        oai_bad_field(r, "suffix", "not supported by GLM-4");
        return -1;
    }
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(b, "stop");
    if (st && !cJSON_IsNull(st)) {
        int n = cJSON_IsString(st) ? 1 : cJSON_IsArray(st) ? cJSON_GetArraySize(st) : -1;
        if (n < 0) {
            oai_bad_field(r, "stop", "must be a string or a list of strings");
            return -1;
        }
        if (!(p->stop = calloc((size_t)n + 1, sizeof(char *)))) abort();
        for (int i = 0; i < n; i++) {
            const cJSON *e = cJSON_IsString(st) ? st : cJSON_GetArrayItem(st, i);
            if (!cJSON_IsString(e) || !e->valuestring[0]) {
                oai_bad_field(r, "stop", "item %d: must be a non-empty string", i);
                return -1;
            }
            if (!(p->stop[p->n_stop++] = strdup(e->valuestring))) abort();
        }
    }
    const cJSON *si = cJSON_GetObjectItemCaseSensitive(b, "stop_token_ids");
    if (si && !cJSON_IsNull(si)) {
        int n = cJSON_IsArray(si) ? cJSON_GetArraySize(si) : -1;
        if (n < 0) {
            oai_bad_field(r, "stop_token_ids", "must be a list of token ids");
            return -1;
        }
        if (!(p->stop_ids = malloc(sizeof(int) * ((size_t)n + 1)))) abort();
        for (int i = 0; i < n; i++) {
            const cJSON *e = cJSON_GetArrayItem(si, i);
            if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) || e->valuedouble < 0 ||
                e->valuedouble >= ctx->n_vocab) {
                oai_bad_field(r, "stop_token_ids", "item %d: must be a token id in [0, %d)", i, ctx->n_vocab);
                return -1;
            }
            p->stop_ids[p->n_stop_ids++] = (int)e->valuedouble;
        }
    }
    return 0;
}


/* [gMASK]<sop> + the text's ids: `glmtp generate`'s "prompt". */
int *oai_encode_text(const tokenizer *tok, const char *s, int *n) {
    int *ids, k;
    if (tok_encode(tok, s, strlen(s), &ids, &k)) abort();
    int *p = malloc(sizeof(int) * (size_t)(k + 2));
    if (!p) abort();
    p[0] = tok_special_id(tok, "[gMASK]"), p[1] = tok_special_id(tok, "<sop>");
    memcpy(p + 2, ids, sizeof(int) * (size_t)k);
    free(ids);
    *n = k + 2;
    return p;
}

/* ids from a JSON list; -1 with a 400 naming field. */
int oai_ids_from_json(const req_context *ctx, const cJSON *a, const char *field, oai_prompt *p, oai_reply *r) {
    int n = cJSON_GetArraySize(a);
    if (n == 0) {
        oai_bad_field(r, field, "must not be empty");
        return -1;
    }
    if (!(p->ids = malloc(sizeof(int) * (size_t)n))) abort();
    for (int i = 0; i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(a, i);
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) || e->valuedouble < 0 ||
            e->valuedouble >= ctx->n_vocab) {
            oai_bad_field(r, field, "item %d: must be a token id in [0, %d)", i, ctx->n_vocab);
            return -1;
        }
        p->ids[p->n++] = (int)e->valuedouble;
    }
    if (ctx->tok && !(p->text = tok_decode(ctx->tok, p->ids, p->n))) abort();
    return 0;
}

/* /v1/completions "prompt": a string, a list of strings, a list of ids, or a
 * list of lists of ids, into *out (*n_out of them, owned by the caller even on
 * failure). Returns 0, or -1 with r filled. */
int oai_parse_prompts(const req_context *ctx, const cJSON *b, oai_prompt **out, int *n_out, oai_reply *r) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(b, "prompt");
    const tokenizer *tok = ctx->tok;
    if (!v || cJSON_IsNull(v)) {
        oai_bad_field(r, "prompt", "missing");
        return -1;
    }
    int many = cJSON_IsArray(v) && cJSON_GetArraySize(v) > 0 && !cJSON_IsNumber(cJSON_GetArrayItem(v, 0));
    int n = many ? cJSON_GetArraySize(v) : 1;
    if (!cJSON_IsString(v) && !cJSON_IsArray(v)) {
        oai_bad_field(r, "prompt", "must be a string, a list of strings, a list of token ids or a list of such lists");
        return -1;
    }
    oai_prompt *p = calloc((size_t)n, sizeof *p);
    if (!p) abort();
    *out = p, *n_out = n;
    for (int i = 0; i < n; i++) {
        const cJSON *e = many ? cJSON_GetArrayItem(v, i) : v;
        char field[40];
        snprintf(field, sizeof field, many ? "prompt[%d]" : "prompt", i);
        if (cJSON_IsString(e)) {
            if (!tok) {
                oai_bad_field(r, field, "the model has no tokenizer.model: give token ids");
                return -1;
            }
            p[i].ids = oai_encode_text(tok, e->valuestring, &p[i].n);
            if (!(p[i].text = strdup(e->valuestring))) abort();
        } else if (cJSON_IsArray(e)) {
            if (oai_ids_from_json(ctx, e, field, &p[i], r)) return -1;
            char err[512];
            if (ctx->cfg && image_input_check_ids(p[i].ids, p[i].n, ctx->cfg, err, sizeof err)) {
                oai_bad_field(r, field, "%s", err);
                return -1;
            }
        } else {
            oai_bad_field(r, field, "must be a string or a list of token ids");
            return -1;
        }
    }
    return 0;
}

void oai_prompts_free(oai_prompt *p, int n) {
    for (int i = 0; p && i < n; i++) free(p[i].ids), free(p[i].text), free(p[i].pixels);
    free(p);
}

void oai_prompt_image_copy(const oai_prompt *p, gen_request *g) {
    if (!p->pixels) return;
    if (!(g->pixels = malloc(p->n_pixels * sizeof(float)))) abort();
    memcpy(g->pixels, p->pixels, p->n_pixels * sizeof(float));
    g->img_kv0 = p->img_kv0, g->content_hash = p->hash;
}

/* The field named in err ("field 'x': ..."), or dflt. */
static void err_field(const char *err, const char *dflt, char *field, size_t cap) {
    const char *f = strstr(err, "field '");
    snprintf(field, cap, "%s", dflt);
    if (f) {
        size_t n = strcspn(f + 7, "'");
        if (n < cap) memcpy(field, f + 7, n), field[n] = 0;
    }
}

/* The conversation's image (if any) into pr: decoded, and pr->ids expanded
 * around it. Returns 0, or -1 with r filled (a 400 naming the image's field). */
static int chat_image(const req_context *ctx, const cJSON *msgs, oai_prompt *pr, oai_reply *r) {
    const char *src;
    char field[128], err[1024];
    if (chat_image_source(msgs, &src, field, sizeof field, err, sizeof err)) {
        err_field(err, "messages", field, sizeof field);
        oai_error(r, 400, "invalid_request_error", field, NULL, "%s", err);
        return -1;
    }
    if (!src) {
        if (ctx->cfg && image_input_check_ids(pr->ids, pr->n, ctx->cfg, err, sizeof err)) {
            oai_bad_field(r, "messages", "%s", err);
            return -1;
        }
        return 0;
    }
    float *px;
    uint64_t hash;
    if (image_input_load(src, ctx->cfg, ctx->allow_files, &px, &hash, err, sizeof err)) {
        oai_bad_field(r, field, "%s", err);
        return -1;
    }
    gen_request g = {.prompt = pr->ids, .n_prompt = pr->n, .img_kv0 = -1};
    if (image_input_attach(&g, ctx->cfg, px, hash, err, sizeof err)) { /* takes px; g.prompt still pr->ids */
        oai_bad_field(r, field, "%s", err);
        return -1;
    }
    const glm_vision_config *v = &ctx->cfg->vision;
    pr->ids = g.prompt, pr->n = g.n_prompt;
    pr->pixels = g.pixels, pr->n_pixels = (size_t)v->in_ch * v->image * v->image;
    pr->hash = g.content_hash, pr->img_kv0 = g.img_kv0;
    return 0;
}

/* Checks the length against the maximum model length (and cuts a default
 * max_tokens to the room left, as `glmtp generate` does). */
int oai_fit_length(const req_context *ctx, int n_prompt, const oai_params *p, int *max_new, const char *field,
                      oai_reply *r) {
    int lim = ctx->seq_len;
    *max_new = p->max_new;
    if (!p->max_given && n_prompt < lim && n_prompt + *max_new > lim) *max_new = lim - n_prompt;
    if (n_prompt + *max_new <= lim) return 0;
    oai_error(r, 400, "invalid_request_error", p->max_given ? "max_tokens" : field, NULL,
              "This model's maximum context length is %d tokens. However, you requested %d tokens (%d in the "
              "prompt, %d for the completion). Please reduce the length of the prompt or max_tokens.",
              lim, n_prompt + *max_new, n_prompt, *max_new);
    return -1;
}

/* Builds the prompts of a chat request (one) into *pr; names for the parse. */
int oai_chat_prompt(const req_context *ctx, const cJSON *b, oai_prompt *pr, char ***names, int *n_names,
                    oai_reply *r) {
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(b, "messages");
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0) {
        oai_bad_field(r, "messages", "must be a non-empty list of messages");
        return -1;
    }
    if (!ctx->tok) {
        oai_bad_field(r, "messages", "the model directory has no tokenizer.model");
        return -1;
    }
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(b, "tools");
    const cJSON *choice = cJSON_GetObjectItemCaseSensitive(b, "tool_choice");
    if (tools && cJSON_IsNull(tools)) tools = NULL;
    if (choice && cJSON_IsNull(choice)) choice = NULL;
    toolcall_prompt tp;
    char err[1024];
    if (toolcall_map_request(msgs, tools, choice, &tp, err, sizeof err)) {
        char field[128];
        err_field(err, "messages", field, sizeof field);
        oai_error(r, 400, "invalid_request_error", field, NULL, "%s", err);
        return -1;
    }
    int rc = chat_encode(ctx->tok, tp.msgs, tp.n_msgs, NULL, ctx->preamble, 1, &pr->ids, &pr->n, err,
                         sizeof err);
    if (rc) oai_error(r, 400, "invalid_request_error", "messages", NULL, "%s", err);
    else rc = chat_image(ctx, msgs, pr, r);
    if (!rc) { /* names stays non-NULL: no tools rendered means nothing parses as a call */
        if (!(*names = calloc((size_t)tp.n_names + 1, sizeof(char *)))) abort();
        for (int i = 0; i < tp.n_names; i++)
            if (!((*names)[i] = strdup(tp.names[i]))) abort();
        *n_names = tp.n_names;
    }
    toolcall_prompt_free(&tp);
    return rc ? -1 : 0;
}

/* ==== Responses ==== */

const char *oai_finish_name(const char *reason, int is_call) {
    if (is_call) return "tool_calls";
    if (reason && (strcmp(reason, "stop") == 0 || strcmp(reason, "length") == 0)) return reason;
    return "abort";
}

cJSON *oai_usage_json(const oai_result *ch, int n) {
    long long p = 0, q = 0, cached = 0;
    for (int i = 0; i < n; i++) {
        q += ch[i].n_ids;
        if (i == 0 || ch[i].prompt_index != ch[i - 1].prompt_index)
            p += ch[i].n_prompt, cached += ch[i].n_cached; /* a prompt counts once, whatever n */
    }
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)p);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)q);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(p + q));
    cJSON_AddNumberToObject(cJSON_AddObjectToObject(u, "prompt_tokens_details"), "cached_tokens", (double)cached);
    return u;
}

cJSON *oai_response_json(const oai_head *h, oai_result *ch, int n) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", h->id);
    cJSON_AddStringToObject(o, "object", h->chat ? "chat.completion" : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)h->created);
    cJSON_AddStringToObject(o, "model", h->model);
    cJSON *a = cJSON_AddArrayToObject(o, "choices");
    for (int i = 0; i < n; i++) {
        oai_result *c = &ch[i];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "index", i);
        if (h->chat) {
            toolcall_result tr;
            toolcall_parse(c->text, strlen(c->text), h->names, h->n_names, &tr);
            char id[32];
            toolcall_make_id(util_fnv(UTIL_FNV_INIT, h->id, strlen(h->id)) + (uint64_t)i, id);
            c->is_call = tr.is_call;
            cJSON_AddItemToObject(e, "message", toolcall_message_json(&tr, id));
            toolcall_result_free(&tr);
        } else {
            const char *pre = h->echo && h->prompt_text[c->prompt_index] ? h->prompt_text[c->prompt_index] : "";
            size_t a1 = strlen(pre), a2 = strlen(c->text);
            char *t = malloc(a1 + a2 + 1);
            if (!t) abort();
            memcpy(t, pre, a1), memcpy(t + a1, c->text, a2 + 1);
            cJSON_AddStringToObject(e, "text", t);
            free(t);
        }
        if (c->lp) cJSON_AddItemToObject(e, "logprobs", c->lp), c->lp = NULL;
        else cJSON_AddNullToObject(e, "logprobs");
        cJSON_AddStringToObject(e, "finish_reason", oai_finish_name(c->reason, c->is_call));
        cJSON_AddItemToArray(a, e);
    }
    cJSON_AddItemToObject(o, "usage", oai_usage_json(ch, n));
    return o;
}

/* ==== glmtp generate: OpenAI batch lines ==== */

int oai_batch_is_line(const cJSON *o) {
    return cJSON_IsObject(o) && cJSON_GetObjectItemCaseSensitive(o, "custom_id") &&
           cJSON_GetObjectItemCaseSensitive(o, "body");
}

char *oai_batch_key(const cJSON *custom_id) {
    char *j = cJSON_PrintUnformatted(custom_id);
    if (!j) abort();
    size_t n = strlen(j);
    char *k = malloc(n + 11);
    if (!k) abort();
    memcpy(k, "custom_id ", 10), memcpy(k + 10, j, n + 1);
    free(j);
    return k;
}

void oai_batch_free(oai_batch *b) {
    if (!b) return;
    cJSON_Delete(b->custom_id);
    free(b->model), free(b->prompt_text), free(b->err_body);
    for (int i = 0; i < b->n_names; i++) free(b->names[i]);
    free(b->names);
    free(b);
}

/* A refused line: out->error "line N: ..." and the server's error body. */
static void batch_refuse(req_line *out, oai_reply *r) {
    oai_batch *b = out->batch;
    cJSON *e = cJSON_Parse(r->body);
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(e, "error"), "message");
    char *msg = malloc(strlen(cJSON_IsString(m) ? m->valuestring : "error") + 32);
    if (!msg) abort();
    sprintf(msg, "line %d: %s", out->line_no, cJSON_IsString(m) ? m->valuestring : "error");
    cJSON_Delete(e);
    out->error = msg;
    b->err_body = r->body, r->body = NULL;
}

void oai_batch_parse(const req_context *ctx, const cJSON *o, int line_no, req_line *out) {
    memset(out, 0, sizeof *out);
    out->line_no = line_no;
    out->id = cJSON_CreateNull();
    oai_batch *b = calloc(1, sizeof *b);
    if (!b || !out->id || !(b->custom_id = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(o, "custom_id"), 1)))
        abort();
    out->batch = b;
    oai_reply r = {0};
    oai_params p = {0};
    oai_prompt *pr = NULL;
    int n_pr = 0;
    const cJSON *url = cJSON_GetObjectItemCaseSensitive(o, "url");
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(o, "method");
    const cJSON *body = cJSON_GetObjectItemCaseSensitive(o, "body");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(body, "model");
    if (!(b->model = strdup(cJSON_IsString(model) ? model->valuestring : "glmtp"))) abort();
    for (const cJSON *k = o->child; k; k = k->next)
        if (strcmp(k->string, "custom_id") && strcmp(k->string, "method") && strcmp(k->string, "url") &&
            strcmp(k->string, "body")) {
            oai_error(&r, 400, "invalid_request_error", k->string, NULL, "unrecognized batch line field: '%s'",
                      k->string);
            goto fail;
        }
    if (method && !(cJSON_IsString(method) && strcmp(method->valuestring, "POST") == 0)) {
        oai_error(&r, 400, "invalid_request_error", "method", NULL, "method must be \"POST\"");
        goto fail;
    }
    if (cJSON_IsString(url) && strcmp(url->valuestring, "/v1/chat/completions") == 0) b->chat = 1;
    else if (!(cJSON_IsString(url) && strcmp(url->valuestring, "/v1/completions") == 0)) {
        oai_error(&r, 400, "invalid_request_error", "url", NULL,
                  "URL %s was used. Supported endpoints: /v1/chat/completions, /v1/completions",
                  cJSON_IsString(url) ? url->valuestring : "(none)");
        goto fail;
    }
    if (!cJSON_IsObject(body)) {
        oai_bad_field(&r, "body", "must be a JSON object (the request)");
        goto fail;
    }
    if (oai_check_keys(body, b->chat ? oai_chat_keys : oai_text_keys, &r) ||
        oai_parse_params(ctx, b->chat, body, &p, &r))
        goto fail;
    if (p.stream || p.n != 1 || p.want_lp || p.n_stop_ids) {
        oai_bad_field(&r, p.stream ? "stream" : p.n != 1 ? "n" : p.want_lp ? "logprobs" : "stop_token_ids",
                      "not supported in batch files by glmtp generate");
        goto fail;
    }
    if (b->chat) {
        if (!(pr = calloc(1, sizeof *pr))) abort();
        n_pr = 1;
        if (oai_chat_prompt(ctx, body, pr, &b->names, &b->n_names, &r)) goto fail;
    } else {
        if (oai_parse_prompts(ctx, body, &pr, &n_pr, &r)) goto fail;
        if (n_pr != 1) {
            oai_bad_field(&r, "prompt", "one prompt per batch line in glmtp generate");
            goto fail;
        }
    }
    int max_new;
    if (oai_fit_length(ctx, pr[0].n, &p, &max_new, b->chat ? "messages" : "prompt", &r)) goto fail;
    b->echo = p.echo, b->prompt_text = pr[0].text, pr[0].text = NULL;
    gen_request *g = &out->g;
    g->prompt = pr[0].ids, g->n_prompt = pr[0].n, pr[0].ids = NULL;
    g->pixels = pr[0].pixels, g->img_kv0 = pr[0].img_kv0, g->content_hash = pr[0].hash, pr[0].pixels = NULL;
    g->max_new = max_new;
    g->temperature = p.temperature, g->top_p = p.top_p, g->top_k = p.top_k;
    g->seed = p.seed_given ? p.seed : ctx->defaults->seed + (uint64_t)line_no; /* as plain lines */
    g->strip_leading = b->chat, g->ignore_eos = p.ignore_eos;
    g->stop = p.stop, g->n_stop = p.n_stop, p.stop = NULL, p.n_stop = 0;
    oai_params_free(&p);
    oai_prompts_free(pr, n_pr);
    return;
fail:
    oai_params_free(&p);
    oai_prompts_free(pr, n_pr);
    batch_refuse(out, &r);
}

/* "<prefix><16 hex digits of custom_id's hash>" into buf. */
static void batch_id(const oai_batch *b, const char *prefix, char *buf, size_t cap) {
    char *j = cJSON_PrintUnformatted(b->custom_id);
    if (!j) abort();
    snprintf(buf, cap, "%s%016llx", prefix, (unsigned long long)util_fnv(UTIL_FNV_INIT, j, strlen(j)));
    free(j);
}

char *oai_batch_record(const req_line *r) {
    const oai_batch *b = r->batch;
    char id[96];
    cJSON *o = cJSON_CreateObject();
    batch_id(b, "batch_req_", id, sizeof id);
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddItemToObject(o, "custom_id", cJSON_Duplicate(b->custom_id, 1));
    cJSON *resp = cJSON_AddObjectToObject(o, "response");
    batch_id(b, "glmtp-batch-", id, sizeof id);
    cJSON_AddNumberToObject(resp, "status_code", r->error ? 400 : 200);
    cJSON_AddStringToObject(resp, "request_id", id);
    if (r->error) {
        /* the server's error body when the mapping refused it, else one made here (engine refusals) */
        oai_reply e = {0};
        if (!b->err_body) oai_error(&e, 400, "invalid_request_error", NULL, NULL, "%s", r->error);
        cJSON *eb = cJSON_Parse(b->err_body ? b->err_body : e.body);
        free(e.body);
        if (!eb) abort();
        const cJSON *ee = cJSON_GetObjectItemCaseSensitive(eb, "error");
        cJSON *err = cJSON_AddObjectToObject(o, "error");
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(ee, "type");
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(ee, "message");
        cJSON_AddStringToObject(err, "code", cJSON_IsString(ty) ? ty->valuestring : "invalid_request_error");
        cJSON_AddStringToObject(err, "message", cJSON_IsString(m) ? m->valuestring : r->error);
        cJSON_AddItemToObject(resp, "body", eb);
    } else {
        batch_id(b, b->chat ? "chatcmpl-" : "cmpl-", id, sizeof id);
        char *pt[1] = {b->prompt_text};
        oai_head h = {id, 0, b->model, b->chat, b->echo, pt, (const char *const *)b->names, b->n_names};
        oai_result c = {r->g.text ? r->g.text : "", r->g.n_out, r->g.n_prompt, 0, 0, r->g.finish, 0, NULL};
        cJSON_AddItemToObject(resp, "body", oai_response_json(&h, &c, 1));
        cJSON_AddNullToObject(o, "error");
    }
    size_t n;
    char *s = json_take(o, &n);
    char *line = realloc(s, n + 2);
    if (!line) abort();
    memcpy(line + n, "\n", 2);
    return line;
}
