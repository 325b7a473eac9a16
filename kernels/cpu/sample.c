/* The LM head's reductions on the CPU: argmax, and the top-k candidates with
 * the softmax normaliser that sampling (kernels/sampling.h) works from. */
#include <math.h>
#include <stdlib.h>

#include "cpu.h"

void cpu_argmax(void *ctx, int *out_idx, float *out_val, const float *logits, int n, int V, int ld) {
    (void)ctx;
    for (int r = 0; r < n; r++) {
        const float *l = logits + (size_t)r * ld;
        float bv = -INFINITY;
        int bi = -1;
        for (int i = 0; i < V; i++)
            if (!isnan(l[i]) && (bi < 0 || l[i] > bv)) bv = l[i], bi = i; /* a -inf still beats a NaN */
        out_idx[r] = bi < 0 ? 0 : bi;
        out_val[r] = bv;
    }
}

/* a comes before b in candidate order */
static int before(kcand a, kcand b) { return a.v > b.v || (a.v == b.v && a.id < b.id); }

/* h[0] is the last of the heap's candidates in candidate order. */
static void sift_down(kcand *h, int n, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && before(h[m], h[l])) m = l;
        if (r < n && before(h[m], h[r])) m = r;
        if (m == i) return;
        kcand t = h[i];
        h[i] = h[m], h[m] = t, i = m;
    }
}

static void sift_up(kcand *h, int i) {
    while (i > 0 && before(h[(i - 1) / 2], h[i])) {
        kcand t = h[i];
        h[i] = h[(i - 1) / 2], h[(i - 1) / 2] = t, i = (i - 1) / 2;
    }
}

static double top_k_row(kcand *out, const float *l, int V, int k, float t) {
    int n = 0;
    for (int i = 0; i < V; i++) {
        kcand c = {sampling_value(l[i], t), i};
        if (n < k) {
            out[n] = c;
            sift_up(out, n++);
        } else if (before(c, out[0])) {
            out[0] = c;
            sift_down(out, n, 0);
        }
    }
    qsort(out, (size_t)k, sizeof *out, sampling_cand_cmp);
    double mx = out[0].v, sum = 0.0;
    if (mx == -INFINITY) return 0.0;
    for (int i = 0; i < V; i++) sum += exp((double)sampling_value(l[i], t) - mx);
    return sum;
}

void cpu_top_k(void *ctx, kcand *out, double *sum, const float *logits, int n, int V, int ld, int k,
               const float *temp) {
    (void)ctx;
#pragma omp parallel for schedule(dynamic, 1)
    for (int r = 0; r < n; r++) sum[r] = top_k_row(out + (size_t)r * k, logits + (size_t)r * ld, V, k, temp[r]);
}
