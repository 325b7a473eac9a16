/* glmtp score: per-position log-probabilities (and optionally the final hidden
 * state or the logits) of a token list, as one prefill or token by token
 * through the decode path. The way glmtp is compared against a reference. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../worker/log.h"
#include "../../worker/util.h"
#include "../base/args.h"
#include "../base/commands.h"
#include "../engine/engine.h"
#include "../engine/image_place.h"
#include "../engine/step_plan.h"

/* log-softmax of one row, in double for the normaliser. */
static void log_softmax(const float *l, int V, double *out) {
    double mx = l[0], s = 0.0;
    for (int i = 1; i < V; i++)
        if (l[i] > mx) mx = l[i];
    for (int i = 0; i < V; i++) s += exp((double)l[i] - mx);
    double lse = mx + log(s);
    for (int i = 0; i < V; i++) out[i] = (double)l[i] - lse;
}

static void print_row(int pos, const int *ids, int n, const float *logits, const float *hidden, int V, int H,
                      int top, const char *dump, double *lp) {
    log_softmax(logits, V, lp);
    printf("{\"pos\":%d,\"id\":%d,\"logprob_next\":", pos, ids[pos]);
    if (pos + 1 < n)
        printf("%.9g", lp[ids[pos + 1]]);
    else
        printf("null");
    printf(",\"top\":[");
    /* top-K by repeated selection: K is small. */
    for (int k = 0; k < top && k < V; k++) {
        int best = -1;
        for (int i = 0; i < V; i++)
            if (!isnan(lp[i]) && (best < 0 || lp[i] > lp[best])) best = i;
        printf("%s[%d,%.9g]", k ? "," : "", best, lp[best]);
        lp[best] = NAN;
    }
    printf("]");
    if (dump && strcmp(dump, "hidden") == 0) {
        printf(",\"hidden\":[");
        for (int i = 0; i < H; i++) printf("%s%.9g", i ? "," : "", hidden[i]);
        printf("]");
    } else if (dump && strcmp(dump, "logits") == 0) {
        printf(",\"logits\":[");
        for (int i = 0; i < V; i++) printf("%s%.9g", i ? "," : "", logits[i]);
        printf("]");
    }
    printf("}\n");
}

/* The file's ids with white space turned into commas, for args_int_list.
 * NULL with err on failure; the caller frees. */
static char *read_ids_file(const char *path, char *err, size_t errlen) {
    size_t len;
    char e2[400];
    char *t = util_read_file(path, &len, e2, sizeof e2);
    if (!t) {
        snprintf(err, errlen, "--ids-file: %s", e2);
        return NULL;
    }
    size_t w = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = t[i] == ' ' || t[i] == '\n' || t[i] == '\t' || t[i] == '\r' ? ',' : t[i];
        if (ch == ',' && (w == 0 || t[w - 1] == ',')) continue; /* runs of separators count once */
        t[w++] = ch;
    }
    if (w && t[w - 1] == ',') w--;
    t[w] = 0;
    return t;
}

static const args_opt score_opts[] = {
    {"--model", "DIR", "checkpoint directory; required"},
    {"--ids", "1,2,3", "the token ids to score (or --ids-file)"},
    {"--ids-file", "FILE", "the token ids from a file, separated by commas or white space (long contexts)"},
    {"--from", "P", "print positions P.. only; the ids before P are prefilled without logits (default 0)"},
    {"--incremental", NULL, "one token per step through the KV cache instead of one prefill"},
    {"--dump", "hidden|logits|image", "also print each position's final hidden state or logits; image: first a line "
                                      "{\"image\": rows} with the image's embedding rows (GLM-4V, --pixels)"},
    {"--top", "K", "top-K next tokens per position (default 5)"},
    {"--pixels", "FILE", "GLM-4V: the image of the ids' begin-of-image, placeholder, end-of-image tokens, "
                         "preprocessed: float32 [channels, size, size], little-endian"},
    {NULL, NULL, NULL},
};

const args_spec cmd_score_spec = {
    "glmtp score",
    "--model DIR --ids 1,2,3|--ids-file FILE [--from P] [--incremental] [--dump hidden|logits] [--top K] "
    "[--pixels FILE]",
    "Per-position log-probabilities of the given ids, one JSON line per position (with an image: per position of "
    "the KV sequence, the image's three ids expanded to its embedding rows).",
    {score_opts, args_engine_opts, args_log_opts, NULL},
    NULL,
};

int cmd_score(comm *c, int argc, char **argv) {
    if (engine_check_args(c, argc, argv)) return 1;
    args a;
    args_init(&a, &cmd_score_spec, argc, argv);
    const char *dir = args_str(&a, "--model", NULL);
    const char *ids_s = args_str(&a, "--ids", NULL), *ids_file = args_str(&a, "--ids-file", NULL);
    long from = args_int(&a, "--from", 0, 0, 2147483647L);
    char *file_text = NULL;
    const char *dump = args_str(&a, "--dump", NULL);
    int top = (int)args_int(&a, "--top", 5, 0, 1000);
    int incremental = args_flag(&a, "--incremental");
    const char *pixels_path = args_str(&a, "--pixels", NULL);
    int threads = (int)args_int(&a, "--threads", 0, 0, 1024);
    const char *device = args_str(&a, "--device", "cpu"), *comm_kind = args_str(&a, "--comm", NULL);
    int block_size = (int)args_int(&a, "--block-size", 16, 1, 1 << 20);
    int kv_dtype = args_kv_dtype(&a);
    int *ids = NULL, n = 0, rc = 1, *kv_ids = NULL;
    float *pixels = NULL;
    engine e = {0};
    float *logits = NULL, *hidden = NULL;
    double *lp = NULL;
    if (!a.failed && !dir) snprintf(a.err, sizeof a.err, "--model DIR is required"), a.failed = 1;
    if (!a.failed && !ids_s == !ids_file)
        snprintf(a.err, sizeof a.err, "--ids 1,2,3 or --ids-file FILE is required (one of them)"), a.failed = 1;
    if (!a.failed && ids_file && !(file_text = read_ids_file(ids_file, a.err, sizeof a.err))) a.failed = 1;
    if (!a.failed && dump && strcmp(dump, "hidden") && strcmp(dump, "logits") && strcmp(dump, "image"))
        snprintf(a.err, sizeof a.err, "--dump must be hidden, logits or image, not '%s'", dump), a.failed = 1;
    if (!a.failed) args_int_list(&a, ids_s ? "--ids" : "--ids-file", ids_s ? ids_s : file_text, &ids, &n);
    if (!a.failed && from >= n)
        snprintf(a.err, sizeof a.err, "--from %ld: only %d ids, so positions 0..%d", from, n, n - 1), a.failed = 1;
    if (args_finish(&a)) {
        log_error_agreed("score: %s (glmtp score --help lists the options)", a.err);
        goto done;
    }
    /* KV room for the ids with an image expanded (engine_open reports a bad config) */
    glm_config pre;
    char e0[512];
    int room = n + (config_load(&pre, dir, e0, sizeof e0) == 0 ? config_image_tokens(&pre) : 0);
    if (engine_open(&e, c, dir, room, block_size, threads, device, comm_kind, ENGINE_GPU_MEM_UTIL, kv_dtype))
        goto done;
    const glm_config *cfg = &e.m->cfg;
    image_place ip = {-1, config_image_tokens(cfg)};
    char why[256];
    if (image_find(cfg, ids, n, &ip.kv0, why, sizeof why)) {
        engine_error(c, "--ids: %s", why);
        goto done;
    }
    if ((ip.kv0 >= 0) != (pixels_path != NULL)) {
        engine_error(c, ip.kv0 >= 0 ? "--ids hold an image (begin-of-image, placeholder, end-of-image): --pixels FILE "
                                      "gives it"
                                    : "--pixels: the ids hold no image (begin-of-image, placeholder, end-of-image)");
        goto done;
    }
    if (ip.kv0 >= 0) {
        const glm_vision_config *v = &cfg->vision;
        size_t want = (size_t)v->in_ch * v->image * v->image * sizeof(float), len = 0;
        int bad = 0;
        pixels = malloc(want);
        if (!pixels) abort();
        if (c->rank == 0) { /* rank 0 reads the file; every rank gets its numbers */
            char e2[400];
            char *t = util_read_file(pixels_path, &len, e2, sizeof e2);
            if (!t || len != want) {
                if (t)
                    snprintf(why, sizeof why, "--pixels %s: %zu bytes, but [%d, %d, %d] float32 are %zu", pixels_path,
                             len, v->in_ch, v->image, v->image, want);
                else
                    snprintf(why, sizeof why, "--pixels: %s", e2);
                bad = 1;
            } else {
                memcpy(pixels, t, want);
            }
            free(t);
        }
        if (comm_first_failed(c, bad) >= 0) {
            if (c->rank == 0) engine_error(c, "%s", why);
            goto done;
        }
        c->iface->bcast(c->ctx, pixels, want);
        forward_image(e.fw, 0, pixels);
        if (c->rank == 0 && dump && strcmp(dump, "image") == 0) {
            int rows = config_image_tokens(cfg), H = cfg->hidden;
            float *emb = malloc(sizeof(float) * (size_t)rows * H);
            if (!emb) abort();
            forward_image_rows(e.fw, 0, emb);
            printf("{\"image\":[");
            for (int r = 0; r < rows; r++) {
                printf("%s[", r ? "," : "");
                for (int j = 0; j < H; j++) printf("%s%.9g", j ? "," : "", emb[(size_t)r * H + j]);
                printf("]");
            }
            printf("]}\n");
            free(emb);
        }
        int m = image_expand(ids, n, ip.kv0, ip.per, &kv_ids);
        free(ids);
        ids = kv_ids, kv_ids = NULL, n = m;
        if (from >= n) from = n - 1;
    }
    if (plan_check_ids(c, ids, n, cfg, "--ids")) goto done;

    int V = cfg->vocab, H = cfg->hidden, P = (int)from;
    if (c->rank == 0) { /* rows P..n-1 only; logits at position P - 1 land in row 0 when P > 0 and are overwritten */
        logits = malloc(sizeof(float) * (size_t)(n - P) * V);
        hidden = malloc(sizeof(float) * (size_t)(n - P) * H);
        lp = malloc(sizeof(double) * (size_t)V);
        if (!logits || !hidden || !lp) abort();
    }
    kv_seq seq = {0};
    if (c->rank == 0 && kv_seq_reserve(&e.blocks, &seq, n)) abort(); /* sized for n above */
    /* Positions before P in steps that keep only their last row's logits (in
     * row 0, overwritten later), then P.. with every row's. */
    int chunk = incremental ? 1 : n;
    for (int start = 0; start < n;) {
        int before = start < P, end = before ? P : n;
        int len = chunk < end - start ? chunk : end - start;
        size_t row = before ? 0 : (size_t)(start - P);
        glm_step s = {0};
        if (c->rank == 0) {
            plan_one_seq(&s, &seq, ids + start, start, len, block_size, !before);
            image_plan(&s, &ip, 0, 0, start, len);
        }
        step_bcast(c, &s);
        forward_run(e.fw, &s, c->rank == 0 ? logits + row * V : NULL, c->rank == 0 ? hidden + row * H : NULL);
        step_free(&s);
        start += len;
    }
    if (c->rank == 0) {
        for (int i = P; i < n; i++)
            print_row(i, ids, n, logits + (size_t)(i - P) * V, hidden + (size_t)(i - P) * H, V, H, top, dump, lp);
        fflush(stdout);
        kv_seq_release(&e.blocks, &seq);
    }
    rc = 0;
done:
    free(logits);
    free(hidden);
    free(lp);
    free(ids);
    free(kv_ids);
    free(pixels);
    free(file_text);
    engine_close(&e);
    args_free(&a);
    return rc;
}
