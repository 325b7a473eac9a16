/* gen_request.h: one request being generated on rank 0: its prompt, sampling
 * parameters and output (ids and text), and how a sampled token is taken into
 * it (stop ids, stop strings, max_new). The scheduler (sched.h) owns the steps;
 * this file knows nothing of batching. */
#ifndef GLMTP_GEN_REQUEST_H
#define GLMTP_GEN_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "../text/tokenizer.h"
#include "engine.h"

typedef struct gen_request {
    /* input, owned by the request */
    int *prompt;
    int n_prompt;
    int max_new;
    float temperature; /* 0: greedy */
    float top_p;
    int top_k;
    uint64_t seed;
    char **stop; /* stop strings */
    int n_stop;
    int strip_leading; /* drop whitespace before the first visible character (chat replies) */
    int ignore_eos;    /* keep going past the model's stop ids (benchmarks, tests) */
    uint64_t content_hash; /* non-text content (images; 0 for text): part of every prefix-cache key */
    /* GLM-4V: the image's pixels (owned; [in_ch, image, image] fp32, normalised)
     * and the KV index of its boi row in prompt, which holds the image's
     * rows already (image_place.h); img_kv0 -1 and pixels NULL without one. */
    float *pixels;
    int img_kv0;
    int keep_prefix; /* save a KV snapshot of this many prompt tokens' full blocks (kvstore.h); -1: all; 0: none */
    /* Log-probabilities (OpenAI logprobs), of the raw logits (temperature and
     * top-k/p do not enter), normalised over the whole padded vocab in double as
     * `glmtp score` does. Asking costs whole logit rows on rank 0 (sched.h). */
    int want_logprobs;        /* 1: keep lp (and top_n alternatives) for each generated token */
    int top_n;                /* 0..GEN_MAX_TOP alternatives per position, among the tokenizer's ids */
    int want_prompt_logprobs; /* 1 (with want_logprobs): also plp for the prompt (a prefill with every
                               * position's logits; such a prompt takes nothing from the prefix cache) */
    /* output */
    int *out; /* generated ids, stop token excluded */
    int n_out;
    char *text; /* decoded, NUL-terminated (NULL without a tokenizer) */
    size_t text_len;
    const char *finish; /* "stop", "length", or NULL while running */
    /* logprobs output, owned, NULL unless asked: lp[i] = log p(out[i] | what
     * precedes it); top_id/top_lp [i * top_n + k]: the k-th most likely id at
     * that position (descending, ties to the lower id). plp, ptop_id, ptop_lp:
     * the same for prompt positions [0, n_plp) ([n_prompt] arrays); position 0
     * has none (plp NAN, ptop_id -1). */
    double *lp, *top_lp, *plp, *ptop_lp;
    int *top_id, *ptop_id;
    int n_plp;
    /* private */
    int cap_out;
    int cap_lp;
    size_t text_cap;
    tok_decoder dec;
    kv_seq kv;
    uint64_t rng;
} gen_request;

/* Called on rank 0 for each new piece of a request's text (may be empty when a
 * token ends mid-character). */
typedef void (*gen_stream_fn)(void *user, gen_request *r, const char *delta, size_t len);

typedef struct gen_options {
    int step_tokens;     /* token budget per step (prefill chunk size) */
    int progress;        /* 1: progress on stderr */
    gen_stream_fn on_text; /* optional */
    void *user;
} gen_options;

/* Whether a request of this size can ever be admitted into e's KV pool (every
 * block counts: cached blocks nobody references are evictable). */
int gen_fits(const engine *e, int n_prompt, int max_new);

/* Appends sampled token id to r (text through tok when not NULL, o->on_text
 * called with the new text) and sets r->finish when it is a stop id, a stop
 * string appeared, or max_new is reached. buf: scratch of cap bytes, at least
 * 3 * (tok_max_token_len + 4). Called by the scheduler (sched.c). */
void gen_accept_token(engine *e, const tokenizer *tok, gen_request *r, int id, const gen_options *o, char *buf,
                      size_t cap);

#define GEN_MAX_TOP 20

/* Stores the logprobs of position pos from its logit row row[0..V) (V: the
 * padded vocab; alternatives among ids [0, n_real)): prompt 0: out[pos] given
 * what precedes it (pos < n_out); prompt 1: prompt[pos] (1 <= pos < n_prompt),
 * row being position pos - 1's. Arrays grow as needed. */
void gen_store_logprobs(gen_request *r, int prompt, int pos, const float *row, int V, int n_real);

/* Appends the bytes of a character left unfinished by the last token (the
 * request has ended; no-op without text). */
void gen_flush_text(gen_request *r);

/* Frees a request's input and output; accepts NULL. */
void gen_request_free(gen_request *r);

#endif
