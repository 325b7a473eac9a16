/* image.h: image input for GLM-4V-9B on rank 0 (glm4v-spec.md §4): decode
 * JPEG/PNG/WebP bytes to 8-bit RGB as PIL's Image.open(...).convert("RGB")
 * gives them, and preprocess them as the HF reference does
 * (torchvision Resize((S, S), BICUBIC) on the PIL image, ToTensor, Normalize).
 *
 * Decoding (decode.c)
 * - The format is told by magic bytes, never by a name or a media type:
 *   JPEG (FF D8 FF), PNG (89 'PNG' 0D 0A 1A 0A), WebP ("RIFF"....'WEBP').
 *   Anything else is refused, naming what the bytes look like (GIF, BMP,
 *   TIFF, ... or their first bytes in hex).
 * - Conversion to RGB matches PIL's convert("RGB") on what PIL's decoders give:
 *   gray -> replicated; gray+alpha, RGBA -> alpha dropped (no compositing);
 *   palette -> expanded, tRNS ignored; 1/2/4-bit gray -> scaled to 0..255 as
 *   PIL's "L;2"/"L;4"/"1" unpackers do; 16-bit RGB(A) and 16-bit gray+alpha ->
 *   the high byte of each sample (PIL opens them as RGB/RGBA from
 *   "RGB;16B"/"RGBA;16B"/"LA;16B"); 16-bit gray -> min(v, 255), because PIL
 *   opens it as mode "I;16" and its I;16 -> RGB conversion clips instead of
 *   scaling (so most 16-bit gray PNGs come out near white, as in PIL);
 *   CMYK/YCCK JPEG -> PIL's way: the samples are inverted first (PIL assumes
 *   Adobe's inverted CMYK for every 4-component JPEG) and then
 *   r = 255 - k' - (c'*(255-k'))/255 with PIL's rounding (Convert.c cmyk2rgb).
 *   Gamma, ICC profiles and EXIF orientation are ignored, as PIL's open +
 *   convert ignores them. JPEG uses libjpeg's defaults (islow IDCT, fancy
 *   upsampling), as PIL does.
 * - Errors name the cause: truncated or corrupt data (for JPEG, libjpeg's
 *   "premature end" warnings are errors, as PIL says "image file is
 *   truncated"), unsupported format, zero size, an image over the pixel limit
 *   (refused from the header, before any pixel buffer is allocated), input
 *   over the byte limit, animated WebP (only stills are taken).
 * - libjpeg/libpng errors come back through setjmp error managers; nothing
 *   here calls exit() or prints.
 *
 * Preprocessing (preprocess.c)
 * - Pillow's resampler (src/libImaging/Resample.c), re-implemented: bicubic
 *   a = -0.5 with support 2 * max(1, in/out) (antialias when shrinking),
 *   separable, each pass rounded to uint8 with 22-bit fixed-point weights;
 *   horizontal pass first, except where the chosen Pillow version runs the
 *   vertical one first (image_pass_order below; default Pillow 13's rule). torchvision's Resize on a PIL image calls
 *   PIL.Image.resize with reducing_gap=None, so there is no reduce() step.
 * - Then x/255 (float32), (x - mean[c]) / std[c] (float32), as torchvision's
 *   ToTensor and Normalize compute them: the output is bit-identical to the
 *   reference tensor whenever the decoded RGB bytes are.
 *
 * All functions are reentrant; none keeps state between calls. */
#ifndef GLMTP_IMAGE_H
#define GLMTP_IMAGE_H

#include <stddef.h>
#include <stdint.h>

/* Default limits. 64 Mi pixels (67,108,864; an 8192 x 8192 photo) is below
 * PIL's MAX_IMAGE_PIXELS (89,478,485, where PIL starts to warn), so whatever
 * is taken here PIL opens without a DecompressionBombWarning; its RGB buffer
 * is at most 192 MiB. 32 MiB of encoded input is well over any photo at that
 * size. */
#define IMAGE_MAX_PIXELS_DEFAULT ((uint64_t)64 * 1024 * 1024)
#define IMAGE_MAX_BYTES_DEFAULT ((size_t)32 * 1024 * 1024)

/* A decoded image: width * height pixels, row-major, 3 bytes each (R, G, B),
 * no row padding. rgb is owned by the struct: free with image_free. */
typedef struct glm_image {
    int width;
    int height;
    uint8_t *rgb; /* (height, width, 3) */
} glm_image;

typedef struct image_limits {
    uint64_t max_pixels; /* width * height above this is refused before decoding */
    size_t max_bytes;    /* encoded input (and a data URL's decoded payload) above this is refused */
    int max_jpeg_scans;  /* a progressive JPEG with more scans is refused (a CPU bomb otherwise) */
} image_limits;

/* The defaults above and 1000 JPEG scans. */
image_limits image_limits_default(void);

/* Decodes n bytes of JPEG, PNG or WebP to RGB. On success returns 0 and *out
 * owns a new pixel buffer (free with image_free). On failure returns -1,
 * *out is zeroed (nothing to free) and err holds one line naming the cause.
 * bytes are only read. */
int image_decode(const uint8_t *bytes, size_t n, glm_image *out /* OUT */, char *err, size_t errlen);

/* image_decode with explicit limits (lim NULL = image_limits_default()). */
int image_decode_limits(const uint8_t *bytes, size_t n, const image_limits *lim, glm_image *out /* OUT */,
                        char *err, size_t errlen);

/* Frees im->rgb and zeroes *im. Accepts NULL and a zeroed image. */
void image_free(glm_image *im);

/* Decodes a data URL of the OpenAI image_url form,
 * "data:<media type>;base64,<payload>". The media type must be image/png,
 * image/jpeg or image/webp (case-insensitive; no other parameters); the
 * payload must be standard base64 (A-Z a-z 0-9 + /, not the URL-safe
 * alphabet) padded with '=' to a multiple of 4. ASCII whitespace (space, tab,
 * CR, LF) anywhere in the payload is skipped; anything else is refused.
 * Unused low bits of the last character are not checked. The media type is
 * not checked against the bytes: image_decode goes by magic bytes. The
 * decoded size is checked against IMAGE_MAX_BYTES_DEFAULT before allocating.
 * On success returns 0 and *bytes is a malloc'ed buffer of *n bytes that the
 * caller frees (free()); on failure returns -1, *bytes is NULL, *n is 0 and
 * err holds the cause. */
int image_from_data_url(const char *url, uint8_t **bytes /* OUT */, size_t *n /* OUT */, char *err, size_t errlen);

/* Which Pillow's pass order to reproduce. Pillow's passes round to uint8
 * in between, so the order changes the result (by up to about a dozen
 * levels on noisy images), and it changed across versions:
 *   IMAGE_PILLOW_12    Pillow <= 12.1 (glm-4v-9b's release, June 2024, ran
 *                      on 10.x): always horizontal first.
 *   IMAGE_PILLOW_12_2  Pillow 12.2 and 12.3: vertical first when
 *                      in_h > 100 * in_w and the height shrinks.
 *   IMAGE_PILLOW_13    Pillow 13.0: vertical first when the height shrinks
 *                      by more than twice what the width shrinks by,
 *                      in_h - out_h > 0 && in_h - out_h > 2 * (in_w - out_w)
 *                      (a portrait photo to 1120 x 1120 often is).
 * The weights and rounding are the same in all three. */
typedef enum image_pass_order { IMAGE_PILLOW_12 = 0, IMAGE_PILLOW_12_2, IMAGE_PILLOW_13 } image_pass_order;
#define IMAGE_PILLOW_DEFAULT IMAGE_PILLOW_13

/* Squash-resizes im to size x size with Pillow's BICUBIC resampler (pass
 * order of IMAGE_PILLOW_DEFAULT), then writes (v/255 - mean[c]) / std[c] as
 * float32, channel-major: out[c * size * size + y * size + x]. out must hold
 * 3 * size * size floats. glm-4v-9b: size 1120,
 * mean (0.48145466, 0.4578275, 0.40821073),
 * std (0.26862954, 0.26130258, 0.27577711) (the CLIP constants).
 * Returns 0, or -1 (out untouched) when size < 1, the image is empty, or
 * memory runs out. */
int image_preprocess(const glm_image *im, int size, const float mean[3], const float std[3],
                     float *out /* OUT: (3, size, size) */);
int image_preprocess_order(const glm_image *im, int size, const float mean[3], const float std[3],
                           image_pass_order order, float *out /* OUT: (3, size, size) */);

/* The uint8 resize alone (Pillow's Image.resize((out_w, out_h), BICUBIC) on
 * an RGB image): out holds out_h * out_w * 3 bytes, HWC. Returns 0 or -1 as
 * image_preprocess. Exposed for tests and for callers that keep uint8. */
int image_resize_bicubic(const glm_image *im, int out_w, int out_h, uint8_t *out /* OUT: (out_h, out_w, 3) */);
int image_resize_bicubic_order(const glm_image *im, int out_w, int out_h, image_pass_order order,
                               uint8_t *out /* OUT: (out_h, out_w, 3) */);

#endif
