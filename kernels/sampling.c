/* The sampling rule on the host (sampling.h). */
#include "sampling.h"

#include <math.h>
#include <stdlib.h>

#include "rng.h"

int sampling_cand_cmp(const void *a, const void *b) {
    const kcand *x = a, *y = b;
    if (x->v != y->v) return x->v < y->v ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id);
}

/* The candidates' weights are exp(v - mx), summed in order, in double: the
 * prefix sums below are the same numbers whether c is a prefix or the row. */
static double prefix_sum(const kcand *c, int n, double mx) {
    double s = 0.0;
    for (int i = 0; i < n; i++) s += exp((double)c[i].v - mx);
    return s;
}

int sampling_pick(const kcand *c, int n_c, int V, double sum_all, const ksample_params *p, double u) {
    double mx = c[0].v;
    if (mx == -INFINITY) return c[0].id; /* no finite logit: nothing to weigh */
    int n = (p->top_k > 0 && p->top_k < V) ? p->top_k : V;
    double sum;
    if (n == V) /* sum_all, not a prefix sum, even over the whole row: then a
                 * prefix and the row give the same answer to the last bit */
        sum = sum_all;
    else if (n <= n_c)
        sum = prefix_sum(c, n, mx);
    else
        return -1; /* top_k past the prefix: its normaliser is unknown */
    int seen = n < n_c ? n : n_c;
    if (p->top_p < 1.0f) { /* the shortest prefix whose mass reaches top_p */
        double acc = 0.0;
        int keep = -1;
        for (int i = 0; i < seen && keep < 0; i++) {
            acc += exp((double)c[i].v - mx) / sum;
            if (acc >= p->top_p) keep = i + 1;
        }
        if (keep < 0) {
            if (n > n_c) return -1;
            keep = n;
        }
        n = seen = keep;
        sum = prefix_sum(c, n, mx);
    }
    double target = u * sum, acc = 0.0;
    int last = 0; /* the last candidate with weight: the answer if target rounds up to sum */
    for (int i = 0; i < seen; i++) {
        double w = exp((double)c[i].v - mx);
        acc += w;
        if (w > 0.0) last = i;
        if (target < acc) return c[i].id;
    }
    return n > n_c ? -1 : c[last].id;
}

int sampling_merge(kcand *out, double *sum_all, const kcand *const *lists, const double *sums, int parts, int k) {
    double mx = -INFINITY, sum = 0.0;
    for (int r = 0; r < parts; r++)
        if (lists[r][0].id >= 0 && lists[r][0].v > mx) mx = lists[r][0].v;
    int n = 0, *at = calloc((size_t)parts, sizeof(int));
    if (!at) abort();
    if (mx > -INFINITY)
        for (int r = 0; r < parts; r++)
            if (lists[r][0].id >= 0 && lists[r][0].v > -INFINITY) sum += sums[r] * exp((double)lists[r][0].v - mx);
    for (; n < k; n++) { /* the next candidate: the best head among the lists */
        int best = -1;
        for (int r = 0; r < parts; r++) {
            if (at[r] >= k || lists[r][at[r]].id < 0) continue;
            if (best < 0 || sampling_cand_cmp(&lists[r][at[r]], &lists[best][at[best]]) < 0) best = r;
        }
        if (best < 0) break;
        out[n] = lists[best][at[best]++];
    }
    free(at);
    *sum_all = sum;
    return n;
}

double sampling_sort_row(const float *l, int V, float t, kcand *c) {
    for (int i = 0; i < V; i++) c[i] = (kcand){sampling_value(l[i], t), i};
    qsort(c, (size_t)V, sizeof *c, sampling_cand_cmp);
    return prefix_sum(c, V, c[0].v);
}

void sampling_sample_host(int *out_ids, const float *logits, int n, int V, int ld, const ksample_params *p) {
    kcand *c = malloc(sizeof(kcand) * (size_t)V);
    if (!c) abort();
    for (int i = 0; i < n; i++) {
        const float *l = logits + (size_t)i * ld;
        int greedy = sampling_is_greedy(&p[i]);
        double sum = sampling_sort_row(l, V, greedy ? 1.0f : p[i].temperature, c);
        out_ids[i] = greedy ? c[0].id : sampling_pick(c, V, V, sum, &p[i], rng_uniform(p[i].rng));
    }
    free(c);
}
