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
 * reads); an axis whose size does not change is skipped. Every double here is
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

int image_resize_bicubic(const glm_image *im, int out_w, int out_h, uint8_t *out) {
    if (!im || !im->rgb || im->width < 1 || im->height < 1 || out_w < 1 || out_h < 1) return -1;
    int in_w = im->width, in_h = im->height, rc = -1;
    int *vfirst = NULL, *vcount = NULL, *hfirst = NULL, *hcount = NULL;
    int32_t *vw = NULL, *hw = NULL;
    uint8_t *tmp = NULL;
    int vk = axis_weights(in_h, out_h, &vfirst, &vcount, &vw);
    if (!vk) return -1;
    int need_h = out_w != in_w, need_v = out_h != in_h;
    // Rows of the source the vertical pass reads: [y0, y1).
    int y0 = vfirst[0], y1 = vfirst[out_h - 1] + vcount[out_h - 1];
    const uint8_t *src = im->rgb; // (rows, src_w, 3) with its row 0 = source row src_y0
    int src_w = in_w, src_y0 = 0;

    if (need_h) {
        int hk = axis_weights(in_w, out_w, &hfirst, &hcount, &hw);
        if (!hk) goto done;
        int rows = need_v ? y1 - y0 : in_h;
        int r0 = need_v ? y0 : 0;
        tmp = malloc((size_t)rows * out_w * 3);
        if (!tmp) goto done;
        for (int y = 0; y < rows; y++) {
            const uint8_t *s = im->rgb + (size_t)(y + r0) * in_w * 3;
            uint8_t *d = tmp + (size_t)y * out_w * 3;
            for (int x = 0; x < out_w; x++) {
                const int32_t *k = hw + (size_t)x * hk;
                const uint8_t *p = s + (size_t)hfirst[x] * 3;
                int64_t a0 = 1 << (PRECISION_BITS - 1), a1 = a0, a2 = a0;
                for (int j = 0; j < hcount[x]; j++) {
                    a0 += (int64_t)p[3 * j + 0] * k[j];
                    a1 += (int64_t)p[3 * j + 1] * k[j];
                    a2 += (int64_t)p[3 * j + 2] * k[j];
                }
                d[3 * x + 0] = clip8(a0);
                d[3 * x + 1] = clip8(a1);
                d[3 * x + 2] = clip8(a2);
            }
        }
        src = tmp;
        src_w = out_w;
        src_y0 = r0;
    }
    if (need_v) {
        for (int y = 0; y < out_h; y++) {
            const int32_t *k = vw + (size_t)y * vk;
            int f = vfirst[y] - src_y0;
            uint8_t *d = out + (size_t)y * out_w * 3;
            for (int x = 0; x < out_w * 3; x++) {
                int64_t a = 1 << (PRECISION_BITS - 1);
                for (int j = 0; j < vcount[y]; j++) a += (int64_t)src[((size_t)(f + j) * src_w) * 3 + x] * k[j];
                d[x] = clip8(a);
            }
        }
    } else {
        memcpy(out, src, (size_t)out_h * out_w * 3); // src is tmp (rows = in_h = out_h) or the image itself
    }
    rc = 0;
done:
    free(vfirst);
    free(vcount);
    free(vw);
    free(hfirst);
    free(hcount);
    free(hw);
    free(tmp);
    return rc;
}

int image_preprocess(const glm_image *im, int size, const float mean[3], const float std[3], float *out) {
    if (size < 1) return -1;
    size_t plane = (size_t)size * size;
    uint8_t *px = malloc(plane * 3);
    if (!px) return -1;
    if (image_resize_bicubic(im, size, size, px)) {
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
