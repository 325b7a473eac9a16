#include "presets.h"

#include <string.h>

static const preset presets[] = {
    {"tiny", 2, 128, 300, 8, 16, 2, 151552, 4096, 500},
    {"glm-4-9b", 40, 4096, 13696, 32, 128, 2, 151552, 8192, 1},
    {"glm-4-9b-chat", 40, 4096, 13696, 32, 128, 2, 151552, 131072, 500},
    {"glm-4-9b-chat-1m", 40, 4096, 13696, 32, 128, 4, 151552, 1048576, 10000},
};

const preset *preset_find(const char *name) {
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++)
        if (name && strcmp(presets[i].name, name) == 0) return &presets[i];
    return NULL;
}

const char *preset_names(void) { return "tiny, glm-4-9b, glm-4-9b-chat, glm-4-9b-chat-1m"; }

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
}
