/* requests.h: generation requests from JSONL lines (glmtp generate --input).
 *
 * A line is {"id": any, "prompt": "..."} (raw completion, [gMASK]<sop> prefix),
 * {"id", "messages": [{role, content, metadata?, tools?}], "tools"?} (chat), or
 * {"id", "input_ids": [...]} (token ids as given); optional max_new_tokens,
 * A chat message may carry GLM-4V's image: "image": "PATH" (files allowed
 * here), or OpenAI content parts with an image_url data URL (image_input.h);
 * an input_ids line places it itself (boi, placeholder, eoi) with a top-level
 * "image": "PATH" or data URL.
 * (or max_tokens, the OpenAI spelling), temperature, top_p, top_k, seed, stop
 * (string or list) override the defaults; keep_prefix (true, or a token
 * count) saves the prompt's prefix as a KV snapshot (--kv-snapshot-dir,
 * engine/kvstore.h); any other key is an error naming
 * it. Without a max_new_tokens the default is cut to the room the prompt
 * leaves in the context.
 * A bad line becomes a request with an error naming the line and field; it is
 * answered with finish_reason "error" and the other lines run. */
#ifndef GLMTP_REQUESTS_H
#define GLMTP_REQUESTS_H

#include <cjson/cJSON.h>

#include "../engine/gen_request.h"
#include "../text/tokenizer.h"

typedef struct req_defaults {
    int max_new;
    float temperature, top_p;
    int top_k;
    uint64_t seed;
} req_defaults;

/* Defaults from DIR/generation_config.json when present (do_sample true:
 * its temperature, top_p, top_k; false: greedy), else greedy like
 * transformers' GenerationConfig(); 256 new tokens unless it sets
 * max_new_tokens. (No implicit top_k = 50 as in transformers: vLLM's choice.) */
void req_defaults_load(req_defaults *d /* OUT */, const char *model_dir);

typedef struct req_line {
    int line_no;
    cJSON *id;   /* the line's "id" (owned), or null */
    char *error; /* NULL, or "line N: field 'x': ..." (owned) */
    struct oai_batch *batch; /* an OpenAI batch line (openai_map.h), owned: generate frees it
                              * (oai_batch_free) before req_line_free; NULL for plain lines */
    gen_request g;
} req_line;

typedef struct req_context {
    const req_defaults *defaults;
    const tokenizer *tok; /* NULL when the model has no tokenizer.model */
    const char *preamble; /* tool preamble */
    int seq_len;          /* the maximum model length: the context, or less (--max-model-len, the KV pool) */
    int n_vocab;          /* valid ids: [0, n_vocab) */
    int model_ctx;        /* the model's context when seq_len is less (named in errors), else 0 */
    const glm_config *cfg; /* the model's (GLM-4V: images), or NULL */
    int allow_files;      /* images may be named by file path (generate, chat; not network clients) */
} req_context;

/* Parses one line (text need not be NUL-terminated). Never fails as a whole:
 * problems land in out->error. line_no is 1-based. */
void req_parse(const req_context *ctx, const char *text, size_t len, int line_no, req_line *out /* OUT */);
/* The same with the image given apart (the serve channel's bytes, decoded by
 * the caller: image_input_bytes): pixels (owned from here, also on failure;
 * NULL: none) and hash fill the place of the message whose "image" key marks
 * it (its value is not read: no file or URL is opened), or input_ids' image
 * tokens. An image with nowhere to go (prompt input, no marked message, ids
 * without image tokens) is an error. */
void req_parse_image(const req_context *ctx, const char *text, size_t len, int line_no, float *pixels, uint64_t hash,
                     req_line *out /* OUT */);
void req_line_free(req_line *r); /* accepts NULL */

#endif
