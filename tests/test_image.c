/* test_image: GLM-4V image input (coordinator/image/) against the torchvision
 * reference of glm4v-spec.md §4 (tests/image/data/golden.json, made by
 * tests/image/make_image_golden.py with Pillow + torchvision).
 *
 * For every committed image:
 *   - image_decode gives PIL's size and PIL's convert("RGB") bytes (FNV-1a 64);
 *   - image_resize_bicubic at S = 56 and 112 equals Pillow's resize byte for
 *     byte (the count of differing bytes and the largest difference print);
 *   - image_preprocess equals the torchvision tensor: tolerance 0, i.e. bit
 *     for bit (max |diff| prints). The reference is the uint8 image looked up
 *     in torchvision's own 3 x 256 normalisation table, which the generator
 *     checked is the torchvision tensor bit for bit;
 *   - at S = 1120 (the model's size) the uint8 image and the float tensor
 *     match the reference's checksums.
 * A decoder that differed from PIL's for some format (a different IDCT, say)
 * would need a per-file tolerance here with its reason; none does: the system
 * libjpeg-turbo 2.1 and libwebp 1.2 give the same bytes as the ones in the
 * Pillow wheel (libjpeg-turbo 3.x, libwebp 1.5+) on these files.
 *
 * Bad files (truncated, corrupt CRCs, lying headers, other formats, empty,
 * random) fail with a message holding the expected substring; prefixes and
 * seeded byte flips of every good file decode or fail without a crash (run it
 * under the ASan build to mean something). Data URLs: the committed one decodes
 * to the file's bytes, and malformed ones fail with their reason. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../coordinator/image/image.h"
#include "../worker/util.h"

/* The standard FNV-1a 64 offset basis, as the generator's fnv1a64 uses
 * (worker/util.h's UTIL_FNV_INIT lacks the basis's last digit, 7). */
#define FNV1A64_BASIS 14695981039346656037ull

static int n_pass, n_fail;

static void expect(int ok, const char *fmt, ...) {
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

static const char *g_dir;

static uint8_t *read_data(const char *name, size_t *n) {
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    uint8_t *b = (uint8_t *)util_read_file(path, n, err, sizeof err);
    if (!b) {
        fprintf(stderr, "test_image: %s\n", err);
        exit(2);
    }
    return b;
}

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItem(o, k);
    if (!cJSON_IsString(v)) {
        fprintf(stderr, "test_image: golden.json: missing string '%s'\n", k);
        exit(2);
    }
    return v->valuestring;
}

/* The pass order of a Pillow version ("12.1.0" -> IMAGE_PILLOW_12). */
static image_pass_order order_for(const char *version) {
    int major = 0, minor = 0;
    sscanf(version, "%d.%d", &major, &minor);
    if (major >= 13) return IMAGE_PILLOW_13;
    if (major == 12 && minor >= 2) return IMAGE_PILLOW_12_2;
    return IMAGE_PILLOW_12;
}
static image_pass_order g_order; // of the Pillow that made the golden tensors

/* The uint8 resize under each Pillow version's pass order against that
 * version's checksum (golden "u8_chw_fnv1a64_by_pillow"). */
static void check_versions(const glm_image *im, const char *file, int S, const cJSON *by) {
    size_t plane = (size_t)S * S;
    uint8_t *hwc = malloc(plane * 3), *chw = malloc(plane * 3);
    if (!hwc || !chw) abort();
    char line[512] = "";
    int ok = 1;
    const cJSON *v;
    cJSON_ArrayForEach(v, by) {
        image_resize_bicubic_order(im, S, S, order_for(v->string), hwc);
        for (int ch = 0; ch < 3; ch++)
            for (size_t i = 0; i < plane; i++) chw[ch * plane + i] = hwc[3 * i + ch];
        char f[17];
        snprintf(f, sizeof f, "%016llx", (unsigned long long)util_fnv(FNV1A64_BASIS, chw, plane * 3));
        int same = cJSON_IsString(v) && !strcmp(f, v->valuestring);
        ok &= same;
        size_t l = strlen(line);
        snprintf(line + l, sizeof line - l, " %s:%s", v->string, same ? "same" : "DIFFERENT");
    }
    expect(ok, "%-28s S=%-4d uint8 checksum per Pillow pass order:%s", file, S, line);
    free(hwc);
    free(chw);
}

static float g_table[3][256]; // torchvision's ToTensor + Normalize of 0..255, per channel
static float g_mean[3], g_std[3];

static void check_image(const cJSON *c, const cJSON *sizes, int big) {
    const char *file = jstr(c, "file");
    size_t n;
    uint8_t *bytes = read_data(file, &n);
    glm_image im;
    char err[256] = "";
    int rc = image_decode(bytes, n, &im, err, sizeof err);
    free(bytes);
    if (rc) {
        expect(0, "%-28s decode: %s", file, err);
        return;
    }
    int w = cJSON_GetObjectItem(c, "width")->valueint, h = cJSON_GetObjectItem(c, "height")->valueint;
    char fnv[17];
    snprintf(fnv, sizeof fnv, "%016llx",
             (unsigned long long)util_fnv(FNV1A64_BASIS, im.rgb, (size_t)im.width * im.height * 3));
    expect(im.width == w && im.height == h && !strcmp(fnv, jstr(c, "rgb_fnv1a64")),
           "%-28s decode %dx%d (PIL %dx%d), RGB fnv %s (PIL %s; PIL mode %s)", file, im.width, im.height, w, h, fnv,
           jstr(c, "rgb_fnv1a64"), jstr(c, "pil_mode"));

    const cJSON *js = cJSON_GetObjectItem(c, "sizes");
    const cJSON *sv;
    cJSON_ArrayForEach(sv, sizes) {
        int S = sv->valueint;
        char key[16];
        snprintf(key, sizeof key, "%d", S);
        size_t plane = (size_t)S * S, rn;
        char ref_name[512];
        snprintf(ref_name, sizeof ref_name, "%s", jstr(cJSON_GetObjectItem(js, key), "u8_chw"));
        uint8_t *ref = read_data(ref_name, &rn);
        uint8_t *hwc = malloc(plane * 3);
        float *t = malloc(sizeof(float) * plane * 3);
        if (!hwc || !t || rn != plane * 3) abort();
        image_resize_bicubic_order(&im, S, S, g_order, hwc);
        image_preprocess_order(&im, S, g_mean, g_std, g_order, t);
        size_t n_bad = 0;
        int maxd = 0;
        double maxf = 0.0;
        for (int ch = 0; ch < 3; ch++)
            for (size_t i = 0; i < plane; i++) {
                int d = abs((int)hwc[3 * i + ch] - (int)ref[ch * plane + i]);
                n_bad += d != 0;
                if (d > maxd) maxd = d;
                double df = fabs((double)t[ch * plane + i] - (double)g_table[ch][ref[ch * plane + i]]);
                if (!(df <= maxf)) maxf = df; // NaN lands here too
            }
        expect(n_bad == 0 && maxf == 0.0, "%-28s S=%-4d uint8 resize: %zu of %zu bytes differ (max %d); "
               "tensor max|diff| %.3g (tol 0)", file, S, n_bad, plane * 3, maxd, maxf);
        free(ref);
        free(hwc);
        free(t);
        check_versions(&im, file, S, cJSON_GetObjectItem(cJSON_GetObjectItem(js, key), "u8_chw_fnv1a64_by_pillow"));
    }
    const cJSON *jb = cJSON_GetObjectItem(js, "1120");
    if (jb) {
        size_t plane = (size_t)big * big;
        uint8_t *hwc = malloc(plane * 3), *chw = malloc(plane * 3);
        float *t = malloc(sizeof(float) * plane * 3);
        if (!hwc || !chw || !t) abort();
        image_resize_bicubic_order(&im, big, big, g_order, hwc);
        for (int ch = 0; ch < 3; ch++)
            for (size_t i = 0; i < plane; i++) chw[ch * plane + i] = hwc[3 * i + ch];
        image_preprocess_order(&im, big, g_mean, g_std, g_order, t);
        char fu[17], ff[17];
        snprintf(fu, sizeof fu, "%016llx", (unsigned long long)util_fnv(FNV1A64_BASIS, chw, plane * 3));
        snprintf(ff, sizeof ff, "%016llx", (unsigned long long)util_fnv(FNV1A64_BASIS, t, plane * 3 * sizeof(float)));
        expect(!strcmp(fu, jstr(jb, "u8_chw_fnv1a64")) && !strcmp(ff, jstr(jb, "f32_chw_fnv1a64")),
               "%-28s S=%-4d uint8 fnv %s (ref %s), tensor fnv %s (ref %s)", file, big, fu, jstr(jb, "u8_chw_fnv1a64"),
               ff, jstr(jb, "f32_chw_fnv1a64"));
        free(hwc);
        free(chw);
        free(t);
        check_versions(&im, file, big, cJSON_GetObjectItem(jb, "u8_chw_fnv1a64_by_pillow"));
    }
    image_free(&im);
}

static void check_bad(const cJSON *b) {
    const char *file = jstr(b, "file"), *want = jstr(b, "error");
    size_t n;
    uint8_t *bytes = read_data(file, &n);
    glm_image im = {1, 1, (uint8_t *)1}; // must come back zeroed
    char err[256] = "";
    int rc = image_decode(bytes, n, &im, err, sizeof err);
    expect(rc == -1 && strstr(err, want) && !im.rgb && !im.width && !im.height, "%-32s fails: \"%s\" (want \"%s\")",
           file, err, want);
    if (!rc) image_free(&im);
    free(bytes);
}

/* Prefixes and byte flips of a good file: any result but a crash or a leak. */
static void robustness(const char *file, uint64_t *seed) {
    size_t n;
    uint8_t *bytes = read_data(file, &n);
    uint8_t *copy = malloc(n);
    if (!copy) abort();
    int ok = 0, failed = 0, msg_ok = 1;
    for (int k = 0; k < 24; k++) {
        size_t len = n * (size_t)k / 24;
        glm_image im;
        char err[256] = "";
        if (image_decode(bytes, len, &im, err, sizeof err) == 0) {
            ok++;
            image_free(&im);
        } else {
            failed++;
            msg_ok &= err[0] != 0;
        }
    }
    for (int k = 0; k < 40; k++) {
        memcpy(copy, bytes, n);
        for (int f = 0; f < 4; f++) {
            *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
            size_t at = (size_t)(*seed >> 33) % n;
            copy[at] ^= (uint8_t)(1u << ((*seed >> 20) & 7));
        }
        glm_image im;
        char err[256] = "";
        if (image_decode(copy, n, &im, err, sizeof err) == 0) {
            ok++;
            image_free(&im);
        } else {
            failed++;
            msg_ok &= err[0] != 0;
        }
    }
    expect(msg_ok, "%-28s 24 prefixes + 40 corrupted copies: %d decoded, %d refused, each refusal with a message", file,
           ok, failed);
    free(copy);
    free(bytes);
}

static void check_data_urls(const cJSON *doc) {
    const cJSON *du = cJSON_GetObjectItem(doc, "data_url");
    size_t un, fn;
    uint8_t *url = read_data(jstr(du, "file"), &un);
    uint8_t *file = read_data(jstr(du, "decodes_to"), &fn);
    char *s = malloc(un + 1);
    if (!s) abort();
    memcpy(s, url, un);
    s[un] = 0;
    uint8_t *b;
    size_t n;
    char err[256] = "";
    int rc = image_from_data_url(s, &b, &n, err, sizeof err);
    expect(rc == 0 && n == fn && !memcmp(b, file, n), "data URL %s (base64 in 76-column lines) -> %zu bytes = %s %s",
           jstr(du, "file"), n, jstr(du, "decodes_to"), err);
    if (rc == 0) {
        glm_image im;
        rc = image_decode(b, n, &im, err, sizeof err);
        expect(rc == 0 && im.width == 45 && im.height == 31, "data URL payload decodes as a 45x31 image %s", err);
        image_free(&im);
        free(b);
    }
    free(s);
    free(url);
    free(file);

    static const struct {
        const char *url, *want; // want NULL: accepted, and decodes to the bytes in `bytes`
        const char *bytes;
    } cases[] = {
        {"data:image/png;base64,TWFu", NULL, "Man"},
        {"DATA:IMAGE/JPEG;BASE64,TWE=", NULL, "Ma"},
        {"data:image/webp;base64,TQ==", NULL, "M"},
        {"data:image/png;base64, TW\r\nFu\t", NULL, "Man"},
        {"data:image/png;base64,TWFuTWE=", NULL, "ManMa"},
        {"https://example.com/cat.png", "only data URLs", NULL},
        {"data:image/gif;base64,R0lG", "media type 'image/gif'", NULL},
        {"data:text/plain;base64,TWFu", "media type 'text/plain'", NULL},
        {"data:image/png,TWFu", "';base64,'", NULL},
        {"data:image/png;charset=utf-8;base64,TWFu", "';base64,'", NULL},
        {"data:image/png;base64,", "empty base64 payload", NULL},
        {"data:image/png;base64,TWF", "not a multiple of 4", NULL},
        {"data:image/png;base64,TW-u", "URL-safe", NULL},
        {"data:image/png;base64,TW_u", "URL-safe", NULL},
        {"data:image/png;base64,TW*u", "invalid base64 character '*'", NULL},
        {"data:image/png;base64,T===", "misplaced '='", NULL},
        {"data:image/png;base64,TW=u", "offset 3", NULL},
        {"data:image/png;base64,TQ==TWFu", "misplaced '='", NULL},
        {"data:image/png;base64,TWFu\x01", "0x01", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t *o = (uint8_t *)1;
        size_t on = 99;
        err[0] = 0;
        rc = image_from_data_url(cases[i].url, &o, &on, err, sizeof err);
        if (!cases[i].want)
            expect(rc == 0 && on == strlen(cases[i].bytes) && !memcmp(o, cases[i].bytes, on),
                   "data URL \"%s\" -> \"%.*s\"", cases[i].url, rc ? 0 : (int)on, rc ? "" : (const char *)o);
        else
            expect(rc == -1 && !o && on == 0 && strstr(err, cases[i].want), "data URL \"%.40s\" fails: \"%s\"",
                   cases[i].url, err);
        if (rc == 0) free(o);
    }
}

static void check_limits(void) {
    size_t n;
    uint8_t *b = read_data("rgb8_97x61.png", &n);
    image_limits lim = image_limits_default();
    glm_image im;
    char err[256] = "";
    lim.max_pixels = 97 * 61;
    int rc = image_decode_limits(b, n, &lim, &im, err, sizeof err);
    expect(rc == 0, "97x61 PNG under max_pixels = 5917 (exactly its size) %s", err);
    image_free(&im);
    lim.max_pixels = 97 * 61 - 1;
    rc = image_decode_limits(b, n, &lim, &im, err, sizeof err);
    expect(rc == -1 && strstr(err, "97 x 61 = 5917 pixels, limit 5916"), "one pixel over max_pixels: \"%s\"", err);
    lim = image_limits_default();
    lim.max_bytes = n - 1;
    rc = image_decode_limits(b, n, &lim, &im, err, sizeof err);
    expect(rc == -1 && strstr(err, "image data too large"), "input over max_bytes: \"%s\"", err);
    free(b);
    b = read_data("progressive_97x61.jpg", &n);
    lim = image_limits_default();
    lim.max_jpeg_scans = 2;
    rc = image_decode_limits(b, n, &lim, &im, err, sizeof err);
    expect(rc == -1 && strstr(err, "more than 2 scans"), "progressive JPEG over max_jpeg_scans = 2: \"%s\"", err);
    free(b);

    glm_image tiny = {0, 0, NULL};
    float out[3];
    expect(image_preprocess(&tiny, 1, g_mean, g_std, out) == -1, "image_preprocess of an empty image: -1");
    image_free(NULL);
    image_free(&tiny);
    expect(1, "image_free(NULL) and of a zeroed image");
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: test_image tests/image/data\n");
        return 2;
    }
    g_dir = argv[1];
    size_t len;
    char *text = (char *)read_data("golden.json", &len);
    cJSON *doc = cJSON_ParseWithLength(text, len);
    if (!doc) {
        fprintf(stderr, "test_image: golden.json is not JSON\n");
        return 2;
    }
    size_t tn;
    uint8_t *tb = read_data(jstr(doc, "norm_table"), &tn);
    if (tn != sizeof g_table) {
        fprintf(stderr, "test_image: norm table has %zu bytes\n", tn);
        return 2;
    }
    memcpy(g_table, tb, tn); // little-endian float32, as written on x86
    free(tb);
    for (int c = 0; c < 3; c++) {
        g_mean[c] = (float)cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "mean"), c)->valuedouble;
        g_std[c] = (float)cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "std"), c)->valuedouble;
    }
    g_order = order_for(jstr(cJSON_GetObjectItem(doc, "versions"), "Pillow"));
    char *vers = cJSON_PrintUnformatted(cJSON_GetObjectItem(doc, "versions"));
    printf("# reference: %s\n", vers ? vers : "?");
    free(vers);
    const cJSON *c;
    int big = cJSON_GetObjectItem(doc, "big")->valueint;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(doc, "images")) check_image(c, cJSON_GetObjectItem(doc, "sizes"), big);
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(doc, "bad")) check_bad(c);
    uint64_t seed = 0x1a2b3c4d;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(doc, "images")) robustness(jstr(c, "file"), &seed);
    check_data_urls(doc);
    check_limits();
    cJSON_Delete(doc);
    free(text);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
