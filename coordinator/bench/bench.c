/* glmtp bench: prefill, decode and offline-throughput figures, each beside the
 * physical limit measured in the same run (memory bandwidth for decode, a
 * plain GEMM of the same shapes for prefill, the all-reduce share of step
 * time), as a table and as JSON; and --model-only, the analytic model for
 * hardware this machine does not have (model.c).
 * Rank 0 plans and times every step; the other ranks follow (engine_follow),
 * so a figure is the job's, not one rank's. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../kernels/rng.h"
#include "../../worker/util.h"
#include "../../worker/log.h"
#include "../base/args.h"
#include "../base/commands.h"
#include "../base/presets.h"
#include "../engine/engine.h"
#include "../engine/gen_batch.h"
#include "../../worker/vision.h"
#include "bench.h"
#include "limits.h"

static int sum_list_max(const int *v, int n) {
    int m = 0;
    for (int i = 0; i < n; i++)
        if (v[i] > m) m = v[i];
    return m;
}

/* --preset: a checkpoint of random weights made once under $TMPDIR and reused. */
static int preset_dir(comm *c, const bench_opts *o, char *dir, size_t len) {
    const char *tmp = getenv("TMPDIR");
    char vl[16] = ""; /* bench image --vision-layers: a model of that many vision layers */
    if (o->vision_layers) snprintf(vl, sizeof vl, "-V%d", o->vision_layers);
    snprintf(dir, len, "%s/glmtp-bench-%s-L%d%s-%s", tmp ? tmp : "/tmp", o->preset, o->layers, vl, o->dtype);
    int failed = 0;
    if (c->rank == 0) {
        char cfg[4200];
        snprintf(cfg, sizeof cfg, "%s/config.json", dir);
        if (access(cfg, F_OK) != 0) {
            char layers[16], vlayers[16];
            snprintf(layers, sizeof layers, "%d", o->layers);
            snprintf(vlayers, sizeof vlayers, "%d", o->vision_layers);
            char *argv[] = {"--preset", (char *)o->preset, "--layers", layers, "--dtype", (char *)o->dtype,
                            "--out", dir, "--seed", "1", "--vision-layers", vlayers};
            failed = cmd_make_model(o->vision_layers ? 12 : 10, argv) != 0;
        }
        /* Several GB for the big presets: say where, and that it stays. */
        if (!failed)
            log_msg(LOG_INFO, "bench: the random-weight checkpoint %s is kept for later runs with the same preset; "
                              "rm -r it to free the space", dir);
    }
    return comm_first_failed(c, failed) >= 0 ? -1 : 0;
}

/* A step of one token for each of nseq sequences at position pos, greedy (the
 * ids come back, not the logits), as generate and serve run greedy requests;
 * or sampled at temperature 1 when o->top_k or o->top_p asks for it. */
static void decode_step(engine *e, const bench_opts *o, kv_seq *seqs, int nseq, int pos, uint64_t *rng, int *ids) {
    int max_blocks = 0;
    for (int s = 0; s < nseq; s++)
        if (seqs[s].n_blocks > max_blocks) max_blocks = seqs[s].n_blocks;
    glm_step st = {0};
    step_alloc(&st, nseq, nseq, max_blocks, nseq, e->blocks.block_size);
    for (int s = 0; s < nseq; s++) {
        st.ids[s] = (int)(rng_next(rng) % (uint64_t)e->m->cfg.vocab);
        st.pos[s] = pos;
        st.seq[s] = s;
        st.logit_rows[s] = s;
        step_set_table(&st, s, &seqs[s]);
    }
    step_fill_slots(&st);
    if (o->top_k > 1 || o->top_p < 1.0f) {
        ksample_params *p = malloc(sizeof *p * (size_t)nseq);
        if (!p) abort();
        for (int s = 0; s < nseq; s++) p[s] = (ksample_params){1.0f, o->top_k, o->top_p, rng};
        engine_step_sample(e, &st, e->m->cfg.vocab, p, ids);
        free(p);
    } else {
        engine_step_argmax(e, &st, e->m->cfg.vocab, ids);
    }
    step_free(&st);
}

/* Decode at batch B with C tokens of context each. The cache is not filled by a
 * prefill: step time does not depend on the cached values, only on how many. */
static void run_decode(engine *e, const bench_opts *o, const bench_machine *mc, int B, int C, bench_row *r) {
    kv_seq *seqs = calloc((size_t)B, sizeof *seqs);
    int *ids = malloc(sizeof(int) * (size_t)B);
    if (!seqs || !ids) abort();
    for (int s = 0; s < B; s++)
        if (kv_seq_reserve(&e->blocks, &seqs[s], C + o->steps + 2)) abort(); /* pool sized for the largest */
    uint64_t rng = 1;
    decode_step(e, o, seqs, B, C, &rng, ids); /* warm-up */
    decode_step(e, o, seqs, B, C + 1, &rng, ids);
    double ar0, tot0, ar1, tot1;
    forward_times(e->fw, &ar0, &tot0);
    const kernels_iface *k = e->kb.iface;
    k->sync(e->kb.ctx);
    k->profile_range(e->kb.ctx, 1);
    double t0 = util_now();
    for (int i = 0; i < o->steps; i++) decode_step(e, o, seqs, B, C + 2 + i, &rng, ids);
    k->sync(e->kb.ctx);
    double dt = (util_now() - t0) / o->steps;
    k->profile_range(e->kb.ctx, 0);
    forward_times(e->fw, &ar1, &tot1);
    for (int s = 0; s < B; s++) kv_seq_release(&e->blocks, &seqs[s]);
    free(seqs);
    free(ids);
    /* Bytes every rank reads per step: its weights (not the embedding table) and its KV. */
    double kv_tok = kv_bytes_per_token(e->m, e->kv->dtype);
    double bytes = (double)mc->weight_bytes + (double)B * (C + 1) * kv_tok;
    *r = (bench_row){0};
    r->batch = B;
    r->context = C;
    r->seconds = dt;
    r->tokens_per_s = B / dt;
    r->gbps = bytes * mc->tp / dt / 1e9; /* all ranks share this machine's memory */
    r->limit = mc->mem_gbs;
    r->ratio = r->gbps / r->limit;
    r->allreduce_share = tot1 > tot0 ? (ar1 - ar0) / (tot1 - tot0) : 0;
}

/* Seconds of one call of the attention op of layer 0 over the prefill step st,
 * whose K/V the step just stored: the kernel alone, for its FLOP rate. q is
 * random (the rate does not depend on it). */
static double time_attention(engine *e, const glm_step *st) {
    const kernels_iface *k = e->kb.iface;
    void *ctx = e->kb.ctx;
    const glm_config *c = &e->m->cfg;
    const glm_shard *sh = &e->m->shard;
    int T = st->n_tokens, d = c->head_dim, ld = (sh->nq + 2 * sh->nkv) * d;
    void *q = limits_random_acts(e, (size_t)T * ld, 17), *out = k->alloc(ctx, (size_t)T * sh->nq * d * k->act_bytes);
    int32_t *dv[4];
    const int32_t *src[4] = {st->pos, st->seq, st->slots, st->block_tables};
    size_t n[4] = {(size_t)T, (size_t)T, (size_t)T, (size_t)st->n_seqs * st->max_blocks};
    for (int i = 0; i < 4; i++) {
        dv[i] = k->alloc(ctx, n[i] * 4);
        k->to_device(ctx, dv[i], src[i], n[i] * 4);
    }
    kattn_batch b = {T, dv[0], dv[1], dv[2], dv[3], st->max_blocks, st->block_size, T - 1, st->pos, st->seq, 1,
                     e->kv->dtype, e->kv->head_dim, e->kv->scale_off};
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        b.serial = (uint64_t)r + 1; /* as a new step would: any per-step planning is in the time */
        k->sync(ctx);
        double t0 = util_now();
        k->attention(ctx, out, q, ld, e->kv->k[0], e->kv->v[0], &b, sh->nq, sh->nkv, c->n_heads / c->n_kv, d,
                     1.0f / sqrtf((float)d));
        k->sync(ctx);
        double dt = util_now() - t0;
        if (dt < best) best = dt;
    }
    for (int i = 0; i < 4; i++) k->free(ctx, dv[i]);
    k->free(ctx, q);
    k->free(ctx, out);
    return best;
}

/* One prefill of len tokens, timed after a warm-up of the same step (so that
 * library plans and scratch growth stay out of the figure). */
static void run_prefill(engine *e, const bench_machine *mc, int len, bench_row *r) {
    kv_seq seq = {0};
    if (kv_seq_reserve(&e->blocks, &seq, len)) abort();
    uint64_t rng = 3;
    glm_step st = {0};
    step_alloc(&st, len, 1, seq.n_blocks, 1, e->blocks.block_size);
    for (int t = 0; t < len; t++) {
        st.ids[t] = (int)(rng_next(&rng) % (uint64_t)e->m->cfg.vocab);
        st.pos[t] = t;
    }
    st.logit_rows[0] = len - 1;
    step_set_table(&st, 0, &seq);
    step_fill_slots(&st);
    float *logits = malloc(sizeof(float) * (size_t)e->m->cfg.vocab);
    if (!logits) abort();
    engine_step(e, &st, logits, NULL);
    double ar0, tot0, ar1, tot1;
    forward_times(e->fw, &ar0, &tot0);
    const kernels_iface *k = e->kb.iface;
    k->sync(e->kb.ctx);
    k->profile_range(e->kb.ctx, 1);
    double t0 = util_now();
    engine_step(e, &st, logits, NULL);
    k->sync(e->kb.ctx);
    double dt = util_now() - t0;
    k->profile_range(e->kb.ctx, 0);
    forward_times(e->fw, &ar1, &tot1);
    double t_attn = time_attention(e, &st);
    step_free(&st);
    free(logits);
    kv_seq_release(&e->blocks, &seq);
    const glm_config *c = &e->m->cfg;
    const glm_shard *s = &e->m->shard;
    double linear = 2.0 * len * (double)mc->linear_params; /* per rank */
    /* Causal: QK^T and PV over len*(len+1)/2 (query, key) pairs, 2 FLOPs each per dim. */
    double attn_layer = 4.0 * ((double)len * (len + 1) / 2) * s->nq * c->head_dim;
    *r = (bench_row){0};
    r->len = len;
    r->seconds = dt;
    r->tokens_per_s = len / dt;
    r->gflops = (linear + attn_layer * c->n_layers) / dt / 1e9;
    r->linear_gflops = linear / dt / 1e9;
    r->attn_gflops = attn_layer / t_attn / 1e9;
    r->attn_s = t_attn;
    r->limit = mc->gemm_gflops;
    r->ratio = r->linear_gflops / r->limit;
    if (mc->gemm_bf16_what) {
        r->limit_bf16 = mc->gemm_bf16_gflops;
        r->ratio_bf16 = r->linear_gflops / r->limit_bf16;
    }
    r->allreduce_share = tot1 > tot0 ? (ar1 - ar0) / (tot1 - tot0) : 0;
}

static void run_throughput(engine *e, const bench_opts *o, bench_row *r) {
    int n = o->requests;
    gen_request *reqs = calloc((size_t)n, sizeof *reqs);
    if (!reqs) abort();
    uint64_t rng = 11;
    for (int i = 0; i < n; i++) {
        reqs[i].prompt = malloc(sizeof(int) * (size_t)o->in_len);
        if (!reqs[i].prompt) abort();
        for (int t = 0; t < o->in_len; t++) reqs[i].prompt[t] = (int)(rng_next(&rng) % (uint64_t)e->m->cfg.vocab);
        reqs[i].n_prompt = o->in_len;
        reqs[i].max_new = o->out_len;
        reqs[i].top_p = 1.0f;
        reqs[i].ignore_eos = 1;
    }
    double ar0, tot0, ar1, tot1;
    forward_times(e->fw, &ar0, &tot0);
    gen_options go = {o->step_tokens, 0, NULL, NULL};
    pcache_drop_unused(e->pc); /* no hits on an earlier run's prompts */
    double t0 = util_now();
    gen_run(e, NULL, reqs, n, &go);
    double dt = util_now() - t0;
    pcache_drop_unused(e->pc); /* the other modes take blocks from the free list directly */
    forward_times(e->fw, &ar1, &tot1);
    long out = 0;
    for (int i = 0; i < n; i++) {
        out += reqs[i].n_out;
        gen_request_free(&reqs[i]);
    }
    free(reqs);
    *r = (bench_row){0};
    r->requests = n;
    r->seconds = dt;
    r->tokens_per_s = out / dt;
    r->total_tokens_per_s = (out + (double)n * o->in_len) / dt;
    r->allreduce_share = tot1 > tot0 ? (ar1 - ar0) / (tot1 - tot0) : 0;
}

/* Seconds to the first token of doc + q through the scheduler (prefix cache as
 * it stands), one request alone; *cached gets the prompt tokens it took from
 * the cache. */
static double ttft_one(engine *e, const bench_opts *o, const int *doc, int n_doc, const int *q, int n_q, int *cached) {
    gen_request r = {0};
    r.n_prompt = n_doc + n_q;
    r.prompt = malloc(sizeof(int) * (size_t)r.n_prompt);
    if (!r.prompt) abort();
    memcpy(r.prompt, doc, sizeof(int) * (size_t)n_doc);
    memcpy(r.prompt + n_doc, q, sizeof(int) * (size_t)n_q);
    r.max_new = 1, r.top_p = 1.0f, r.ignore_eos = 1;
    gen_options go = {o->step_tokens, 0, NULL, NULL};
    pcache_stats before, after;
    pcache_get_stats(e->pc, &before);
    double t0 = util_now();
    gen_run(e, NULL, &r, 1, &go);
    double dt = util_now() - t0;
    pcache_get_stats(e->pc, &after);
    *cached = (int)(after.cached_tokens - before.cached_tokens);
    gen_request_free(&r);
    return dt;
}

/* Time to first token of questions over one document of len tokens: question
 * 1 cold (the whole prompt fed), question 2 on the same document with the
 * prefix cache (only what follows the cached blocks fed), and question 2 again
 * with the cache off, the figure the cache is compared with. */
static void run_prefix(engine *e, const bench_opts *o, int len, bench_row *r) {
    int nq = o->in_len, *doc = malloc(sizeof(int) * (size_t)len), *q = malloc(sizeof(int) * 2 * (size_t)nq);
    if (!doc || !q) abort();
    uint64_t rng = 5;
    for (int t = 0; t < len; t++) doc[t] = (int)(rng_next(&rng) % (uint64_t)e->m->cfg.vocab);
    for (int t = 0; t < 2 * nq; t++) q[t] = (int)(rng_next(&rng) % (uint64_t)e->m->cfg.vocab);
    int was_on = pcache_enabled(e->pc), cached;
    pcache_set_enabled(e->pc, 1);
    pcache_drop_unused(e->pc); /* no hits on an earlier run's documents */
    ttft_one(e, o, q, nq, q + nq, nq, &cached); /* warm-up: scratch and plans outside the figures */
    pcache_drop_unused(e->pc);
    *r = (bench_row){0};
    r->len = len;
    r->seconds = ttft_one(e, o, doc, len, q, nq, &cached);
    r->cached_s = ttft_one(e, o, doc, len, q + nq, nq, &r->cached_tokens);
    pcache_set_enabled(e->pc, 0);
    r->uncached_s = ttft_one(e, o, doc, len, q + nq, nq, &cached);
    pcache_set_enabled(e->pc, was_on);
    pcache_drop_unused(e->pc); /* the other modes take blocks from the free list directly */
    r->tokens_per_s = (len + nq) / r->seconds;
    r->ratio = r->uncached_s / r->cached_s;
    free(doc);
    free(q);
}

static const args_opt bench_opts_list[] = {
    {"--model", "DIR", "checkpoint to run (or --preset)"},
    {"--preset", "NAME", "make a random-weight checkpoint of this preset in $TMPDIR for the run (deleted after)"},
    {"--layers", "N", "with --preset: layers of the made model (default the preset's)"},
    {"--dtype", "bf16|f32", "with --preset: weight type (default bf16)"},
    {"--lens", "N,..", "prefill: prompt lengths; prefix: document lengths (default 128,512; --model-only "
                       "131072,1048576)"},
    {"--batch", "B,..", "decode: batch sizes (default 1,8)"},
    {"--context", "C,..", "decode: context lengths (default 128,1024; --model-only 0,131072)"},
    {"--steps", "S", "decode: timed steps per point (default 8)"},
    {"--top-k", "K", "decode: sample with top-k at temperature 1 (default greedy)"},
    {"--top-p", "P", "decode: sample with top-p at temperature 1 (default greedy)"},
    {"--requests", "N", "throughput: requests (default 16)"},
    {"--input", "N", "throughput: prompt tokens per request; prefix: question tokens (default 64)"},
    {"--output", "N", "throughput: new tokens per request (default 32)"},
    {"--step-tokens", "N", "throughput, prefix: tokens per step (default 512)"},
    {"--json", "FILE", "also write the results as JSON"},
    {"--model-only", NULL, "no run: the analytic roofline model of a GPU deployment"},
    {"--gpu", "h100|h200|a100", "--model-only: the GPU (default h100)"},
    {"--link", "nvlink4|pcie5|ib-ndr", "--model-only: the link between GPUs (default nvlink4)"},
    {"--tp", "N", "--model-only: tensor-parallel size (default 1)"},
    {"--measured", "bench.json", "--model-only: put a measured run's figures beside the model's"},
    {"--plan", "TOKENS", "--model-only: per GPU kind, the fewest GPUs holding one sequence of TOKENS (weights + KV + activations), bf16 and fp8 KV, with prefill s and decode ms/token at that length"},
    {"--memory", "GB", "--model-only --plan: also say, per tp, whether a rank with this much memory holds it"},
    {"--images", "N,..", "image: image questions fed together (default 1)"},
    {"--vision-layers", "N", "image: run N of the vision tower's layers, times also scaled to all of them (with "
                             "--preset: a model made with N)"},
    {"--repeats", "R", "image: timed runs per point, the best kept (default 3)"},
    {NULL, NULL, NULL},
};

static const args_opt bench_engine_opts[] = {
    {"--threads", "N", "CPU threads per rank (default: OMP_NUM_THREADS, else the cores the rank may run on; "
                       "mpirun -np 2 binds each rank to one core unless given --bind-to none)"},
    {"--device", "cpu|cuda", "where each rank computes (default cpu)"},
    {"--comm", "mpi|nccl", "GPU all-reduce (default nccl with more than one rank)"},
    {"--kv-cache-dtype", "bf16|fp8", ARGS_KV_DTYPE_HELP},
    {NULL, NULL, NULL},
};

const args_spec cmd_bench_spec = {
    "glmtp bench",
    "prefill|decode|throughput|prefix|image --model DIR|--preset NAME [options]\n"
    "       glmtp bench --model-only [--gpu h100|h200|a100] [--tp N] [--link L] [--measured bench.json] [--json FILE]\n"
    "       glmtp bench --model-only --plan TOKENS [--preset glm-4-9b-chat-1m|--model DIR] [--link L] [--json FILE]",
    "Benchmarks, each figure beside the limit measured in the same run (memory bandwidth, GEMM, all-reduce).",
    {bench_opts_list, bench_engine_opts, args_log_opts, NULL},
    NULL,
};

static int parse(comm *c, bench_opts *o, int argc, char **argv) {
    (void)c; /* every rank parses the same argv; rank 0 reports */
    memset(o, 0, sizeof *o);
    o->mode = argc > 0 && argv[0][0] != '-' ? argv[0] : "";
    int skip = o->mode[0] ? 1 : 0;
    args a;
    args_init(&a, &cmd_bench_spec, argc - skip, argv + skip);
    o->model_only = args_flag(&a, "--model-only");
    o->dir = args_str(&a, "--model", NULL);
    o->preset = args_str(&a, "--preset", NULL);
    o->layers = (int)args_int(&a, "--layers", 0, 1, 1000);
    o->dtype = args_str(&a, "--dtype", "bf16");
    o->json = args_str(&a, "--json", NULL);
    o->device = args_str(&a, "--device", "cpu");
    o->comm_kind = args_str(&a, "--comm", NULL);
    o->kv_dtype = args_kv_dtype(&a);
    o->threads = (int)args_int(&a, "--threads", 0, 0, 1024);
    o->steps = (int)args_int(&a, "--steps", 8, 1, 1 << 20);
    o->requests = (int)args_int(&a, "--requests", 16, 1, 1 << 20);
    o->in_len = (int)args_int(&a, "--input", 64, 1, 1 << 24);
    o->out_len = (int)args_int(&a, "--output", 32, 1, 1 << 24);
    o->step_tokens = (int)args_int(&a, "--step-tokens", 512, 1, 1 << 24);
    o->gpu = args_str(&a, "--gpu", "h100");
    o->link = args_str(&a, "--link", "nvlink4");
    o->tp = (int)args_int(&a, "--tp", 1, 1, 4096);
    o->measured = args_str(&a, "--measured", NULL);
    o->plan = args_int(&a, "--plan", 0, 1, 1L << 31);
    o->memory = args_num(&a, "--memory", 0, 0, 1e6) * 1e9;
    o->vision_layers = (int)args_int(&a, "--vision-layers", 0, 1, 1000);
    o->repeats = (int)args_int(&a, "--repeats", 3, 1, 1000);
    /* decode: greedy unless one of these asks for sampling (at temperature 1) */
    o->top_k = (int)args_int(&a, "--top-k", 0, 0, 1 << 30);
    o->top_p = (float)args_num(&a, "--top-p", 1.0, 1e-9, 1.0);
    const char *lens = args_str(&a, "--lens", o->model_only ? "131072,1048576" : "128,512");
    const char *batches = args_str(&a, "--batch", "1,8");
    const char *contexts = args_str(&a, "--context", o->model_only ? "0,131072" : "128,1024");
    if (!a.failed) args_int_list(&a, "--lens", lens, &o->lens, &o->n_lens);
    if (!a.failed) args_int_list(&a, "--batch", batches, &o->batches, &o->n_batches);
    if (!a.failed) args_int_list(&a, "--context", contexts, &o->contexts, &o->n_contexts);
    const char *images = args_str(&a, "--images", "1");
    if (!a.failed) args_int_list(&a, "--images", images, &o->images, &o->n_images);
    for (int i = 0; !a.failed && i < o->n_images; i++)
        if (o->images[i] < 1) snprintf(a.err, sizeof a.err, "--images: counts must be >= 1"), a.failed = 1;
    for (int i = 0; !a.failed && i < o->n_lens; i++)
        if (o->lens[i] < 1) snprintf(a.err, sizeof a.err, "--lens: lengths must be >= 1"), a.failed = 1;
    for (int i = 0; !a.failed && i < o->n_batches; i++)
        if (o->batches[i] < 1) snprintf(a.err, sizeof a.err, "--batch: sizes must be >= 1"), a.failed = 1;
    for (int i = 0; !a.failed && !o->model_only && i < o->n_contexts; i++)
        if (o->contexts[i] < 1) snprintf(a.err, sizeof a.err, "--context: lengths must be >= 1"), a.failed = 1;
    if (!a.failed && !o->model_only && strcmp(o->mode, "prefill") && strcmp(o->mode, "decode") &&
        strcmp(o->mode, "throughput") && strcmp(o->mode, "prefix") && strcmp(o->mode, "image"))
        snprintf(a.err, sizeof a.err, "unknown mode '%s' (prefill, decode, throughput, prefix, image, or --model-only)",
                 o->mode),
            a.failed = 1;
    if (!a.failed && !o->model_only && !!o->dir == !!o->preset)
        snprintf(a.err, sizeof a.err, "give --model DIR or --preset NAME"), a.failed = 1;
    if (!a.failed && o->preset && !preset_find(o->preset))
        snprintf(a.err, sizeof a.err, "unknown preset '%s' (%s)", o->preset, preset_names()), a.failed = 1;
    if (!a.failed && o->preset && !o->layers) o->layers = preset_find(o->preset)->layers;
    if (!a.failed && strcmp(o->dtype, "bf16") && strcmp(o->dtype, "f32"))
        snprintf(a.err, sizeof a.err, "--dtype must be bf16 or f32"), a.failed = 1;
    int rc = args_finish(&a);
    if (rc) log_error_agreed("bench: %s (glmtp bench --help lists the options)", a.err);
    args_free(&a);
    return rc;
}

static void free_opts(bench_opts *o) {
    free(o->images);
    free(o->lens);
    free(o->batches);
    free(o->contexts);
}

/* image: the KV pool for the largest batch of image questions (each its
 * image's rows, the question and its first token, a block of slack), from
 * config.json; a model without a vision tower is refused here, on every rank
 * alike. 0, or 1 after the message. */
static int image_kv_tokens(comm *c, const bench_opts *o, const char *model, int *kv) {
    glm_config cfg;
    char err[1024];
    int bad = config_load(&cfg, model, err, sizeof err);
    if (!bad && !cfg.vision.present)
        snprintf(err, sizeof err, "%s has no vision tower (bench image needs a GLM-4V model, e.g. --preset tiny-4v)",
                 model), bad = 1;
    if (!bad && o->vision_layers > cfg.vision.n_layers)
        snprintf(err, sizeof err, "--vision-layers %d: %s has %d", o->vision_layers, model, cfg.vision.n_layers),
            bad = 1;
    if (bad) {
        if (c->rank == 0) log_error_agreed("bench: %s", err);
        return 1;
    }
    *kv = sum_list_max(o->images, o->n_images) * (config_image_tokens(&cfg) + o->in_len + 1 + 16);
    return 0;
}

int cmd_bench(comm *c, int argc, char **argv) {
    if (engine_check_args(c, argc, argv)) return 1;
    bench_opts o;
    if (parse(c, &o, argc, argv)) {
        free_opts(&o);
        return 1;
    }
    if (o.model_only) {
        int rc = c->rank == 0 ? bench_model_report(&o) : 0;
        free_opts(&o);
        return rc;
    }
    char dir[4096];
    int rc = 1;
    engine e = {0};
    if (o.preset && preset_dir(c, &o, dir, sizeof dir)) goto done;
    const char *model = o.preset ? dir : o.dir;

    int kv = 1;
    if (strcmp(o.mode, "decode") == 0)
        kv = sum_list_max(o.batches, o.n_batches) * (sum_list_max(o.contexts, o.n_contexts) + o.steps + 2 + 16);
    else if (strcmp(o.mode, "prefill") == 0)
        kv = sum_list_max(o.lens, o.n_lens) + 16;
    else if (strcmp(o.mode, "prefix") == 0) /* the document's blocks stay cached while a question runs */
        kv = sum_list_max(o.lens, o.n_lens) + 2 * o.in_len + 3 * 16;
    else if (strcmp(o.mode, "image") == 0 && image_kv_tokens(c, &o, model, &kv))
        goto done;
    else
        kv = o.requests * (o.in_len + o.out_len + 16);
    if (engine_open(&e, c, model, kv, 16, o.threads, o.device, o.comm_kind, ENGINE_GPU_MEM_UTIL, o.kv_dtype)) goto done;
    const glm_config *cfg = &e.m->cfg;
    int ctx_need = strcmp(o.mode, "decode") == 0 ? sum_list_max(o.contexts, o.n_contexts) + o.steps + 2
                   : strcmp(o.mode, "prefill") == 0 ? sum_list_max(o.lens, o.n_lens)
                   : strcmp(o.mode, "prefix") == 0  ? sum_list_max(o.lens, o.n_lens) + o.in_len + 1
                   : strcmp(o.mode, "image") == 0   ? config_image_tokens(cfg) + o.in_len + 1
                                                    : o.in_len + o.out_len;
    if (comm_first_failed(c, ctx_need > cfg->seq_len) >= 0) {
        engine_error(c, "bench: %d tokens per sequence exceed the context length %d", ctx_need, cfg->seq_len);
        goto done;
    }
    int full_vision = cfg->vision.n_layers; /* image: the real tower's layers the timings scale to */
    if (strcmp(o.mode, "image") == 0) {
        if (o.preset) full_vision = preset_find(o.preset)->v_layers;
        else if (o.vision_layers) vision_set_layers(e.m->vision, o.vision_layers);
    }
    if (c->rank != 0) {
        engine_follow(&e);
        rc = 0;
        goto done;
    }

    bench_machine mc;
    bench_machine_measure(&e, &o, &mc);
    if (strcmp(o.mode, "image") == 0) {
        rc = bench_image(&e, &o, &mc, model, full_vision);
        engine_finish(&e);
        goto done;
    }
    int n_rows = strcmp(o.mode, "decode") == 0 ? o.n_batches * o.n_contexts
                 : strcmp(o.mode, "prefill") == 0 || strcmp(o.mode, "prefix") == 0 ? o.n_lens
                                                                                     : 1;
    bench_row *rows = calloc((size_t)n_rows, sizeof *rows);
    if (!rows) abort();
    if (strcmp(o.mode, "decode") == 0) {
        for (int b = 0; b < o.n_batches; b++)
            for (int k = 0; k < o.n_contexts; k++)
                run_decode(&e, &o, &mc, o.batches[b], o.contexts[k], &rows[b * o.n_contexts + k]);
    } else if (strcmp(o.mode, "prefill") == 0) {
        for (int i = 0; i < o.n_lens; i++) {
            /* The GEMM limit at the same token count (capped on the CPU, where it
             * is slow and its rate is flat past a few thousand rows). */
            int T = o.lens[i] < 4096 || strcmp(e.kb.iface->name, "cpu") != 0 ? o.lens[i] : 4096;
            limits_gemm_layer(&e, T, &mc.gemm_gflops, &mc.gemm_what);
            limits_gemm_bf16_layer(&e, T, &mc.gemm_bf16_gflops, &mc.gemm_bf16_what, mc.gemm_bf16_buf,
                                   sizeof mc.gemm_bf16_buf);
            run_prefill(&e, &mc, o.lens[i], &rows[i]);
        }
    } else if (strcmp(o.mode, "prefix") == 0) {
        for (int i = 0; i < o.n_lens; i++) run_prefix(&e, &o, o.lens[i], &rows[i]);
    } else {
        run_throughput(&e, &o, &rows[0]);
    }
    engine_finish(&e);
    bench_print(&o, &mc, model, rows, n_rows, stdout);
    rc = 0;
    if (o.json && bench_write_json(&o, &mc, model, rows, n_rows, o.json)) {
        engine_error(c, "bench: %s: cannot write", o.json);
        rc = 1;
    }
    free(rows);
done:
    engine_close(&e);
    free_opts(&o);
    return rc;
}
