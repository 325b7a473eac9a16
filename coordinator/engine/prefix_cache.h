/* prefix_cache.h: rank 0's KV block pool with automatic prefix caching, as
 * vLLM's. It sits on the plain free list of worker/kvcache.h (kv_blocks) and
 * is the only way the scheduler takes and returns blocks.
 *
 * Contract:
 *   - A block is referenced once by every block table holding it (ref count);
 *     a block with references is never handed out again.
 *   - Only a full block whose K/V has been computed is registered, under the
 *     key hash(parent block's key, extra, its block_size token ids); extra is
 *     0 for text (reserved for the hash of image content). A key names one
 *     block: a second block with the same content stays unregistered.
 *   - A registered block keeps its K/V after its last reference goes: it waits
 *     in an LRU list and still counts as available. The allocator takes the free
 *     list first and evicts the least recently released cached block only when
 *     the free list is empty.
 *   - pcache_find compares key, parent key, extra and the token ids, so a hit
 *     is the same content unless two 64-bit parent keys collide.
 *   - The scheduler (sched.c) decides what to look up: whole blocks of a
 *     request's known tokens, never the block holding its last token, so that
 *     it feeds at least one token and gets logits.
 * It lives in coordinator/engine/ rather than worker/ because only rank 0 has
 * it: the other ranks see block ids in each step's plan and nothing else, and
 * the forward pass is unchanged (cached blocks are simply in the table).
 * Disabled (--no-prefix-cache), it registers and finds nothing and behaves
 * as the free list. */
#ifndef GLMTP_PREFIX_CACHE_H
#define GLMTP_PREFIX_CACHE_H

#include <stdint.h>

#include "../../worker/kvcache.h"

typedef struct pcache pcache;

/* Counters since creation. prompt_tokens: tokens that admitted requests had to
 * hold in KV before sampling (counted again when a preempted request is
 * readmitted); cached_tokens: those of them taken from the cache. */
typedef struct pcache_stats {
    long long prompt_tokens, cached_tokens, evictions;
    int cached_free; /* registered blocks no request references (evictable) */
    int used;        /* blocks referenced by some request */
    int available;   /* free list + cached_free: what pcache_reserve can hand out */
} pcache_stats;

/* The key a chain starts from (the parent key of a sequence's first block). */
#define PCACHE_ROOT 0x9E3779B97F4A7C15ULL

/* Creates the cache over b (not owned; must outlive it), enabled. NULL on OOM. */
pcache *pcache_create(kv_blocks *b);
void pcache_free(pcache *pc); /* accepts NULL */
/* Turns caching on or off; off drops every unreferenced cached block to the
 * free list. */
void pcache_set_enabled(pcache *pc, int on);
int pcache_enabled(const pcache *pc);
/* Drops every unreferenced cached block to the free list (for callers that
 * then use the free list directly, as bench does). */
void pcache_drop_unused(pcache *pc);

/* The key of a block of block_size token ids under parent. */
uint64_t pcache_key(const pcache *pc, uint64_t parent, uint64_t extra, const int *ids);
/* The registered block with this content, or -1. */
int pcache_find(const pcache *pc, uint64_t key, uint64_t parent, uint64_t extra, const int *ids);
/* Appends block id (registered, from pcache_find) to s's table, taking a
 * reference; a block that had none leaves the LRU list. */
void pcache_take(pcache *pc, kv_seq *s, int id);
/* Registers block id (referenced, full, K/V computed) under key. No-op when
 * disabled or when the key already names a block. */
void pcache_register(pcache *pc, int id, uint64_t key, uint64_t parent, uint64_t extra, const int *ids);

/* Grows s so that it can hold n_tokens positions, with fresh blocks (free list
 * first, then evicting least recently used cached blocks). Returns 0, or -1
 * when too few blocks are available (s unchanged). */
int pcache_reserve(pcache *pc, kv_seq *s, int n_tokens);
/* Drops s's references, last block first, and frees its table: unregistered
 * blocks go to the free list, registered ones to the LRU list (so a
 * sequence's tail is evicted before its head). */
void pcache_release(pcache *pc, kv_seq *s);
/* Counts an admission: need tokens to hold, cached of them from the cache. */
void pcache_count(pcache *pc, int need, int cached);

void pcache_get_stats(const pcache *pc, pcache_stats *out); /* OUT: out */

#endif
