/* decode.c: JPEG (libjpeg-turbo), PNG (libpng) and WebP (libwebp) bytes ->
 * 8-bit RGB, converted as PIL's convert("RGB") does (image.h says how).
 *
 * Every decoder checks the header's width * height against the limit before
 * it allocates anything sized by the image. libjpeg and libpng report errors
 * by longjmp to the decoder's setjmp; the variables those functions change
 * after setjmp and read after a longjmp are volatile. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h> // defines: FILE, size_t for jpeglib.h
#include <stdlib.h>
#include <string.h>

#include <jerror.h>  // defines: JWRN_JPEG_EOF, JWRN_HIT_MARKER
#include <jpeglib.h> // defines: jpeg_decompress_struct, jpeg_mem_src
#include <png.h>     // defines: png_create_read_struct, png_jmpbuf
#include <webp/decode.h> // defines: WebPGetFeatures, WebPDecode

#include "image.h"

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

image_limits image_limits_default(void) {
    image_limits l = {.max_pixels = IMAGE_MAX_PIXELS_DEFAULT, .max_bytes = IMAGE_MAX_BYTES_DEFAULT, .max_jpeg_scans = 1000};
    return l;
}

void image_free(glm_image *im) {
    if (!im) return;
    free(im->rgb);
    im->rgb = NULL;
    im->width = im->height = 0;
}

/* Zero size or over the pixel limit: -1 with the message. Runs on header
 * values only, before any allocation sized by them. */
static int check_size(const char *fmt, uint64_t w, uint64_t h, const image_limits *lim, char *err, size_t errlen) {
    if (w == 0 || h == 0) {
        set_err(err, errlen, "%s: zero image size (%llu x %llu)", fmt, (unsigned long long)w, (unsigned long long)h);
        return -1;
    }
    if (w > INT32_MAX || h > INT32_MAX || w * h > lim->max_pixels) {
        set_err(err, errlen,
                "%s: image too large (%llu x %llu = %llu pixels, limit %llu): refused as a decompression bomb", fmt,
                (unsigned long long)w, (unsigned long long)h, (unsigned long long)(w * h),
                (unsigned long long)lim->max_pixels);
        return -1;
    }
    return 0;
}

/* ==== JPEG ==== */

typedef struct jpeg_ctx {
    struct jpeg_error_mgr pub;   // first: libjpeg's cinfo->err points here
    struct jpeg_progress_mgr progress;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX + 64];
    int max_scans;
} jpeg_ctx;

static void jpeg_on_error(j_common_ptr c) {
    jpeg_ctx *x = (jpeg_ctx *)c->err;
    char buf[JMSG_LENGTH_MAX];
    c->err->format_message(c, buf);
    snprintf(x->msg, sizeof x->msg, "corrupt JPEG data: %s", buf);
    longjmp(x->jb, 1);
}

/* Warnings: running out of data is an error (PIL: "image file is truncated");
 * the other corrupt-data warnings are ignored, as PIL's decoder ignores them
 * (libjpeg goes on with what it can). Trace messages (level > 0) are dropped. */
static void jpeg_on_message(j_common_ptr c, int level) {
    if (level >= 0) return;
    int code = c->err->msg_code;
    if (code == JWRN_JPEG_EOF || code == JWRN_HIT_MARKER) {
        jpeg_ctx *x = (jpeg_ctx *)c->err;
        char buf[JMSG_LENGTH_MAX];
        c->err->format_message(c, buf);
        snprintf(x->msg, sizeof x->msg, "truncated JPEG data: %s", buf);
        longjmp(x->jb, 1);
    }
}

/* A progressive JPEG may hold thousands of tiny scans that each cost a pass
 * over the coefficients; libjpeg-turbo's own tools cap them the same way. */
static void jpeg_on_progress(j_common_ptr c) {
    if (!c->is_decompressor) return;
    j_decompress_ptr d = (j_decompress_ptr)c;
    jpeg_ctx *x = (jpeg_ctx *)c->err;
    if (d->input_scan_number > x->max_scans) {
        snprintf(x->msg, sizeof x->msg, "JPEG: more than %d scans: refused", x->max_scans);
        longjmp(x->jb, 1);
    }
}

/* PIL's cmyk2rgb (Convert.c) on inverted samples (PIL reads every
 * 4-component JPEG as "CMYK;I"). */
static inline uint8_t cmyk_channel(int v, int nk) {
    int t = v * nk + 128;
    int r = nk - (((t >> 8) + t) >> 8);
    return (uint8_t)(r < 0 ? 0 : r > 255 ? 255 : r);
}

static int decode_jpeg(const uint8_t *bytes, size_t n, const image_limits *lim, glm_image *out, char *err,
                       size_t errlen) {
    struct jpeg_decompress_struct cinfo;
    jpeg_ctx x;
    uint8_t *volatile rgb = NULL;
    uint8_t *volatile row = NULL;
    memset(&x, 0, sizeof x);
    cinfo.err = jpeg_std_error(&x.pub);
    x.pub.error_exit = jpeg_on_error;
    x.pub.emit_message = jpeg_on_message;
    x.max_scans = lim->max_jpeg_scans;
    if (setjmp(x.jb)) {
        set_err(err, errlen, "%s", x.msg);
        goto fail;
    }
    jpeg_create_decompress(&cinfo);
    x.progress.progress_monitor = jpeg_on_progress;
    cinfo.progress = &x.progress;
    jpeg_mem_src(&cinfo, bytes, (unsigned long)n);
    jpeg_read_header(&cinfo, TRUE);
    if (check_size("JPEG", cinfo.image_width, cinfo.image_height, lim, err, errlen)) goto fail;
    int nc = cinfo.num_components;
    if (nc == 1)
        cinfo.out_color_space = JCS_GRAYSCALE;
    else if (nc == 3)
        cinfo.out_color_space = JCS_RGB;
    else if (nc == 4)
        cinfo.out_color_space = JCS_CMYK; // YCCK -> CMYK in libjpeg, then inverted as PIL does
    else {
        set_err(err, errlen, "JPEG: unsupported number of components (%d)", nc);
        goto fail;
    }
    jpeg_start_decompress(&cinfo);
    int w = (int)cinfo.output_width, h = (int)cinfo.output_height, oc = cinfo.output_components;
    rgb = malloc((size_t)w * h * 3);
    row = malloc((size_t)w * oc);
    if (!rgb || !row) {
        set_err(err, errlen, "JPEG: out of memory for %d x %d", w, h);
        goto fail;
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        int y = (int)cinfo.output_scanline;
        JSAMPROW rp = row;
        if (jpeg_read_scanlines(&cinfo, &rp, 1) != 1) {
            set_err(err, errlen, "truncated JPEG data: no scanline %d", y);
            goto fail;
        }
        uint8_t *o = rgb + (size_t)y * w * 3;
        const uint8_t *r = row;
        if (oc == 1)
            for (int i = 0; i < w; i++) o[3 * i] = o[3 * i + 1] = o[3 * i + 2] = r[i];
        else if (oc == 3)
            memcpy(o, r, (size_t)w * 3);
        else
            for (int i = 0; i < w; i++) {
                int nk = r[4 * i + 3]; // 255 - (255 - K): PIL's inverted K, then 255 - it
                o[3 * i + 0] = cmyk_channel(255 - r[4 * i + 0], nk);
                o[3 * i + 1] = cmyk_channel(255 - r[4 * i + 1], nk);
                o[3 * i + 2] = cmyk_channel(255 - r[4 * i + 2], nk);
            }
    }
    // No jpeg_finish_decompress: once every row is in, a missing EOI does not
    // matter (PIL does not read past the last scanline either).
    jpeg_destroy_decompress(&cinfo);
    free(row);
    out->width = w;
    out->height = h;
    out->rgb = rgb;
    return 0;
fail:
    jpeg_destroy_decompress(&cinfo);
    free(row);
    free(rgb);
    return -1;
}

/* ==== PNG ==== */

typedef struct png_ctx {
    const uint8_t *p;
    size_t n, off;
    char msg[256];
    char warn[128]; // the last warning: libpng often says the cause there ("Image width is zero in IHDR")
} png_ctx;

static void png_on_error(png_structp png, png_const_charp m) {
    png_ctx *x = png_get_error_ptr(png);
    snprintf(x->msg, sizeof x->msg, "%s", m);
    png_longjmp(png, 1);
}

/* Ancillary-chunk trouble (bad CRC, bad gAMA ...): libpng skips the chunk, as
 * PIL would not use it. Kept only to explain a following error. */
static void png_on_warning(png_structp png, png_const_charp m) {
    png_ctx *x = png_get_error_ptr(png);
    snprintf(x->warn, sizeof x->warn, "%s", m);
}

static void png_read(png_structp png, png_bytep dst, size_t len) {
    png_ctx *x = png_get_io_ptr(png);
    if (len > x->n - x->off) png_error(png, "truncated PNG data");
    memcpy(dst, x->p + x->off, len);
    x->off += len;
}

static int decode_png(const uint8_t *bytes, size_t n, const image_limits *lim, glm_image *out, char *err,
                      size_t errlen) {
    png_ctx x = {.p = bytes, .n = n};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &x, png_on_error, png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    uint8_t *volatile rgb = NULL;
    uint8_t *volatile pix = NULL;       // decoded rows: one row, or the whole image when interlaced
    png_bytep *volatile rows = NULL;
    if (!png || !info) {
        set_err(err, errlen, "PNG: out of memory");
        png_destroy_read_struct(png ? &png : NULL, NULL, NULL);
        return -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        if (x.warn[0])
            set_err(err, errlen, "corrupt PNG data: %s (after: %s)", x.msg, x.warn);
        else
            set_err(err, errlen, "corrupt PNG data: %s", x.msg);
        goto fail;
    }
    png_set_read_fn(png, &x, png_read);
    png_read_info(png, info);
    png_uint_32 w, h;
    int bd, ct, il;
    png_get_IHDR(png, info, &w, &h, &bd, &ct, &il, NULL, NULL);
    if (check_size("PNG", w, h, lim, err, errlen)) goto fail;
    if (ct == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png); // may add alpha from tRNS: dropped below
    if (ct == PNG_COLOR_TYPE_GRAY && bd < 8) png_set_expand_gray_1_2_4_to_8(png);
    int gray16 = ct == PNG_COLOR_TYPE_GRAY && bd == 16; // PIL "I;16": clipped to 255, not scaled
    if (bd == 16 && !gray16) png_set_strip_16(png);     // high byte, as PIL's ";16B" unpackers
    if (gray16) png_set_swap(png);                      // host order below
    int passes = png_set_interlace_handling(png);
    png_read_update_info(png, info);
    int ch = png_get_channels(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    if (ch < 1 || ch > 4 || rowbytes != (size_t)w * ch * (gray16 ? 2 : 1)) {
        set_err(err, errlen, "PNG: unexpected layout after transforms (%d channels, %zu bytes a row)", ch, rowbytes);
        goto fail;
    }
    size_t nrows = passes > 1 ? h : 1;
    rgb = malloc((size_t)w * h * 3);
    pix = malloc(rowbytes * nrows);
    rows = malloc(sizeof(png_bytep) * nrows);
    if (!rgb || !pix || !rows) {
        set_err(err, errlen, "PNG: out of memory for %u x %u", (unsigned)w, (unsigned)h);
        goto fail;
    }
    for (size_t i = 0; i < nrows; i++) rows[i] = pix + i * rowbytes;
    if (passes > 1) png_read_image(png, rows);
    for (png_uint_32 y = 0; y < h; y++) {
        const uint8_t *r;
        if (passes > 1)
            r = rows[y];
        else {
            png_read_row(png, pix, NULL);
            r = pix;
        }
        uint8_t *o = rgb + (size_t)y * w * 3;
        if (gray16) {
            const uint16_t *r16 = (const uint16_t *)(const void *)r;
            for (png_uint_32 i = 0; i < w; i++) {
                uint8_t v = r16[i] > 255 ? 255 : (uint8_t)r16[i];
                o[3 * i] = o[3 * i + 1] = o[3 * i + 2] = v;
            }
        } else if (ch == 1 || ch == 2) {
            for (png_uint_32 i = 0; i < w; i++) o[3 * i] = o[3 * i + 1] = o[3 * i + 2] = r[ch * i];
        } else if (ch == 3) {
            memcpy(o, r, (size_t)w * 3);
        } else {
            for (png_uint_32 i = 0; i < w; i++) memcpy(o + 3 * i, r + 4 * i, 3);
        }
    }
    // No png_read_end: data after the last image row (IEND, trailing chunks)
    // is not needed, and PIL does not read it either.
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    free(pix);
    out->width = (int)w;
    out->height = (int)h;
    out->rgb = rgb;
    return 0;
fail:
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    free(pix);
    free(rgb);
    return -1;
}

/* ==== WebP ==== */

static const char *webp_status(VP8StatusCode s) {
    switch (s) {
    case VP8_STATUS_OUT_OF_MEMORY: return "out of memory";
    case VP8_STATUS_INVALID_PARAM: return "invalid parameter";
    case VP8_STATUS_BITSTREAM_ERROR: return "corrupt bitstream";
    case VP8_STATUS_UNSUPPORTED_FEATURE: return "unsupported feature";
    case VP8_STATUS_SUSPENDED: return "suspended";
    case VP8_STATUS_USER_ABORT: return "aborted";
    case VP8_STATUS_NOT_ENOUGH_DATA: return "truncated data";
    default: return "unknown error";
    }
}

static int decode_webp(const uint8_t *bytes, size_t n, const image_limits *lim, glm_image *out, char *err,
                       size_t errlen) {
    WebPDecoderConfig cfg;
    if (!WebPInitDecoderConfig(&cfg)) {
        set_err(err, errlen, "WebP: decoder library version mismatch");
        return -1;
    }
    VP8StatusCode st = WebPGetFeatures(bytes, n, &cfg.input);
    if (st != VP8_STATUS_OK) {
        set_err(err, errlen, "WebP: %s (reading the header)", webp_status(st));
        return -1;
    }
    if (cfg.input.has_animation) {
        set_err(err, errlen, "WebP: animated images are not supported");
        return -1;
    }
    if (check_size("WebP", (uint64_t)(cfg.input.width > 0 ? cfg.input.width : 0),
                   (uint64_t)(cfg.input.height > 0 ? cfg.input.height : 0), lim, err, errlen))
        return -1;
    int w = cfg.input.width, h = cfg.input.height;
    uint8_t *rgb = malloc((size_t)w * h * 3);
    if (!rgb) {
        set_err(err, errlen, "WebP: out of memory for %d x %d", w, h);
        return -1;
    }
    cfg.output.colorspace = MODE_RGB; // alpha, if any, is dropped (PIL: RGBA -> convert("RGB"))
    cfg.output.is_external_memory = 1;
    cfg.output.u.RGBA.rgba = rgb;
    cfg.output.u.RGBA.stride = w * 3;
    cfg.output.u.RGBA.size = (size_t)w * h * 3;
    st = WebPDecode(bytes, n, &cfg);
    WebPFreeDecBuffer(&cfg.output);
    if (st != VP8_STATUS_OK) {
        set_err(err, errlen, "WebP: %s", webp_status(st));
        free(rgb);
        return -1;
    }
    out->width = w;
    out->height = h;
    out->rgb = rgb;
    return 0;
}

/* ==== Format detection ==== */

/* Names what the bytes look like, for the refusal of anything not JPEG, PNG or WebP. */
static void describe_unsupported(const uint8_t *b, size_t n, char *err, size_t errlen) {
    static const struct {
        const char *magic;
        size_t len, at;
        const char *name;
    } known[] = {
        {"GIF87a", 6, 0, "GIF"},          {"GIF89a", 6, 0, "GIF"},
        {"BM", 2, 0, "BMP"},              {"II*\0", 4, 0, "TIFF"},
        {"MM\0*", 4, 0, "TIFF"},          {"%PDF", 4, 0, "PDF"},
        {"ftypavif", 8, 4, "AVIF"},       {"ftypheic", 8, 4, "HEIC"},
        {"ftypmif1", 8, 4, "HEIF"},       {"\0\0\0\x0cjP  ", 8, 0, "JPEG 2000"},
        {"\xff\x0a", 2, 0, "JPEG XL"},    {"\0\0\0\x0cJXL ", 8, 0, "JPEG XL"},
        {"\0\0\1\0", 4, 0, "ICO"},        {"8BPS", 4, 0, "PSD"},
        {"qoif", 4, 0, "QOI"},            {"RIFF", 4, 0, "RIFF (not WebP)"},
        {"\x89PNG", 4, 0, "PNG (damaged signature)"},
        {"<svg", 4, 0, "SVG"},            {"<?xml", 5, 0, "XML/SVG"},
    };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (n >= known[i].at + known[i].len && !memcmp(b + known[i].at, known[i].magic, known[i].len)) {
            set_err(err, errlen, "unsupported image format: %s (only JPEG, PNG and WebP are taken)", known[i].name);
            return;
        }
    char hex[3 * 8 + 1] = "";
    size_t k = n < 8 ? n : 8;
    for (size_t i = 0; i < k; i++) snprintf(hex + 3 * i, 4, "%02x%s", b[i], i + 1 < k ? " " : "");
    set_err(err, errlen, "unsupported image format: unknown magic bytes %s (only JPEG, PNG and WebP are taken)", hex);
}

int image_decode_limits(const uint8_t *bytes, size_t n, const image_limits *lim, glm_image *out, char *err,
                        size_t errlen) {
    image_limits dflt = image_limits_default();
    if (!lim) lim = &dflt;
    memset(out, 0, sizeof *out);
    if (!bytes || n == 0) {
        set_err(err, errlen, "empty image data (0 bytes)");
        return -1;
    }
    if (n > lim->max_bytes) {
        set_err(err, errlen, "image data too large (%zu bytes, limit %zu)", n, lim->max_bytes);
        return -1;
    }
    int rc;
    if (n >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF)
        rc = decode_jpeg(bytes, n, lim, out, err, errlen);
    else if (n >= 8 && !memcmp(bytes, "\x89PNG\r\n\x1a\n", 8))
        rc = decode_png(bytes, n, lim, out, err, errlen);
    else if (n >= 12 && !memcmp(bytes, "RIFF", 4) && !memcmp(bytes + 8, "WEBP", 4))
        rc = decode_webp(bytes, n, lim, out, err, errlen);
    else {
        describe_unsupported(bytes, n, err, errlen);
        rc = -1;
    }
    if (rc) memset(out, 0, sizeof *out);
    return rc;
}

int image_decode(const uint8_t *bytes, size_t n, glm_image *out, char *err, size_t errlen) {
    return image_decode_limits(bytes, n, NULL, out, err, errlen);
}
