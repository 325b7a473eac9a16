/* The KV block pool with prefix caching (see prefix_cache.h). Per block:
 * references, registration (key, parent key, extra, token ids), a hash bucket
 * chain and LRU links; all arrays of n_blocks, made once. */
#include <stdlib.h>
#include <string.h>

#include "prefix_cache.h"

struct pcache {
    kv_blocks *b;
    int enabled, n_blocks, bs;
    int *ref;            /* [n_blocks] block tables holding the block */
    unsigned char *reg;  /* [n_blocks] 1: registered */
    uint64_t *key, *parent, *extra; /* [n_blocks] of a registered block */
    int *ids;            /* [n_blocks, bs] token ids of a registered block */
    int *hnext;          /* [n_blocks] next block in the same bucket, -1 */
    int *bucket;         /* [n_buckets] first block, -1 */
    uint64_t mask;       /* n_buckets - 1 */
    int *prev, *next;    /* [n_blocks] LRU links of unreferenced registered blocks, -1 */
    int lru_head, lru_tail, n_lru; /* head: least recently released */
    long long prompt_tokens, cached_tokens, evictions;
};

pcache *pcache_create(kv_blocks *b) {
    pcache *pc = calloc(1, sizeof *pc);
    if (!pc) return NULL;
    int n = b->n_blocks > 0 ? b->n_blocks : 1;
    size_t nb = 1;
    while (nb < 2 * (size_t)n) nb *= 2;
    pc->b = b, pc->enabled = 1, pc->n_blocks = b->n_blocks, pc->bs = b->block_size, pc->mask = nb - 1;
    pc->ref = calloc((size_t)n, sizeof *pc->ref);
    pc->reg = calloc((size_t)n, 1);
    pc->key = calloc((size_t)n, sizeof *pc->key);
    pc->parent = calloc((size_t)n, sizeof *pc->parent);
    pc->extra = calloc((size_t)n, sizeof *pc->extra);
    pc->ids = malloc(sizeof *pc->ids * (size_t)n * (size_t)pc->bs);
    pc->hnext = malloc(sizeof *pc->hnext * (size_t)n);
    pc->bucket = malloc(sizeof *pc->bucket * nb);
    pc->prev = malloc(sizeof *pc->prev * (size_t)n);
    pc->next = malloc(sizeof *pc->next * (size_t)n);
    if (!pc->ref || !pc->reg || !pc->key || !pc->parent || !pc->extra || !pc->ids || !pc->hnext || !pc->bucket ||
        !pc->prev || !pc->next) {
        pcache_free(pc);
        return NULL;
    }
    memset(pc->bucket, 0xff, sizeof *pc->bucket * nb);
    memset(pc->hnext, 0xff, sizeof *pc->hnext * (size_t)n);
    memset(pc->prev, 0xff, sizeof *pc->prev * (size_t)n);
    memset(pc->next, 0xff, sizeof *pc->next * (size_t)n);
    pc->lru_head = pc->lru_tail = -1;
    return pc;
}

void pcache_free(pcache *pc) {
    if (!pc) return;
    free(pc->ref);
    free(pc->reg);
    free(pc->key);
    free(pc->parent);
    free(pc->extra);
    free(pc->ids);
    free(pc->hnext);
    free(pc->bucket);
    free(pc->prev);
    free(pc->next);
    free(pc);
}

/* ---- LRU list of unreferenced registered blocks ---- */

static void lru_push_tail(pcache *pc, int id) {
    pc->prev[id] = pc->lru_tail, pc->next[id] = -1;
    if (pc->lru_tail >= 0) pc->next[pc->lru_tail] = id;
    else pc->lru_head = id;
    pc->lru_tail = id;
    pc->n_lru++;
}

static void lru_unlink(pcache *pc, int id) {
    if (pc->prev[id] >= 0) pc->next[pc->prev[id]] = pc->next[id];
    else pc->lru_head = pc->next[id];
    if (pc->next[id] >= 0) pc->prev[pc->next[id]] = pc->prev[id];
    else pc->lru_tail = pc->prev[id];
    pc->prev[id] = pc->next[id] = -1;
    pc->n_lru--;
}

/* ---- the key -> block table ---- */

static void unregister(pcache *pc, int id) {
    int *p = &pc->bucket[pc->key[id] & pc->mask];
    while (*p != id) p = &pc->hnext[*p]; /* id is in its bucket's chain */
    *p = pc->hnext[id];
    pc->hnext[id] = -1;
    pc->reg[id] = 0;
}

/* Takes the LRU block out of the cache and returns it (unreferenced, unregistered). */
static int evict(pcache *pc) {
    int id = pc->lru_head;
    lru_unlink(pc, id);
    unregister(pc, id);
    pc->evictions++;
    return id;
}

void pcache_drop_unused(pcache *pc) {
    while (pc->n_lru > 0) pc->b->free_ids[pc->b->n_free++] = evict(pc);
}

void pcache_set_enabled(pcache *pc, int on) {
    pc->enabled = on != 0;
    if (!on) pcache_drop_unused(pc);
}

int pcache_enabled(const pcache *pc) { return pc->enabled; }

static uint64_t mix(uint64_t h) { /* splitmix64's finalizer */
    h ^= h >> 30;
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 27;
    h *= 0x94D049BB133111EBULL;
    return h ^ (h >> 31);
}

uint64_t pcache_key(const pcache *pc, uint64_t parent, uint64_t extra, const int *ids) {
    uint64_t h = mix(parent ^ mix(extra + 0x632BE59BD9B4E019ULL));
    for (int i = 0; i < pc->bs; i++) h = mix(h ^ ((uint64_t)(uint32_t)ids[i] + ((uint64_t)i << 32)));
    return h;
}

int pcache_find(const pcache *pc, uint64_t key, uint64_t parent, uint64_t extra, const int *ids) {
    if (!pc->enabled) return -1;
    for (int id = pc->bucket[key & pc->mask]; id >= 0; id = pc->hnext[id])
        if (pc->key[id] == key && pc->parent[id] == parent && pc->extra[id] == extra &&
            memcmp(pc->ids + (size_t)id * pc->bs, ids, sizeof *ids * (size_t)pc->bs) == 0)
            return id;
    return -1;
}

void pcache_register(pcache *pc, int id, uint64_t key, uint64_t parent, uint64_t extra, const int *ids) {
    if (!pc->enabled || pc->reg[id]) return;
    for (int o = pc->bucket[key & pc->mask]; o >= 0; o = pc->hnext[o])
        if (pc->key[o] == key) return; /* the same content (or a colliding key): keep the first */
    pc->reg[id] = 1, pc->key[id] = key, pc->parent[id] = parent, pc->extra[id] = extra;
    memcpy(pc->ids + (size_t)id * pc->bs, ids, sizeof *ids * (size_t)pc->bs);
    pc->hnext[id] = pc->bucket[key & pc->mask];
    pc->bucket[key & pc->mask] = id;
}

/* ---- block tables ---- */

/* Makes room in s's table for n more ids. Returns 0, or -1 on OOM. */
static int table_grow(kv_seq *s, int n) {
    if (s->n_blocks + n <= s->cap) return 0;
    int cap = s->cap ? s->cap : 4;
    while (cap < s->n_blocks + n) cap *= 2;
    int *t = realloc(s->table, sizeof(int) * (size_t)cap);
    if (!t) return -1;
    s->table = t, s->cap = cap;
    return 0;
}

void pcache_take(pcache *pc, kv_seq *s, int id) {
    if (table_grow(s, 1)) abort();
    if (pc->ref[id]++ == 0) lru_unlink(pc, id); /* a registered block without references is in the LRU */
    s->table[s->n_blocks++] = id;
}

int pcache_reserve(pcache *pc, kv_seq *s, int n_tokens) {
    int need = (n_tokens + pc->bs - 1) / pc->bs - s->n_blocks;
    if (need <= 0) return 0;
    if (need > pc->b->n_free + pc->n_lru || table_grow(s, need)) return -1;
    while (need--) {
        int id = pc->b->n_free > 0 ? pc->b->free_ids[--pc->b->n_free] : evict(pc);
        pc->ref[id] = 1;
        s->table[s->n_blocks++] = id;
    }
    return 0;
}

void pcache_release(pcache *pc, kv_seq *s) {
    while (s->n_blocks > 0) {
        int id = s->table[--s->n_blocks];
        if (--pc->ref[id] > 0) continue;
        if (pc->reg[id]) lru_push_tail(pc, id);
        else pc->b->free_ids[pc->b->n_free++] = id;
    }
    free(s->table);
    s->table = NULL;
    s->cap = 0;
}

void pcache_count(pcache *pc, int need, int cached) {
    pc->prompt_tokens += need;
    pc->cached_tokens += cached;
}

void pcache_get_stats(const pcache *pc, pcache_stats *out) {
    out->prompt_tokens = pc->prompt_tokens, out->cached_tokens = pc->cached_tokens, out->evictions = pc->evictions;
    out->cached_free = pc->n_lru;
    out->available = pc->b->n_free + pc->n_lru;
    out->used = pc->n_blocks - out->available;
}
