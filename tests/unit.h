/* unit.h: what the CPU unit tests (test_kernels.c, test_sampling.c) share: the
 * backend under test, the pass/fail tally and its two checks, and seeded
 * inputs. One test program per .c file includes it once.
 *
 * check(): |got - want| <= atol + rtol*|want| element-wise, printing the max
 * abs diff and PASS/FAIL; expect(): a boolean property. */
#ifndef GLMTP_TESTS_UNIT_H
#define GLMTP_TESTS_UNIT_H

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "../kernels/kernels.h"
#include "../kernels/rng.h"

static int n_pass, n_fail;
static kbackend kb;
#define K_ (kb.iface)

static inline void check(const char *name, const float *got, const double *want, size_t n, double atol, double rtol) {
    double maxd = 0.0;
    size_t n_bad = 0, first_bad = 0;
    for (size_t i = 0; i < n; i++) {
        double g = got[i], w = want[i], diff;
        if (isnan(g) || isnan(w))
            diff = (isnan(g) && isnan(w)) ? 0.0 : INFINITY;
        else
            diff = (g == w) ? 0.0 : fabs(g - w); /* g == w also covers +-inf */
        if (diff != 0.0 && !(diff <= atol + rtol * fabs(w))) {
            if (!n_bad) first_bad = i;
            n_bad++;
        }
        if (diff > maxd || isnan(diff)) maxd = diff;
    }
    int ok = n_bad == 0;
    printf("%s  %-58s n=%-6zu max_abs_diff=%-10.3g (atol=%.2g rtol=%.2g)\n", ok ? "PASS" : "FAIL", name, n, maxd, atol,
           rtol);
    if (!ok)
        printf("      %zu bad elements; first at [%zu]: got %.9g want %.9g\n", n_bad, first_bad, (double)got[first_bad],
               want[first_bad]);
    if (ok)
        n_pass++;
    else
        n_fail++;
}

static inline void expect(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s  ", ok ? "PASS" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (ok)
        n_pass++;
    else
        n_fail++;
}

__attribute__((noinline, unused)) static void *xmalloc(size_t n) {
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* Backend memory holding a copy of host data. */
static inline void *dev_copy(const void *host, size_t bytes) {
    void *d = K_->alloc(kb.ctx, bytes);
    K_->to_device(kb.ctx, d, host, bytes);
    return d;
}

static uint64_t g_rng = 0x5eed0001;
static inline float urand(float lo, float hi) { return lo + (hi - lo) * (float)rng_uniform(&g_rng); }
static inline void fill_uniform(float *x, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) x[i] = urand(lo, hi);
}
static inline void fill_normal(float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * rng_normal(&g_rng);
}

#endif
