/* Image placement in a GLM-4V prompt (see image_place.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image_place.h"

int image_find(const glm_config *c, const int *ids, int n, int *at, char *err, size_t errlen) {
    *at = -1;
    const glm_vision_config *v = &c->vision;
    int boi = -1, eoi = -1, n_boi = 0, n_eoi = 0;
    for (int i = 0; v->present && i < n; i++) {
        if (ids[i] == v->boi_id) boi = boi < 0 ? i : boi, n_boi++;
        if (ids[i] == v->eoi_id) eoi = eoi < 0 ? i : eoi, n_eoi++;
    }
    if (!v->present) return 0; /* a text model: those ids are plain tokens */
    if (n_boi == 0 && n_eoi == 0) return 0;
    if (n_boi > 1 || n_eoi > 1) {
        snprintf(err, errlen, "the prompt holds %d begin-of-image tokens: GLM-4V takes one image per conversation",
                 n_boi > n_eoi ? n_boi : n_eoi);
        return -1;
    }
    if (n_boi != 1 || n_eoi != 1 || eoi != boi + 2 || ids[boi + 1] != c->pad_id) {
        snprintf(err, errlen, "the image tokens must be begin-of-image (%d), the placeholder (%d), end-of-image (%d) "
                 "in a row", v->boi_id, c->pad_id, v->eoi_id);
        return -1;
    }
    *at = boi;
    return 0;
}

int image_expand(const int *ids, int n, int at, int per, int **out) {
    int m = n - 3 + per;
    int *kv = malloc((size_t)m * sizeof(int));
    if (!kv) abort();
    memcpy(kv, ids, (size_t)at * sizeof(int));
    kv[at] = ids[at];
    for (int j = 1; j < per - 1; j++) kv[at + j] = ids[at + 1];
    kv[at + per - 1] = ids[at + 2];
    memcpy(kv + at + per, ids + at + 3, (size_t)(n - at - 3) * sizeof(int));
    *out = kv;
    return m;
}

int image_rope_pos(const image_place *ip, int p) {
    if (ip->kv0 < 0 || p <= ip->kv0) return p;
    if (p < ip->kv0 + ip->per - 1) return ip->kv0 + 1;
    return p - (ip->per - 3);
}

void image_plan(glm_step *s, const image_place *ip, int slot, int first, int p0, int n) {
    if (ip->kv0 < 0) { /* a text sequence after an image one: the copy below ran before its pos were set */
        if (s->rope_sep) memcpy(s->rope_pos + first, s->pos + first, (size_t)n * sizeof(int32_t));
        return;
    }
    if (!s->rope_sep) { /* the other tokens keep their positions (those planned later: above) */
        memcpy(s->rope_pos, s->pos, (size_t)s->n_tokens * sizeof(int32_t));
        s->rope_sep = 1;
    }
    for (int t = 0; t < n; t++) s->rope_pos[first + t] = image_rope_pos(ip, p0 + t);
    int lo = p0 > ip->kv0 ? p0 : ip->kv0, hi = p0 + n < ip->kv0 + ip->per ? p0 + n : ip->kv0 + ip->per;
    if (lo >= hi) return;
    int32_t *img = realloc(s->img, (size_t)4 * (s->n_img + 1) * sizeof(int32_t));
    if (!img) abort();
    s->img = img;
    int32_t *sp = img + 4 * s->n_img++;
    sp[0] = first + (lo - p0), sp[1] = hi - lo, sp[2] = slot, sp[3] = lo - ip->kv0;
}
