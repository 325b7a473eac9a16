/* image_place.h: where a GLM-4V prompt's image sits in its KV sequence, and
 * the RoPE positions and embedding spans steps over it need (glm4v-spec.md 7).
 *
 * A prompt names its image by three ids: boi, the placeholder (pad_token_id),
 * eoi. In the KV sequence they become the image's `per` embedding rows (boi,
 * the patches, eoi: config_image_tokens) from KV index kv0 (the boi's index in
 * the prompt). RoPE positions stay the prompt's token indices: every patch row
 * shares the placeholder's, so KV index p has position p up to kv0, kv0 + 1 for
 * the patches, p - (per - 3) from the eoi on (decode too). */
#ifndef GLMTP_IMAGE_PLACE_H
#define GLMTP_IMAGE_PLACE_H

#include "../../worker/config.h"
#include "../../worker/step.h"

typedef struct image_place {
    int kv0; /* KV index of the boi row; -1: no image */
    int per; /* rows of the image (config_image_tokens) */
} image_place;

/* Finds the image of ids[0..n): 0 with *at the index of the boi (-1 when the
 * prompt has no boi or eoi), or -1 with err naming what is wrong (a model
 * without a vision tower, more than one image, a boi not followed by the
 * placeholder and the eoi, an eoi alone). */
int image_find(const glm_config *c, const int *ids, int n, int *at, char *err, size_t errlen);

/* The KV sequence of a prompt with its image at text index `at` (image_find):
 * the ids with the three image ids replaced by per rows (boi, placeholders,
 * eoi). Returns its length; *out is malloc'ed (caller frees). */
int image_expand(const int *ids, int n, int at, int per, int **out);

/* RoPE position of KV index p. */
int image_rope_pos(const image_place *ip, int p);

/* For a step whose tokens first..first+n-1 are KV indices p0..p0+n-1 of a
 * sequence with image ip, encoded in forward slot `slot`: sets the step's RoPE
 * positions for those tokens (rope_sep) and, when they cross the image, adds
 * the span of rows they take (s->img grows by one). Called for every sequence
 * of the step in order, after its pos are set, image or not: a text sequence
 * planned after an image one copies its pos into rope_pos. */
void image_plan(glm_step *s, const image_place *ip, int slot, int first, int p0, int n);

#endif
