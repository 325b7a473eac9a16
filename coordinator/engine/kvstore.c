/* Rank 0's KV snapshot directory (see kvstore.h): an index of the snapshots
 * on disk (prefix hash, blocks, token ids), start-up scan, save and load. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../../worker/kvsnap.h"
#include "../../worker/log.h"
#include "../../worker/util.h"
#include "kvstore.h"

typedef struct kv_entry {
    uint64_t key, extra;
    int n_blocks;
    int32_t *ids;  /* [n_blocks * block size] */
    uint64_t *keys; /* [n_blocks] the cache key of each block */
} kv_entry;

struct kvstore {
    engine *e; /* not owned */
    char *dir;
    kv_entry *ent;
    int n, cap;
};

static void entry_free(kv_entry *x) {
    free(x->ids);
    free(x->keys);
}

void kvstore_close(kvstore *ks) {
    if (!ks) return;
    for (int i = 0; i < ks->n; i++) entry_free(&ks->ent[i]);
    free(ks->ent);
    free(ks->dir);
    free(ks);
}

static void chain_keys(const pcache *pc, const int32_t *ids, int n, int bs, uint64_t extra, uint64_t *keys);

/* Adds an entry; takes ids (malloc'ed). */
static void add_entry(kvstore *ks, uint64_t key, uint64_t extra, int n_blocks, int32_t *ids) {
    uint64_t *keys = malloc(sizeof *keys * (size_t)n_blocks);
    if (!keys) abort();
    chain_keys(ks->e->pc, ids, n_blocks, ks->e->blocks.block_size, extra, keys);
    if (ks->n == ks->cap) {
        ks->cap = ks->cap ? 2 * ks->cap : 16;
        ks->ent = realloc(ks->ent, sizeof *ks->ent * (size_t)ks->cap);
        if (!ks->ent) abort();
    }
    ks->ent[ks->n++] = (kv_entry){key, extra, n_blocks, ids, keys};
}

static void drop_entry(kvstore *ks, int i) {
    entry_free(&ks->ent[i]);
    ks->ent[i] = ks->ent[--ks->n];
}

static int find_entry(const kvstore *ks, uint64_t key, uint64_t extra) {
    for (int i = 0; i < ks->n; i++)
        if (ks->ent[i].key == key && ks->ent[i].extra == extra) return i;
    return -1;
}

/* keys[b] for blocks [0, n) of ids: the prefix cache's hash chain. */
static void chain_keys(const pcache *pc, const int32_t *ids, int n, int bs, uint64_t extra, uint64_t *keys) {
    uint64_t parent = PCACHE_ROOT;
    for (int b = 0; b < n; b++) parent = keys[b] = pcache_key(pc, parent, extra, ids + (size_t)b * bs);
}

static void stem_of(const kvstore *ks, uint64_t key, char *out, size_t len) {
    snprintf(out, len, "%s/%016llx", ks->dir, (unsigned long long)key);
}

/* Loads entry i's first k blocks into fresh blocks registered in the prefix
 * cache. Returns 0, 1 when the pool has no room now, -1 when refused (entry
 * dropped, message printed). */
static int load_entry(kvstore *ks, int i, int k) {
    engine *e = ks->e;
    kv_entry *x = &ks->ent[i];
    int bs = e->blocks.block_size;
    kv_seq tmp = {0};
    if (pcache_reserve(e->pc, &tmp, k * bs)) return 1;
    kvsnap_cmd cmd = {KVSNAP_LOAD, k, x->n_blocks, x->n_blocks * bs, x->key, x->extra, "", tmp.table, x->ids};
    stem_of(ks, x->key, cmd.stem, sizeof cmd.stem);
    char err[KVSNAP_PATH_MAX + 512] = "";
    size_t bytes = 0;
    double t0 = util_now();
    int rc = kvsnap_run(e->comm, e->m, e->kv, &cmd, &bytes, err, sizeof err);
    double dt = util_now() - t0;
    if (rc) {
        log_msg(LOG_WARN, "kv snapshot refused: %s (the prefix is recomputed)", err);
        pcache_release(e->pc, &tmp); /* unregistered: back to the free list */
        drop_entry(ks, i);
        return -1;
    }
    for (int b = 0; b < k; b++)
        pcache_register(e->pc, tmp.table[b], x->keys[b], b ? x->keys[b - 1] : PCACHE_ROOT, x->extra,
                        x->ids + (size_t)b * bs);
    pcache_release(e->pc, &tmp); /* registered: cached, unreferenced */
    double mb = (double)bytes / 1e6;
    log_msg(LOG_INFO, "kv snapshot: loaded %s (%d of its %d tokens, %.2f MB per rank read) in %.4f s: %.0f MB/s per "
            "rank", cmd.stem, k * bs, cmd.n_tokens, mb, dt, dt > 0 ? mb / dt : 0.0);
    return 0;
}

/* Whether name is "<16 hex>.rank0-of-<T>.kv". */
static int rank0_name(const char *name, unsigned long long *key, int *tp) {
    char hex[17], back[256];
    int r;
    if (strlen(name) > 200 || sscanf(name, "%16[0-9a-f].rank%d-of-%d.kv", hex, &r, tp) != 3 || r != 0) return 0;
    *key = strtoull(hex, NULL, 16);
    snprintf(back, sizeof back, "%016llx.rank0-of-%d.kv", *key, *tp);
    return strcmp(back, name) == 0;
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Checks one rank-0 file and indexes it. Returns 0, or -1 after one line. */
static int index_file(kvstore *ks, const char *name, unsigned long long key) {
    engine *e = ks->e;
    char path[KVSNAP_PATH_MAX + 256], err[KVSNAP_PATH_MAX + 512];
    snprintf(path, sizeof path, "%s/%s", ks->dir, name);
    kvsnap_header h, want;
    kvsnap_expect(&want, e->m, e->kv, 0);
    int32_t *ids = NULL;
    if (kvsnap_read_header(path, &h, err, sizeof err)) goto refuse;
    if (kvsnap_check_header(&h, &want, err, sizeof err)) goto refuse_why;
    if (h.key != key) {
        snprintf(err, sizeof err, "its header holds prefix %016llx, not the one its name says",
                 (unsigned long long)h.key);
        goto refuse_why;
    }
    if (h.n_blocks == 0 || (long long)h.n_blocks > e->blocks.n_blocks) {
        snprintf(err, sizeof err, "%u blocks: more than this run's KV pool of %d blocks", h.n_blocks,
                 e->blocks.n_blocks);
        goto refuse_why;
    }
    if (kvsnap_read_ids(path, &h, &ids, err, sizeof err)) goto refuse;
    uint64_t *keys = malloc(sizeof *keys * h.n_blocks);
    if (!keys) abort();
    chain_keys(e->pc, ids, (int)h.n_blocks, (int)h.block_size, h.extra, keys);
    int ok = keys[h.n_blocks - 1] == h.key;
    free(keys);
    if (!ok) {
        snprintf(err, sizeof err, "its token ids do not hash to its prefix hash (damaged file)");
        goto refuse_why;
    }
    if (find_entry(ks, h.key, h.extra) >= 0) { /* the same prefix under another name: impossible by naming */
        free(ids);
        return 0;
    }
    add_entry(ks, h.key, h.extra, (int)h.n_blocks, ids);
    return 0;
refuse_why:
    {
        char why[KVSNAP_PATH_MAX + 512];
        snprintf(why, sizeof why, "%s", err);
        snprintf(err, sizeof err, "%s: %s", path, why);
    }
refuse:
    free(ids);
    log_msg(LOG_WARN, "kv snapshot refused: %s", err);
    return -1;
}

/* The rank-0 file names in ks->dir, sorted (malloc'ed; caller frees). Returns
 * the count, or -1 after printing why the directory cannot be read. */
static int list_dir(kvstore *ks, char ***names) {
    DIR *d = opendir(ks->dir);
    if (!d) {
        log_msg(LOG_ERROR, "--kv-snapshot-dir %s: cannot open: %s", ks->dir, strerror(errno));
        return -1;
    }
    int n = 0, cap = 0;
    *names = NULL;
    struct dirent *de;
    unsigned long long key;
    int tp;
    while ((de = readdir(d))) {
        if (!rank0_name(de->d_name, &key, &tp)) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            *names = realloc(*names, sizeof **names * (size_t)cap);
            if (!*names) abort();
        }
        if (!((*names)[n++] = strdup(de->d_name))) abort();
    }
    closedir(d);
    if (n) qsort(*names, (size_t)n, sizeof **names, by_name);
    return n;
}

kvstore *kvstore_open(engine *e, const char *dir) {
    if (mkdir(dir, 0755) && errno != EEXIST) {
        log_msg(LOG_ERROR, "--kv-snapshot-dir %s: cannot create it: %s", dir, strerror(errno));
        return NULL;
    }
    kvstore *ks = calloc(1, sizeof *ks);
    if (!ks || !(ks->dir = strdup(dir))) abort();
    ks->e = e;
    size_t l = strlen(ks->dir);
    while (l > 1 && ks->dir[l - 1] == '/') ks->dir[--l] = 0;
    char **names;
    int n = list_dir(ks, &names);
    if (n < 0) {
        kvstore_close(ks);
        return NULL;
    }
    unsigned long long key;
    int tp;
    for (int i = 0; i < n; i++) {
        if (rank0_name(names[i], &key, &tp)) index_file(ks, names[i], key);
        free(names[i]);
    }
    free(names);
    int loaded = 0, indexed = ks->n;
    for (int i = 0; i < ks->n; i++) {
        pcache_stats ps;
        pcache_get_stats(e->pc, &ps);
        if (!pcache_enabled(e->pc) || 2 * ks->ent[i].n_blocks > ps.available) continue;
        int rc = load_entry(ks, i, ks->ent[i].n_blocks);
        if (rc < 0) i--; /* dropped: entry i is another one now */
        loaded += rc == 0;
    }
    log_msg(LOG_INFO, "kv snapshot: %s: %d snapshots usable, %d loaded into the prefix cache (the others load when a "
            "request needs them)", ks->dir, ks->n, loaded);
    (void)indexed;
    return ks;
}

int kvstore_save(kvstore *ks, const int *ids, int n_blocks, const kv_seq *kv, uint64_t extra) {
    engine *e = ks->e;
    int bs = e->blocks.block_size;
    if (n_blocks <= 0 || n_blocks > kv->n_blocks) return 0;
    uint64_t *keys = malloc(sizeof *keys * (size_t)n_blocks);
    if (!keys) abort();
    chain_keys(e->pc, ids, n_blocks, bs, extra, keys);
    uint64_t key = keys[n_blocks - 1];
    free(keys);
    if (find_entry(ks, key, extra) >= 0) {
        log_msg(LOG_INFO, "kv snapshot: %s/%016llx: on disk already", ks->dir, (unsigned long long)key);
        return 0;
    }
    int32_t *copy = malloc(sizeof *copy * (size_t)n_blocks * bs);
    if (!copy) abort();
    memcpy(copy, ids, sizeof *copy * (size_t)n_blocks * bs);
    kvsnap_cmd cmd = {KVSNAP_SAVE, n_blocks, n_blocks, n_blocks * bs, key, extra, "", kv->table, copy};
    stem_of(ks, key, cmd.stem, sizeof cmd.stem);
    char err[KVSNAP_PATH_MAX + 512] = "";
    size_t bytes = 0;
    double t0 = util_now();
    int rc = kvsnap_run(e->comm, e->m, e->kv, &cmd, &bytes, err, sizeof err);
    double dt = util_now() - t0;
    if (rc) {
        log_msg(LOG_ERROR, "kv snapshot: not saved: %s", err);
        free(copy);
        return -1;
    }
    add_entry(ks, key, extra, n_blocks, copy);
    double mb = (double)bytes / 1e6;
    log_msg(LOG_INFO, "kv snapshot: saved %s (%d tokens, %.2f MB per rank) in %.4f s: %.0f MB/s per rank", cmd.stem,
            cmd.n_tokens, mb, dt, dt > 0 ? mb / dt : 0.0);
    return 0;
}

/* Leading blocks of entry x that equal ids' (keys[b] their cache keys). */
static int common_blocks(const kv_entry *x, const int *ids, const uint64_t *keys, int n, int bs) {
    int b = 0;
    while (b < n && b < x->n_blocks && keys[b] == x->keys[b] &&
           memcmp(x->ids + (size_t)b * bs, ids + (size_t)b * bs, sizeof *ids * (size_t)bs) == 0)
        b++;
    return b;
}

int kvstore_fill(kvstore *ks, const int *ids, int max_blocks, uint64_t extra) {
    engine *e = ks->e;
    int bs = e->blocks.block_size, most = 0;
    if (!pcache_enabled(e->pc) || max_blocks <= 0 || ks->n == 0) return 0;
    for (int i = 0; i < ks->n; i++)
        if (ks->ent[i].extra == extra && ks->ent[i].n_blocks > most) most = ks->ent[i].n_blocks;
    if (most > max_blocks) most = max_blocks;
    if (most == 0) return 0;
    uint64_t *keys = malloc(sizeof *keys * (size_t)most);
    if (!keys) abort();
    chain_keys(e->pc, ids, most, bs, extra, keys);
    int best = -1, best_n = 0;
    for (int i = 0; i < ks->n; i++) {
        int c = ks->ent[i].extra == extra ? common_blocks(&ks->ent[i], ids, keys, most, bs) : 0;
        if (c > best_n) best = i, best_n = c;
    }
    int cached = 0, got = 0;
    while (cached < best_n &&
           pcache_find(e->pc, keys[cached], cached ? keys[cached - 1] : PCACHE_ROOT, extra, ids + (size_t)cached * bs) >= 0)
        cached++;
    if (best >= 0 && cached < best_n && load_entry(ks, best, best_n) == 0) got = best_n * bs;
    free(keys);
    return got;
}
