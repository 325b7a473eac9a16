/* sched.h: continuous batching on rank 0, the one scheduler of generate,
 * chat, bench throughput and serve.
 *
 * Each step carries one decode token for every running request whose prompt is
 * in the KV cache, then prompt chunks (running requests first, then waiting
 * ones in arrival order) up to the step's token budget (chunked prefill). Block
 * tables grow per step, only as far as the step needs. When the pool runs dry
 * the newest running request not yet in this step is preempted: its blocks are
 * freed and it waits again with prompt + generated tokens as what it has to
 * feed (recompute); its sampled tokens and RNG state stay, so outputs do not
 * change. Sampling is per request (own seed), so a request's tokens do not
 * depend on what it is batched with.
 *
 * Blocks come from the engine's prefix cache (prefix_cache.h). On admission a
 * request takes the cached blocks that start its known tokens (whole blocks,
 * never the one holding its last token) and feeds only the rest: n_fed starts
 * past them. After each step the blocks that became full are registered,
 * prompt and generated tokens alike. Preemption, removal and finishing drop the
 * request's references; its registered blocks stay cached until evicted.
 *
 * With a snapshot store (engine.snap, kvstore.h), admission first loads a
 * snapshot on disk that holds more of the request's prompt than the cache,
 * and a request with keep_prefix has that prefix's blocks saved once its
 * prompt has been fed that far.
 *
 * Logprobs (gen_request want_logprobs): a step whose sampled rows include one
 * of such a request takes the plain logits head (all its rows, vocab * 4 bytes
 * each, gathered to rank 0: 0.6 MB a row for GLM-4-9B) and samples on rank 0
 * with sampling_sample_host, which picks what the devices' sample head would;
 * steps without such rows are unchanged. want_prompt_logprobs adds a row for
 * every prompt position (prompt chunk tokens * vocab * 4 bytes) and makes the
 * request skip the prefix cache until its prompt's logprobs are known.
 *
 * Images (GLM-4V, gen_request pixels): a request's image is encoded (the
 * vision tower, on every rank: engine_image) into a free image slot just
 * before the first step that feeds one of its rows, and the slot is freed
 * once the prompt is past them (or the request leaves or is preempted; a
 * recompute encodes again). Every token of such a request gets its RoPE
 * position from image_place.h. */
#ifndef GLMTP_SCHED_H
#define GLMTP_SCHED_H

#include "gen_request.h"

/* A request as the scheduler holds it. The owner allocates it (or embeds it
 * first in its own struct), fills g and stop_ids, and frees it after
 * on_finish. */
typedef struct sched_req {
    gen_request *g;     /* input and output (not owned) */
    const char *name;   /* for the step log */
    const int *stop_ids; /* extra stop token ids (not owned; may be NULL) */
    int n_stop_ids;
    /* the scheduler's */
    int arrival, n_fed, running;
    int n_cached;   /* tokens taken from the prefix cache at its last admission */
    int n_hashed;   /* leading blocks of its table keyed in the cache's chain */
    uint64_t chain; /* the key of block n_hashed - 1 (PCACHE_ROOT when none) */
    int kept;       /* its keep_prefix snapshot is done (saved, or nothing to save) */
    int img_slot;   /* the forward's image slot holding its image's embeddings; -1: none */
} sched_req;

/* What a step planned: requests and how many tokens each feeds. */
typedef struct sched_plan {
    sched_req **req;
    int *chunk, n, tokens;
} sched_plan;

typedef struct sched_hooks {
    /* After r accepted a token and is still running (may be NULL). */
    void (*on_token)(void *user, sched_req *r);
    /* r has finished (r->g->finish set) and left the scheduler, its blocks freed. */
    void (*on_finish)(void *user, sched_req *r);
    /* After each step, with its plan and wall time (may be NULL). */
    void (*on_step)(void *user, const sched_plan *p, double seconds);
    void *user;
} sched_hooks;

typedef struct sched {
    engine *e;
    const tokenizer *tok; /* may be NULL: no text */
    gen_options go;       /* gen_accept_token's options (text callback) */
    sched_hooks hooks;
    sched_req **run, **wait; /* running (oldest first), waiting (arrival order) */
    int n_run, n_wait, cap, arrivals;
    long steps, preemptions, generated;
    long images, images_shared; /* vision tower runs, and image requests that found their image in a slot */
    double tps; /* sampled tokens per second, smoothed over steps */
    char *dbuf; /* detokenizer scratch, dcap bytes */
    size_t dcap;
    int *blk; /* one block's token ids (block_size) */
    /* Image slots (forward.h), [n_img_slots] each: how many requests read the
     * slot (0: free) and the content hash of the image in it. Requests with the
     * same image at once (n choices, or one photo asked about twice) share one
     * slot, so the vision tower runs once for them. */
    int *img_refs;
    uint64_t *img_hash;
    int n_img_slots;
} sched;

void sched_init(sched *q, engine *e, const tokenizer *tok, const gen_options *go, const sched_hooks *h);
void sched_free(sched *q); /* the scheduler's own memory; requests still in it are the owner's */
/* Queues r to wait for admission. r->g must fit the KV pool (gen_fits). */
void sched_add(sched *q, sched_req *r);
/* Takes r out (running or waiting), dropping its block references; on_finish
 * is not called. */
void sched_remove(sched *q, sched_req *r);
/* Plans, runs and samples one step of at most budget tokens. Returns 0 when
 * there was nothing to run. */
int sched_step(sched *q, int budget);

#endif
