/* sampling.h: the sampling rule (greedy, temperature, top-k, top-p), on the
 * host, shared by every backend and by the vocab-parallel LM head.
 *
 * A row's candidates are its tokens with v = logit / temperature (fp32
 * division), in the order: v descending, ties to the lower id, NaN as -inf.
 * The rule keeps the first top_k of them, then the shortest prefix whose
 * softmax mass reaches top_p, and walks that prefix with one uniform draw u.
 * Most rows need only a short prefix of the order: the devices send back their
 * top candidates and the row's softmax normaliser, not the logits. */
#ifndef GLMTP_SAMPLING_H
#define GLMTP_SAMPLING_H

#include <math.h>
#include <stdint.h>

/* Per-row sampling parameters (host memory). temperature 0 = greedy (argmax);
 * top_k 0 = off; top_p 1 = off. rng is the row's generator state. */
typedef struct ksample_params {
    float temperature;
    int top_k;
    float top_p;
    uint64_t *rng;
} ksample_params;

typedef struct kcand {
    float v; /* logit / temperature */
    int id;
} kcand;

static inline int sampling_is_greedy(const ksample_params *p) { return p->temperature <= 0.0f || p->top_k == 1; }

/* The candidate order: v descending, then id ascending (qsort comparator). */
int sampling_cand_cmp(const void *a, const void *b);

#ifdef __CUDACC__
#define SAMPLING_HD __host__ __device__
#else
#define SAMPLING_HD
#endif

/* v of logit l at temperature t, as every backend computes it (the CUDA
 * kernels too: hence host and device). */
static inline SAMPLING_HD float sampling_value(float l, float t) {
    float v = l / t;
    return v != v ? -INFINITY : v + 0.0f; /* NaN never wins; -0 ties with +0 */
}

/* The token that p picks with draw u in [0, 1) among V tokens, of which the
 * first n_c in candidate order are in c, and sum_all is the sum over all V of
 * exp(v - c[0].v) (double). Returns -1 when the pick depends on tokens past
 * c (then sort the whole row and call again with the same u). For rows that
 * are not greedy; a greedy row's token is c[0].id. */
int sampling_pick(const kcand *c, int n_c, int V, double sum_all, const ksample_params *p, double u);

/* One row's candidates from `parts` vocab slices: list r (in candidate order,
 * ids of the whole vocab, ending early at an id of -1 or after k) holds the
 * first candidates of slice r, and sums[r] its normaliser relative to
 * list r's first v. out [k] receives the first candidates of the whole row
 * (a prefix of its order: each slice sent all of its own first k); returns
 * their count, with *sum_all the row's normaliser relative to out[0].v. */
int sampling_merge(kcand *out, double *sum_all, const kcand *const *lists, const double *sums, int parts, int k);

/* c[0..V) = row l[0..V) at temperature t in candidate order; returns sum_all. */
double sampling_sort_row(const float *l, int V, float t, kcand *c);

/* Samples n whole rows of logits [n, ld] in host memory, over ids [0, V):
 * the reference that the devices' path equals. Draws one u from a row's rng
 * when the row is not greedy. */
void sampling_sample_host(int *out_ids, const float *logits, int n, int V, int ld, const ksample_params *p);

#endif
