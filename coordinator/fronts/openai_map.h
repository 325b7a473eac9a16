/* openai_map.h: the OpenAI request -> engine request mapping and the response
 * JSON of /v1/chat/completions and /v1/completions, without sockets or
 * threads: shared by serve --http (http/openai.c, which owns the calls and the
 * streams) and glmtp generate's OpenAI batch lines (below). */
#ifndef GLMTP_FRONTS_OPENAI_MAP_H
#define GLMTP_FRONTS_OPENAI_MAP_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "requests.h"

/* A reply: status and a malloc'ed body, or (stream != NULL, HTTP only) an SSE
 * stream to be read with oai_stream_read and released with oai_stream_free. */
typedef struct oai_reply {
    int status;
    char *body;
    size_t len;
    const char *ctype;
    struct oai_call *stream;
} oai_reply;

/* An OpenAI error body {"error": {message, type, param, code}} (param, code may be NULL). */
void oai_error(oai_reply *r /* OUT */, int status, const char *type, const char *param, const char *code,
               const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* A 400 invalid_request_error naming field. */
void oai_bad_field(oai_reply *r /* OUT */, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Fields each endpoint takes (NULL-terminated); anything else is a 400 naming it. */
extern const char *const oai_chat_keys[];
extern const char *const oai_text_keys[];
int oai_check_keys(const cJSON *o, const char *const *keys, oai_reply *r /* OUT on -1 */);
/* An optional boolean. Returns 1/0 (def when absent), or -1 after a 400. */
int oai_get_bool(const cJSON *o, const char *f, int def, oai_reply *r /* OUT on -1 */);

/* The sampling fields shared by every choice of a request. */
typedef struct oai_params {
    int max_new, max_given, n, stream, include_usage, echo, ignore_eos, top_k;
    float temperature, top_p;
    int want_lp, top_n; /* logprobs: asked; alternatives per token */
    int ids_as_tokens;
    int seed_given;
    uint64_t seed;
    char **stop; /* owned */
    int n_stop;
    int *stop_ids, n_stop_ids; /* owned */
} oai_params;
/* Reads the sampling fields (defaults from ctx). Returns 0, or -1 with r
 * filled; p is to be freed with oai_params_free either way. */
int oai_parse_params(const req_context *ctx, int chat, const cJSON *b, oai_params *p /* OUT */, oai_reply *r);
void oai_params_free(oai_params *p);

/* One prompt's ids as the request gives them. */
typedef struct oai_prompt {
    int *ids, n; /* owned; with an image: the KV sequence, the image's rows in place (image_place.h) */
    char *text;  /* owned; for echo (decoded when given as ids) */
    /* GLM-4V (chat): the conversation's image, or pixels NULL. Each choice's
     * gen_request gets its own copy (oai_prompt_image_copy). */
    float *pixels;   /* owned; [in_ch, image, image] fp32 */
    size_t n_pixels; /* floats */
    uint64_t hash;   /* gen_request.content_hash */
    int img_kv0;     /* gen_request.img_kv0 */
} oai_prompt;
/* Gives g (whose prompt holds p's ids) a copy of p's image, if any. */
void oai_prompt_image_copy(const oai_prompt *p, gen_request *g);
/* [gMASK]<sop> + the text's ids (malloc'ed): `glmtp generate`'s "prompt". */
int *oai_encode_text(const tokenizer *tok, const char *s, int *n /* OUT */);
/* ids from a JSON list into p; -1 with a 400 naming field. */
int oai_ids_from_json(const req_context *ctx, const cJSON *a, const char *field, oai_prompt *p, oai_reply *r);
/* /v1/completions "prompt": a string, a list of strings, a list of ids, or a
 * list of lists of ids, into *out (*n_out of them, owned by the caller even on
 * failure: oai_prompts_free). Ids holding an image's tokens are refused (no
 * image comes with a completion). Returns 0, or -1 with r filled. */
int oai_parse_prompts(const req_context *ctx, const cJSON *b, oai_prompt **out, int *n_out, oai_reply *r);
void oai_prompts_free(oai_prompt *p, int n);
/* /v1/chat/completions "messages" (+ tools, tool_choice) into pr (one prompt);
 * names, n_names: the tool names a reply may call (malloc'ed, NULL-terminated,
 * non-NULL on success). GLM-4V: content may be a list of text and image_url
 * parts (what the openai client sends for vision); the conversation's one
 * image, a data URL (data:image/png|jpeg|webp;base64,...; a file path too
 * where ctx->allow_files, i.e. generate's batch lines), is decoded here into
 * pr->pixels and the prompt expanded around it. A bad image is a 400 naming
 * its field (messages[i].content[k].image_url.url) with the cause: not a
 * data URL, bad base64, undecodable or truncated, over the pixel or byte
 * limits (coordinator/image/image.h), a second image, a model without a
 * vision tower. Returns 0, or -1 with r filled. */
int oai_chat_prompt(const req_context *ctx, const cJSON *b, oai_prompt *pr, char ***names, int *n_names,
                    oai_reply *r);
/* Checks the length against the maximum model length (and cuts a default
 * max_tokens to the room left, as `glmtp generate` does). 0, or -1 with r filled. */
int oai_fit_length(const req_context *ctx, int n_prompt, const oai_params *p, int *max_new /* OUT */,
                   const char *field, oai_reply *r);

/* ==== Responses ==== */

/* One finished choice, as the response builders read it. */
typedef struct oai_result {
    const char *text;     /* the generated text */
    int n_ids, n_prompt, n_cached, prompt_index;
    const char *reason;   /* "stop", "length", or anything else (reported as "abort") */
    int is_call;          /* set by oai_response_json (chat): the text parsed as tool calls */
    cJSON *lp;            /* the choice's "logprobs", or NULL; oai_response_json takes it */
} oai_result;

/* What the response says besides the choices. */
typedef struct oai_head {
    const char *id;
    long created;
    const char *model;
    int chat, echo;
    char *const *prompt_text;  /* completions echo: per prompt (entries may be NULL) */
    const char *const *names;  /* chat: tool names a call may use */
    int n_names;
} oai_head;

const char *oai_finish_name(const char *reason, int is_call);
/* The "usage" object of n choices (a prompt counts once, whatever n). */
cJSON *oai_usage_json(const oai_result *ch, int n);
/* The whole non-streamed response (chat.completion or text_completion). */
cJSON *oai_response_json(const oai_head *h, oai_result *ch, int n);

/* ==== glmtp generate: OpenAI batch lines ==== */

/* Whether a parsed input line is an OpenAI batch line: an object with
 * "custom_id" and "body". */
int oai_batch_is_line(const cJSON *o);

/* What a batch line's record needs besides the gen_request (owned by req_line.batch). */
typedef struct oai_batch {
    cJSON *custom_id; /* owned */
    int chat, echo;
    char *model;      /* the body's "model", or "glmtp" */
    char *prompt_text; /* completions echo */
    char **names;
    int n_names;
    char *err_body;   /* a 400 before any generation: the HTTP server's error JSON (owned) */
} oai_batch;

/* Parses batch line o (line_no 1-based) into out: out->batch set, and either
 * out->g ready to run or out->error and out->batch->err_body set. */
void oai_batch_parse(const req_context *ctx, const cJSON *o, int line_no, req_line *out /* OUT */);
void oai_batch_free(oai_batch *b); /* accepts NULL */
/* The output record of a finished batch line (one JSON line, newline
 * included, malloc'ed). Deterministic: ids derive from custom_id, created is 0. */
char *oai_batch_record(const req_line *r);
/* The resume key of a batch line or of its record: "custom_id " + compact JSON. */
char *oai_batch_key(const cJSON *custom_id);

#endif
