#include <stdlib.h>

#include "kvcache.h"

double kv_bytes_per_token(const glm_model *m, int dtype) {
    double nkv = m->shard.nkv, d = m->cfg.head_dim;
    double row = dtype == KV_DTYPE_FP8 ? d + 4.0 : d * (double)m->kb.iface->act_bytes; /* fp8: bytes + fp32 scale */
    return 2.0 * m->cfg.n_layers * nkv * row;
}

kv_cache *kv_create(const glm_model *m, int n_blocks, int block_size, int dtype) {
    kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv) abort();
    kv->n_layers = m->cfg.n_layers;
    kv->n_blocks = n_blocks;
    kv->block_size = block_size;
    kv->width = m->shard.nkv * m->cfg.head_dim;
    kv->k = calloc((size_t)kv->n_layers, sizeof *kv->k);
    kv->v = calloc((size_t)kv->n_layers, sizeof *kv->v);
    if (!kv->k || !kv->v) abort();
    kv->spare_block = n_blocks;
    kv->dtype = dtype;
    kv->head_dim = m->cfg.head_dim;
    size_t slots = (size_t)(n_blocks + 1) * block_size, per;
    if (dtype == KV_DTYPE_FP8) {
        kv->scale_off = (slots * kv->width + 15) / 16 * 16;
        per = kv->scale_off + slots * m->shard.nkv * sizeof(float);
    } else {
        per = slots * kv->width * m->kb.iface->act_bytes;
    }
    for (int l = 0; l < kv->n_layers; l++) {
        kv->k[l] = m->kb.iface->alloc(m->kb.ctx, per);
        kv->v[l] = m->kb.iface->alloc(m->kb.ctx, per);
    }
    kv->bytes = 2 * per * (size_t)kv->n_layers;
    return kv;
}

void kv_free(const glm_model *m, kv_cache *kv) {
    if (!kv) return;
    for (int l = 0; l < kv->n_layers; l++) {
        m->kb.iface->free(m->kb.ctx, kv->k[l]);
        m->kb.iface->free(m->kb.ctx, kv->v[l]);
    }
    free(kv->k);
    free(kv->v);
    free(kv);
}

int kv_blocks_init(kv_blocks *b, int n_blocks, int block_size) {
    b->n_blocks = n_blocks;
    b->block_size = block_size;
    b->free_ids = malloc(sizeof(int) * (size_t)(n_blocks ? n_blocks : 1));
    if (!b->free_ids) return -1;
    /* Popped from the end: block 0 first. */
    for (int i = 0; i < n_blocks; i++) b->free_ids[i] = n_blocks - 1 - i;
    b->n_free = n_blocks;
    return 0;
}

void kv_blocks_free(kv_blocks *b) {
    free(b->free_ids);
    b->free_ids = NULL;
}

int kv_seq_reserve(kv_blocks *b, kv_seq *s, int n_tokens) {
    int need = (n_tokens + b->block_size - 1) / b->block_size - s->n_blocks;
    if (need <= 0) return 0;
    if (need > b->n_free) return -1;
    if (s->n_blocks + need > s->cap) {
        int cap = s->cap ? s->cap : 4;
        while (cap < s->n_blocks + need) cap *= 2;
        int *t = realloc(s->table, sizeof(int) * (size_t)cap);
        if (!t) return -1;
        s->table = t;
        s->cap = cap;
    }
    while (need--) s->table[s->n_blocks++] = b->free_ids[--b->n_free];
    return 0;
}

void kv_seq_release(kv_blocks *b, kv_seq *s) {
    while (s->n_blocks > 0) b->free_ids[b->n_free++] = s->table[--s->n_blocks];
    free(s->table);
    s->table = NULL;
    s->cap = 0;
}
