/* glmtp chat: interactive multi-turn chat on rank 0's terminal, like
 * model.chat(history) in Python: the whole history is re-encoded each turn
 * (the prefix cache still holds its KV, so a turn feeds little more than the
 * new message) and the reply streams as it is generated. Commands: /reset,
 * /system TEXT, /exit. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../base/args.h"
#include "../base/commands.h"
#include "../engine/engine.h"
#include "../engine/gen_batch.h"
#include "../text/chat_template.h"
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
    h->m[h->n] = (chat_message){role, h->owned[h->n], NULL, NULL};
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
static char *turn(engine *e, const tokenizer *tok, const history *h, const char *preamble, const req_defaults *d,
                  int limit, uint64_t seed) {
    char err[1024];
    gen_request r = {0};
    if (chat_encode(tok, h->m, h->n, NULL, preamble, 1, &r.prompt, &r.n_prompt, err, sizeof err)) {
        fprintf(stderr, "glmtp: chat: %s\n", err);
        return NULL;
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

int cmd_chat(comm *c, int argc, char **argv) {
    if (engine_check_args(c, argc, argv)) return 1;
    args a;
    args_init(&a, argc, argv);
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
    int no_prefix_cache = args_flag(&a, "--no-prefix-cache");
    if (!a.failed && !dir) snprintf(a.err, sizeof a.err, "--model DIR is required"), a.failed = 1;
    int rc = args_finish(&a) ? 1 : 0;
    if (rc) engine_error(c, "chat: %s", a.err);
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
    }
    engine e = {0};
    rc = 1;
    if (comm_first_failed(c, failed) >= 0) goto done;
    if (engine_open(&e, c, dir, kv_tokens, 16, threads, device, comm_kind, mem_util)) goto done;
    if (c->rank != 0) {
        engine_follow(&e);
        rc = 0;
        goto done;
    }
    pcache_set_enabled(e.pc, !no_prefix_cache); /* on: each turn feeds only what follows the cached history */
    int pool = e.kv->n_blocks * e.kv->block_size;
    int limit = e.m->cfg.seq_len < pool ? e.m->cfg.seq_len : pool;
    char *preamble = chat_tool_preamble(dir);
    history h = {0};
    char *sys = system ? strdup(system) : NULL;
    hist_clear(&h, sys);
    int interactive = isatty(0);
    if (interactive) printf("glmtp chat: %d-token context. /reset, /system TEXT, /exit\n", limit);
    char line[65536];
    for (uint64_t n_turn = 0;; n_turn++) {
        if (interactive) {
            printf("user> ");
            fflush(stdout);
        }
        if (!fgets(line, sizeof line, stdin)) break;
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0]) continue;
        if (strcmp(line, "/exit") == 0) break;
        if (strcmp(line, "/reset") == 0) {
            hist_clear(&h, sys);
            printf("(history cleared)\n");
            continue;
        }
        if (strncmp(line, "/system", 7) == 0 && (line[7] == ' ' || line[7] == 0)) {
            free(sys);
            sys = strdup(line[7] ? line + 8 : "");
            hist_clear(&h, sys);
            printf("(system prompt set; history cleared)\n");
            continue;
        }
        hist_push(&h, "user", line);
        if (interactive) printf("assistant> ");
        fflush(stdout);
        char *reply = turn(&e, tok, &h, preamble, &d, limit, seed + n_turn);
        if (!reply) {
            hist_pop(&h);
            continue;
        }
        hist_push(&h, "assistant", reply);
        free(reply);
    }
    engine_finish(&e);
    hist_clear(&h, NULL);
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
