/* glmtp bench output: the '#' preamble, a table with a units row and the
 * limit beside every figure, and the same data as JSON. */
#include <cjson/cJSON.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "limits.h"

void bench_machine_measure(engine *e, const bench_opts *o, bench_machine *mc) {
    memset(mc, 0, sizeof *mc);
    mc->tp = e->comm->size;
    mc->threads = omp_get_max_threads();
    mc->device = o->device;
    size_t emb = (size_t)e->m->embed.rows * e->m->embed.cols * kdtype_size(e->m->embed.dtype);
    mc->weight_bytes = (double)(e->m->bytes_sharded + e->m->bytes_replicated - emb);
    const glm_layer *L = &e->m->layers[0];
    double per_layer = (double)L->qkv.rows * L->qkv.cols + (double)L->dense.rows * L->dense.cols +
                       (double)L->h4h.rows * L->h4h.cols + (double)L->down.rows * L->down.cols;
    mc->linear_params = per_layer * e->m->cfg.n_layers; /* prefill: the LM head sees one row */
    if (strcmp(e->kb.iface->name, "cpu") == 0) {
        /* The ranks share this machine's memory: measure it with every core. */
        int saved = omp_get_max_threads();
        omp_set_num_threads((int)sysconf(_SC_NPROCESSORS_ONLN));
        limits_host_bandwidth((size_t)1 << 30, 5, &mc->mem_gbs, &mc->read_gbs);
        omp_set_num_threads(saved);
        mc->mem_what = "host STREAM copy, all cores (bytes read + written)";
    } else {
        mc->mem_gbs = limits_backend_bandwidth(e, (size_t)1 << 30, 5);
        mc->mem_what = "device memory, backend add x += y (2 reads + 1 write)";
    }
}

static void preamble(const bench_opts *o, const bench_machine *mc, const char *model, FILE *f) {
    char host[256] = "?";
    gethostname(host, sizeof host - 1);
    fprintf(f, "# glmtp bench %s: model %s, tp %d, device %s, %d threads/rank, host %s, pid %d\n", o->mode, model,
            mc->tp, mc->device, mc->threads, host, (int)getpid());
    fprintf(f, "# weights read per decode step per rank %.3f GB; memory limit %.2f GB/s (%s)\n",
            mc->weight_bytes / 1e9, mc->mem_gbs, mc->mem_what);
    if (mc->read_gbs > 0) fprintf(f, "# host STREAM-style read %.2f GB/s\n", mc->read_gbs);
}

/* Prefill rows: the fp32 GEMM limit, and the library's bf16 GEMM beside it
 * where the backend has one (two more columns). */
static void print_prefill(const bench_machine *mc, const bench_row *r, int n, FILE *f) {
    int bf16 = mc->gemm_bf16_what != NULL;
    fprintf(f, "%8s %10s %12s %12s %12s %12s %8s", "tokens", "time", "tokens/s", "all", "linear", "GEMM", "ratio");
    if (bf16) fprintf(f, " %12s %8s", "bf16 GEMM", "ratio");
    fprintf(f, " %10s %12s\n", "allreduce", "attention");
    fprintf(f, "%8s %10s %12s %12s %12s %12s %8s", "", "(s)", "", "(GFLOP/s)", "(GFLOP/s)", "(GFLOP/s)", "(%)");
    if (bf16) fprintf(f, " %12s %8s", "(GFLOP/s)", "(%)");
    fprintf(f, " %10s %12s\n", "(%)", "(GFLOP/s)");
    for (int i = 0; i < n; i++) {
        fprintf(f, "%8d %10.3f %12.1f %12.2f %12.2f %12.2f %8.1f", r[i].len, r[i].seconds, r[i].tokens_per_s,
                r[i].gflops, r[i].linear_gflops, r[i].limit, 100 * r[i].ratio);
        if (bf16) fprintf(f, " %12.2f %8.1f", r[i].limit_bf16, 100 * r[i].ratio_bf16);
        fprintf(f, " %10.1f %12.2f\n", 100 * r[i].allreduce_share, r[i].attn_gflops);
    }
    fprintf(f, "# per rank; GEMM: %s of the block's four weight shapes at the same token count (max 4096 on "
               "the CPU); attention: the attention op of one layer alone, causal FLOPs\n",
            mc->gemm_what ? mc->gemm_what : "?");
    if (bf16)
        fprintf(f, "# bf16 GEMM: %s, the same shapes and token count (what prefill runs on bf16 weights, "
                   "T >= 16)\n",
                mc->gemm_bf16_what);
}

void bench_print(const bench_opts *o, const bench_machine *mc, const char *model, const bench_row *r, int n,
                 FILE *f) {
    preamble(o, mc, model, f);
    if (strcmp(o->mode, "decode") == 0) {
        fprintf(f, "%6s %8s %12s %12s %12s %12s %8s %10s\n", "batch", "context", "step", "tokens/s", "moved",
                "limit", "ratio", "allreduce");
        fprintf(f, "%6s %8s %12s %12s %12s %12s %8s %10s\n", "", "", "(ms)", "", "(GB/s)", "(GB/s)", "(%)", "(%)");
        for (int i = 0; i < n; i++)
            fprintf(f, "%6d %8d %12.3f %12.2f %12.2f %12.2f %8.1f %10.1f\n", r[i].batch, r[i].context,
                    r[i].seconds * 1e3, r[i].tokens_per_s, r[i].gbps, r[i].limit, 100 * r[i].ratio,
                    100 * r[i].allreduce_share);
        fprintf(f, "# moved: weights + KV read by all ranks per step / step time; limit: %s\n", mc->mem_what);
    } else if (strcmp(o->mode, "prefill") == 0) {
        print_prefill(mc, r, n, f);
    } else if (strcmp(o->mode, "prefix") == 0) {
        fprintf(f, "%9s %9s %10s %12s %10s %12s %8s\n", "document", "question", "cold", "cached", "cached",
                "no cache", "speedup");
        fprintf(f, "%9s %9s %10s %12s %10s %12s %8s\n", "(tokens)", "(tokens)", "(s)", "(tokens)", "(s)", "(s)",
                "(x)");
        for (int i = 0; i < n; i++)
            fprintf(f, "%9d %9d %10.4f %12d %10.4f %12.4f %8.1f\n", r[i].len, o->in_len, r[i].seconds,
                    r[i].cached_tokens, r[i].cached_s, r[i].uncached_s, r[i].ratio);
        fprintf(f, "# time to the first token of one request alone: cold = question 1 over the document; cached = "
                   "question 2 over it with the prefix cache; no cache = question 2 with the cache off; speedup = "
                   "no cache / cached\n");
    } else {
        fprintf(f, "%9s %7s %7s %10s %14s %14s %10s\n", "requests", "input", "output", "time", "output tok/s",
                "total tok/s", "allreduce");
        fprintf(f, "%9s %7s %7s %10s %14s %14s %10s\n", "", "", "", "(s)", "", "", "(%)");
        fprintf(f, "%9d %7d %7d %10.3f %14.2f %14.2f %10.1f\n", r[0].requests, o->in_len, o->out_len, r[0].seconds,
                r[0].tokens_per_s, r[0].total_tokens_per_s, 100 * r[0].allreduce_share);
    }
    fflush(f);
}

int bench_write_json(const bench_opts *o, const bench_machine *mc, const char *model, const bench_row *r, int n,
                     const char *path) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "mode", o->mode);
    cJSON_AddStringToObject(j, "model", model);
    cJSON_AddStringToObject(j, "device", mc->device);
    cJSON_AddNumberToObject(j, "tp", mc->tp);
    cJSON_AddNumberToObject(j, "threads_per_rank", mc->threads);
    cJSON *lim = cJSON_AddObjectToObject(j, "limits");
    cJSON_AddNumberToObject(lim, "memory_gbs", mc->mem_gbs);
    cJSON_AddStringToObject(lim, "memory_how", mc->mem_what);
    if (mc->read_gbs > 0) cJSON_AddNumberToObject(lim, "read_gbs", mc->read_gbs);
    if (mc->gemm_what) {
        cJSON_AddNumberToObject(lim, "gemm_gflops", mc->gemm_gflops);
        cJSON_AddStringToObject(lim, "gemm_how", mc->gemm_what);
    }
    if (mc->gemm_bf16_what) {
        cJSON_AddNumberToObject(lim, "gemm_bf16_gflops", mc->gemm_bf16_gflops);
        cJSON_AddStringToObject(lim, "gemm_bf16_how", mc->gemm_bf16_what);
    }
    cJSON_AddNumberToObject(j, "weight_bytes_per_rank", mc->weight_bytes);
    cJSON *rows = cJSON_AddArrayToObject(j, "results");
    for (int i = 0; i < n; i++) {
        cJSON *x = cJSON_CreateObject();
        if (strcmp(o->mode, "decode") == 0) {
            cJSON_AddNumberToObject(x, "batch", r[i].batch);
            cJSON_AddNumberToObject(x, "context", r[i].context);
            cJSON_AddNumberToObject(x, "step_ms", r[i].seconds * 1e3);
            cJSON_AddNumberToObject(x, "tokens_per_s", r[i].tokens_per_s);
            cJSON_AddNumberToObject(x, "moved_gbs", r[i].gbps);
            cJSON_AddNumberToObject(x, "limit_gbs", r[i].limit);
        } else if (strcmp(o->mode, "prefill") == 0) {
            cJSON_AddNumberToObject(x, "tokens", r[i].len);
            cJSON_AddNumberToObject(x, "seconds", r[i].seconds);
            cJSON_AddNumberToObject(x, "tokens_per_s", r[i].tokens_per_s);
            cJSON_AddNumberToObject(x, "gflops", r[i].gflops);
            cJSON_AddNumberToObject(x, "linear_gflops", r[i].linear_gflops);
            cJSON_AddNumberToObject(x, "limit_gflops", r[i].limit);
            if (mc->gemm_bf16_what) {
                cJSON_AddNumberToObject(x, "limit_bf16_gflops", r[i].limit_bf16);
                cJSON_AddNumberToObject(x, "ratio_bf16", r[i].ratio_bf16);
            }
            cJSON_AddNumberToObject(x, "attention_gflops", r[i].attn_gflops);
            cJSON_AddNumberToObject(x, "attention_layer_seconds", r[i].attn_s);
        } else if (strcmp(o->mode, "prefix") == 0) {
            cJSON_AddNumberToObject(x, "document_tokens", r[i].len);
            cJSON_AddNumberToObject(x, "question_tokens", o->in_len);
            cJSON_AddNumberToObject(x, "ttft_cold_s", r[i].seconds);
            cJSON_AddNumberToObject(x, "ttft_cached_s", r[i].cached_s);
            cJSON_AddNumberToObject(x, "ttft_uncached_s", r[i].uncached_s);
            cJSON_AddNumberToObject(x, "cached_tokens", r[i].cached_tokens);
        } else {
            cJSON_AddNumberToObject(x, "requests", r[i].requests);
            cJSON_AddNumberToObject(x, "input", o->in_len);
            cJSON_AddNumberToObject(x, "output", o->out_len);
            cJSON_AddNumberToObject(x, "seconds", r[i].seconds);
            cJSON_AddNumberToObject(x, "output_tokens_per_s", r[i].tokens_per_s);
            cJSON_AddNumberToObject(x, "total_tokens_per_s", r[i].total_tokens_per_s);
        }
        if (strcmp(o->mode, "throughput") != 0) cJSON_AddNumberToObject(x, "ratio", r[i].ratio);
        cJSON_AddNumberToObject(x, "allreduce_share", r[i].allreduce_share);
        cJSON_AddItemToArray(rows, x);
    }
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    FILE *f = fopen(path, "w");
    int rc = (!f || fprintf(f, "%s\n", s) < 0) ? -1 : 0;
    if (f && fclose(f) != 0) rc = -1;
    free(s);
    return rc;
}
