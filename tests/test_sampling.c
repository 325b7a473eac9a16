/* test_sampling: the sampling rule (kernels/sampling.h) and the CPU backend's
 * top_k op: the op against a brute force, the rule on a prefix of the
 * candidate order against the whole row, the merge of vocab slices, the
 * sampler's distribution (greedy, temperature, top-k, top-p frequencies), and
 * the candidates path against the host reference on whole rows. Checks as in
 * unit.h; the last line is "N passed, M failed". */
#include <string.h>

#include "unit.h"

/* Sampling as the LM head does it on one rank: the backend's top_k op gives
 * the first g_cands candidates of each row and its normaliser, the rule picks
 * from them (kernels/sampling.h), and a row whose pick needs more is sorted
 * whole on the host and picked again with the same draw. The tests below run
 * with a long and a short candidate list (many fallbacks). Returns how many
 * rows fell back. */
static int g_cands = KERNELS_TOPK_MAX;

static int sample_rows(int *ids, const void *d, const float *l, int n, int V, const ksample_params *p) {
    int k = g_cands < V ? g_cands : V, fell = 0;
    kcand *c = xmalloc(sizeof(kcand) * (size_t)n * k), *full = xmalloc(sizeof(kcand) * (size_t)V);
    double *sum = xmalloc(sizeof(double) * (size_t)n);
    float *temp = xmalloc(sizeof(float) * (size_t)n);
    for (int i = 0; i < n; i++) temp[i] = sampling_is_greedy(&p[i]) ? 1.0f : p[i].temperature;
    K_->top_k(kb.ctx, c, sum, d, n, V, V, k, temp);
    for (int i = 0; i < n; i++) {
        const kcand *ci = c + (size_t)i * k;
        if (sampling_is_greedy(&p[i])) {
            ids[i] = ci[0].id;
            continue;
        }
        double u = rng_uniform(p[i].rng);
        ids[i] = sampling_pick(ci, k, V, sum[i], &p[i], u);
        if (ids[i] < 0) {
            double s = sampling_sort_row(l + (size_t)i * V, V, p[i].temperature, full);
            ids[i] = sampling_pick(full, V, V, s, &p[i], u);
            fell++;
        }
    }
    free(c), free(full), free(sum), free(temp);
    return fell;
}

static int sample1(const float *logits, int V, float temperature, int top_k, float top_p, uint64_t *rng) {
    ksample_params p = {temperature, top_k, top_p, rng};
    void *d = dev_copy(logits, (size_t)V * 4);
    int id = -1;
    sample_rows(&id, d, logits, 1, V, &p);
    K_->free(kb.ctx, d);
    return id;
}

/* Draw n samples (one row at a time, same rng) and count them per token. */
static void sample_counts(const float *logits, int V, float temperature, int top_k, float top_p, uint64_t seed,
                          int n, int *counts) {
    uint64_t rng = seed;
    ksample_params p = {temperature, top_k, top_p, &rng};
    void *d = dev_copy(logits, (size_t)V * 4);
    for (int i = 0; i < V; i++) counts[i] = 0;
    for (int i = 0; i < n; i++) {
        int id = -1;
        sample_rows(&id, d, logits, 1, V, &p);
        if (id >= 0 && id < V) counts[id]++;
    }
    K_->free(kb.ctx, d);
}

/* The candidates of a row by brute force: every (v, id) with v = l / t (NaN
 * as -inf, -0 as +0), sorted here by selection, written without sampling.c. */
static void ref_candidates(const float *l, int V, float t, int k, kcand *out, double *sum) {
    char *taken = xmalloc((size_t)V);
    for (int j = 0; j < k; j++) {
        int best = -1;
        float bv = 0.0f;
        for (int i = 0; i < V; i++) {
            float v = l[i] / t;
            if (isnan(v)) v = -INFINITY;
            if (v == 0.0f) v = 0.0f;
            if (taken[i]) continue;
            if (best < 0 || v > bv) best = i, bv = v; /* ascending scan: ties keep the lower id */
        }
        taken[best] = 1;
        out[j] = (kcand){bv, best};
    }
    double mx = out[0].v, s = 0.0;
    for (int i = 0; i < V && mx > -INFINITY; i++) {
        double v = l[i] / t;
        if (!isnan(v)) s += exp(v - mx);
    }
    *sum = s;
    free(taken);
}

/* The top_k op against the brute force: ties, -inf, NaN, signed zeros, a
 * row stride, k from 1 to the whole row. */
static void test_top_k_op(void) {
    enum { N = 5, V = 700, LD = 709 };
    float *l = xmalloc(sizeof(float) * N * LD);
    fill_normal(l, N * LD, 3.0f);
    for (int i = 0; i < V; i += 7) l[0 * LD + i] = 4.0f;             /* 100 ties at the top */
    for (int i = 0; i < V; i++) l[1 * LD + i] = -INFINITY;           /* nothing finite... */
    l[1 * LD + 333] = -2.0f;                                           /* ...but one */
    for (int i = 0; i < V; i += 3) l[2 * LD + i] = NAN;               /* NaN never ranks */
    for (int i = 0; i < V; i++) l[3 * LD + i] = (i % 2) ? 0.0f : -0.0f; /* zeros tie, whatever the sign */
    l[4 * LD + V - 1] = 50.0f;                                         /* the last column */
    const float temps[N] = {1.0f, 0.7f, 1.3f, 2.0f, 0.25f};
    void *d = dev_copy(l, sizeof(float) * N * LD);
    const int ks[] = {1, 2, 37, 100, 256, V};
    for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++) {
        int k = ks[ki];
        kcand *got = xmalloc(sizeof(kcand) * N * k), *want = xmalloc(sizeof(kcand) * k);
        double gs[N], ws;
        K_->top_k(kb.ctx, got, gs, d, N, V, LD, k, temps);
        int same = 1, bad_row = -1;
        double worst = 0.0;
        for (int r = 0; r < N; r++) {
            ref_candidates(l + (size_t)r * LD, V, temps[r], k, want, &ws);
            for (int j = 0; j < k; j++)
                if (got[r * k + j].id != want[j].id || got[r * k + j].v != want[j].v) {
                    if (same) bad_row = r;
                    same = 0;
                }
            double e = ws > 0 ? fabs(gs[r] - ws) / ws : fabs(gs[r]);
            if (e > worst) worst = e;
        }
        expect(same, "top_k k=%d: the first k candidates of 5 rows, in order (ties, -inf, NaN, +-0; first bad row %d)",
               k, bad_row);
        expect(worst < 1e-12, "top_k k=%d: normalisers within 1e-12 of the brute force (worst %.2g)", k, worst);
        free(got), free(want);
    }
    K_->free(kb.ctx, d);
    free(l);
}

/* The rule on a prefix of the order gives the whole row's pick, or -1 (never
 * a different token); -1 never happens when top_k fits in the prefix. */
static void test_pick_prefix(void) {
    enum { V = 300, ROWS = 400 };
    float l[V];
    kcand c[V];
    uint64_t g = 7;
    int same = 1, fits = 1, n_minus = 0, n_found = 0;
    for (int row = 0; row < ROWS; row++) {
        float scale = (row % 4 == 0) ? 0.05f : (row % 4 == 1) ? 1.0f : 4.0f; /* flat to peaked */
        for (int i = 0; i < V; i++) l[i] = scale * rng_normal(&g);
        const float temps[] = {0.5f, 1.0f, 2.0f};
        const int top_ks[] = {0, 5, 50, 299, 400};
        const float top_ps[] = {1.0f, 0.9f, 0.5f, 0.99f};
        ksample_params p = {temps[row % 3], top_ks[row % 5], top_ps[(row / 5) % 4], NULL};
        double sum = sampling_sort_row(l, V, p.temperature, c);
        double u = rng_uniform(&g);
        int want = sampling_pick(c, V, V, sum, &p, u);
        const int prefixes[] = {1, 4, 32, 299};
        for (int j = 0; j < 4; j++) {
            int got = sampling_pick(c, prefixes[j], V, sum, &p, u);
            if (got < 0)
                n_minus++;
            else
                n_found++;
            if (got >= 0 && got != want) same = 0;
            if (got < 0 && p.top_k > 0 && p.top_k <= prefixes[j]) fits = 0;
        }
    }
    expect(same, "sampling_pick on a prefix: the whole row's token or -1, %d picks (%d found, %d need more)",
           n_minus + n_found, n_found, n_minus);
    expect(n_minus > 0 && n_found > 0, "sampling_pick on a prefix: both outcomes occur (%d, %d)", n_found, n_minus);
    expect(fits, "sampling_pick on a prefix: never -1 when top_k fits in the prefix");
}

/* A row cut into vocab slices (as tensor parallelism cuts the LM head): the
 * merge of the slices' top_k op results is the whole row's first candidates,
 * with its normaliser. */
static void test_merge(void) {
    enum { V = 500, K = 64, MAXP = 4 };
    float l[V];
    uint64_t g = 99;
    int same = 1;
    double worst = 0.0;
    for (int trial = 0; trial < 24; trial++) {
        fill_normal(l, V, trial % 2 ? 0.3f : 3.0f);
        if (trial % 3 == 0)
            for (int i = 0; i < V; i += 11) l[i] = 2.5f; /* ties across slices */
        int parts = 1 + trial % MAXP, cut[MAXP + 1] = {0};
        for (int r = 1; r < parts; r++) cut[r] = cut[r - 1] + 1 + (int)(rng_uniform(&g) * (V / parts));
        cut[parts] = V;
        float t = trial % 2 ? 0.8f : 1.0f;
        kcand lists[MAXP][K], merged[K], want[K];
        const kcand *lp[MAXP];
        double sums[MAXP], sum_all, want_sum;
        for (int r = 0; r < parts; r++) {
            int n = cut[r + 1] - cut[r], k = n < K ? n : K;
            void *d = dev_copy(l + cut[r], sizeof(float) * (size_t)n);
            K_->top_k(kb.ctx, lists[r], &sums[r], d, 1, n, n, k, &t);
            K_->free(kb.ctx, d);
            for (int j = 0; j < K; j++) lists[r][j] = j < k ? (kcand){lists[r][j].v, lists[r][j].id + cut[r]}
                                                            : (kcand){-INFINITY, -1};
            lp[r] = lists[r];
        }
        int n_c = sampling_merge(merged, &sum_all, lp, sums, parts, K);
        ref_candidates(l, V, t, K, want, &want_sum);
        same &= n_c == K;
        for (int j = 0; j < K && same; j++) same &= merged[j].id == want[j].id && merged[j].v == want[j].v;
        double e = fabs(sum_all - want_sum) / want_sum;
        if (e > worst) worst = e;
    }
    expect(same, "sampling_merge of 1 to 4 vocab slices == the whole row's first %d candidates (24 rows)", K);
    expect(worst < 1e-12, "sampling_merge: normaliser within 1e-12 of the whole row's (worst %.2g)", worst);
}

static void test_sample(void) {
    uint64_t rng = 1;
    /* Greedy: temperature 0 is argmax; ties go to the lowest id. */
    {
        const float l[] = {-1.0f, 3.0f, 0.5f, 3.0f, 2.9f};
        int id = sample1(l, 5, 0.0f, 0, 1.0f, &rng);
        expect(id == 1, "sample temperature 0 -> argmax, tie -> lowest id (got %d, want 1)", id);
        const float l2[] = {-5.0f, -4.0f, -3.0f, -2.0f, -1.0f, -0.5f, -7.0f};
        id = sample1(l2, 7, 0.0f, 0, 1.0f, &rng);
        expect(id == 5, "sample temperature 0, all-negative logits (got %d, want 5)", id);
        const float l3[] = {0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f, 8.0f, 9.0f, 10.0f};
        id = sample1(l3, 11, 0.0f, 50, 0.5f, &rng);
        expect(id == 10, "sample temperature 0 ignores top_k/top_p, argmax is last id (got %d, want 10)", id);
    }
    /* top_k = 1 and a tiny top_p are argmax even at temperature > 0: many draws. */
    {
        const float l[] = {0.1f, 0.3f, 0.2f, 0.29f, -1.0f, 0.0f, 0.25f};
        int c[7], okk, okp;
        sample_counts(l, 7, 1.5f, 1, 1.0f, 77, 500, c);
        okk = c[1] == 500;
        expect(okk, "sample top_k=1 temperature 1.5 -> argmax in 500/500 draws (got %d)", c[1]);
        sample_counts(l, 7, 1.0f, 0, 1e-6f, 78, 500, c);
        okp = c[1] == 500;
        expect(okp, "sample top_p=1e-6 temperature 1 -> argmax in 500/500 draws (got %d)", c[1]);
    }
    /* Determinism: the same seed gives the same draws; different seeds differ. */
    {
        enum { V = 50, N = 200 };
        float l[V];
        for (int i = 0; i < V; i++) l[i] = 0.05f * (float)(i % 7);
        int a[N], b[N], c[N];
        uint64_t ra = 42, rb = 42, rc = 43;
        for (int i = 0; i < N; i++) {
            a[i] = sample1(l, V, 1.0f, 0, 1.0f, &ra);
            b[i] = sample1(l, V, 1.0f, 0, 1.0f, &rb);
            c[i] = sample1(l, V, 1.0f, 0, 1.0f, &rc);
        }
        expect(memcmp(a, b, sizeof a) == 0 && ra == rb, "sample same seed -> same %d draws and same rng state", N);
        int diff = 0;
        for (int i = 0; i < N; i++) diff += a[i] != c[i];
        expect(diff > N / 2, "sample different seeds -> different draws (%d of %d differ)", diff, N);
        expect(ra != 42, "sample advances the row's rng state");
    }
    /* A batch of rows with their own params/rngs draws exactly what each row
     * would draw alone (a request's draws do not depend on its batch). */
    {
        enum { V = 9, R = 4 };
        float l[R * V];
        fill_normal(l, R * V, 2.0f);
        uint64_t rb[R] = {11, 12, 13, 14}, rs[R] = {11, 12, 13, 14};
        ksample_params p[R] = {{1.0f, 0, 1.0f, &rb[0]}, {0.7f, 3, 1.0f, &rb[1]}, {0.0f, 0, 1.0f, &rb[2]},
                               {1.3f, 0, 0.8f, &rb[3]}};
        int ok = 1;
        void *d = dev_copy(l, sizeof l);
        for (int it = 0; it < 50; it++) {
            int ids[R];
            sample_rows(ids, d, l, R, V, p);
            for (int r = 0; r < R; r++)
                ok &= ids[r] == sample1(l + r * V, V, p[r].temperature, p[r].top_k, p[r].top_p, &rs[r]);
        }
        K_->free(kb.ctx, d);
        expect(ok, "sample batch of %d rows == each row alone (50 steps)", R);
    }
    /* Empirical frequencies: 20000 draws from softmax(l / T). The standard error
     * of a frequency is <= sqrt(0.25/20000) = 0.0035, so 0.02 is > 5 sigma (and
     * the seed is fixed). check() is used with atol 0.02 on the frequencies. */
    {
        enum { V = 4, N = 20000 };
        const float l[V] = {0.5f, -1.0f, 1.2f, 0.1f};
        const float temps[] = {1.0f, 2.0f, 0.5f};
        for (int ti = 0; ti < 3; ti++) {
            int c[V];
            sample_counts(l, V, temps[ti], 0, 1.0f, 1000 + ti, N, c);
            double want[V], z = 0.0;
            float got[V];
            for (int i = 0; i < V; i++) z += exp(l[i] / (double)temps[ti]);
            for (int i = 0; i < V; i++) want[i] = exp(l[i] / (double)temps[ti]) / z, got[i] = (float)c[i] / N;
            char name[96];
            snprintf(name, sizeof name, "sample frequencies, 20000 draws, temperature %g", temps[ti]);
            check(name, got, want, V, 0.02, 0.0);
        }
    }
    /* top_k = 2: never outside the top 2, which keep their renormalised odds. */
    {
        enum { V = 6, N = 20000 };
        const float l[V] = {0.0f, 1.0f, -0.5f, 0.8f, 0.9f, -2.0f}; /* top 2: ids 1 and 4 */
        int c[V];
        sample_counts(l, V, 1.0f, 2, 1.0f, 555, N, c);
        int outside = N - c[1] - c[4];
        expect(outside == 0, "sample top_k=2 never returns a token outside the top 2 (%d of %d did)", outside, N);
        double p1 = exp(1.0) / (exp(1.0) + exp(0.9));
        float got[2] = {(float)c[1] / N, (float)c[4] / N};
        double want[2] = {p1, 1.0 - p1};
        check("sample top_k=2 frequencies (renormalised over the top 2)", got, want, 2, 0.02, 0.0);
    }
    /* top_p = 0.7 on probs [0.5, 0.3, 0.2]: the nucleus is {0, 1} (0.5 < 0.7 <= 0.8). */
    {
        enum { V = 3, N = 20000 };
        const float l[V] = {logf(0.5f), logf(0.3f), logf(0.2f)};
        int c[V];
        sample_counts(l, V, 1.0f, 0, 0.7f, 999, N, c);
        expect(c[2] == 0, "sample top_p=0.7 on [0.5,0.3,0.2] never returns id 2 (%d of %d did)", c[2], N);
        float got[2] = {(float)c[0] / N, (float)c[1] / N};
        double want[2] = {0.5 / 0.8, 0.3 / 0.8};
        check("sample top_p=0.7 frequencies (renormalised 0.625/0.375)", got, want, 2, 0.02, 0.0);
        /* Shuffled order: same nucleus whatever the ids. */
        const float l2[V] = {logf(0.2f), logf(0.5f), logf(0.3f)};
        sample_counts(l2, V, 1.0f, 0, 0.7f, 998, N, c);
        expect(c[0] == 0 && c[1] > 0 && c[2] > 0, "sample top_p=0.7 on [0.2,0.5,0.3] returns only ids 1,2 (%d/%d/%d)",
               c[0], c[1], c[2]);
    }
    /* Logits masked to -inf (padding vocab rows, spec §2.7) are never drawn. */
    {
        enum { V = 7, N = 20000 };
        const float l[V] = {-INFINITY, 0.3f, -INFINITY, -0.2f, 0.0f, -INFINITY, 0.1f};
        int c[V], c2[V], c3[V];
        sample_counts(l, V, 1.0f, 0, 1.0f, 4242, N, c);
        sample_counts(l, V, 0.8f, 5, 0.95f, 4243, N, c2);
        sample_counts(l, V, 0.0f, 0, 1.0f, 4244, 10, c3);
        expect(c[0] + c[2] + c[5] == 0 && c2[0] + c2[2] + c2[5] == 0 && c3[1] == 10,
               "sample never draws -inf logits (plain, top_k=5 top_p=0.95, greedy)");
    }
}

/* Rows of a flat and a peaked kind under every kind of parameter: the
 * candidates path (with its fallbacks) draws what the host reference draws
 * from whole rows, and leaves the generators in the same state. */
static void test_sample_vs_host(void) {
    enum { V = 2000, R = 12, STEPS = 30 };
    float *l = xmalloc(sizeof(float) * R * V);
    fill_normal(l, (size_t)R * V, 1.0f);
    for (int r = 0; r < R; r += 2)
        for (int i = 0; i < V; i++) l[(size_t)r * V + i] *= 0.02f; /* nearly flat: top-p reaches far */
    uint64_t ra[R], rb[R];
    ksample_params pa[R], pb[R];
    const float temps[] = {0.0f, 0.6f, 1.0f, 1.7f};
    const int top_ks[] = {0, 1, 3, 40, 1500};
    const float top_ps[] = {1.0f, 0.95f, 0.3f};
    for (int r = 0; r < R; r++) {
        ra[r] = rb[r] = 500 + (uint64_t)r;
        pa[r] = (ksample_params){temps[r % 4], top_ks[r % 5], top_ps[r % 3], &ra[r]};
        pb[r] = pa[r], pb[r].rng = &rb[r];
    }
    void *d = dev_copy(l, sizeof(float) * R * V);
    int same = 1, fell = 0;
    for (int it = 0; it < STEPS; it++) {
        int a[R], b[R];
        fell += sample_rows(a, d, l, R, V, pa);
        sampling_sample_host(b, l, R, V, V, pb);
        for (int r = 0; r < R; r++) same &= a[r] == b[r] && ra[r] == rb[r];
    }
    expect(same, "sample, %d candidates: %d steps of %d rows == the host reference on whole rows (%d fell back)",
           g_cands, STEPS, R, fell);
    if (g_cands < 50) expect(fell > 0, "sample, %d candidates: some rows needed the whole row (%d)", g_cands, fell);
    K_->free(kb.ctx, d);
    free(l);
}

int main(void) {
    kb = kernels_cpu_create(0);
    test_top_k_op();
    test_pick_prefix();
    test_merge();
    for (int i = 0; i < 2; i++) { /* a long candidate list, then one that often falls back */
        g_cands = i == 0 ? KERNELS_TOPK_MAX : 2;
        test_sample();
        test_sample_vs_host();
    }
    K_->destroy(kb.ctx);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
