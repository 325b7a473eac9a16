/* gpu_check.c: the helpers of tests/gpu's kernel test (gpu_check.h). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "gpu_check.h"

int n_pass, n_fail;
kbackend G, C;
uint64_t g_rng = 0x6a09e667;

void *xmalloc(size_t n) {
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of host memory\n");
        exit(2);
    }
    return p;
}

void tally(int ok) {
    if (ok)
        n_pass++;
    else
        n_fail++;
}

void check(const char *name, const float *got, const float *want, size_t n, double atol, double rtol) {
    double maxd = 0.0;
    size_t n_bad = 0, first = 0;
    for (size_t i = 0; i < n; i++) {
        double g = got[i], w = want[i], d = (g == w) ? 0.0 : fabs(g - w);
        if (isnan(g) != isnan(w)) d = INFINITY;
        if (isnan(g) && isnan(w)) d = 0.0;
        if (!(d <= atol + rtol * fabs(w))) {
            if (!n_bad) first = i;
            n_bad++;
        }
        if (d > maxd || isnan(d)) maxd = d;
    }
    printf("%s  %-62s n=%-8zu max_abs_diff=%-10.3g (atol=%.2g rtol=%.2g)\n", n_bad ? "FAIL" : "PASS", name, n, maxd,
           atol, rtol);
    if (n_bad)
        printf("      %zu bad; first at [%zu]: gpu %.9g cpu %.9g\n", n_bad, first, (double)got[first],
               (double)want[first]);
    tally(!n_bad);
}

void expect(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s  ", ok ? "PASS" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    tally(ok);
}

float bfr(float x) { return bf16_to_f32(f32_to_bf16(x)); } /* round to a bf16 value */

float *rand_bf16(size_t n, float lo, float hi) {
    float *x = xmalloc(n * 4);
    for (size_t i = 0; i < n; i++) x[i] = bfr(lo + (hi - lo) * (float)rng_uniform(&g_rng));
    return x;
}

/* GPU activation buffer of n bf16 values (+PAD sentinels) holding x. */
void *g_act(const float *x, size_t n) {
    uint16_t *h = xmalloc((n + PAD) * 2);
    for (size_t i = 0; i < n; i++) h[i] = x ? f32_to_bf16(x[i]) : (uint16_t)SENTINEL;
    for (size_t i = n; i < n + PAD; i++) h[i] = SENTINEL;
    void *d = G.iface->alloc(G.ctx, (n + PAD) * 2);
    G.iface->to_device(G.ctx, d, h, (n + PAD) * 2);
    free(h);
    return d;
}

/* n bf16 values of a GPU buffer as fp32; checks the PAD sentinels behind them. */
float *g_get(const char *name, const void *d, size_t n) {
    uint16_t *h = xmalloc((n + PAD) * 2);
    G.iface->to_host(G.ctx, h, d, (n + PAD) * 2);
    float *f = xmalloc(n * 4);
    for (size_t i = 0; i < n; i++) f[i] = bf16_to_f32(h[i]);
    int ok = 1;
    for (size_t i = n; i < n + PAD; i++) ok &= h[i] == SENTINEL;
    if (!ok) expect(0, "%s: wrote past the end of its output", name);
    free(h);
    return f;
}

/* CPU activation buffer (fp32) holding x. */
void *c_act(const float *x, size_t n) {
    void *d = C.iface->alloc(C.ctx, n * 4 + 4);
    if (x) C.iface->to_device(C.ctx, d, x, n * 4);
    return d;
}

void *g_ints(const int32_t *x, size_t n) {
    void *d = G.iface->alloc(G.ctx, n * 4 + 4);
    G.iface->to_device(G.ctx, d, x, n * 4);
    return d;
}

void *c_ints(const int32_t *x, size_t n) {
    void *d = C.iface->alloc(C.ctx, n * 4 + 4);
    C.iface->to_device(C.ctx, d, x, n * 4);
    return d;
}

/* The same host weight uploaded to both backends. */
void upload2(kweight *g, kweight *c, const void *host, kdtype dt, int rows, int cols) {
    G.iface->weight_upload(G.ctx, g, host, dt, rows, cols);
    C.iface->weight_upload(C.ctx, c, host, dt, rows, cols);
}

void free2(kweight *g, kweight *c) {
    G.iface->weight_free(G.ctx, g);
    C.iface->weight_free(C.ctx, c);
}

/* kernels/cuda/cuda_backend.cu's test hook: set 0 or 1 turns the switch of
 * that environment variable off or on; returns the setting before (-1: no
 * such switch). */
int kernels_cuda_switch(kbackend kb, const char *env, int set);

int gpu_switch(const char *env, int set) {
    int was = kernels_cuda_switch(G, env, set);
    if (was < 0) expect(0, "test hook: the CUDA backend has no switch %s", env);
    return was;
}
