/* presets.h: shapes of the published GLM-4-9B configs (glm4-spec.md section 1)
 * and of a tiny test model, for make-model and the bench's analytic model. */
#ifndef GLMTP_PRESETS_H
#define GLMTP_PRESETS_H

#include "../../worker/config.h"

typedef struct preset {
    const char *name;
    int layers, hidden, ffn, heads, head_dim, kv, vocab, seq_len;
    double rope_ratio;
    /* GLM-4V's vision tower (v_layers 0: none): layers, width, heads, MLP
     * width, image and patch pixels a side. */
    int v_layers, v_hidden, v_heads, v_ffn, image, patch;
} preset;

/* NULL when unknown. */
const preset *preset_find(const char *name);
/* Comma-separated names, for messages. */
const char *preset_names(void);
/* The config.json a checkpoint of this preset would have (original layout). */
void preset_config(const preset *p, glm_config *cfg /* OUT */);

#endif
