/* glmtp bench decode: single-sequence decode time per token, with the memory
 * bandwidth of this machine measured in the same run as its physical limit.
 * Decode is bound by reading the weights once per token, so the figure that
 * matters is (weight bytes read per token / time per token) / bandwidth. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/rng.h"
#include "../worker/util.h"
#include "args.h"
#include "commands.h"
#include "engine.h"
#include "step_plan.h"

/* STREAM-style copy and read over buffers far larger than the caches; best of
 * `reps`. copy counts bytes read + written (STREAM convention). */
static void measure_bandwidth(size_t bytes, int reps, double *copy_gbs, double *read_gbs) {
    size_t n = bytes / sizeof(float);
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    if (!a || !b) abort();
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = (float)(i & 1023), b[i] = 0.0f;
    double best_c = 1e30, best_r = 1e30, sink = 0.0;
    for (int r = 0; r < reps; r++) {
        double t0 = util_now();
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) b[i] = a[i];
        double t1 = util_now();
        /* Four independent accumulators so the adds are not latency-bound. */
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp parallel for simd schedule(static) reduction(+ : s0, s1, s2, s3)
        for (size_t i = 0; i < n; i += 4) {
            s0 += b[i];
            s1 += b[i + 1];
            s2 += b[i + 2];
            s3 += b[i + 3];
        }
        double t2 = util_now();
        float s = s0 + s1 + s2 + s3;
        sink += s;
        if (t1 - t0 < best_c) best_c = t1 - t0;
        if (t2 - t1 < best_r) best_r = t2 - t1;
    }
    *copy_gbs = 2.0 * (double)bytes / best_c / 1e9;
    *read_gbs = (double)bytes / best_r / 1e9 + (sink == 12345.0 ? 1e-9 : 0.0);
    free(a);
    free(b);
}

/* Device memory bandwidth through the backend's own add kernel (STREAM add:
 * x += y reads two arrays and writes one), best of `reps`; for GPU backends,
 * whose memory the host loops above cannot measure. */
static double measure_backend_add(const engine *e, size_t bytes, int reps) {
    const kernels_iface *k = e->kb.iface;
    size_t n = bytes / k->act_bytes;
    void *x = k->alloc(e->kb.ctx, bytes), *y = k->alloc(e->kb.ctx, bytes);
    double best = 1e30;
    k->add(e->kb.ctx, x, y, n); /* warm-up */
    k->sync(e->kb.ctx);
    for (int r = 0; r < reps; r++) {
        double t0 = util_now();
        k->add(e->kb.ctx, x, y, n);
        k->sync(e->kb.ctx);
        if (util_now() - t0 < best) best = util_now() - t0;
    }
    k->free(e->kb.ctx, x);
    k->free(e->kb.ctx, y);
    return 3.0 * (double)bytes / best / 1e9;
}

int cmd_bench(comm *c, int argc, char **argv) {
    if (engine_check_args(c, argc, argv)) return 1;
    args a;
    args_init(&a, argc > 0 ? argc - 1 : 0, argv + 1);
    const char *mode = argc > 0 ? argv[0] : "";
    const char *dir = args_str(&a, "--model", NULL);
    int tokens = (int)args_int(&a, "--tokens", 16, 1, 1 << 20);
    int context = (int)args_int(&a, "--context", 16, 1, 1 << 24);
    int threads = (int)args_int(&a, "--threads", 0, 0, 1024);
    const char *device = args_str(&a, "--device", "cpu"), *comm_kind = args_str(&a, "--comm", NULL);
    int rc = 1;
    engine e = {0};
    int *ids = NULL;
    float *logits = NULL;
    if (strcmp(mode, "decode") != 0) {
        engine_error(c, "bench: unknown mode '%s' (decode)", mode);
        goto done;
    }
    if (!a.failed && !dir) snprintf(a.err, sizeof a.err, "--model DIR is required"), a.failed = 1;
    if (args_finish(&a)) {
        engine_error(c, "bench: %s", a.err);
        goto done;
    }
    if (engine_open(&e, c, dir, context + tokens + 2, 16, threads, device, comm_kind)) goto done;
    const glm_config *cfg = &e.m->cfg;
    if (context + tokens + 2 > cfg->seq_len) {
        engine_error(c, "bench: --context + --tokens exceed the context length %d", cfg->seq_len);
        goto done;
    }
    uint64_t rng = 1;
    ids = malloc(sizeof(int) * (size_t)context);
    logits = malloc(sizeof(float) * (size_t)cfg->vocab);
    if (!ids || !logits) abort();
    for (int i = 0; i < context; i++) ids[i] = (int)(rng_next(&rng) % (uint64_t)cfg->vocab);
    kv_seq seq = {0};
    if (c->rank == 0 && kv_seq_reserve(&e.blocks, &seq, context + tokens + 2)) abort();

    double t_prefill = 0, t_decode = 0, ar0 = 0, ar1 = 0, tot;
    int pos = 0, next = ids[0];
    for (int i = -1; i < tokens + 2; i++) { /* -1: prefill; 0, 1: warm-up decode steps */
        glm_step s = {0};
        if (c->rank == 0) {
            if (i < 0)
                plan_one_seq(&s, &seq, ids, 0, context, 16, 0);
            else
                plan_one_seq(&s, &seq, &next, pos, 1, 16, 0);
        }
        step_bcast(c, &s);
        if (i == 2) forward_times(e.fw, &ar0, &tot);
        double t0 = util_now();
        forward_run(e.fw, &s, logits, NULL);
        double dt = util_now() - t0;
        pos += s.n_tokens;
        step_free(&s);
        if (i < 0) t_prefill = dt;
        if (i >= 2) t_decode += dt;
        if (c->rank == 0) next = (int)(rng_next(&rng) % (uint64_t)cfg->vocab);
    }
    forward_times(e.fw, &ar1, &tot);
    double copy_gbs, read_gbs;
    int on_gpu = strcmp(device, "cpu") != 0;
    if (on_gpu)
        copy_gbs = read_gbs = measure_backend_add(&e, (size_t)1 << 30, 5);
    else
        measure_bandwidth((size_t)1 << 30, 5, &copy_gbs, &read_gbs);
    /* Per token every weight is read once, except the embedding (one row). */
    size_t emb = (size_t)e.m->embed.rows * e.m->embed.cols * kdtype_size(e.m->embed.dtype);
    double bytes = (double)(e.m->bytes_sharded + e.m->bytes_replicated - emb);
    double per_tok = t_decode / tokens, gbs = bytes / per_tok / 1e9;
    if (c->rank == 0) {
        printf("# glmtp bench decode: model %s, tp %d, %d threads/rank, context %d, %d timed tokens (2 warm-up)\n",
               dir, c->size, omp_get_max_threads(), context, tokens);
        printf("# layers %d, hidden %d, weights read per token per rank %.3f GB (%s)\n", cfg->n_layers, cfg->hidden,
               bytes / 1e9, kdtype_name(e.m->layers[0].qkv.dtype));
        printf("# device %s; bandwidth limit measured in this run: %s\n", device,
               on_gpu ? "device memory, the backend's add kernel (x += y: 2 reads + 1 write), in both bw columns"
                      : "host memory, STREAM copy (read + write) and read");
        printf("%-10s %12s %14s %12s %12s %12s %10s %10s %10s %10s\n", "mode", "prefill", "decode/token", "tokens/s",
               "weights", "copy bw", "read bw", "vs copy", "vs read", "allreduce");
        printf("%-10s %12s %14s %12s %12s %12s %10s %10s %10s %10s\n", "", "(s)", "(ms)", "", "(GB/s)", "(GB/s)",
               "(GB/s)", "(%)", "(%)", "(%)");
        printf("%-10s %12.3f %14.3f %12.2f %12.2f %12.2f %10.2f %10.1f %10.1f %10.1f\n", "decode", t_prefill,
               per_tok * 1e3, 1.0 / per_tok, gbs, copy_gbs, read_gbs, 100.0 * gbs / copy_gbs, 100.0 * gbs / read_gbs,
               100.0 * (ar1 - ar0) / t_decode);
        fflush(stdout);
        kv_seq_release(&e.blocks, &seq);
    }
    rc = 0;
done:
    free(ids);
    free(logits);
    engine_close(&e);
    args_free(&a);
    return rc;
}
