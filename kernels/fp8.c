/* FP8 E4M3 reference conversions (fp8.h). */
#include "fp8.h"

#include <math.h>
#include <string.h>

uint8_t fp8_e4m3_from_float(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    if (isnan(x)) return 0x7F; /* cuda_fp8.h canonicalises NaN to positive */
    float a = fabsf(x);
    /* 464 = 448 + half an ulp rounds to 448 (even); anything above saturates */
    if (a > 464.0f) return (uint8_t)(sign | 0x7E);
    if (a < 0x1p-6f) /* subnormal range: steps of 2^-9; 8 steps is the smallest normal */
        return (uint8_t)(sign | (uint8_t)nearbyintf(a * 0x1p9f));
    int e;
    frexpf(a, &e);        /* a = m 2^e, m in [0.5, 1): exponent e - 1, ulp 2^(e - 4) */
    float q = nearbyintf(ldexpf(a, 4 - e)); /* 8..16, exact scaling; 16 carries into the exponent */
    int code = ((e - 1 + 7) << 3) + (int)q - 8;
    if (code > 0x7E) code = 0x7E;
    return (uint8_t)(sign | code);
}

float fp8_e4m3_to_float(uint8_t b) {
    int e = (b >> 3) & 15, m = b & 7;
    if (e == 15 && m == 7) return NAN;
    float v = e == 0 ? ldexpf((float)m, -9) : ldexpf((float)(8 + m), e - 10);
    return (b & 0x80) ? -v : v;
}

void fp8_e4m3_table(float lut[256]) {
    for (int b = 0; b < 256; b++) lut[b] = fp8_e4m3_to_float((uint8_t)b);
}

void fp8_quantise_row(uint8_t *q, float *scale, const float *x, int n) {
    float amax = 0.0f;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        amax = a > amax ? a : amax; /* NaN compares false: ignored, as fmaxf does */
    }
    float s = amax / FP8_E4M3_MAX;
    *scale = s;
    for (int i = 0; i < n; i++) q[i] = fp8_e4m3_from_float(s > 0.0f ? x[i] / s : x[i]);
}
