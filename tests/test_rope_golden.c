/* test_rope_golden: the CPU backend's RoPE at positions up to 1,048,575 against
 * HF transformers' GLM rotary code (tests/rope/golden.json, made by
 * tests/rope/make_rope_golden.py) and against a float64 rotation by the exact
 * angle.
 *
 * HF computes the angle as float32(position) * float32(inv_freq), rounded to
 * fp32: at 1M that rounding reaches 0.03 rad, so HF's rotation is not the
 * exact one, and glmtp must reproduce HF's, not the exact one (the model is
 * served as the reference runs it). Two checks per base:
 *   - against HF: every output within 2e-6 (same fp32 angles; cos/sin of
 *     glibc and of torch differ by an ulp or two, the products round once);
 *   - against float64: within the bound the fp32 angle allows, |x| * |da| with
 *     |da| <= 2^-23 * angle (products and inv_freq rounded to fp32) + 1e-6, and
 *     the worst error is printed, so a wrong frequency (which is off by
 *     radians) cannot hide behind the tolerance. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/kernels.h"
#include "../worker/util.h"

/* rows x cols numbers of a JSON array of arrays into out (doubles). */
static int get_matrix(const cJSON *a, int rows, int cols, double *out) {
    if (cJSON_GetArraySize(a) != rows) return -1;
    for (int r = 0; r < rows; r++) {
        const cJSON *row = cJSON_GetArrayItem(a, r);
        if (cJSON_GetArraySize(row) != cols) return -1;
        for (int c = 0; c < cols; c++) out[(size_t)r * cols + c] = cJSON_GetArrayItem(row, c)->valuedouble;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: test_rope_golden tests/rope/golden.json\n");
        return 2;
    }
    size_t len;
    char err[512] = "";
    char *text = util_read_file(argv[1], &len, err, sizeof err);
    cJSON *doc = text ? cJSON_ParseWithLength(text, len) : NULL;
    if (!doc) {
        fprintf(stderr, "test_rope_golden: %s\n", text ? "golden file is not JSON" : err);
        return 2;
    }
    int d = cJSON_GetObjectItem(doc, "head_dim")->valueint, rot = cJSON_GetObjectItem(doc, "rot_dim")->valueint;
    const cJSON *jpos = cJSON_GetObjectItem(doc, "positions");
    int T = cJSON_GetArraySize(jpos);
    int32_t *pos = malloc(sizeof(int32_t) * T);
    double *x = malloc(sizeof(double) * T * d), *hf = malloc(sizeof(double) * T * d),
           *f64 = malloc(sizeof(double) * T * d);
    float *buf = malloc(sizeof(float) * T * d);
    if (!pos || !x || !hf || !f64 || !buf) abort();
    for (int t = 0; t < T; t++) pos[t] = cJSON_GetArrayItem(jpos, t)->valueint;
    kbackend kb = kernels_cpu_create(1);
    int passed = 0, failed = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(doc, "cases")) {
        double base = cJSON_GetObjectItem(c, "base")->valuedouble;
        if (get_matrix(cJSON_GetObjectItem(c, "x"), T, d, x) || get_matrix(cJSON_GetObjectItem(c, "hf"), T, d, hf) ||
            get_matrix(cJSON_GetObjectItem(c, "f64"), T, d, f64)) {
            fprintf(stderr, "test_rope_golden: %s: a matrix is not %d x %d\n", argv[1], T, d);
            return 2;
        }
        for (size_t i = 0; i < (size_t)T * d; i++) buf[i] = (float)x[i];
        void *dx = kb.iface->alloc(kb.ctx, sizeof(float) * T * d), *dp = kb.iface->alloc(kb.ctx, sizeof(int32_t) * T);
        kb.iface->to_device(kb.ctx, dx, buf, sizeof(float) * T * d);
        kb.iface->to_device(kb.ctx, dp, pos, sizeof(int32_t) * T);
        kb.iface->rope(kb.ctx, dx, dp, T, d, 1, d, rot, (float)base);
        kb.iface->to_host(kb.ctx, buf, dx, sizeof(float) * T * d);
        double worst_hf = 0, worst_f64 = 0, worst_excess = 0;
        int at_hf = 0, at_f64 = 0;
        for (int t = 0; t < T; t++)
            for (int j = 0; j < d; j += 2) {
                size_t i = (size_t)t * d + j;
                double norm = hypot(x[i], x[i + 1]);
                double angle = j < rot ? pos[t] * pow(base, -(double)j / rot) : 0.0;
                double bound = norm * (angle * 0x1p-23 + 1e-6) + 1e-7;
                for (int k = 0; k < 2; k++) {
                    double e_hf = fabs(buf[i + k] - hf[i + k]), e_64 = fabs(buf[i + k] - f64[i + k]);
                    if (e_hf > worst_hf) worst_hf = e_hf, at_hf = pos[t];
                    if (e_64 > worst_f64) worst_f64 = e_64, at_f64 = pos[t];
                    if (e_64 - bound > worst_excess) worst_excess = e_64 - bound;
                }
            }
        int ok_hf = worst_hf <= 2e-6, ok_64 = worst_excess == 0;
        printf("%s  rope base %g vs HF transformers (fp32): max |diff| %.3g at position %d (tol 2e-6)\n",
               ok_hf ? "PASS" : "FAIL", base, worst_hf, at_hf);
        printf("%s  rope base %g vs float64 exact angle: max |diff| %.3g at position %d (within the fp32-angle "
               "bound: %s)\n", ok_64 ? "PASS" : "FAIL", base, worst_f64, at_f64, ok_64 ? "yes" : "no");
        passed += ok_hf + ok_64, failed += !ok_hf + !ok_64;
        kb.iface->free(kb.ctx, dx), kb.iface->free(kb.ctx, dp);
    }
    printf("%d passed, %d failed\n", passed, failed);
    kb.iface->destroy(kb.ctx);
    cJSON_Delete(doc);
    free(text), free(pos), free(x), free(hf), free(f64), free(buf);
    return failed ? 1 : 0;
}
