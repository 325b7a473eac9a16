/* tokenize.c: `glmtp tokenize`, the tokenizer on stdin/stdout.
 *   glmtp tokenize --model DIR [--tokenizer FILE] [--prefix]   text  -> [ids] (one JSON line)
 *   glmtp tokenize --model DIR --chat [--no-generation-prompt]  [messages] or {"messages","tools"} -> [ids]
 *   glmtp tokenize --model DIR --decode                        [ids] -> text (exactly, no newline added)
 *   glmtp tokenize --model DIR --bench [--repeat N]            text  -> {"bytes":..,"mb_per_s":..} */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../base/args.h"
#include "../text/chat_template.h"
#include "../text/tokenizer.h"

int cmd_tokenize(int argc, char **argv);

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Reads all of f into a malloc'ed buffer (NUL-terminated for convenience);
 * the caller frees it. NULL on error. */
static char *read_all(FILE *f, size_t *len /* OUT */) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *nb = realloc(buf, (cap *= 2) + 1);
        if (!nb) free(buf);
        buf = nb;
    }
    if (!buf || ferror(f)) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

/* Prints ids as one JSON array line. */
static int print_ids(const int *pre, int npre, const int *ids, int n) {
    char buf[1 << 16];
    size_t k = 0;
    buf[k++] = '[';
    for (int i = 0; i < npre + n; i++) {
        if (k > sizeof buf - 16) {
            if (fwrite(buf, 1, k, stdout) != k) return -1;
            k = 0;
        }
        int v = i < npre ? pre[i] : ids[i - npre];
        k += (size_t)snprintf(buf + k, sizeof buf - k, i ? ",%d" : "%d", v);
    }
    buf[k++] = ']';
    buf[k++] = '\n';
    if (fwrite(buf, 1, k, stdout) != k) return -1;
    return fflush(stdout);
}

static int do_decode(const tokenizer *t, const char *in) {
    cJSON *arr = cJSON_Parse(in);
    int rc = 1;
    int *ids = NULL;
    if (!arr || !cJSON_IsArray(arr)) {
        fprintf(stderr, "glmtp tokenize: --decode expects a JSON array of ids on stdin\n");
        goto done;
    }
    int n = cJSON_GetArraySize(arr), i = 0;
    ids = malloc(sizeof(int) * (size_t)(n ? n : 1));
    if (!ids) {
        fprintf(stderr, "glmtp tokenize: out of memory\n");
        goto done;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        double v = cJSON_IsNumber(e) ? e->valuedouble : -1;
        if (!(v >= 0 && v < tok_n_total(t)) || v != (double)(int)v) {
            fprintf(stderr, "glmtp tokenize: element %d is not a token id in [0, %d)\n", i, tok_n_total(t));
            goto done;
        }
        ids[i++] = (int)v;
    }
    size_t len;
    char *text = tok_decode_len(t, ids, n, &len);
    if (!text) {
        fprintf(stderr, "glmtp tokenize: out of memory\n");
        goto done;
    }
    rc = fwrite(text, 1, len, stdout) == len && fflush(stdout) == 0 ? 0 : 1;
    free(text);
done:
    free(ids);
    cJSON_Delete(arr);
    return rc;
}

static int do_bench(const tokenizer *t, const char *in, size_t len, long repeat, double load_s) {
    double best = 1e300;
    int ntok = 0;
    for (long r = 0; r < repeat; r++) {
        int *ids, n;
        double t0 = now_s();
        if (tok_encode(t, in, len, &ids, &n)) {
            fprintf(stderr, "glmtp tokenize: encoding failed (out of memory)\n");
            return 1;
        }
        double dt = now_s() - t0;
        free(ids);
        if (dt < best) best = dt;
        ntok = n;
    }
    printf("{\"bytes\":%zu,\"tokens\":%d,\"repeat\":%ld,\"seconds_best\":%.6f,\"mb_per_s\":%.3f,\"load_seconds\":%.6f}\n",
           len, ntok, repeat, best, best > 0 ? (double)len / 1e6 / best : 0.0, load_s);
    return 0;
}

/* Chat messages (a JSON list, or an object with "messages" and "tools") to the
 * ids the model is given. */
static int do_chat(const tokenizer *t, const char *dir, const char *in, size_t len, int add_generation_prompt) {
    cJSON *root = cJSON_ParseWithLength(in, len);
    const cJSON *msgs = cJSON_IsArray(root) ? root : cJSON_GetObjectItemCaseSensitive(root, "messages");
    const cJSON *tools = cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "tools") : NULL;
    char *preamble = chat_tool_preamble(dir ? dir : ".");
    char err[1024] = "";
    int *ids = NULL, n = 0, rc = 1;
    if (!root)
        fprintf(stderr, "glmtp tokenize: stdin: not JSON\n");
    else if (chat_encode_json(t, msgs, tools, preamble, add_generation_prompt, &ids, &n, err, sizeof err))
        fprintf(stderr, "glmtp tokenize: stdin: %s\n", err);
    else
        rc = print_ids(NULL, 0, ids, n) ? 1 : 0;
    free(ids);
    free(preamble);
    cJSON_Delete(root);
    return rc;
}

static const args_opt tokenize_opts[] = {
    {"--model", "DIR", "checkpoint directory holding tokenizer.model (or --tokenizer)"},
    {"--tokenizer", "FILE", "the tokenizer.model file itself"},
    {"--prefix", NULL, "prepend [gMASK]<sop>, as a raw prompt gets"},
    {"--chat", NULL, "stdin is a JSON list of messages: print the chat prompt's ids"},
    {"--no-generation-prompt", NULL, "with --chat: no <|assistant|> at the end"},
    {"--decode", NULL, "stdin is ids (1,2,3 or JSON list): print the text"},
    {"--bench", NULL, "time encoding stdin (--repeat times)"},
    {"--repeat", "N", "repetitions for --bench (default 5)"},
    {NULL, NULL, NULL},
};

const args_spec cmd_tokenize_spec = {
    "glmtp tokenize",
    "--model DIR | --tokenizer FILE [--prefix | --chat [--no-generation-prompt] | --decode | --bench] < input",
    "Text on stdin to token ids (a JSON list on stdout), or back with --decode.",
    {tokenize_opts, args_log_opts, NULL},
    NULL,
};

int cmd_tokenize(int argc, char **argv) {
    args a;
    args_init(&a, &cmd_tokenize_spec, argc, argv);
    const char *dir = args_str(&a, "--model", NULL);
    const char *file = args_str(&a, "--tokenizer", NULL);
    int prefix = args_flag(&a, "--prefix");
    int decode = args_flag(&a, "--decode");
    int bench = args_flag(&a, "--bench");
    int chat = args_flag(&a, "--chat");
    int no_gen = args_flag(&a, "--no-generation-prompt");
    long repeat = args_int(&a, "--repeat", 5, 1, 1000000);
    if (args_finish(&a)) {
        fprintf(stderr, "glmtp tokenize: %s\n", a.err);
        args_free(&a);
        return 2;
    }
    args_free(&a);
    if (!dir && !file) {
        fprintf(stderr, "glmtp tokenize: --model DIR (or --tokenizer FILE) is required\n");
        return 2;
    }
    if (decode + bench + chat > 1 || (prefix && (decode || chat)) || (no_gen && !chat)) {
        fprintf(stderr, "glmtp tokenize: --decode, --bench, --chat and --prefix do not combine that way\n");
        return 2;
    }
    char path[4096];
    if (!file) {
        if (snprintf(path, sizeof path, "%s/tokenizer.model", dir) >= (int)sizeof path) {
            fprintf(stderr, "glmtp tokenize: --model path too long\n");
            return 2;
        }
        file = path;
    }
    char err[512];
    tokenizer *t;
    double t0 = now_s();
    if (tok_load(&t, file, err, sizeof err)) {
        fprintf(stderr, "glmtp tokenize: %s\n", err);
        return 1;
    }
    double load_s = now_s() - t0;
    size_t len;
    char *in = read_all(stdin, &len);
    if (!in) {
        fprintf(stderr, "glmtp tokenize: cannot read stdin\n");
        tok_free(t);
        return 1;
    }
    int rc = 1;
    if (decode) {
        rc = do_decode(t, in);
    } else if (bench) {
        rc = do_bench(t, in, len, repeat, load_s);
    } else if (chat) {
        rc = do_chat(t, dir, in, len, !no_gen);
    } else {
        int *ids, n;
        int pre[2] = {tok_special_id(t, "[gMASK]"), tok_special_id(t, "<sop>")};
        if (tok_encode(t, in, len, &ids, &n)) {
            fprintf(stderr, "glmtp tokenize: encoding failed (out of memory)\n");
        } else {
            rc = print_ids(pre, prefix ? 2 : 0, ids, n) ? 1 : 0;
            free(ids);
        }
    }
    free(in);
    tok_free(t);
    return rc;
}
