/* bench.h: shared types of glmtp bench (bench.c runs, report.c prints,
 * model.c predicts). Figures are per job; times are seconds. */
#ifndef GLMTP_BENCH_H
#define GLMTP_BENCH_H

#include <stdio.h>

#include "../engine/engine.h"

typedef struct bench_opts {
    const char *mode; /* prefill | decode | throughput | prefix | image */
    const char *dir, *preset, *dtype, *json, *device, *comm_kind;
    int layers, threads, steps, requests, in_len, out_len, step_tokens;
    int *lens, n_lens, *batches, n_batches, *contexts, n_contexts;
    int model_only; /* analytic model */
    const char *gpu, *link, *measured;
    int tp;
    long plan; /* --model-only --plan N: which GPUs hold one sequence of N tokens (0: off) */
    int top_k;   /* decode: greedy steps unless top_k > 1 or top_p < 1 (then sampled at temperature 1) */
    float top_p;
    int kv_dtype; /* --kv-cache-dtype: KV_DTYPE_ACT or KV_DTYPE_FP8 */
    double memory; /* --model-only --plan --memory GB: bytes per rank the per-tp table is checked against (0: none) */
    /* image (GLM-4V): vision layers run (0: all; with --preset, the made model's), batch sizes, timed repeats */
    int vision_layers, *images, n_images, repeats;
} bench_opts;

/* The job and the limits measured on this machine in the same run. */
typedef struct bench_machine {
    int tp, threads;
    const char *device;
    double weight_bytes;  /* read per decode step per rank (embedding table excluded) */
    double linear_params; /* per rank, for prefill FLOPs */
    double mem_gbs;       /* memory bandwidth limit: STREAM copy (CPU) or the backend's add (GPU) */
    double read_gbs;      /* CPU only: STREAM-style read */
    double gemm_gflops;   /* plain GEMM of the block's shapes at the prefill length */
    const char *gemm_what, *mem_what;
    /* CPU: the backend's library GEMM in bf16 on the same shapes (what prefill
     * runs on bf16 weights); gemm_bf16_what NULL when there is none. */
    double gemm_bf16_gflops;
    const char *gemm_bf16_what;
    char gemm_bf16_buf[256]; /* gemm_bf16_what's text */
} bench_machine;

typedef struct bench_row {
    int batch, context, len, requests;
    double seconds; /* per step (decode), per prefill, or whole run (throughput) */
    double tokens_per_s, total_tokens_per_s;
    double gbps, gflops, linear_gflops;
    double attn_gflops, attn_s; /* prefill: the attention op of one layer alone */
    double limit, ratio; /* the limit this row is compared with, and the ratio */
    double limit_bf16, ratio_bf16; /* prefill: the library's bf16 GEMM (0: none) and linear / it */
    double allreduce_share;
    double cached_s, uncached_s; /* prefix: question 2's time to first token with and without the cache */
    int cached_tokens;           /* prefix: prompt tokens question 2 took from the cache */
} bench_row;

void bench_machine_measure(engine *e, const bench_opts *o, bench_machine *mc /* OUT */);
void bench_print(const bench_opts *o, const bench_machine *mc, const char *model, const bench_row *rows, int n,
                 FILE *f);
/* 0, or -1 when the file cannot be written. */
int bench_write_json(const bench_opts *o, const bench_machine *mc, const char *model, const bench_row *rows, int n,
                     const char *path);
/* bench image (image.c), on rank 0 of an open engine whose model has a vision
 * tower: prints the table (and writes --json); 0, or 1 when the JSON cannot be
 * written. full_layers: the vision layers of the real model the timings are
 * scaled to (the preset's, or config.json's). */
int bench_image(engine *e, const bench_opts *o, bench_machine *mc, const char *model, int full_layers);
/* --model-only: prints predictions (and measurements from --measured FILE). */
int bench_model_report(const bench_opts *o);

#endif
