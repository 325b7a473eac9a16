/* glmtp generate --ids: prefill a token list, then sample new tokens one decode
 * step at a time (greedy, temperature, top-k, top-p, seeded). Rank 0 samples and
 * plans each step; an empty step tells the other ranks the loop is over. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../worker/util.h"
#include "args.h"
#include "commands.h"
#include "engine.h"
#include "step_plan.h"

static int is_eos(const glm_config *c, int id) {
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_ids[i] == id) return 1;
    return 0;
}

int cmd_generate(comm *c, int argc, char **argv) {
    if (engine_check_args(c, argc, argv)) return 1;
    args a;
    args_init(&a, argc, argv);
    const char *dir = args_str(&a, "--model", NULL);
    const char *ids_s = args_str(&a, "--ids", NULL);
    int max_new = (int)args_int(&a, "--max-new-tokens", 32, 1, 1 << 24);
    float temperature = (float)args_num(&a, "--temperature", 0.0, 0.0, 100.0);
    int top_k = (int)args_int(&a, "--top-k", 0, 0, 1 << 24);
    float top_p = (float)args_num(&a, "--top-p", 1.0, 1e-9, 1.0);
    uint64_t seed = (uint64_t)args_int(&a, "--seed", 0, 0, 2147483647L);
    int ignore_eos = args_flag(&a, "--ignore-eos");
    int threads = (int)args_int(&a, "--threads", 0, 0, 1024);
    int block_size = (int)args_int(&a, "--block-size", 16, 1, 1 << 20);
    int *ids = NULL, n = 0, rc = 1, *out = NULL, n_out = 0;
    float *logits = NULL;
    engine e = {0};
    if (!a.failed && !dir) snprintf(a.err, sizeof a.err, "--model DIR is required"), a.failed = 1;
    if (!a.failed && !ids_s) snprintf(a.err, sizeof a.err, "--ids 1,2,3 is required"), a.failed = 1;
    if (!a.failed) args_int_list(&a, "--ids", ids_s, &ids, &n);
    if (args_finish(&a)) {
        engine_error(c, "generate: %s", a.err);
        goto done;
    }
    if (engine_open(&e, c, dir, n + max_new, block_size, threads)) goto done;
    const glm_config *cfg = &e.m->cfg;
    if (plan_check_ids(c, ids, n, cfg, "--ids")) goto done;
    if (n + max_new > cfg->seq_len) {
        engine_error(c, "--ids plus --max-new-tokens (%d) exceed the context length %d", n + max_new, cfg->seq_len);
        goto done;
    }

    const char *finish = "length";
    kv_seq seq = {0};
    ksample_params sp = {temperature, top_k, top_p, &seed};
    if (c->rank == 0) {
        logits = malloc(sizeof(float) * (size_t)cfg->vocab);
        out = malloc(sizeof(int) * (size_t)max_new);
        if (!logits || !out || kv_seq_reserve(&e.blocks, &seq, n + max_new)) abort();
    }
    double t0 = util_now(), t_first = 0;
    int pos = 0, next = 0;
    for (;;) {
        glm_step s = {0};
        if (c->rank == 0 && n_out < max_new && !(n_out > 0 && !ignore_eos && is_eos(cfg, out[n_out - 1]))) {
            if (pos == 0)
                plan_one_seq(&s, &seq, ids, 0, n, block_size, 0);
            else
                plan_one_seq(&s, &seq, &next, pos, 1, block_size, 0);
        }
        step_bcast(c, &s);
        if (s.n_tokens == 0) break;
        pos += s.n_tokens;
        forward_run(e.fw, &s, logits, NULL);
        step_free(&s);
        if (c->rank == 0) {
            e.kb.iface->sample(e.kb.ctx, &next, logits, 1, cfg->vocab, &sp);
            out[n_out++] = next;
            if (n_out == 1) t_first = util_now() - t0;
        }
    }
    if (c->rank == 0) {
        if (n_out > 0 && is_eos(cfg, out[n_out - 1]) && !ignore_eos) finish = "stop";
        double dt = util_now() - t0;
        printf("{\"ids\":[");
        for (int i = 0; i < n_out; i++) printf("%s%d", i ? "," : "", out[i]);
        printf("],\"finish_reason\":\"%s\",\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d}}\n", finish, n,
               n_out);
        fflush(stdout);
        fprintf(stderr, "glmtp: generate: %d prompt + %d new tokens in %.3f s (first token %.3f s, %.1f tokens/s after)\n",
                n, n_out, dt, t_first, n_out > 1 ? (n_out - 1) / (dt - t_first) : 0.0);
        kv_seq_release(&e.blocks, &seq);
    }
    rc = 0;
done:
    free(ids);
    free(out);
    free(logits);
    engine_close(&e);
    args_free(&a);
    return rc;
}
