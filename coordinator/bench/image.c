/* glmtp bench image (GLM-4V): the vision tower's time per image, and the time
 * to the first token of image questions (image + a short random question)
 * through the scheduler, as generate and serve run them: the image encoded on
 * every rank, its rows spliced into the prompt, the prompt prefilled in chunks
 * of --step-tokens, one token sampled. Each figure beside a limit measured in
 * the same run: the tower's FLOP rate against a plain GEMM of its widest
 * shape (fc1 on this rank), and the time to the first token against the FLOPs
 * of the tower and the prompt's prefill at that GEMM rate.
 *
 * --vision-layers N runs N of the tower's layers (real shapes on CPU ranks:
 * one layer of glm-4v-9b's 63 is about 1.2 TFLOP an image): the layers' time
 * is measured apart (vision_layer_seconds) and scaled to the full tower
 * (`*_full` figures); the rest (patch embedding, adapter) is as run. The
 * language model runs the layers its checkpoint has (--layers with --preset),
 * not scaled. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../kernels/rng.h"
#include "../../worker/shard.h"
#include "../../worker/util.h"
#include "../../worker/vision.h"
#include "../engine/gen_batch.h"
#include "../engine/image_place.h"
#include "bench.h"
#include "limits.h"

/* The CPU's GEMM limit at most at this many rows: its rate is flat well
 * before the tower's 6401 (bench prefill caps at 4096 for the same reason). */
#define IMAGE_GEMM_ROWS_CPU 2048

typedef struct image_row {
    int images, prompt_tokens;       /* image questions fed together; KV rows of each prompt */
    double ttft_s, ttft_full_s;      /* all first tokens (best of repeats); with the layers scaled */
    double vision_in_ttft_s;         /* rank 0's vision_encode time inside that run */
    double floor_s, ratio;           /* FLOPs per rank at the GEMM limit; floor / ttft */
    double lm_flops;                 /* per rank, the prompts' prefill through the language model */
} image_row;

typedef struct image_vision {
    int layers_run, layers_full;
    double flops, flops_full;    /* one image, all ranks */
    double seconds, layers_s;    /* one image alone (best of repeats), and its layers' share */
    double seconds_full;         /* the layers scaled to layers_full */
    double gflops, ratio;        /* per rank; against the GEMM limit */
    int gemm_T, gemm_N, gemm_K;  /* the limit's shape */
} image_vision;

static void random_pixels(float *px, size_t n, uint64_t *rng) {
    for (size_t i = 0; i < n; i++) px[i] = (float)(2.0 * rng_uniform(rng) - 1.0);
}

static size_t pixel_count(const glm_config *c) { return (size_t)c->vision.in_ch * c->vision.image * c->vision.image; }

/* A random question id: any id but the image's three (boi, placeholder, eoi). */
static int text_id(const glm_config *c, uint64_t *rng) {
    for (;;) {
        int id = (int)(rng_next(rng) % (uint64_t)c->vocab);
        if (id != c->vision.boi_id && id != c->vision.eoi_id && id != c->pad_id) return id;
    }
}

/* Image question i: [boi, placeholder, eoi] (expanded to the image's rows), then
 * q random ids, as GLM-4V's template puts the image before the message's text;
 * its own random pixels and content hash, so that nothing is a prefix-cache hit. */
static void make_question(const glm_config *c, gen_request *r, int q, uint64_t *rng) {
    memset(r, 0, sizeof *r);
    int n = 3 + q, *ids = malloc(sizeof(int) * (size_t)n), at;
    r->pixels = malloc(sizeof(float) * pixel_count(c));
    if (!ids || !r->pixels) abort();
    ids[0] = c->vision.boi_id, ids[1] = c->pad_id, ids[2] = c->vision.eoi_id;
    for (int t = 3; t < n; t++) ids[t] = text_id(c, rng);
    char err[256];
    if (image_find(c, ids, n, &at, err, sizeof err) || at != 0) abort(); /* the ids above are an image's */
    r->n_prompt = image_expand(ids, n, at, config_image_tokens(c), &r->prompt);
    free(ids);
    random_pixels(r->pixels, pixel_count(c), rng);
    r->img_kv0 = at;
    r->content_hash = rng_next(rng) | 1;
    r->max_new = 1, r->top_p = 1.0f, r->ignore_eos = 1;
}

/* Seconds of one image through the tower alone (engine_image: the pixels'
 * broadcast, every rank's encode, the rows kept in slot 0), and the part in
 * the layers. */
static double encode_once(engine *e, const float *px, double *layers_s) {
    const glm_vision *v = e->m->vision;
    double l0 = vision_layer_seconds(v);
    double t0 = util_now();
    engine_image(e, 0, px);
    double dt = util_now() - t0;
    *layers_s = vision_layer_seconds(v) - l0;
    engine_image_drop(e, 0);
    return dt;
}

static void time_vision(engine *e, const bench_opts *o, int full, image_vision *iv) {
    const glm_config *c = &e->m->cfg;
    float *px = malloc(sizeof(float) * pixel_count(c));
    if (!px) abort();
    uint64_t rng = 41;
    random_pixels(px, pixel_count(c), &rng);
    double ls;
    encode_once(e, px, &ls); /* warm-up: the tower's scratch, library plans */
    iv->seconds = 1e30;
    for (int r = 0; r < o->repeats; r++) {
        random_pixels(px, pixel_count(c), &rng);
        double dt = encode_once(e, px, &ls);
        if (dt < iv->seconds) iv->seconds = dt, iv->layers_s = ls;
    }
    free(px);
    int tp = e->comm->size;
    iv->layers_run = o->vision_layers ? o->vision_layers : c->vision.n_layers;
    iv->layers_full = full;
    iv->flops = vision_flops(c, iv->layers_run);
    iv->flops_full = vision_flops(c, full);
    iv->seconds_full = iv->seconds + iv->layers_s * ((double)full / iv->layers_run - 1.0);
    iv->gflops = iv->flops / tp / iv->seconds / 1e9;
}

/* The GEMM limit: the tower's fc1 on rank 0 ([T, Hv] x [Hv, ffn / tp]). */
static void gemm_limit(engine *e, bench_machine *mc, image_vision *iv) {
    const glm_vision_config *v = &e->m->cfg.vision;
    int lo, hi;
    shard_range(v->ffn, e->comm->size, 0, &lo, &hi);
    iv->gemm_T = v->n_pos;
    if (strcmp(e->kb.iface->name, "cpu") == 0 && iv->gemm_T > IMAGE_GEMM_ROWS_CPU) iv->gemm_T = IMAGE_GEMM_ROWS_CPU;
    iv->gemm_N = hi - lo, iv->gemm_K = v->hidden;
    limits_gemm_shape(e, iv->gemm_T, iv->gemm_N, iv->gemm_K, &mc->gemm_gflops, &mc->gemm_what);
    iv->ratio = iv->gflops / mc->gemm_gflops;
}

/* The prompt's prefill FLOPs on one rank: its linear layers (the LM head sees
 * one row) and causal attention, as bench prefill counts them. */
static double lm_prefill_flops(const engine *e, const bench_machine *mc, int len) {
    const glm_config *c = &e->m->cfg;
    double attn = 4.0 * ((double)len * (len + 1) / 2) * e->m->shard.nq * c->head_dim * c->n_layers;
    return 2.0 * len * mc->linear_params + attn;
}

/* Seconds to the first token of n image questions fed together. */
static double ttft_once(engine *e, const bench_opts *o, int n, uint64_t *rng, double *vision_s, int *prompt) {
    gen_request *reqs = calloc((size_t)n, sizeof *reqs);
    if (!reqs) abort();
    for (int i = 0; i < n; i++) make_question(&e->m->cfg, &reqs[i], o->in_len, rng);
    *prompt = reqs[0].n_prompt;
    gen_options go = {o->step_tokens, 0, NULL, NULL};
    pcache_drop_unused(e->pc);
    double v0 = vision_seconds(e->m->vision), t0 = util_now();
    gen_run(e, NULL, reqs, n, &go);
    double dt = util_now() - t0;
    *vision_s = vision_seconds(e->m->vision) - v0;
    for (int i = 0; i < n; i++) gen_request_free(&reqs[i]);
    free(reqs);
    return dt;
}

static void time_ttft(engine *e, const bench_opts *o, const bench_machine *mc, const image_vision *iv, int n,
                      image_row *r) {
    uint64_t rng = 43 + (uint64_t)n;
    memset(r, 0, sizeof *r);
    r->images = n;
    r->ttft_s = 1e30;
    for (int k = 0; k < o->repeats; k++) {
        double vs;
        double dt = ttft_once(e, o, n, &rng, &vs, &r->prompt_tokens);
        if (dt < r->ttft_s) r->ttft_s = dt, r->vision_in_ttft_s = vs;
    }
    r->ttft_full_s = r->ttft_s + n * (iv->seconds_full - iv->seconds);
    r->lm_flops = n * lm_prefill_flops(e, mc, r->prompt_tokens);
    r->floor_s = (n * iv->flops / e->comm->size + r->lm_flops) / (mc->gemm_gflops * 1e9);
    r->ratio = r->floor_s / r->ttft_s;
}

/* A text-only prompt of an image question's length: the language model's
 * step buffers grow to a full chunk before any timed run, without another
 * image encode. */
static void warm_lm(engine *e, const bench_opts *o) {
    const glm_config *c = &e->m->cfg;
    gen_request r = {0};
    r.n_prompt = config_image_tokens(c) + o->in_len;
    r.prompt = malloc(sizeof(int) * (size_t)r.n_prompt);
    if (!r.prompt) abort();
    uint64_t rng = 47;
    for (int t = 0; t < r.n_prompt; t++) r.prompt[t] = text_id(c, &rng);
    r.img_kv0 = -1, r.max_new = 1, r.top_p = 1.0f, r.ignore_eos = 1;
    gen_options go = {o->step_tokens, 0, NULL, NULL};
    pcache_drop_unused(e->pc);
    gen_run(e, NULL, &r, 1, &go);
    gen_request_free(&r);
    pcache_drop_unused(e->pc);
}

static void print_table(const bench_opts *o, const bench_machine *mc, const char *model, const glm_config *c,
                        const image_vision *iv, const image_row *rows, int n, FILE *f) {
    char host[256] = "?";
    gethostname(host, sizeof host - 1);
    const glm_vision_config *v = &c->vision;
    fprintf(f, "# glmtp bench image: model %s, tp %d, device %s, %d threads/rank, host %s, pid %d\n", model, mc->tp,
            mc->device, mc->threads, host, (int)getpid());
    fprintf(f, "# vision tower: %dx%d pixels, %d patches + cls, width %d, %d heads, MLP %d; %d of %d layers run; "
               "%.4g GFLOP per image (%.4g with all layers); %d image rows + %d question tokens per prompt\n",
            v->image, v->image, v->n_pos - 1, v->hidden, v->n_heads, v->ffn, iv->layers_run, iv->layers_full,
            iv->flops / 1e9, iv->flops_full / 1e9, config_image_tokens(c), o->in_len);
    fprintf(f, "# GEMM limit: %s, [%d x %d] x [%d x %d]^T (the tower's fc1 on one rank) = %.2f GFLOP/s\n",
            mc->gemm_what, iv->gemm_T, iv->gemm_K, iv->gemm_N, iv->gemm_K, mc->gemm_gflops);
    fprintf(f, "%10s %10s %12s %10s %10s %8s\n", "vision", "layers", "all layers", "rate", "GEMM", "ratio");
    fprintf(f, "%10s %10s %12s %10s %10s %8s\n", "(ms/img)", "(ms)", "(ms/img)", "(GFLOP/s)", "(GFLOP/s)", "(%)");
    fprintf(f, "%10.2f %10.2f %12.2f %10.2f %10.2f %8.1f\n", iv->seconds * 1e3, iv->layers_s * 1e3,
            iv->seconds_full * 1e3, iv->gflops, mc->gemm_gflops, 100 * iv->ratio);
    fprintf(f, "%7s %8s %10s %12s %10s %10s %8s\n", "images", "prompt", "TTFT", "all layers", "vision", "floor",
            "ratio");
    fprintf(f, "%7s %8s %10s %12s %10s %10s %8s\n", "", "(tokens)", "(s)", "(s)", "(s)", "(s)", "(%)");
    for (int i = 0; i < n; i++)
        fprintf(f, "%7d %8d %10.4f %12.4f %10.4f %10.4f %8.1f\n", rows[i].images, rows[i].prompt_tokens,
                rows[i].ttft_s, rows[i].ttft_full_s, rows[i].vision_in_ttft_s, rows[i].floor_s, 100 * rows[i].ratio);
    fprintf(f, "# per rank, best of %d; vision: one image through the tower alone (pixels broadcast, encode on every "
               "rank); TTFT: all first tokens of the images' questions fed together (chunks of %d tokens); all "
               "layers: the layers' time scaled to %d; floor: the tower's and the prompts' FLOPs at the GEMM rate\n",
            o->repeats, o->step_tokens, iv->layers_full);
    fflush(f);
}

static int write_json(const bench_opts *o, const bench_machine *mc, const engine *e, const char *model,
                      const image_vision *iv, const image_row *rows, int n) {
    const glm_config *c = &e->m->cfg;
    const glm_vision_config *v = &c->vision;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "mode", "image");
    cJSON_AddStringToObject(j, "model", model);
    cJSON_AddStringToObject(j, "device", mc->device);
    cJSON_AddNumberToObject(j, "tp", mc->tp);
    cJSON_AddNumberToObject(j, "threads_per_rank", mc->threads);
    cJSON_AddNumberToObject(j, "repeats", o->repeats);
    cJSON_AddNumberToObject(j, "question_tokens", o->in_len);
    cJSON_AddNumberToObject(j, "step_tokens", o->step_tokens);
    cJSON_AddNumberToObject(j, "weight_bytes_per_rank", (double)(e->m->bytes_sharded + e->m->bytes_replicated));
    cJSON_AddNumberToObject(j, "vision_weight_bytes_per_rank", (double)e->m->bytes_vision);
    cJSON *lim = cJSON_AddObjectToObject(j, "limits");
    cJSON_AddNumberToObject(lim, "memory_gbs", mc->mem_gbs);
    cJSON_AddStringToObject(lim, "memory_how", mc->mem_what);
    cJSON_AddNumberToObject(lim, "gemm_gflops", mc->gemm_gflops);
    cJSON_AddStringToObject(lim, "gemm_how", mc->gemm_what);
    int shape[3] = {iv->gemm_T, iv->gemm_N, iv->gemm_K};
    cJSON_AddItemToObject(lim, "gemm_shape_tnk", cJSON_CreateIntArray(shape, 3));
    cJSON *vj = cJSON_AddObjectToObject(j, "vision");
    cJSON_AddNumberToObject(vj, "image_size", v->image);
    cJSON_AddNumberToObject(vj, "patch", v->patch);
    cJSON_AddNumberToObject(vj, "tokens", v->n_pos);
    cJSON_AddNumberToObject(vj, "image_rows", config_image_tokens(c));
    cJSON_AddNumberToObject(vj, "layers_run", iv->layers_run);
    cJSON_AddNumberToObject(vj, "layers_full", iv->layers_full);
    cJSON_AddNumberToObject(vj, "flops_per_image", iv->flops);
    cJSON_AddNumberToObject(vj, "flops_per_image_full", iv->flops_full);
    cJSON_AddNumberToObject(vj, "ms_per_image", iv->seconds * 1e3);
    cJSON_AddNumberToObject(vj, "layers_ms", iv->layers_s * 1e3);
    cJSON_AddNumberToObject(vj, "ms_per_image_full", iv->seconds_full * 1e3);
    cJSON_AddNumberToObject(vj, "gflops_per_rank", iv->gflops);
    cJSON_AddNumberToObject(vj, "limit_gflops", mc->gemm_gflops);
    cJSON_AddNumberToObject(vj, "ratio", iv->ratio);
    cJSON *arr = cJSON_AddArrayToObject(j, "results");
    for (int i = 0; i < n; i++) {
        cJSON *x = cJSON_CreateObject();
        cJSON_AddNumberToObject(x, "images", rows[i].images);
        cJSON_AddNumberToObject(x, "prompt_tokens", rows[i].prompt_tokens);
        cJSON_AddNumberToObject(x, "ttft_s", rows[i].ttft_s);
        cJSON_AddNumberToObject(x, "ttft_full_s", rows[i].ttft_full_s);
        cJSON_AddNumberToObject(x, "vision_in_ttft_s", rows[i].vision_in_ttft_s);
        cJSON_AddNumberToObject(x, "lm_prefill_flops_per_rank", rows[i].lm_flops);
        cJSON_AddNumberToObject(x, "floor_s", rows[i].floor_s);
        cJSON_AddNumberToObject(x, "ratio", rows[i].ratio);
        cJSON_AddItemToArray(arr, x);
    }
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    FILE *f = fopen(o->json, "w");
    int rc = (!f || fprintf(f, "%s\n", s) < 0) ? -1 : 0;
    if (f && fclose(f) != 0) rc = -1;
    free(s);
    return rc;
}

int bench_image(engine *e, const bench_opts *o, bench_machine *mc, const char *model, int full_layers) {
    image_vision iv = {0};
    time_vision(e, o, full_layers, &iv);
    gemm_limit(e, mc, &iv);
    image_row *rows = calloc((size_t)o->n_images, sizeof *rows);
    if (!rows) abort();
    warm_lm(e, o);
    for (int i = 0; i < o->n_images; i++) time_ttft(e, o, mc, &iv, o->images[i], &rows[i]);
    print_table(o, mc, model, &e->m->cfg, &iv, rows, o->n_images, stdout);
    int rc = 0;
    if (o->json && write_json(o, mc, e, model, &iv, rows, o->n_images)) {
        fprintf(stderr, "glmtp: bench: %s: cannot write\n", o->json);
        rc = 1;
    }
    free(rows);
    return rc;
}
