/* glmtp bench --model-only: the analytic model (roofline.c) for hardware this
 * machine does not have, so users can plan GPUs, tp and links. With
 * --measured FILE (JSON written by `glmtp bench ... --json` on such hardware),
 * measured figures are printed beside the predictions. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../worker/util.h"
#include "../base/presets.h"
#include "bench.h"
#include "roofline.h"

/* Measured value for a decode (batch, context) or prefill (tokens) row, or -1. */
static double measured(const cJSON *m, const char *mode, int a, int b) {
    const cJSON *mm = cJSON_GetObjectItemCaseSensitive(m, "mode");
    if (!cJSON_IsString(mm) || strcmp(mm->valuestring, mode) != 0) return -1;
    const cJSON *r;
    cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(m, "results")) {
        if (strcmp(mode, "decode") == 0) {
            const cJSON *B = cJSON_GetObjectItemCaseSensitive(r, "batch"), *C = cJSON_GetObjectItemCaseSensitive(r, "context");
            if (cJSON_IsNumber(B) && cJSON_IsNumber(C) && B->valueint == a && C->valueint == b)
                return cJSON_GetObjectItemCaseSensitive(r, "step_ms")->valuedouble / 1e3;
        } else {
            const cJSON *T = cJSON_GetObjectItemCaseSensitive(r, "tokens");
            if (cJSON_IsNumber(T) && T->valueint == a) return cJSON_GetObjectItemCaseSensitive(r, "seconds")->valuedouble;
        }
    }
    return -1;
}

/* One row of the --json document. */
static void json_row(cJSON *rows, const char *phase, int batch, int tokens, roofline_time t, double meas) {
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "phase", phase);
    cJSON_AddNumberToObject(r, "batch", batch);
    cJSON_AddNumberToObject(r, "tokens", tokens);
    cJSON_AddNumberToObject(r, "predicted_ms", t.total * 1e3);
    cJSON_AddNumberToObject(r, "compute_ms", t.compute * 1e3);
    cJSON_AddNumberToObject(r, "memory_ms", t.memory * 1e3);
    cJSON_AddNumberToObject(r, "comm_ms", t.comm * 1e3);
    if (meas >= 0) cJSON_AddNumberToObject(r, "measured_ms", meas * 1e3);
    cJSON_AddItemToArray(rows, r);
}

/* Writes doc to path; 0, or -1 after printing why. */
static int write_json(const cJSON *doc, const char *path) {
    char *text = cJSON_Print(doc);
    if (!text) abort();
    FILE *f = fopen(path, "w");
    int rc = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF ? 0 : -1;
    if (f && fclose(f) != 0) rc = -1;
    if (rc) fprintf(stderr, "glmtp: bench: --json %s: cannot write: %s\n", path, strerror(errno));
    free(text);
    return rc;
}

static void col_measured(double v) {
    if (v < 0)
        printf(" %12s", "-");
    else
        printf(" %12.4g", v * 1e3);
}

#define GIB 1073741824.0

/* --plan, second table: the memory one rank needs at each tp the heads allow
 * up to ROOFLINE_PLAN_TP_ROWS, bf16 KV, with the vision tower's weights and
 * scratch apart; against ROOFLINE_MEM_UTIL of o->memory (bytes per rank,
 * --memory; 0: not given) when asked. */
static void plan_per_tp(const bench_opts *o, const glm_config *c, cJSON *doc) {
    double elem = roofline_kv_elem_bytes("bf16", c->head_dim);
    cJSON *rows = cJSON_AddArrayToObject(doc, "per_tp");
    char fits_how[128] = "";
    if (o->memory > 0)
        snprintf(fits_how, sizeof fits_how, "; fits: need <= %.0f%% of --memory %.1f GB = %.2f GiB",
                 ROOFLINE_MEM_UTIL * 100, o->memory / 1e9, ROOFLINE_MEM_UTIL * o->memory / GIB);
    printf("# per rank at each tp (bf16 KV of one %ld-token sequence%s)\n", o->plan, fits_how);
    printf("%4s %9s %9s %9s %9s %9s %9s %5s\n", "tp", "language", "vision", "kv", "act", "vis.act", "need", "fits");
    printf("%4s %9s %9s %9s %9s %9s %9s %5s\n", "", "(GiB)", "(GiB)", "(GiB)", "(GiB)", "(GiB)", "(GiB)", "");
    char err[256];
    for (int tp = 1; tp <= ROOFLINE_PLAN_TP_ROWS; tp *= 2) {
        if (config_check_tp(c, tp, err, sizeof err)) continue;
        roofline_plan p;
        roofline_need(c, tp, o->plan, elem, &p);
        int fits = p.need_bytes <= ROOFLINE_MEM_UTIL * o->memory;
        printf("%4d %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f %5s\n", tp, (p.weight_bytes - p.vision_weight_bytes) / GIB,
               p.vision_weight_bytes / GIB, p.kv_bytes / GIB, (p.act_bytes - p.vision_act_bytes) / GIB,
               p.vision_act_bytes / GIB, p.need_bytes / GIB, o->memory > 0 ? (fits ? "yes" : "no") : "-");
        cJSON *r = cJSON_CreateObject();
        cJSON_AddNumberToObject(r, "tp", tp);
        cJSON_AddNumberToObject(r, "language_weight_bytes", p.weight_bytes - p.vision_weight_bytes);
        cJSON_AddNumberToObject(r, "vision_weight_bytes", p.vision_weight_bytes);
        cJSON_AddNumberToObject(r, "kv_bytes", p.kv_bytes);
        cJSON_AddNumberToObject(r, "act_bytes", p.act_bytes - p.vision_act_bytes);
        cJSON_AddNumberToObject(r, "vision_act_bytes", p.vision_act_bytes);
        cJSON_AddNumberToObject(r, "need_bytes", p.need_bytes);
        if (o->memory > 0) cJSON_AddBoolToObject(r, "fits", fits);
        cJSON_AddItemToArray(rows, r);
    }
}

/* --plan: per GPU kind and KV dtype, the fewest GPUs holding one sequence of
 * o->plan tokens, with its prefill and decode times (roofline_plan_fit). */
static int plan_report(const bench_opts *o, const glm_config *c, const char *model) {
    const hw_link *l = roofline_link(o->link);
    if (!l) return fprintf(stderr, "glmtp: bench: unknown --link '%s' (nvlink4, pcie5, ib-ndr)\n", o->link), 1;
    if (o->plan > c->seq_len)
        fprintf(stderr, "glmtp: bench: note: --plan %ld is beyond %s's context of %d tokens\n", o->plan, model,
                c->seq_len);
    int n_gpus;
    const hw_gpu *gpus = roofline_gpus(&n_gpus);
    const char *dtypes[] = {"bf16", "fp8"};
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddStringToObject(doc, "mode", "model-only-plan");
    cJSON_AddStringToObject(doc, "model", model);
    cJSON_AddNumberToObject(doc, "layers", c->n_layers);
    cJSON_AddNumberToObject(doc, "context", (double)o->plan);
    cJSON_AddStringToObject(doc, "link", l->name);
    cJSON_AddNumberToObject(doc, "mem_util", ROOFLINE_MEM_UTIL);
    cJSON *rows = cJSON_AddArrayToObject(doc, "results");
    printf("# glmtp bench --model-only --plan %ld: %s, %d layers, one sequence of %ld tokens; link %s "
           "(analytic roofline)\n", o->plan, model, c->n_layers, o->plan, l->name);
    printf("# per rank: weights + KV of the sequence + activations of a %d-token step + %.1f GiB slack <= %.0f%% of "
           "HBM; fp8 KV = 1 byte + an fp32 scale per %d-element head vector\n",
           ROOFLINE_ACT_TOKENS, ROOFLINE_SLACK_BYTES / GIB, ROOFLINE_MEM_UTIL * 100, c->head_dim);
    printf("%-5s %-6s %6s %4s %9s %9s %9s %9s %9s %10s %10s\n", "kv", "gpu", "memory", "gpus", "weights", "kv", "act",
           "need", "room", "prefill", "decode");
    printf("%-5s %-6s %6s %4s %9s %9s %9s %9s %9s %10s %10s\n", "", "", "(GB)", "(tp)", "(GiB/gpu)", "(GiB/gpu)",
           "(GiB/gpu)", "(GiB/gpu)", "(GiB/gpu)", "(s)", "(ms/token)");
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < n_gpus; i++) {
            roofline_plan p;
            double elem = roofline_kv_elem_bytes(dtypes[d], c->head_dim);
            int tp = roofline_plan_fit(c, &gpus[i], l, o->plan, elem, ROOFLINE_MEM_UTIL, &p);
            char tps[16];
            snprintf(tps, sizeof tps, tp ? "%d" : ">%d", tp ? tp : ROOFLINE_MAX_TP);
            printf("%-5s %-6s %6.0f %4s %9.2f %9.2f %9.2f %9.2f %9.2f %10.1f %10.2f\n", dtypes[d], gpus[i].name,
                   gpus[i].mem_bytes / 1e9, tps, p.weight_bytes / GIB, p.kv_bytes / GIB, p.act_bytes / GIB,
                   p.need_bytes / GIB, p.room_bytes / GIB, p.prefill_s, p.decode_s * 1e3);
            cJSON *r = cJSON_CreateObject();
            cJSON_AddStringToObject(r, "kv_dtype", dtypes[d]);
            cJSON_AddStringToObject(r, "gpu", gpus[i].name);
            cJSON_AddNumberToObject(r, "gpu_mem_bytes", gpus[i].mem_bytes);
            cJSON_AddNumberToObject(r, "gpus", tp); /* 0: none up to ROOFLINE_MAX_TP */
            cJSON_AddNumberToObject(r, "weight_bytes_per_gpu", p.weight_bytes);
            cJSON_AddNumberToObject(r, "kv_bytes_per_gpu", p.kv_bytes);
            cJSON_AddNumberToObject(r, "kv_bytes_per_token_per_gpu", p.kv_token_bytes);
            cJSON_AddNumberToObject(r, "act_bytes_per_gpu", p.act_bytes);
            cJSON_AddNumberToObject(r, "need_bytes_per_gpu", p.need_bytes);
            cJSON_AddNumberToObject(r, "room_bytes_per_gpu", p.room_bytes);
            cJSON_AddNumberToObject(r, "prefill_s", p.prefill_s);
            cJSON_AddNumberToObject(r, "decode_ms_per_token", p.decode_s * 1e3);
            cJSON_AddItemToArray(rows, r);
        }
    printf("# prefill: linear FLOPs + causal attention 2 x L^2 x heads x head_dim x layers FLOPs over the dense bf16 "
           "peak, at tp GPUs; decode: batch 1 at L tokens of context%s\n",
           c->vision.present ? "; weights include the vision tower's, act its scratch for an image" : "");
    plan_per_tp(o, c, doc);
    int rc = o->json ? (write_json(doc, o->json) ? 1 : 0) : 0;
    cJSON_Delete(doc);
    return rc;
}

int bench_model_report(const bench_opts *o) {
    glm_config c;
    char err[1024];
    if (o->dir) {
        if (config_load(&c, o->dir, err, sizeof err)) return fprintf(stderr, "glmtp: bench: %s\n", err), 1;
    } else {
        const preset *p = preset_find(o->preset ? o->preset : "glm-4-9b-chat");
        if (!p) return fprintf(stderr, "glmtp: bench: unknown preset\n"), 1;
        preset_config(p, &c);
        if (o->layers) c.n_layers = o->layers;
    }
    if (o->plan > 0) return plan_report(o, &c, o->dir ? o->dir : (o->preset ? o->preset : "glm-4-9b-chat"));
    const hw_gpu *g = roofline_gpu(o->gpu);
    const hw_link *l = roofline_link(o->link);
    if (!g) return fprintf(stderr, "glmtp: bench: unknown --gpu '%s' (h100, h200, a100)\n", o->gpu), 1;
    if (!l) return fprintf(stderr, "glmtp: bench: unknown --link '%s' (nvlink4, pcie5, ib-ndr)\n", o->link), 1;
    if (config_check_tp(&c, o->tp, err, sizeof err)) return fprintf(stderr, "glmtp: bench: %s\n", err), 1;
    cJSON *m = NULL;
    if (o->measured) {
        size_t len;
        char *text = util_read_file(o->measured, &len, err, sizeof err);
        if (!text || !(m = cJSON_ParseWithLength(text, len))) {
            fprintf(stderr, "glmtp: bench: --measured: %s\n", text ? "not JSON" : err);
            free(text);
            return 1;
        }
        free(text);
    }
    roofline_model s;
    roofline_sizes(&c, o->tp, &s);
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddStringToObject(doc, "mode", "model-only");
    cJSON_AddStringToObject(doc, "model", o->dir ? o->dir : (o->preset ? o->preset : "glm-4-9b-chat"));
    cJSON_AddNumberToObject(doc, "layers", c.n_layers);
    cJSON_AddNumberToObject(doc, "tp", o->tp);
    cJSON_AddStringToObject(doc, "gpu", g->name);
    cJSON_AddStringToObject(doc, "link", l->name);
    cJSON_AddNumberToObject(doc, "weight_bytes_per_rank", s.weight_bytes_held);
    cJSON_AddNumberToObject(doc, "kv_bytes_per_token_per_rank", s.kv_bytes_token);
    cJSON *rows = cJSON_AddArrayToObject(doc, "results");
    printf("# glmtp bench --model-only: %s, %d layers, tp %d x %s, link %s (analytic roofline, bf16)\n",
           o->dir ? o->dir : (o->preset ? o->preset : "glm-4-9b-chat"), c.n_layers, o->tp, g->name, l->name);
    printf("# per rank: weights held %.3f GB, read per decode step %.3f GB, KV %.1f KiB/token, KV room for %.0f "
           "tokens at 90%% of %.0f GB\n",
           s.weight_bytes_held / 1e9, s.weight_bytes / 1e9, s.kv_bytes_token / 1024,
           roofline_max_tokens(&c, o->tp, g, 0.9), g->mem_bytes / 1e9);
    printf("%-8s %6s %9s %12s %12s %12s %12s %12s\n", "phase", "batch", "tokens", "predicted", "compute", "memory",
           "comm", "measured");
    printf("%-8s %6s %9s %12s %12s %12s %12s %12s\n", "", "", "", "(ms)", "(ms)", "(ms)", "(ms)", "(ms)");
    for (int b = 0; b < o->n_batches; b++)
        for (int k = 0; k < o->n_contexts; k++) {
            roofline_time t = roofline_decode(&c, o->tp, g, l, o->batches[b], o->contexts[k]);
            printf("%-8s %6d %9d %12.4g %12.4g %12.4g %12.4g", "decode", o->batches[b], o->contexts[k],
                   t.total * 1e3, t.compute * 1e3, t.memory * 1e3, t.comm * 1e3);
            double meas = m ? measured(m, "decode", o->batches[b], o->contexts[k]) : -1;
            col_measured(meas);
            json_row(rows, "decode", o->batches[b], o->contexts[k], t, meas);
            printf("\n");
        }
    for (int i = 0; i < o->n_lens; i++) {
        roofline_time t = roofline_prefill(&c, o->tp, g, l, o->lens[i]);
        printf("%-8s %6d %9d %12.4g %12.4g %12.4g %12.4g", "prefill", 1, o->lens[i], t.total * 1e3, t.compute * 1e3,
               t.memory * 1e3, t.comm * 1e3);
        double meas = m ? measured(m, "prefill", o->lens[i], 0) : -1;
        col_measured(meas);
        json_row(rows, "prefill", 1, o->lens[i], t, meas);
        printf("\n");
    }
    printf("# decode tokens = context length; peaks: %.0f TFLOP/s, %.2f TB/s HBM, link %.0f GB/s + %.0f us per "
           "all-reduce\n",
           g->flops / 1e12, g->hbm / 1e12, l->bw / 1e9, l->latency * 1e6);
    cJSON_Delete(m);
    int rc = o->json ? (write_json(doc, o->json) ? 1 : 0) : 0;
    cJSON_Delete(doc);
    return rc;
}
