/* preprocess.c: Pillow's BICUBIC resize (re-implemented from the algorithm of
 * python-pillow/Pillow src/libImaging/Resample.c) and the CLIP
 * normalisation, as torchvision's Resize((S, S), BICUBIC) + ToTensor +
 * Normalize compute them on a PIL RGB image.
 *
 * Resize, per axis (in -> out samples, box = the whole image):
 *   scale = in / out; fscale = max(scale, 1); support = 2 * fscale
 *   ksize = 2 * ceil(support) + 1 (the weight row stride)
 *   for each output index i: center = (i + 0.5) * scale,
 *     first = max(0, (int)(center - support + 0.5)),
 *     last  = min(in, (int)(center + support + 0.5)),
 *     w[j] = cubic((first + j - center + 0.5) / fscale), a = -0.5,
 *     normalised by their sum, then to 22-bit fixed point rounded away from 0.
 *   out = clip8((2^21 + sum src * w) >> 22).
 * The horizontal pass runs first (only over the rows the vertical pass
 * reads), except where the Pillow version asked for runs the vertical pass
 * first (image_pass_order in image.h); an axis whose size does not change is
 * skipped. Every double here is
 * computed in Pillow's order so the fixed-point weights are the same bits. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"

#define PRECISION_BITS 22 // 32 - 8 - 2, Pillow's choice: two bits of headroom for negative lobes and overshoot

static double cubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* Fixed-point weights for one axis. On success returns ksize (> 0) with
 * *first (out) and *count (out) the source span of each output sample and
 * *w (out * ksize) the weights; the caller frees all three. Returns 0 on OOM. */
static int axis_weights(int in, int out, int **first, int **count, int32_t **w) {
    double scale = (double)(float)in / out; // Pillow: (double)(box1 - box0) / outSize, box in float
    double fscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * fscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *k = malloc(sizeof(double) * ksize);
    *first = malloc(sizeof(int) * out);
    *count = malloc(sizeof(int) * out);
    *w = malloc(sizeof(int32_t) * (size_t)out * ksize);
    if (!k || !*first || !*count || !*w) {
        free(k);
        free(*first);
        free(*count);
        free(*w);
        *first = *count = NULL;
        *w = NULL;
        return 0;
    }
    for (int i = 0; i < out; i++) {
        double center = 0.0 + (i + 0.5) * scale;
        double ss = 1.0 / fscale, sum = 0.0;
        int lo = (int)(center - support + 0.5);
        int hi = (int)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in) hi = in;
        int cnt = hi - lo;
        for (int j = 0; j < cnt; j++) {
            k[j] = cubic((j + lo - center + 0.5) * ss);
            sum += k[j];
        }
        int32_t *wi = *w + (size_t)i * ksize;
        for (int j = 0; j < ksize; j++) {
            double v = j < cnt ? (sum != 0.0 ? k[j] / sum : k[j]) : 0.0;
            wi[j] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS)) : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
        }
        (*first)[i] = lo;
        (*count)[i] = cnt;
    }
    free(k);
    return ksize;
}

static inline uint8_t clip8(int64_t acc) {
    if (acc < 0) return 0; // floor of a negative sum: below 0
    int64_t v = acc >> PRECISION_BITS;
    return (uint8_t)(v > 255 ? 255 : v);
}

typedef struct axis {
    int ksize, *first, *count;
    int32_t *w;
} axis;

static void axis_free(axis *a) {
    free(a->first);
    free(a->count);
    free(a->w);
}

/* Horizontal pass: rows rows of src (src_w wide, starting at row r0) -> dst (rows, a->count entries wide). */
static void pass_h(const uint8_t *src, int src_w, int r0, int rows, const axis *a, int out_w, uint8_t *dst) {
    for (int y = 0; y < rows; y++) {
        const uint8_t *s = src + (size_t)(y + r0) * src_w * 3;
        uint8_t *d = dst + (size_t)y * out_w * 3;
        for (int x = 0; x < out_w; x++) {
            const int32_t *k = a->w + (size_t)x * a->ksize;
            const uint8_t *p = s + (size_t)a->first[x] * 3;
            int64_t a0 = 1 << (PRECISION_BITS - 1), a1 = a0, a2 = a0;
            for (int j = 0; j < a->count[x]; j++) {
                a0 += (int64_t)p[3 * j + 0] * k[j];
                a1 += (int64_t)p[3 * j + 1] * k[j];
                a2 += (int64_t)p[3 * j + 2] * k[j];
            }
            d[3 * x + 0] = clip8(a0);
            d[3 * x + 1] = clip8(a1);
            d[3 * x + 2] = clip8(a2);
        }
    }
}

/* Vertical pass: src (w wide; its row 0 is source row src_y0) -> dst (out_h, w). */
static void pass_v(const uint8_t *src, int w, int src_y0, const axis *a, int out_h, uint8_t *dst) {
    for (int y = 0; y < out_h; y++) {
        const int32_t *k = a->w + (size_t)y * a->ksize;
        int f = a->first[y] - src_y0;
        uint8_t *d = dst + (size_t)y * w * 3;
        for (int x = 0; x < w * 3; x++) {
            int64_t acc = 1 << (PRECISION_BITS - 1);
            for (int j = 0; j < a->count[y]; j++) acc += (int64_t)src[(size_t)(f + j) * w * 3 + x] * k[j];
            d[x] = clip8(acc);
        }
    }
}

/* Whether this Pillow runs the vertical pass first for in -> out. */
static int vertical_first(image_pass_order order, int in_w, int in_h, int out_w, int out_h) {
    switch (order) {
    case IMAGE_PILLOW_12_2: // Image.resize: two calls, vertical then horizontal, for very tall images
        return in_h > (int64_t)in_w * 100 && out_h < in_h;
    case IMAGE_PILLOW_13: // Resample.c: height shrinks by more than twice what the width shrinks by
        return in_h - out_h > 0 && (int64_t)(in_h - out_h) > (int64_t)(in_w - out_w) * 2;
    default:
        return 0;
    }
}

int image_resize_bicubic_order(const glm_image *im, int out_w, int out_h, image_pass_order order, uint8_t *out) {
    if (!im || !im->rgb || im->width < 1 || im->height < 1 || out_w < 1 || out_h < 1) return -1;
    int in_w = im->width, in_h = im->height, rc = -1;
    int need_h = out_w != in_w, need_v = out_h != in_h;
    axis h = {0}, v = {0};
    uint8_t *tmp = NULL;
    if (need_v && !(v.ksize = axis_weights(in_h, out_h, &v.first, &v.count, &v.w))) goto done;
    if (need_h && !(h.ksize = axis_weights(in_w, out_w, &h.first, &h.count, &h.w))) goto done;
    if (need_h && need_v && vertical_first(order, in_w, in_h, out_w, out_h)) {
        tmp = malloc((size_t)out_h * in_w * 3);
        if (!tmp) goto done;
        pass_v(im->rgb, in_w, 0, &v, out_h, tmp);
        pass_h(tmp, in_w, 0, out_h, &h, out_w, out);
    } else if (need_h && need_v) {
        // Only the source rows the vertical pass reads: [y0, y1).
        int y0 = v.first[0], y1 = v.first[out_h - 1] + v.count[out_h - 1];
        tmp = malloc((size_t)(y1 - y0) * out_w * 3);
        if (!tmp) goto done;
        pass_h(im->rgb, in_w, y0, y1 - y0, &h, out_w, tmp);
        pass_v(tmp, out_w, y0, &v, out_h, out);
    } else if (need_h) {
        pass_h(im->rgb, in_w, 0, in_h, &h, out_w, out);
    } else if (need_v) {
        pass_v(im->rgb, in_w, 0, &v, out_h, out);
    } else {
        memcpy(out, im->rgb, (size_t)in_h * in_w * 3);
    }
    rc = 0;
done:
    axis_free(&h);
    axis_free(&v);
    free(tmp);
    return rc;
}

int image_resize_bicubic(const glm_image *im, int out_w, int out_h, uint8_t *out) {
    return image_resize_bicubic_order(im, out_w, out_h, IMAGE_PILLOW_DEFAULT, out);
}

int image_preprocess_order(const glm_image *im, int size, const float mean[3], const float std[3],
                           image_pass_order order, float *out) {
    if (size < 1) return -1;
    size_t plane = (size_t)size * size;
    uint8_t *px = malloc(plane * 3);
    if (!px) return -1;
    if (image_resize_bicubic_order(im, size, size, order, px)) {
        free(px);
        return -1;
    }
    // torchvision: ToTensor divides the float32 value by 255, Normalize
    // subtracts the float32 mean and divides by the float32 std.
    for (int c = 0; c < 3; c++) {
        float m = mean[c], s = std[c];
        float *o = out + c * plane;
        for (size_t i = 0; i < plane; i++) o[i] = ((float)px[3 * i + c] / 255.0f - m) / s;
    }
    free(px);
    return 0;
}

int image_preprocess(const glm_image *im, int size, const float mean[3], const float std[3], float *out) {
    return image_preprocess_order(im, size, mean, std, IMAGE_PILLOW_DEFAULT, out);
}
