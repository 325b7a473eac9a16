/* kvcache.h: the paged KV cache of one rank, and the block bookkeeping rank 0
 * does for each sequence.
 *
 * Storage: per layer, K and V pools of [n_blocks + 1, block_size, nkv_local, d]
 * activations in backend memory (or fp8 bytes with a scale per row: dtype). A sequence owns a list of block ids (its block
 * table); position p lives in block table[p / block_size] at p % block_size.
 * Every rank holds the same block ids for its own heads, so rank 0 decides the
 * tables and sends them with each step. */
#ifndef GLMTP_KVCACHE_H
#define GLMTP_KVCACHE_H

#include "model.h"

typedef struct kv_cache {
    int n_layers, n_blocks, block_size;
    /* One more block past the n_blocks the pool hands out: where padding tokens
     * of a fixed-size (graph) step write their K/V harmlessly. */
    int spare_block;
    int width; /* nkv_local * d elements per slot */
    void **k, **v; /* [n_layers] backend buffers */
    size_t bytes;
    /* Element type (kernels.h KV_DTYPE_*): ACT, activations; FP8, e4m3 bytes
     * [slots, width] then from byte scale_off fp32 scales [slots, nkv_local]
     * (one per token and KV head) in each buffer. head_dim: d. */
    int dtype, head_dim;
    size_t scale_off;
} kv_cache;

/* KV bytes one token takes on this rank's layers (K and V, scales included). */
double kv_bytes_per_token(const glm_model *m, int dtype);
/* dtype: KV_DTYPE_ACT or KV_DTYPE_FP8. */
kv_cache *kv_create(const glm_model *m, int n_blocks, int block_size, int dtype);
void kv_free(const glm_model *m, kv_cache *kv); /* accepts NULL */

/* Free list of block ids (rank 0). */
typedef struct kv_blocks {
    int n_blocks, block_size;
    int *free_ids;
    int n_free;
} kv_blocks;

/* One sequence's block table. */
typedef struct kv_seq {
    int *table;
    int n_blocks, cap;
} kv_seq;

int kv_blocks_init(kv_blocks *b, int n_blocks, int block_size); /* 0 or -1 (OOM) */
void kv_blocks_free(kv_blocks *b);
/* Grows s so that it can hold n_tokens positions. Returns 0, or -1 when the
 * pool has too few free blocks (s unchanged). */
int kv_seq_reserve(kv_blocks *b, kv_seq *s, int n_tokens);
/* Returns all of s's blocks to the pool. */
void kv_seq_release(kv_blocks *b, kv_seq *s);

#endif
