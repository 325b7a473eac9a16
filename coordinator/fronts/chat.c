/* glmtp chat: interactive multi-turn chat on rank 0's terminal, like
 * model.chat(history) in Python: the whole history is re-encoded each turn
 * (the prefix cache still holds its KV, so a turn feeds little more than the
 * new message) and the reply streams as it is generated. Commands: /reset,
 * /system TEXT, /image PATH (GLM-4V: the next message is about that image;
 * one per conversation), /exit. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../worker/log.h"
#include "../base/args.h"
#include "../base/commands.h"
#include "../engine/engine.h"
#include "../engine/capacity.h"
#include "../engine/gen_batch.h"
#include "../text/chat_template.h"
#include "image_input.h"
#include "requests.h"

typedef struct history {
    chat_message *m;
    char **owned; /* role-independent copies of contents */
    int n, cap;
} history;

static void hist_push(history *h, const char *role, const char *content) {
    if (h->n == h->cap) {
        h->cap = h->cap ? 2 * h->cap : 16;
        h->m = realloc(h->m, sizeof *h->m * (size_t)h->cap);
        h->owned = realloc(h->owned, sizeof *h->owned * (size_t)h->cap);
        if (!h->m || !h->owned) abort();
    }
    h->owned[h->n] = strdup(content);
    if (!h->owned[h->n]) abort();
    h->m[h->n] = (chat_message){role, h->owned[h->n], NULL, NULL, 0};
    h->n++;
}

static void hist_pop(history *h) { free(h->owned[--h->n]); }

static void hist_clear(history *h, const char *system) {
    while (h->n) hist_pop(h);
    if (system && system[0]) hist_push(h, "system", system);
}

static void on_text(void *user, gen_request *r, const char *delta, size_t len) {
    (void)user, (void)r;
    fwrite(delta, 1, len, stdout);
    fflush(stdout);
}

/* One turn: encode history, generate, print; returns the reply (malloc'ed) or NULL. */
/* GLM-4V: the conversation's image (/image PATH), sent with every turn. */
typedef struct chat_image {
    float *pixels; /* NULL: none */
    size_t n;      /* floats */
    uint64_t hash;
    int pending;   /* 1: the next user message carries it */
} chat_image;

static char *turn(engine *e, const tokenizer *tok, const history *h, const chat_image *im, const char *preamble,
                  const req_defaults *d, int limit, uint64_t seed) {
    char err[1024];
    gen_request r = {0};
    if (chat_encode(tok, h->m, h->n, NULL, preamble, 1, &r.prompt, &r.n_prompt, err, sizeof err)) {
        fprintf(stderr, "glmtp: chat: %s\n", err);
        return NULL;
    }
    if (im->pixels && !im->pending) { /* a copy: the request owns its pixels */
        float *px = malloc(im->n * sizeof(float));
        if (!px) abort();
        memcpy(px, im->pixels, im->n * sizeof(float));
        if (image_input_attach(&r, &e->m->cfg, px, im->hash, err, sizeof err)) {
            fprintf(stderr, "glmtp: chat: %s\n", err);
            gen_request_free(&r);
            return NULL;
        }
    }
    r.max_new = d->max_new;
    if (r.n_prompt + r.max_new > limit) {
        fprintf(stderr,
                "glmtp: chat: the history is %d tokens; with %d new tokens it exceeds the context of %d tokens. "
                "Use /reset.\n",
                r.n_prompt, r.max_new, limit);
        gen_request_free(&r);
        return NULL;
    }
    r.temperature = d->temperature;
    r.top_p = d->top_p;
    r.top_k = d->top_k;
    r.seed = seed;
    r.strip_leading = 1;
    gen_options go = {512, 0, on_text, NULL};
    gen_run(e, tok, &r, 1, &go);
    printf("\n");
    char *reply = strdup(r.text ? r.text : "");
    gen_request_free(&r);
    return reply;
}

static const args_opt chat_opts[] = {
    {"--model", "DIR", "checkpoint directory with tokenizer.model; required"},
    {"--system", "TEXT", "system prompt of the conversation"},
    {"--max-new-tokens", "N", "new tokens per request (default: generation_config.json, else 256; at most the room left in the context)"},
    {"--temperature", "T", "sampling temperature, 0 = greedy (default: generation_config.json, else greedy)"},
    {"--top-p", "P", "nucleus sampling (default: generation_config.json, else 1)"},
    {"--top-k", "K", "top-k sampling, 0 = off (default: generation_config.json, else 0)"},
    {"--seed", "S", "base seed of sampled requests (default 0)"},
    {"--no-prefix-cache", NULL, "do not reuse the KV blocks of a prompt prefix seen before"},
    {"--max-model-len", "N", "longest conversation (history + reply; default: the model's seq_length, cut to the KV pool with a warning); must fit the pool"},
    {NULL, NULL, NULL},
};

const args_spec cmd_chat_spec = {
    "glmtp chat",
    "--model DIR [--system TEXT] [options]",
    "Interactive multi-turn chat on rank 0's terminal; replies stream as they are generated.",
    {chat_opts, args_engine_opts, args_log_opts, NULL},
    "commands at the prompt: /reset (clear the history), /system TEXT (new system prompt), /image PATH (GLM-4V: "
    "the next message is about this JPEG/PNG/WebP image), /exit (or end of input)\n",
};

int cmd_chat(comm *c, int argc, char **argv) {
    if (engine_check_args(c, argc, argv)) return 1;
    args a;
    args_init(&a, &cmd_chat_spec, argc, argv);
    const char *dir = args_str(&a, "--model", NULL);
    req_defaults d;
    req_defaults_load(&d, dir ? dir : ".");
    const char *system = args_str(&a, "--system", NULL);
    d.max_new = (int)args_int(&a, "--max-new-tokens", d.max_new, 1, 1 << 30);
    d.temperature = (float)args_num(&a, "--temperature", d.temperature, 0.0, 1e4);
    d.top_p = (float)args_num(&a, "--top-p", d.top_p, 1e-9, 1.0);
    d.top_k = (int)args_int(&a, "--top-k", d.top_k, 0, 1 << 30);
    uint64_t seed = (uint64_t)args_int(&a, "--seed", 0, 0, 2147483647L);
    int threads = (int)args_int(&a, "--threads", 0, 0, 1024);
    const char *device = args_str(&a, "--device", "cpu"), *comm_kind = args_str(&a, "--comm", NULL);
    int kv_tokens = (int)args_int(&a, "--kv-tokens", 0, 0, 1 << 30); /* 0: from GPU memory (65536 on CPU) */
    double mem_util = args_num(&a, "--gpu-memory-utilization", ENGINE_GPU_MEM_UTIL, 0.01, 1.0);
    int kv_dtype = args_kv_dtype(&a);
    int no_prefix_cache = args_flag(&a, "--no-prefix-cache");
    int max_model_len = (int)args_int(&a, "--max-model-len", 0, 1, 1 << 30);
    if (!a.failed && !dir) snprintf(a.err, sizeof a.err, "--model DIR is required"), a.failed = 1;
    int rc = args_finish(&a) ? 1 : 0;
    if (rc) log_error_agreed("chat: %s (glmtp chat --help lists the options)", a.err);
    args_free(&a);
    if (rc) return 1;

    tokenizer *tok = NULL;
    char err[2048], path[4096];
    int failed = 0;
    if (c->rank == 0) {
        snprintf(path, sizeof path, "%s/tokenizer.model", dir);
        if (tok_load(&tok, path, err, sizeof err)) {
            engine_error(c, "chat: %s", err);
            failed = 1;
        }
        snprintf(path, sizeof path, "%s/%s", dir, MAKE_MODEL_MARKER);
        if (access(path, F_OK) == 0)
            log_msg(LOG_INFO, "chat: %s holds random weights (made by glmtp make-model): the replies will be "
                              "gibberish", dir);
    }
    engine e = {0};
    rc = 1;
    if (comm_first_failed(c, failed) >= 0) goto done;
    if (engine_open(&e, c, dir, kv_tokens, 16, threads, device, comm_kind, mem_util, kv_dtype)) goto done;
    int limit = engine_max_model_len(&e, max_model_len, "chat"); /* same verdict on every rank */
    if (limit < 0) goto done;
    if (c->rank != 0) {
        engine_follow(&e);
        rc = 0;
        goto done;
    }
    pcache_set_enabled(e.pc, !no_prefix_cache); /* on: each turn feeds only what follows the cached history */
    char *preamble = chat_tool_preamble(dir);
    history h = {0};
    char *sys = system ? strdup(system) : NULL;
    hist_clear(&h, sys);
    /* The banner and the "user>" / "assistant>" markers go to stderr, as
     * bash's read -p prompt does: under mpirun stdin is never a terminal, and
     * stdout stays the replies alone for scripts. */
    chat_image im = {0};
    fprintf(stderr, "glmtp chat: %d-token context. Commands: /reset, /system TEXT, %s/exit\n", limit,
            e.m->cfg.vision.present ? "/image PATH, " : "");
    char line[65536];
    for (uint64_t n_turn = 0;; n_turn++) {
        fprintf(stderr, "user> ");
        if (!fgets(line, sizeof line, stdin)) break;
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0]) continue;
        if (strcmp(line, "/exit") == 0) break;
        if (strcmp(line, "/reset") == 0) {
            hist_clear(&h, sys);
            free(im.pixels);
            im = (chat_image){0};
            printf("(history cleared)\n");
            continue;
        }
        if (strncmp(line, "/system", 7) == 0 && (line[7] == ' ' || line[7] == 0)) {
            free(sys);
            sys = strdup(line[7] ? line + 8 : "");
            hist_clear(&h, sys);
            free(im.pixels);
            im = (chat_image){0};
            printf("(system prompt set; history cleared)\n");
            continue;
        }
        if (strncmp(line, "/image ", 7) == 0) {
            char err[1024];
            float *px;
            uint64_t hash;
            if (im.pixels) {
                fprintf(stderr, "glmtp chat: GLM-4V takes one image per conversation: /reset first\n");
            } else if (image_input_load(line + 7, &e.m->cfg, 1, &px, &hash, err, sizeof err)) {
                fprintf(stderr, "glmtp chat: /image: %s\n", err);
            } else {
                const glm_vision_config *v = &e.m->cfg.vision;
                im = (chat_image){px, (size_t)v->in_ch * v->image * v->image, hash, 1};
                fprintf(stderr, "(image loaded: your next message is about it)\n");
            }
            continue;
        }
        if (line[0] == '/') {
            fprintf(stderr, "glmtp chat: unknown command '%s' (/reset, /system TEXT, /exit); nothing was sent\n", line);
            continue;
        }
        hist_push(&h, "user", line);
        int with_image = im.pending;
        if (with_image) h.m[h.n - 1].image = 1, im.pending = 0;
        fflush(stdout);
        fprintf(stderr, "assistant> ");
        char *reply = turn(&e, tok, &h, &im, preamble, &d, limit, seed + n_turn);
        if (!reply) {
            hist_pop(&h);
            im.pending = with_image;
            continue;
        }
        hist_push(&h, "assistant", reply);
        free(reply);
    }
    engine_finish(&e);
    hist_clear(&h, NULL);
    free(im.pixels);
    free(h.m);
    free(h.owned);
    free(sys);
    free(preamble);
    rc = 0;
done:
    tok_free(tok);
    engine_close(&e);
    return rc;
}
