/* A GLM-4V request's image (see image_input.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../worker/util.h"
#include "../engine/image_place.h"
#include "image_input.h"
#ifdef GLMTP_HAVE_IMAGE
#include "../image/image.h"
#endif

/* OpenAI CLIP's normalisation, which GLM-4V's processor uses (glm4v-spec.md 4). */
static const float clip_mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float clip_std[3] = {0.26862954f, 0.26130258f, 0.27577711f};

static int need_vision(const glm_config *cfg, char *err, size_t errlen) {
    if (cfg && cfg->vision.present) return 0;
    snprintf(err, errlen, "this model takes no images (its config.json has no vision_config)");
    return -1;
}

int image_input_bytes(const uint8_t *bytes, size_t n, const glm_config *cfg, float **pixels, uint64_t *hash,
                      char *err, size_t errlen) {
    *pixels = NULL;
    if (need_vision(cfg, err, errlen)) return -1;
#ifdef GLMTP_HAVE_IMAGE
    const glm_vision_config *v = &cfg->vision;
    if (v->in_ch != 3) {
        snprintf(err, errlen, "vision_config.in_channels is %d: images are RGB (3)", v->in_ch);
        return -1;
    }
    glm_image im;
    char why[256];
    if (image_decode(bytes, n, &im, why, sizeof why)) {
        snprintf(err, errlen, "image: %s", why);
        return -1;
    }
    size_t count = (size_t)3 * v->image * v->image;
    float *px = malloc(count * sizeof(float));
    if (!px || image_preprocess(&im, v->image, clip_mean, clip_std, px)) {
        free(px);
        image_free(&im);
        snprintf(err, errlen, "image: out of memory resizing a %d x %d image", im.width, im.height);
        return -1;
    }
    image_free(&im);
    *pixels = px;
    *hash = util_fnv(UTIL_FNV_INIT, px, count * sizeof(float)) | 1; /* never 0 (text) */
    return 0;
#else
    (void)bytes, (void)n, (void)hash;
    snprintf(err, errlen, "this glmtp was built without image decoding (libjpeg, libpng, libwebp: "
             "deploy/install-deps.sh installs them)");
    return -1;
#endif
}

int image_input_load(const char *src, const glm_config *cfg, int allow_files, float **pixels, uint64_t *hash,
                     char *err, size_t errlen) {
    *pixels = NULL;
    if (need_vision(cfg, err, errlen)) return -1;
    uint8_t *bytes = NULL;
    size_t n = 0;
    char why[512];
    if (strncmp(src, "data:", 5) == 0) {
#ifdef GLMTP_HAVE_IMAGE
        if (image_from_data_url(src, &bytes, &n, why, sizeof why)) {
            snprintf(err, errlen, "image: %s", why);
            return -1;
        }
#else
        return image_input_bytes(NULL, 0, cfg, pixels, hash, err, errlen);
#endif
    } else if (strncmp(src, "http://", 7) == 0 || strncmp(src, "https://", 8) == 0) {
        snprintf(err, errlen, "image URLs are not fetched: give the image as a data URL (data:image/png;base64,...)");
        return -1;
    } else if (!allow_files) {
        snprintf(err, errlen, "an image must be a data URL (data:image/png;base64,...) here");
        return -1;
    } else {
        char *t = util_read_file(src, &n, why, sizeof why);
        if (!t) {
            snprintf(err, errlen, "image: %s", why);
            return -1;
        }
        bytes = (uint8_t *)t;
    }
    int rc = image_input_bytes(bytes, n, cfg, pixels, hash, err, errlen);
    free(bytes);
    return rc;
}

int image_input_attach(gen_request *g, const glm_config *cfg, float *pixels, uint64_t hash, char *err,
                       size_t errlen) {
    int at;
    if (image_find(cfg, g->prompt, g->n_prompt, &at, err, errlen)) {
        free(pixels);
        return -1;
    }
    if (at < 0) {
        snprintf(err, errlen, "the prompt has no place for the image (begin-of-image, placeholder, end-of-image)");
        free(pixels);
        return -1;
    }
    int *kv, n = image_expand(g->prompt, g->n_prompt, at, config_image_tokens(cfg), &kv);
    free(g->prompt);
    g->prompt = kv, g->n_prompt = n;
    free(g->pixels);
    g->pixels = pixels;
    g->img_kv0 = at;
    g->content_hash = hash;
    return 0;
}

int image_input_check_ids(const int *ids, int n, const glm_config *cfg, char *err, size_t errlen) {
    int at;
    if (image_find(cfg, ids, n, &at, err, errlen)) return -1;
    if (at >= 0) {
        snprintf(err, errlen, "the ids hold an image's tokens (begin-of-image, placeholder, end-of-image) but no "
                 "image comes with them: give the image in 'messages'");
        return -1;
    }
    return 0;
}
