/* JSONL request parsing and validation (see requests.h). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../worker/util.h"
#include "../text/chat_template.h"
#include "image_input.h"
#include "requests.h"

void req_defaults_load(req_defaults *d, const char *model_dir) {
    /* Without a generation_config.json: greedy, as transformers' GenerationConfig(). */
    *d = (req_defaults){256, 0.0f, 1.0f, 0, 0};
    char path[4096], err[256];
    snprintf(path, sizeof path, "%s/generation_config.json", model_dir);
    size_t len;
    char *text = util_read_file(path, &len, err, sizeof err);
    if (!text) return;
    cJSON *g = cJSON_ParseWithLength(text, len);
    free(text);
    if (!g) return;
    const cJSON *v;
    int sample = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(g, "do_sample"));
    d->temperature = sample ? 1.0f : 0.0f;
    /* Values outside what a request line may ask for (req_parse's ranges) are
     * ignored: converting 1e300 to int or float is undefined. */
    if (sample && cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(g, "temperature")) && v->valuedouble >= 0 &&
        v->valuedouble <= 1e4)
        d->temperature = (float)v->valuedouble;
    /* (float) of a tiny positive top_p is 0, which no sampler takes */
    if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(g, "top_p")) && v->valuedouble > 0 && v->valuedouble <= 1 &&
        (float)v->valuedouble > 0)
        d->top_p = (float)v->valuedouble;
    if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(g, "top_k")) && v->valuedouble >= 0 && v->valuedouble <= 1e9)
        d->top_k = (int)v->valuedouble;
    if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(g, "max_new_tokens")) && v->valuedouble >= 1 &&
        v->valuedouble <= 1e9)
        d->max_new = (int)v->valuedouble;
    cJSON_Delete(g);
}

static void set_error(req_line *r, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_error(req_line *r, int line, const char *fmt, ...) {
    if (r->error) return;
    char msg[1024];
    int k = snprintf(msg, sizeof msg, "line %d: ", line);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + k, sizeof msg - (size_t)k, fmt, ap);
    va_end(ap);
    r->error = strdup(msg);
    if (!r->error) abort();
}

/* Optional number field in [lo, hi] (lo_open: > lo). Returns 1 if present and valid. */
static int get_num(req_line *r, int line, const cJSON *o, const char *f, double lo, int lo_open, double hi,
                   double *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, f);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || (lo_open ? v->valuedouble <= lo : v->valuedouble < lo) ||
        v->valuedouble > hi) {
        set_error(r, line, "field '%s': must be a number in %s%g, %g]", f, lo_open ? "(" : "[", lo, hi);
        return 0;
    }
    *out = v->valuedouble;
    return 1;
}

static int get_int(req_line *r, int line, const cJSON *o, const char *f, double lo, double hi, double *out) {
    if (!get_num(r, line, o, f, lo, 0, hi, out)) return 0;
    if (*out != floor(*out)) {
        set_error(r, line, "field '%s': must be an integer", f);
        return 0;
    }
    return 1;
}

static void parse_stop(req_line *r, int line, const cJSON *o) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "stop");
    if (!v || cJSON_IsNull(v)) return;
    int n = cJSON_IsString(v) ? 1 : cJSON_IsArray(v) ? cJSON_GetArraySize(v) : -1;
    if (n < 0) {
        set_error(r, line, "field 'stop': must be a string or a list of strings");
        return;
    }
    r->g.stop = calloc((size_t)(n ? n : 1), sizeof(char *));
    if (!r->g.stop) abort();
    for (int i = 0; i < n; i++) {
        const cJSON *s = cJSON_IsString(v) ? v : cJSON_GetArrayItem(v, i);
        if (!cJSON_IsString(s)) {
            set_error(r, line, "field 'stop[%d]': must be a string", i);
            return;
        }
        r->g.stop[r->g.n_stop++] = strdup(s->valuestring);
    }
}

/* "keep_prefix": true (the prompt's full blocks), false, or a token count. */
static void parse_keep(req_line *r, int line, const cJSON *o) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "keep_prefix");
    double n;
    if (!v || cJSON_IsNull(v)) return;
    if (cJSON_IsBool(v))
        r->g.keep_prefix = cJSON_IsTrue(v) ? -1 : 0;
    else if (get_int(r, line, o, "keep_prefix", 0, 1 << 30, &n))
        r->g.keep_prefix = (int)n;
}

/* An image given apart from the line (req_parse_image); parse_messages and
 * parse_ids take px (set it NULL). */
typedef struct given_image {
    float *px;
    uint64_t hash;
} given_image;

static void parse_messages(const req_context *c, req_line *r, int line, const cJSON *o, const cJSON *msgs,
                           given_image *gi) {
    char err[1024] = "";
    if (chat_encode_json(c->tok, msgs, cJSON_GetObjectItemCaseSensitive(o, "tools"), c->preamble, 1, &r->g.prompt,
                         &r->g.n_prompt, err, sizeof err)) {
        set_error(r, line, "%s", err);
        return;
    }
    r->g.strip_leading = 1;
    const char *src;
    char field[64];
    float *px;
    uint64_t hash;
    if (chat_image_source(msgs, &src, field, sizeof field, err, sizeof err)) {
        set_error(r, line, "%s", err);
    } else if (src && gi->px) {
        px = gi->px, gi->px = NULL;
        if (image_input_attach(&r->g, c->cfg, px, gi->hash, err, sizeof err))
            set_error(r, line, "field '%s': %s", field, err);
    } else if (src) {
        if (image_input_load(src, c->cfg, c->allow_files, &px, &hash, err, sizeof err) ||
            image_input_attach(&r->g, c->cfg, px, hash, err, sizeof err))
            set_error(r, line, "field '%s': %s", field, err);
    } else if (gi->px) {
        set_error(r, line, "field 'image': no message is marked as the image's (\"image\")");
    } else if (c->cfg && image_input_check_ids(r->g.prompt, r->g.n_prompt, c->cfg, err, sizeof err)) {
        set_error(r, line, "field 'messages': %s", err);
    }
}

static void parse_ids(const req_context *c, req_line *r, int line, const cJSON *v, given_image *gi) {
    int n = cJSON_GetArraySize(v);
    if (!cJSON_IsArray(v) || n == 0) {
        set_error(r, line, "field 'input_ids': must be a non-empty list of token ids");
        return;
    }
    r->g.prompt = malloc(sizeof(int) * (size_t)n);
    if (!r->g.prompt) abort();
    for (int i = 0; i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(v, i);
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) || e->valuedouble < 0 ||
            e->valuedouble >= c->n_vocab) {
            set_error(r, line, "field 'input_ids[%d]': must be a token id in [0, %d)", i, c->n_vocab);
            return;
        }
        r->g.prompt[r->g.n_prompt++] = (int)e->valuedouble;
    }
    char err[512];
    if (gi->px) { /* the ids' image tokens are its place */
        float *px = gi->px;
        gi->px = NULL;
        if (image_input_attach(&r->g, c->cfg, px, gi->hash, err, sizeof err))
            set_error(r, line, "field 'input_ids': %s", err);
    } else if (c->cfg && image_input_check_ids(r->g.prompt, r->g.n_prompt, c->cfg, err, sizeof err))
        set_error(r, line, "field 'input_ids': %s", err);
}

static void parse_prompt(const req_context *c, req_line *r, int line, const cJSON *v) {
    if (!cJSON_IsString(v)) {
        set_error(r, line, "field 'prompt': must be a string");
        return;
    }
    int *ids, n;
    if (tok_encode(c->tok, v->valuestring, strlen(v->valuestring), &ids, &n)) abort();
    r->g.prompt = malloc(sizeof(int) * (size_t)(n + 2));
    if (!r->g.prompt) abort();
    r->g.prompt[0] = tok_special_id(c->tok, "[gMASK]");
    r->g.prompt[1] = tok_special_id(c->tok, "<sop>");
    if (n) memcpy(r->g.prompt + 2, ids, sizeof(int) * (size_t)n); /* an empty prompt has ids NULL */
    r->g.n_prompt = n + 2;
    free(ids);
}

/* The keys a request line may hold; "max_tokens" is the OpenAI spelling of
 * "max_new_tokens". Anything else is an error naming it: a misspelt option
 * must not run with the default silently. */
static const char *const known_keys[] = {"id",    "prompt", "messages", "input_ids", "tools", "max_new_tokens",
                                         "max_tokens", "temperature", "top_p", "top_k", "seed", "stop",
                                         "keep_prefix", "image"};

static void check_keys(req_line *r, int line, const cJSON *o) {
    for (const cJSON *k = o->child; k; k = k->next) {
        size_t i = 0;
        while (i < sizeof known_keys / sizeof known_keys[0] && strcmp(k->string, known_keys[i]) != 0) i++;
        if (i == sizeof known_keys / sizeof known_keys[0]) {
            set_error(r, line, "unknown field '%s' (known: id, prompt | messages [+ tools] | input_ids [+ image], "
                               "max_new_tokens or max_tokens, temperature, top_p, top_k, seed, stop, keep_prefix)",
                      k->string);
            return;
        }
    }
    if (cJSON_GetObjectItemCaseSensitive(o, "max_new_tokens") && cJSON_GetObjectItemCaseSensitive(o, "max_tokens"))
        set_error(r, line, "fields 'max_new_tokens' and 'max_tokens' are the same option: give one");
}

void req_parse(const req_context *c, const char *text, size_t len, int line_no, req_line *r) {
    req_parse_image(c, text, len, line_no, NULL, 0, r);
}

void req_parse_image(const req_context *c, const char *text, size_t len, int line_no, float *pixels, uint64_t hash,
                     req_line *r) {
    given_image gi = {pixels, hash};
    memset(r, 0, sizeof *r);
    r->line_no = line_no;
    const req_defaults *d = c->defaults;
    r->g.max_new = d->max_new;
    r->g.temperature = d->temperature;
    r->g.top_p = d->top_p;
    r->g.top_k = d->top_k;
    r->g.seed = d->seed + (uint64_t)line_no; /* distinct default seed per line */
    cJSON *o = cJSON_ParseWithLength(text, len);
    if (!o || !cJSON_IsObject(o)) {
        set_error(r, line_no, "not a JSON object");
        r->id = cJSON_CreateNull();
        cJSON_Delete(o);
        free(gi.px);
        return;
    }
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
    r->id = id ? cJSON_Duplicate(id, 1) : cJSON_CreateNull();
    check_keys(r, line_no, o);

    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(o, "prompt");
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(o, "messages");
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(o, "input_ids");
    int n_inputs = !!prompt + !!msgs + !!ids;
    if (n_inputs != 1)
        set_error(r, line_no, n_inputs ? "fields 'prompt', 'messages', 'input_ids': give exactly one"
                                       : "field 'prompt': missing (or give 'messages' or 'input_ids')");
    else if (!c->tok && !ids)
        set_error(r, line_no, "field '%s': the model directory has no tokenizer.model; give 'input_ids'",
                  prompt ? "prompt" : "messages");
    const cJSON *img = cJSON_GetObjectItemCaseSensitive(o, "image");
    if (img && !cJSON_IsNull(img) && !r->error) { /* an input_ids line's image: its ids place it */
        char err[1024];
        if (!ids)
            set_error(r, line_no, "field 'image': goes with 'input_ids' (in 'messages', a message's \"image\" or an "
                                  "image_url part places it)");
        else if (gi.px)
            set_error(r, line_no, "field 'image': the request carries its image already");
        else if (!cJSON_IsString(img))
            set_error(r, line_no, "field 'image': must be a string (a file path or a data URL)");
        else if (image_input_load(img->valuestring, c->cfg, c->allow_files, &gi.px, &gi.hash, err, sizeof err))
            set_error(r, line_no, "field 'image': %s", err);
    }
    if (!r->error) {
        if (prompt)
            parse_prompt(c, r, line_no, prompt);
        else if (msgs)
            parse_messages(c, r, line_no, o, msgs, &gi);
        else
            parse_ids(c, r, line_no, ids, &gi);
    }
    if (gi.px && !r->error) set_error(r, line_no, "field 'image': a prompt takes no image (give messages or input_ids)");
    free(gi.px);

    double v;
    int max_given = get_int(r, line_no, o, "max_new_tokens", 1, 1e9, &v) || get_int(r, line_no, o, "max_tokens", 1, 1e9, &v);
    if (max_given) r->g.max_new = (int)v;
    if (get_num(r, line_no, o, "temperature", 0, 0, 1e4, &v)) r->g.temperature = (float)v;
    if (get_num(r, line_no, o, "top_p", 0, 1, 1, &v)) {
        r->g.top_p = (float)v;
        if (!(r->g.top_p > 0)) set_error(r, line_no, "field 'top_p': %g is 0 as a float; must be in (0, 1]", v);
    }
    if (get_int(r, line_no, o, "top_k", 0, 1e9, &v)) r->g.top_k = (int)v;
    if (get_int(r, line_no, o, "seed", 0, 9007199254740991.0, &v)) r->g.seed = (uint64_t)v;
    parse_stop(r, line_no, o);
    parse_keep(r, line_no, o);
    /* The default fits the room the prompt leaves (vLLM's default is the rest
     * of the context); a limit the line asked for is checked as given. */
    if (!r->error && !max_given && r->g.n_prompt < c->seq_len && r->g.n_prompt + r->g.max_new > c->seq_len)
        r->g.max_new = c->seq_len - r->g.n_prompt;
    if (!r->error && r->g.n_prompt + r->g.max_new > c->seq_len) {
        const char *f = prompt ? "prompt" : msgs ? "messages" : "input_ids";
        char lim[160];
        if (c->model_ctx > c->seq_len)
            snprintf(lim, sizeof lim, "the maximum model length %d (--max-model-len, or what the KV pool holds; the "
                     "model's context is %d)", c->seq_len, c->model_ctx);
        else
            snprintf(lim, sizeof lim, "the context length %d", c->seq_len);
        if (max_given)
            set_error(r, line_no, "field '%s': prompt of %d tokens plus max_new_tokens %d exceeds %s", f,
                      r->g.n_prompt, r->g.max_new, lim);
        else
            set_error(r, line_no, "field '%s': prompt of %d tokens leaves no room in %s", f, r->g.n_prompt, lim);
    }
    cJSON_Delete(o);
}

void req_line_free(req_line *r) {
    if (!r) return;
    cJSON_Delete(r->id);
    free(r->error);
    gen_request_free(&r->g);
}
