/* Ragged batching changes no logit: sequences run together in mixed steps
 * (prefill chunks of some next to decode tokens of others, block tables
 * interleaved in the pool) give the logits each sequence gets when run alone.
 * usage: test_batch MODEL_DIR */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../comm/comm.h"
#include "../kernels/kernels.h"
#include "../worker/forward.h"
#include "../worker/kvcache.h"
#include "../worker/model.h"
#include "../worker/step.h"

#define NSEQ 3
#define BS 4
static const int lens[NSEQ] = {9, 5, 13};

/* Tokens of sequence s at positions [p0, p1) appended to step st from index t. */
static int add_tokens(glm_step *st, int t, int s, int p0, int p1, int ids[NSEQ][16]) {
    for (int p = p0; p < p1; p++, t++) {
        st->ids[t] = ids[s][p];
        st->pos[t] = p;
        st->seq[t] = s;
        st->logit_rows[t] = t;
    }
    return t;
}

/* Runs one step of the given per-sequence ranges; stores each token's logits in out[s][p]. */
static void run(glm_forward *fw, kv_blocks *pool, kv_seq seqs[NSEQ], const int ranges[NSEQ][2], int ids[NSEQ][16],
                float *out[NSEQ], int V) {
    int n = 0, max_blocks = 0;
    for (int s = 0; s < NSEQ; s++) {
        n += ranges[s][1] - ranges[s][0];
        if (kv_seq_reserve(pool, &seqs[s], ranges[s][1])) abort();
        if (seqs[s].n_blocks > max_blocks) max_blocks = seqs[s].n_blocks;
    }
    glm_step st = {0};
    step_alloc(&st, n, NSEQ, max_blocks, n, BS);
    int t = 0;
    for (int s = 0; s < NSEQ; s++) {
        t = add_tokens(&st, t, s, ranges[s][0], ranges[s][1], ids);
        step_set_table(&st, s, &seqs[s]);
    }
    step_fill_slots(&st);
    float *logits = malloc(sizeof(float) * (size_t)n * V);
    forward_run(fw, &st, logits, NULL);
    for (int i = 0; i < n; i++)
        memcpy(out[st.seq[i]] + (size_t)st.pos[i] * V, logits + (size_t)i * V, sizeof(float) * V);
    free(logits);
    step_free(&st);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: test_batch MODEL_DIR\n");
        return 2;
    }
    char err[1024];
    comm *c = comm_create(&argc, &argv, 60, err, sizeof err);
    if (!c) return fprintf(stderr, "%s\n", err), 1;
    kbackend kb = kernels_cpu_create(0);
    glm_model *m;
    if (model_load(&m, argv[1], kb, c, err, sizeof err)) return fprintf(stderr, "%s\n", err), 1;
    int V = m->cfg.vocab;
    int ids[NSEQ][16];
    for (int s = 0; s < NSEQ; s++)
        for (int p = 0; p < 16; p++) ids[s][p] = (37 * s + 11 * p + 5) % V;

    float *alone[NSEQ], *batched[NSEQ];
    for (int s = 0; s < NSEQ; s++) {
        alone[s] = calloc((size_t)lens[s] * V, sizeof(float));
        batched[s] = calloc((size_t)lens[s] * V, sizeof(float));
    }
    /* Each sequence alone, one prefill, in a fresh cache. */
    for (int s = 0; s < NSEQ; s++) {
        kv_cache *kv = kv_create(m, 16, BS, KV_DTYPE_ACT);
        glm_forward *fw = forward_create(m, kv);
        kv_blocks pool;
        kv_blocks_init(&pool, 16, BS);
        kv_seq seqs[NSEQ] = {{0}};
        int r[NSEQ][2] = {{0, 0}, {0, 0}, {0, 0}};
        r[s][1] = lens[s];
        run(fw, &pool, seqs, r, ids, alone, V);
        for (int i = 0; i < NSEQ; i++) kv_seq_release(&pool, &seqs[i]);
        kv_blocks_free(&pool);
        forward_free(fw);
        kv_free(m, kv);
    }
    /* Together: chunks of prefill beside decode tokens; blocks interleave across sequences. */
    kv_cache *kv = kv_create(m, 32, BS, KV_DTYPE_ACT);
    glm_forward *fw = forward_create(m, kv);
    kv_blocks pool;
    kv_blocks_init(&pool, 32, BS);
    kv_seq seqs[NSEQ] = {{0}};
    const int plan[][NSEQ][2] = {
        {{0, 6}, {0, 2}, {0, 3}},   /* three prefill chunks */
        {{6, 7}, {2, 5}, {3, 7}},   /* A decodes, B and C prefill */
        {{7, 8}, {5, 5}, {7, 12}},  /* B idle */
        {{8, 9}, {5, 5}, {12, 13}}, /* decode both */
    };
    for (size_t i = 0; i < sizeof plan / sizeof *plan; i++) run(fw, &pool, seqs, plan[i], ids, batched, V);

    double worst = 0.0;
    for (int s = 0; s < NSEQ; s++)
        for (size_t i = 0; i < (size_t)lens[s] * V; i++) {
            double d = fabs((double)alone[s][i] - batched[s][i]);
            if (d > worst) worst = d;
        }
    /* Same math in a different grouping of GEMM rows: fp32 rounding only. */
    int ok = worst <= 1e-4;
    printf("%s ragged batch vs alone: max|diff| %.3g over %d sequences\n", ok ? "ok  " : "FAIL", worst, NSEQ);
    printf("%d passed, %d failed\n", ok, !ok);
    for (int s = 0; s < NSEQ; s++) {
        kv_seq_release(&pool, &seqs[s]);
        free(alone[s]);
        free(batched[s]);
    }
    kv_blocks_free(&pool);
    forward_free(fw);
    kv_free(m, kv);
    model_free(m);
    kb.iface->destroy(kb.ctx);
    comm_destroy(c);
    return ok ? 0 : 1;
}
