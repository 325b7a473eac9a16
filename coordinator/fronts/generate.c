/* glmtp generate: batch generation from a JSONL file (or one --ids prompt).
 * Rank 0 reads and tokenizes the requests, runs them all as one batch through
 * the forward pass (engine/gen_batch.c), and writes one JSON record per input line, in input
 * order; the other ranks follow its steps. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../worker/util.h"
#include "../../worker/log.h"
#include "../base/args.h"
#include "../base/commands.h"
#include "../engine/engine.h"
#include "../engine/capacity.h"
#include "../engine/gen_batch.h"
#include "../engine/kvstore.h"
#include "../text/chat_template.h"
#include "requests.h"

typedef struct gen_cli {
    const char *dir, *input, *output, *ids, *tok_path, *device, *comm_kind;
    const char *snap_dir; /* --kv-snapshot-dir */
    int threads, block_size, step_tokens, kv_tokens, ignore_eos, no_prefix_cache, max_model_len;
    double mem_util;
    int kv_dtype; /* --kv-cache-dtype */
    req_defaults d;
} gen_cli;

static const args_opt gen_opts[] = {
    {"--model", "DIR", "checkpoint directory (config.json, *.safetensors, tokenizer.model); required"},
    {"--input", "FILE.jsonl", "one request per line (see below); or --ids"},
    {"--ids", "1,2,3", "one request of these token ids instead of --input"},
    {"--output", "FILE.jsonl", "where the records go (default: stdout)"},
    {"--tokenizer", "FILE", "tokenizer.model to use instead of the one in DIR"},
    {"--max-new-tokens", "N", "new tokens per request (default: generation_config.json, else 256; at most the room left in the context)"},
    {"--temperature", "T", "sampling temperature, 0 = greedy (default: generation_config.json, else greedy)"},
    {"--top-p", "P", "nucleus sampling (default: generation_config.json, else 1)"},
    {"--top-k", "K", "top-k sampling, 0 = off (default: generation_config.json, else 0)"},
    {"--seed", "S", "base seed of sampled requests (default 0)"},
    {"--ignore-eos", NULL, "keep generating past end-of-sequence tokens"},
    {"--step-tokens", "N", "tokens per step, prefill chunks included (default 512)"},
    {"--no-prefix-cache", NULL, "do not reuse the KV blocks of a prompt prefix seen before"},
    {"--kv-snapshot-dir", "DIR", "KV snapshots of prefixes on disk: requests with keep_prefix save theirs there; at start-up and on a cache miss they are loaded instead of recomputed"},
    {"--max-model-len", "N", "longest request (prompt + new tokens; default: the model's seq_length); with --kv-tokens it must fit the pool"},
    {NULL, NULL, NULL},
};

const args_spec cmd_generate_spec = {
    "glmtp generate",
    "--model DIR --input prompts.jsonl [--output out.jsonl] | --ids 1,2,3 [options]",
    "Batch generation: one JSON request per input line, one record per line out, in input order.",
    {gen_opts, args_engine_opts, args_log_opts, NULL},
    "request lines: {\"id\": 1, \"prompt\": \"...\"} | {\"id\": 2, \"messages\": [{\"role\": \"user\", \"content\": \"...\"}],\n"
    "  \"tools\": [...]} | {\"id\": 3, \"input_ids\": [...]}; optional max_new_tokens (or max_tokens), temperature,\n"
    "  top_p, top_k, seed, stop, keep_prefix (true or N tokens; with --kv-snapshot-dir). Any other key is an\n"
    "  error naming it.\n"
    "records: {\"id\", \"text\", \"token_ids\", \"finish_reason\": stop|length|error, \"error\"?, \"usage\"}\n",
};

static int parse_cli(comm *c, gen_cli *o, int argc, char **argv) {
    args a;
    (void)c; /* every rank parses the same argv; rank 0 reports */
    args_init(&a, &cmd_generate_spec, argc, argv);
    memset(o, 0, sizeof *o);
    o->dir = args_str(&a, "--model", NULL);
    req_defaults_load(&o->d, o->dir ? o->dir : ".");
    o->input = args_str(&a, "--input", NULL);
    o->output = args_str(&a, "--output", "-");
    o->ids = args_str(&a, "--ids", NULL);
    o->tok_path = args_str(&a, "--tokenizer", NULL);
    o->d.max_new = (int)args_int(&a, "--max-new-tokens", o->d.max_new, 1, 1 << 30);
    o->d.temperature = (float)args_num(&a, "--temperature", o->d.temperature, 0.0, 1e4);
    o->d.top_p = (float)args_num(&a, "--top-p", o->d.top_p, 1e-9, 1.0);
    o->d.top_k = (int)args_int(&a, "--top-k", o->d.top_k, 0, 1 << 30);
    o->d.seed = (uint64_t)args_int(&a, "--seed", 0, 0, 2147483647L);
    o->ignore_eos = args_flag(&a, "--ignore-eos");
    o->no_prefix_cache = args_flag(&a, "--no-prefix-cache");
    o->snap_dir = args_str(&a, "--kv-snapshot-dir", NULL);
    o->threads = (int)args_int(&a, "--threads", 0, 0, 1024);
    o->device = args_str(&a, "--device", "cpu");
    o->comm_kind = args_str(&a, "--comm", NULL);
    o->block_size = (int)args_int(&a, "--block-size", 16, 1, 1 << 20);
    o->step_tokens = (int)args_int(&a, "--step-tokens", 512, 1, 1 << 24);
    o->kv_tokens = (int)args_int(&a, "--kv-tokens", 0, 1, 1 << 30);
    o->mem_util = args_num(&a, "--gpu-memory-utilization", ENGINE_GPU_MEM_UTIL, 0.01, 1.0);
    o->max_model_len = (int)args_int(&a, "--max-model-len", 0, 1, 1 << 30);
    o->kv_dtype = args_kv_dtype(&a);
    int rc = 0;
    if (!a.failed && !o->dir) snprintf(a.err, sizeof a.err, "--model DIR is required"), a.failed = 1;
    if (!a.failed && !!o->input == !!o->ids)
        snprintf(a.err, sizeof a.err, "give --input FILE.jsonl or --ids 1,2,3"), a.failed = 1;
    if (args_finish(&a)) {
        log_error_agreed("generate: %s (glmtp generate --help lists the options)", a.err);
        rc = 1;
    }
    args_free(&a);
    return rc;
}

/* Reads the requests (rank 0). Returns 0, or 1 after printing a fatal error. */
static int read_requests(const gen_cli *o, const req_context *ctx, req_line **out, int *n_out) {
    req_line *lines = NULL;
    int n = 0, cap = 0;
    char err[512];
    if (o->ids) { /* one request from the command line */
        args a;
        args_init(&a, NULL, 0, NULL);
        int *ids, k;
        if (args_int_list(&a, "--ids", o->ids, &ids, &k)) {
            fprintf(stderr, "glmtp: generate: %s\n", a.err);
            args_free(&a);
            return 1;
        }
        args_free(&a);
        cJSON *arr = cJSON_CreateIntArray(ids, k);
        cJSON *obj = cJSON_CreateObject();
        cJSON_AddItemToObject(obj, "input_ids", arr);
        char *text = cJSON_PrintUnformatted(obj);
        lines = calloc(1, sizeof *lines);
        if (!lines || !text) abort();
        req_parse(ctx, text, strlen(text), 1, &lines[0]);
        free(text);
        free(ids);
        cJSON_Delete(obj);
        *out = lines;
        *n_out = 1;
        return 0;
    }
    size_t len;
    char *text = util_read_file(o->input, &len, err, sizeof err);
    if (!text) {
        fprintf(stderr, "glmtp: generate: %s\n", err);
        return 1;
    }
    int line_no = 0;
    for (char *p = text; p < text + len;) {
        char *nl = memchr(p, '\n', (size_t)(text + len - p));
        size_t l = nl ? (size_t)(nl - p) : (size_t)(text + len - p);
        line_no++;
        int blank = 1;
        for (size_t i = 0; i < l; i++)
            if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r') blank = 0;
        if (!blank) {
            if (n == cap) {
                cap = cap ? 2 * cap : 64;
                lines = realloc(lines, sizeof *lines * (size_t)cap);
                if (!lines) abort();
            }
            req_parse(ctx, p, l, line_no, &lines[n++]);
        }
        p += l + 1;
    }
    free(text);
    *out = lines;
    *n_out = n;
    return 0;
}

static void write_record(FILE *f, req_line *r) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "id", r->id ? cJSON_Duplicate(r->id, 1) : cJSON_CreateNull());
    cJSON_AddStringToObject(o, "text", r->g.text ? r->g.text : "");
    cJSON_AddItemToObject(o, "token_ids", cJSON_CreateIntArray(r->g.out ? r->g.out : (int[]){0}, r->g.n_out));
    cJSON_AddStringToObject(o, "finish_reason", r->error ? "error" : r->g.finish ? r->g.finish : "length");
    if (r->error) cJSON_AddStringToObject(o, "error", r->error);
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", r->error ? 0 : r->g.n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", r->g.n_out);
    char *s = cJSON_PrintUnformatted(o);
    fprintf(f, "%s\n", s);
    free(s);
    cJSON_Delete(o);
}

int cmd_generate(comm *c, int argc, char **argv) {
    if (engine_check_args(c, argc, argv)) return 1;
    gen_cli o;
    if (parse_cli(c, &o, argc, argv)) return 1;

    /* Rank 0 prepares everything that can fail before the ranks load weights. */
    tokenizer *tok = NULL;
    req_line *lines = NULL;
    int n = 0, failed = 0, kv_tokens = 0;
    char *preamble = NULL;
    glm_config cfg;
    char err[2048];
    if (c->rank == 0) {
        char path[4096];
        snprintf(path, sizeof path, "%s/tokenizer.model", o.dir);
        const char *tp = o.tok_path ? o.tok_path : path;
        if (config_load(&cfg, o.dir, err, sizeof err)) {
            engine_error(c, "%s", err);
            failed = 1;
        } else if (o.max_model_len > cfg.seq_len) {
            engine_error(c, "generate: --max-model-len %d exceeds the model's context length %d (seq_length in "
                         "config.json)", o.max_model_len, cfg.seq_len);
            failed = 1;
        } else if ((o.tok_path || access(tp, F_OK) == 0) && tok_load(&tok, tp, err, sizeof err)) {
            engine_error(c, "%s", err);
            failed = 1;
        } else {
            snprintf(path, sizeof path, "%s/%s", o.dir, MAKE_MODEL_MARKER);
            if (access(path, F_OK) == 0)
                log_msg(LOG_INFO, "generate: %s holds random weights (made by glmtp make-model): the text will be "
                                  "gibberish, the pipeline is the real one", o.dir);
            preamble = chat_tool_preamble(o.dir);
            req_context ctx = {&o.d, tok, preamble, o.max_model_len ? o.max_model_len : cfg.seq_len,
                               tok ? tok_n_total(tok) : cfg.vocab, o.max_model_len ? cfg.seq_len : 0};
            if (ctx.n_vocab > cfg.vocab) ctx.n_vocab = cfg.vocab;
            failed = read_requests(&o, &ctx, &lines, &n);
        }
        long need = 0;
        for (int i = 0; !failed && i < n; i++) {
            lines[i].g.ignore_eos = o.ignore_eos;
            if (!lines[i].error) need += lines[i].g.n_prompt + lines[i].g.max_new + o.block_size;
        }
        /* By default the pool holds every request at once, but takes at most a
         * quarter of this machine's memory per rank (on CPU the cache is fp32);
         * requests beyond it wait for blocks to come free. */
        long cap = 1L << 30;
        if (!failed) {
            glm_shard sh;
            shard_plan(&sh, &cfg, c->size, 0);
            double per_token = 2.0 * cfg.n_layers * sh.nkv * cfg.head_dim * 4.0;
            double budget = 0.25 * (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE) / c->local_size;
            if (budget / per_token < (double)cap) cap = (long)(budget / per_token);
        }
        kv_tokens = o.kv_tokens ? o.kv_tokens : (int)(need < cap ? need : cap);
        if (kv_tokens < o.block_size) kv_tokens = o.block_size;
    }
    int rc = 1;
    engine e = {0};
    if (comm_first_failed(c, failed) >= 0) goto done;
    c->iface->bcast(c->ctx, &kv_tokens, sizeof kv_tokens);
    if (engine_open(&e, c, o.dir, kv_tokens, o.block_size, o.threads, o.device, o.comm_kind, o.mem_util,
                    o.kv_dtype))
        goto done;
    /* A pool sized from the batch holds it; one given by --kv-tokens is
     * checked against the maximum model length (the same on every rank). */
    if (o.kv_tokens && engine_max_model_len(&e, o.max_model_len, "generate") < 0) goto done;
    if (c->rank != 0) {
        engine_follow(&e);
        rc = 0;
        goto done;
    }

    /* Rank 0: everything valid runs as one batch; the rest are answered with their error. */
    gen_request *batch = malloc(sizeof *batch * (size_t)(n ? n : 1));
    int *which = malloc(sizeof(int) * (size_t)(n ? n : 1)), nb = 0;
    if (!batch || !which) abort();
    for (int i = 0; i < n; i++) {
        if (!lines[i].error && !gen_fits(&e, lines[i].g.n_prompt, lines[i].g.max_new)) {
            snprintf(err, sizeof err, "line %d: prompt of %d tokens plus max_new_tokens %d need more KV cache than "
                     "--kv-tokens %d holds", lines[i].line_no, lines[i].g.n_prompt, lines[i].g.max_new, kv_tokens);
            lines[i].error = strdup(err);
        }
        if (lines[i].error) continue;
        which[nb] = i;
        batch[nb++] = lines[i].g;
    }
    char (*nm)[32] = malloc(sizeof *nm * (size_t)(nb ? nb : 1));
    const char **names = malloc(sizeof *names * (size_t)(nb ? nb : 1));
    if (!nm || !names) abort();
    for (int k = 0; k < nb; k++) snprintf(nm[k], sizeof nm[k], "line %d", lines[which[k]].line_no), names[k] = nm[k];
    gen_options go = {o.step_tokens, 1, NULL, NULL};
    pcache_set_enabled(e.pc, !o.no_prefix_cache);
    if (o.snap_dir && !(e.snap = kvstore_open(&e, o.snap_dir))) {
        engine_finish(&e);
        free(names);
        free(nm);
        free(batch);
        free(which);
        goto done;
    }
    gen_run_named(&e, tok, batch, nb, &go, names);
    kvstore_close(e.snap);
    e.snap = NULL;
    free(names);
    free(nm);
    engine_finish(&e);
    for (int k = 0; k < nb; k++) lines[which[k]].g = batch[k];
    free(batch);
    free(which);

    FILE *f = strcmp(o.output, "-") == 0 ? stdout : fopen(o.output, "w");
    int n_err = 0;
    if (!f) {
        engine_error(c, "generate: %s: cannot create the output file", o.output);
    } else {
        for (int i = 0; i < n; i++) {
            write_record(f, &lines[i]);
            if (lines[i].error) {
                fprintf(stderr, "glmtp: generate: %s\n", lines[i].error);
                n_err++;
            }
        }
        if (f != stdout && fclose(f) != 0) engine_error(c, "generate: %s: write failed", o.output);
        else rc = n_err ? 1 : 0;
        if (f == stdout) fflush(stdout);
    }
    if (n_err) fprintf(stderr, "glmtp: generate: %d of %d requests failed\n", n_err, n);
done:
    for (int i = 0; i < n; i++) req_line_free(&lines[i]);
    free(lines);
    free(preamble);
    tok_free(tok);
    engine_close(&e);
    return rc;
}
