#include "presets.h"

#include <string.h>

static const preset presets[] = {
    {"tiny", 2, 128, 300, 8, 16, 2, 151552, 4096, 500, 0, 0, 0, 0, 0, 0},
    {"glm-4-9b", 40, 4096, 13696, 32, 128, 2, 151552, 8192, 1, 0, 0, 0, 0, 0, 0},
    {"glm-4-9b-chat", 40, 4096, 13696, 32, 128, 2, 151552, 131072, 500, 0, 0, 0, 0, 0, 0},
    {"glm-4-9b-chat-1m", 40, 4096, 13696, 32, 128, 4, 151552, 1048576, 10000, 0, 0, 0, 0, 0, 0},
    /* glm4v-spec.md 1: rope_ratio absent in the published config (base 10000) */
    {"glm-4v-9b", 40, 4096, 13696, 32, 128, 2, 151552, 8192, 1, 63, 1792, 16, 15360, 1120, 14},
    /* tiny with a small tower: 56-pixel images, 16 patches, 6 image rows */
    {"tiny-4v", 2, 128, 300, 8, 16, 2, 151552, 4096, 1, 2, 64, 4, 128, 56, 14},
};

const preset *preset_find(const char *name) {
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++)
        if (name && strcmp(presets[i].name, name) == 0) return &presets[i];
    return NULL;
}

const char *preset_names(void) { return "tiny, glm-4-9b, glm-4-9b-chat, glm-4-9b-chat-1m, glm-4v-9b, tiny-4v"; }

void preset_config(const preset *p, glm_config *c) {
    memset(c, 0, sizeof *c);
    c->layout = LAYOUT_CHATGLM;
    c->n_layers = p->layers;
    c->hidden = p->hidden;
    c->ffn = p->ffn;
    c->n_heads = p->heads;
    c->n_kv = p->kv;
    c->head_dim = p->head_dim;
    c->rot_dim = p->head_dim / 2;
    c->vocab = p->vocab;
    c->seq_len = p->seq_len;
    c->rope_base = 10000.0 * p->rope_ratio;
    c->eps = 1.5625e-07f;
    c->qkv_bias = 1;
    if (p->v_layers) {
        glm_vision_config *v = &c->vision;
        v->present = 1;
        v->hidden = p->v_hidden, v->n_layers = p->v_layers, v->n_heads = p->v_heads, v->ffn = p->v_ffn;
        v->image = p->image, v->patch = p->patch, v->in_ch = 3;
        v->n_pos = (p->image / p->patch) * (p->image / p->patch) + 1;
        v->eps = 1e-6f, v->glu_eps = 1e-5f, v->scaling = 8;
        v->boi_id = 151339, v->eoi_id = 151340;
    }
}
