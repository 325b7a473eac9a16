/* test_gpu_kernels, part 3: the LM head's reductions (sampling candidates,
 * argmax). */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_check.h"

/* ------------------------------------------------------------------ sample */

/* The sampling candidates (top_k op; the kernel, as main sets GLMTP_GPU_TOPK)
 * against the CPU backend: the same candidates in the same order, bit for
 * bit, and normalisers within V double epsilons (sums in another order). Rows of a
 * tp=2 vocab slice's width and a short one, with ties, -inf, NaN, signed
 * zeros and a row stride; k up to the op's limit. */
void test_top_k(void) {
    const int Vs[] = {75776, 1000};
    for (int vi = 0; vi < 2; vi++) {
        enum { N = 6 };
        int V = Vs[vi], ld = V + 5;
        float *l = xmalloc(sizeof(float) * N * ld);
        for (int i = 0; i < N * ld; i++) l[i] = 2.0f * rng_normal(&g_rng);
        for (int i = 0; i < V; i += 13) l[0 * ld + i] = 9.0f;              /* ties at the top */
        for (int i = 0; i < V; i++) l[1 * ld + i] = -INFINITY;
        l[1 * ld + 777 % V] = -3.0f;                                        /* one finite logit */
        for (int i = 0; i < V; i += 3) l[2 * ld + i] = NAN;
        for (int i = 0; i < V; i++) l[3 * ld + i] = (i % 2) ? 0.0f : -0.0f; /* all zero: ids decide */
        l[4 * ld + V - 1] = 60.0f;                                          /* the last column */
        for (int i = 0; i < V; i++) l[5 * ld + i] = bfr(l[5 * ld + i]);     /* bf16-rounded: many equal values */
        const float temp[N] = {1.0f, 0.7f, 1.3f, 2.0f, 0.25f, 1.0f};
        void *gl = G.iface->alloc(G.ctx, sizeof(float) * N * ld);
        G.iface->to_device(G.ctx, gl, l, sizeof(float) * N * ld);
        const int ks[] = {1, 2, 40, 1000, KERNELS_TOPK_MAX};
        for (int ki = 0; ki < 5; ki++) {
            int k = ks[ki] < V ? ks[ki] : V;
            kcand *cg = xmalloc(sizeof(kcand) * N * k), *cc = xmalloc(sizeof(kcand) * N * k);
            double sg[N], sc[N], worst = 0.0;
            G.iface->top_k(G.ctx, cg, sg, gl, N, V, ld, k, temp);
            C.iface->top_k(C.ctx, cc, sc, l, N, V, ld, k, temp);
            int same = 1, first = -1;
            for (int i = 0; i < N * k; i++)
                if (cg[i].id != cc[i].id || memcmp(&cg[i].v, &cc[i].v, 4) != 0) {
                    if (same) first = i;
                    same = 0;
                }
            for (int r = 0; r < N; r++) {
                double e = sc[r] > 0 ? fabs(sg[r] - sc[r]) / sc[r] : fabs(sg[r]);
                if (e > worst) worst = e;
            }
            expect(same, "top_k V=%d k=%d: candidates equal the CPU's (first difference at %d)", V, k, first);
            /* V positive terms summed in two orders: each sum is within (V-1) units of
             * 2^-53 of the exact one; exp may differ by an ulp */
            double tol = (V + 2) * DBL_EPSILON;
            expect(worst <= tol, "top_k V=%d k=%d: normalisers within %.2g of the CPU's (worst %.2g)", V, k, tol,
                   worst);
            free(cg), free(cc);
        }
        G.iface->free(G.ctx, gl);
        free(l);
    }
}

/* argmax with values, a row stride and a column limit (the vocab-parallel
 * greedy LM head): the same ids and values as the CPU backend. */
void test_argmax(void) {
    enum { N = 4, V = 1000 };
    float *l = xmalloc(sizeof(float) * N * V);
    for (int i = 0; i < N * V; i++) l[i] = 2.0f * rng_normal(&g_rng);
    l[0 * V + 10] = l[0 * V + 500] = 50.0f;    /* tie: the lower id wins */
    for (int i = 0; i < V; i++) l[1 * V + i] = -INFINITY;
    l[1 * V + 777] = -3.0f;                     /* one finite logit among -inf */
    l[2 * V + V - 1] = 60.0f;                   /* last id */
    void *gl = G.iface->alloc(G.ctx, sizeof(float) * N * V);
    /* l[3]: a NaN first and a maximum past the limit that must not win */
    l[3 * V + 0] = NAN;
    l[3 * V + V - 2] = 99.0f;
    G.iface->to_device(G.ctx, gl, l, sizeof(float) * N * V);
    for (int lim = V - 3; lim <= V; lim += 3) {
        int ig[N], ic[N];
        float vg[N], vc[N];
        G.iface->argmax(G.ctx, ig, vg, gl, N, lim, V);
        C.iface->argmax(C.ctx, ic, vc, l, N, lim, V);
        int ok = 1;
        for (int i = 0; i < N; i++) ok &= ig[i] == ic[i] && vg[i] == vc[i];
        expect(ok, "argmax limit %d: ids %d %d %d %d (cpu %d %d %d %d)", lim, ig[0], ig[1], ig[2], ig[3], ic[0], ic[1],
               ic[2], ic[3]);
        expect(ig[0] == 10 && ig[1] == 777 && (lim == V ? ig[2] == V - 1 && ig[3] == V - 2 : ig[3] != V - 2),
               "argmax limit %d: tie, -inf row, last id, NaN and the limit", lim);
    }
    G.iface->free(G.ctx, gl);
    free(l);
}
