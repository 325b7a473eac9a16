/* Token sampling on the CPU: greedy, temperature, top-k, top-p (nucleus), with a
 * per-row seeded generator so a request's draws do not depend on its batch. */
#include <math.h>
#include <stdlib.h>

#include "../rng.h"
#include "cpu.h"

typedef struct {
    float v;
    int id;
} cand;

static int cand_desc(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->v != y->v) return x->v < y->v ? 1 : -1;
    return x->id - y->id;
}

static int argmax(const float *l, int V) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (l[i] > l[best]) best = i;
    return best;
}

void cpu_argmax(void *ctx, int *out_idx, float *out_val, const float *logits, int n, int V, int ld) {
    (void)ctx;
    for (int r = 0; r < n; r++) {
        const float *l = logits + (size_t)r * ld;
        float bv = -INFINITY;
        int bi = -1;
        for (int i = 0; i < V; i++)
            if (l[i] > bv) bv = l[i], bi = i; /* NaN compares false: never taken */
        out_idx[r] = bi < 0 ? 0 : bi;
        out_val[r] = bv;
    }
}

static int sample_row(const float *l, int V, const ksample_params *p, cand *c) {
    if (p->temperature <= 0.0f || p->top_k == 1) return argmax(l, V);
    for (int i = 0; i < V; i++) c[i] = (cand){l[i] / p->temperature, i};
    qsort(c, (size_t)V, sizeof *c, cand_desc);
    int n = (p->top_k > 0 && p->top_k < V) ? p->top_k : V;
    double mx = c[0].v, sum = 0.0;
    for (int i = 0; i < n; i++) sum += exp((double)c[i].v - mx);
    if (p->top_p < 1.0f) { /* smallest prefix whose mass reaches top_p */
        double acc = 0.0;
        int keep = n;
        for (int i = 0; i < n; i++) {
            acc += exp((double)c[i].v - mx) / sum;
            if (acc >= p->top_p) { keep = i + 1; break; }
        }
        n = keep;
        sum = 0.0;
        for (int i = 0; i < n; i++) sum += exp((double)c[i].v - mx);
    }
    double u = rng_uniform(p->rng) * sum, acc = 0.0;
    int last = 0; /* last candidate with weight: the answer if u rounds up to sum */
    for (int i = 0; i < n; i++) {
        double w = exp((double)c[i].v - mx);
        acc += w;
        if (w > 0.0) last = i;
        if (u < acc) return c[i].id;
    }
    return c[last].id;
}

void cpu_sample(void *ctx, int *out_ids, const float *logits, int n, int V, const ksample_params *p) {
    (void)ctx;
    cand *c = malloc(sizeof(cand) * (size_t)V);
    if (!c) abort();
    for (int i = 0; i < n; i++) out_ids[i] = sample_row(logits + (size_t)i * V, V, &p[i], c);
    free(c);
}
