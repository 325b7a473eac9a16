/* image_input.h: a GLM-4V request's image, from where a user names it to the
 * pixels and prompt the engine takes (rank 0).
 *
 * Sources: a data URL (data:image/png|jpeg|webp;base64,...: the OpenAI
 * image_url form) anywhere; a file path only where the caller allows files
 * (glmtp generate's JSONL and chat: the user's own machine; never from a
 * network client). http(s) URLs are refused: the server fetches nothing. The
 * bytes are decoded and preprocessed as the reference does (coordinator/image:
 * Pillow's bicubic squash to the config's image size, the CLIP mean and std). */
#ifndef GLMTP_FRONTS_IMAGE_INPUT_H
#define GLMTP_FRONTS_IMAGE_INPUT_H

#include <stddef.h>
#include <stdint.h>

#include "../../worker/config.h"
#include "../engine/gen_request.h"

/* Pixels of the image at src: *pixels malloc'ed [in_ch, image, image] fp32,
 * *hash a hash of them (the prefix cache's content key). Returns 0, or -1 with
 * err naming the cause (no vision tower in cfg, a file where files are not
 * allowed, unreadable, undecodable, too large, ...). */
int image_input_load(const char *src, const glm_config *cfg, int allow_files, float **pixels, uint64_t *hash,
                     char *err, size_t errlen);

/* The same from encoded bytes (JPEG, PNG or WebP; the serve channel's). */
int image_input_bytes(const uint8_t *bytes, size_t n, const glm_config *cfg, float **pixels, uint64_t *hash,
                      char *err, size_t errlen);

/* Makes g's prompt (text ids holding begin-of-image, placeholder, end-of-image
 * once) the KV sequence with the image's rows, and hands it pixels (owned by g
 * from here, also on failure) and hash. Returns 0, or -1 with err when the
 * prompt holds no image or a malformed one. */
int image_input_attach(gen_request *g, const glm_config *cfg, float *pixels, uint64_t hash, char *err, size_t errlen);

/* Checks text ids given directly (no image with them): -1 with err when they
 * hold image tokens, which only an image can fill. */
int image_input_check_ids(const int *ids, int n, const glm_config *cfg, char *err, size_t errlen);

#endif
